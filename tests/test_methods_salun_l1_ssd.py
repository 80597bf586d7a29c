"""SalUn, ℓ1-sparse and SSD: the properties specific to each rule."""

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mu_jax import methods, parallel
from mu_jax.data import pipeline
from tests import helpers

# mu_jax.methods binds each factory over its module's name; the modules come from importlib.
l1_sparse, salun, ssd = (importlib.import_module(f"mu_jax.methods.{m}") for m in ("l1_sparse", "salun", "ssd"))


def _host(tree):
  return jax.tree.map(np.asarray, tree)


def _forget_gradient(state, sign=1.0, split="forget"):
  """∇θ of sign·(mean cross-entropy over a whole split), eval mode, the CE written out here."""
  f = helpers.tiny_dataset().split(split)
  x, y = pipeline.to_float(f.images), f.labels

  def loss(params):
    logits = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x, train=False)
    logp = jax.nn.log_softmax(logits)
    return -sign * jnp.mean(jnp.take_along_axis(logp, jnp.asarray(y)[:, None], axis=1))

  return _host(jax.jit(jax.grad(loss))(state.params))


def _train_gradient(state):
  """The same over the training set (retain ∪ forget)."""
  return _forget_gradient(state, split="train")


def _np_top_fraction(tree, fraction):
  """1 where |x| is among the ``fraction`` largest magnitudes over all leaves, else 0 (numpy)."""
  flat = np.concatenate([np.abs(np.asarray(x)).ravel() for x in jax.tree.leaves(tree)])
  k = int(len(flat) * fraction)
  cut = np.sort(flat)[::-1][k - 1]
  return jax.tree.map(lambda x: (np.abs(np.asarray(x)) >= cut).astype(np.float32), tree)


# ----- SalUn -----

@pytest.mark.parametrize("threshold", [0.5, 0.3, 1.0])
def test_saliency_mask_keeps_the_top_fraction_globally(threshold):
  rng = np.random.default_rng(0)
  grads = {"a": {"w": rng.normal(size=(7, 5))}, "b": rng.normal(size=(13,)),
           "c": {"k": rng.normal(size=(2, 3, 4))}}
  mask = _host(salun.saliency_mask(grads, threshold))
  chex.assert_trees_all_equal_shapes(mask, grads)
  g = np.concatenate([np.abs(x).ravel() for x in jax.tree.leaves(grads)])
  m = np.concatenate([x.ravel() for x in jax.tree.leaves(mask)])
  assert set(np.unique(m)) <= {0.0, 1.0}
  assert m.sum() == int(len(g) * threshold)
  if threshold < 1.0:
    assert g[m == 1].min() > g[m == 0].max()  # global ranking, not per tensor


def test_salun_masked_weights_do_not_move_even_with_momentum_and_weight_decay(original):
  # batch 24 = the whole forget set: the saliency phase sees one batch, so its accumulated
  # gradient is the full forget gradient.
  unl = methods.create("salun", threshold=0.3, lr=0.05, epochs=1, momentum=0.9, weight_decay=5e-3)
  r = methods.run_detailed(unl, original, helpers.tiny_dataset(),
                           methods.RunConfig(batch_size=24, log_splits=()))
  assert not r.halted
  chex.assert_trees_all_close(r.aux["grad"], _forget_gradient(original, sign=-1.0),
                              rtol=1e-4, atol=1e-6)
  mask = r.aux["mask"]
  # The top 30% of |∇| over all weights, ranked here in numpy from the gradient computed here.
  chex.assert_trees_all_equal(jax.tree.map(lambda m: np.asarray(m, np.float32), mask),
                              _np_top_fraction(_forget_gradient(original, sign=-1.0), 0.3))
  n = sum(x.size for x in jax.tree.leaves(mask))
  assert abs(sum(x.sum() for x in jax.tree.leaves(mask)) - 0.3 * n) <= 1
  before, after = _host(original.params), r.state.params
  frozen = lambda params: jax.tree.map(lambda p, m: p[m == 0], params, mask)
  chex.assert_trees_all_equal(frozen(after), frozen(before))  # bit for bit
  moved = jax.tree.map(lambda a, b, m: np.any(a[m == 1] != b[m == 1]), after, before, mask)
  assert any(jax.tree.leaves(moved))


def test_salun_runs_on_multilabel(multilabel_state):
  ds = helpers.tiny_dataset("multilabel")
  state = multilabel_state
  r = methods.run_detailed(methods.create("salun", epochs=1, lr=0.05), state, ds,
                           methods.RunConfig(batch_size=16, log_splits=()))
  assert not r.halted and np.isfinite(r.history[-1]["train_loss"])
  assert 0 < sum(x.sum() for x in jax.tree.leaves(r.aux["mask"]))


def test_salun_rejects_a_bad_threshold():
  with pytest.raises(ValueError, match="threshold"):
    methods.create("salun", threshold=0.0)


# ----- l1-sparse -----

def test_l1_coefficient_decays_linearly_then_stops():
  coef = lambda t, e=10, n=0: float(l1_sparse.l1_coefficient(1e-3, jnp.int32(t), e - n))
  assert coef(0) == pytest.approx(1e-3)        # start: the full alpha
  assert coef(5) == pytest.approx(5e-4)        # middle
  assert coef(9) == pytest.approx(1e-4)        # last epoch of 10: alpha·(1 − 9/10)
  assert coef(7, 10, 2) == pytest.approx(1e-3 * (1 - 7 / 8))
  assert coef(8, 10, 2) == 0.0 and coef(9, 10, 2) == 0.0  # the no-l1 epochs
  # no_l1_epochs == epochs: the official non-ImageNet branch (its `elif`) keeps the full alpha.
  assert [coef(t, 3, 3) for t in range(3)] == pytest.approx([1e-3] * 3)


def test_l1_sparse_applies_the_schedule_per_epoch(original):
  alpha = 1e-3
  r = methods.run_detailed(methods.create("l1_sparse", alpha=alpha, epochs=4, no_l1_epochs=1),
                           original, helpers.tiny_dataset(),
                           methods.RunConfig(batch_size=16, log_splits=()))
  got = [row["train_l1_alpha"] for row in r.history]
  np.testing.assert_allclose(got, [alpha, alpha * 2 / 3, alpha / 3, 0.0], rtol=1e-6)
  norm0 = sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(original.params))
  assert r.history[0]["train_l1_norm"] == pytest.approx(norm0, rel=0.05)


@pytest.mark.parametrize("epoch,factor", [(0, 1.0), (1, 0.5)])
def test_l1_sparse_step_is_torch_sgd_on_ce_plus_the_l1_penalty(original, epoch, factor):
  # One step from fresh SGD state, checked against the update written out by hand:
  # θ' = θ − lr·(∇CE + α_t·sign(θ) + wd·θ) (momentum's first step is the gradient itself), with
  # torch's subgradient sign(0) = 0, which matters here: the BN biases start at exactly 0.
  alpha, lr, wd = 1e-2, 0.1, 5e-4
  unl = methods.create("l1_sparse", alpha=alpha, lr=lr, epochs=2, momentum=0.9, weight_decay=wd)
  state = original.replace(tx=unl.optimizer, opt_state=unl.optimizer.init(original.params))
  spec = methods.Spec(model=helpers.tiny_model(), task="multiclass", num_classes=8,
                      image_shape=(16, 16, 3))
  step = unl.phases(spec)[0].step
  r = helpers.tiny_dataset().split("retain")
  batch = {"image": pipeline.to_float(r.images[:16]), "label": r.labels[:16]}
  one = jax.devices()[:1]
  R, S = parallel.REPLICATED, parallel.SHARDED
  run = parallel.data_parallel(lambda st, b: step(st, {}, b, jax.random.key(0),
                                                  methods.driver.step_info(unl, epoch)),
                               in_specs=(R, S), out_specs=(R, R, R), devices=one)
  new, _, m = parallel.to_host(run(parallel.replicate(state, one), parallel.shard(batch, one)))

  def ce(params):  # train-mode forward; cross-entropy written out
    logits, _ = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, batch["image"],
                               train=True, mutable=["batch_stats"])
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, batch["label"][:, None], axis=1))

  ce_grad = parallel.data_parallel(jax.value_and_grad(ce), in_specs=(R,), out_specs=(R, R),
                                   devices=one)
  ce_value, g = parallel.to_host(ce_grad(parallel.replicate(state.params, one)))
  theta = _host(state.params)
  a_t = alpha * factor
  l1 = sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(theta))
  assert float(m["l1_alpha"]) == pytest.approx(a_t)
  assert float(m["loss"]) == pytest.approx(float(ce_value) + a_t * l1, rel=1e-5)
  expected = jax.tree.map(lambda p, d: p - lr * (d + a_t * np.sign(p) + wd * p), theta, g)
  chex.assert_trees_all_close(_host(new.params), expected, rtol=1e-5, atol=1e-6)
  # The penalty's share of the step is visible: without it the update differs by lr·α_t.
  assert any(np.abs(a - p).max() > 0.5 * lr * a_t for a, p in zip(
      jax.tree.leaves(expected),
      jax.tree.leaves(jax.tree.map(lambda p, d: p - lr * (d + wd * p), theta, g))))


def test_l1_sparse_runs_on_multilabel(multilabel_state):
  ds = helpers.tiny_dataset("multilabel")
  state = multilabel_state
  r = methods.run_detailed(methods.create("l1_sparse", epochs=1), state, ds,
                           methods.RunConfig(batch_size=16, log_splits=()))
  assert not r.halted and np.isfinite(r.history[-1]["train_loss"])


# ----- SSD -----

def test_ssd_dampen_on_hand_built_importances():
  params = {"w": jnp.array([1.0, -2.0, 3.0, 4.0, 5.0, -6.0]), "b": jnp.array([[0.5, 0.25]])}
  i_d = {"w": jnp.array([1.0, 1.0, 2.0, 0.0, 1.0, 1.0]), "b": jnp.array([[1.0, 0.0]])}
  i_f = {"w": jnp.array([5.0, 16.0, 10.0, 0.0, 64.0, 1.0]), "b": jnp.array([[3.0, 1.0]])}
  # alpha = 5: selected where I_f > 5·I_D; lambda = 2: beta = min(2·I_D/I_f, 1).
  out = _host(ssd.dampen(params, i_f, i_d, alpha=5.0, lambda_=2.0))
  expected_w = [1.0,              # 5 = 5·1: not selected (strict >), unchanged
                -2.0 * 2 / 16,    # selected, beta = 1/8
                3.0,              # 10 = 5·2: not selected
                4.0,              # both zero: not selected
                5.0 * 2 / 64,     # selected, beta = 1/32
                -6.0]             # 1 < 5: not selected
  np.testing.assert_array_equal(out["w"], np.array(expected_w, np.float32))
  np.testing.assert_array_equal(out["b"], [[0.5, 0.0]])  # I_D = 0 < I_f: dampened to zero
  # lambda large enough that beta caps at 1: selected but unchanged.
  capped = _host(ssd.dampen(params, i_f, i_d, alpha=5.0, lambda_=1000.0))
  np.testing.assert_array_equal(capped["w"], params["w"])


def test_ssd_after_divides_by_the_batch_counts(original):
  unl = ssd.ssd(alpha=2.0, lambda_=0.5)
  spec = methods.Spec(model=helpers.tiny_model(), task="multiclass", num_classes=8,
                      image_shape=(16, 16, 3))
  info = {"hp": {k: jnp.float32(v) for k, v in unl.traced.items()}}
  after = jax.jit(lambda state, aux: unl.phases(spec)[-1].after(state, aux, info))
  ones = jax.tree.map(jnp.ones_like, original.params)
  # Sums: forget 12 over 3 batches (I_f = 4), train 4 over 2 batches (I_D = 2) everywhere:
  # 4 > 2·2 is false, so nothing moves; with train 2 over 2 batches (I_D = 1): 4 > 2, beta = 0.125.
  aux = {"forget": jax.tree.map(lambda x: 12 * x, ones),
         "running": jax.tree.map(lambda x: 4 * x, ones),
         "forget_batches": jnp.float32(3), "running_batches": jnp.float32(2)}
  state, _ = after(original, aux)
  chex.assert_trees_all_equal(_host(state.params), _host(original.params))
  aux["running"] = jax.tree.map(lambda x: 2 * x, ones)
  state, _ = after(original, aux)
  chex.assert_trees_all_close(_host(state.params),
                              jax.tree.map(lambda p: np.asarray(p) * 0.125, original.params))


def test_ssd_run_dampens_only_the_selected_parameters(original):
  # Batch 128 = the whole training set in one batch, and the forget set (24 < 128) in one batch of
  # 24: I_f and I_D are the squared full-split gradients, computed here independently.
  alpha, lam = 1.0, 0.5
  r = methods.run_detailed(methods.create("ssd", alpha=alpha, lambda_=lam), original,
                           helpers.tiny_dataset(), methods.RunConfig(batch_size=128, log_splits=()))
  assert r.aux["forget_batches"] == 1 and r.aux["running_batches"] == 1
  i_f = jax.tree.map(np.square, _forget_gradient(original))
  i_d = jax.tree.map(np.square, _train_gradient(original))
  chex.assert_trees_all_close(r.aux["forget"], i_f, rtol=1e-4, atol=1e-10)
  chex.assert_trees_all_close(r.aux["running"], i_d, rtol=1e-4, atol=1e-10)
  before, after = _host(original.params), r.state.params
  # Selection and dampening from the importances computed here; weights within 0.1% of the
  # selection boundary I_f = α·I_D are left out, where float32 rounding may decide either way.
  selected = jax.tree.map(lambda f, d: f > alpha * d, i_f, i_d)
  clear = jax.tree.map(lambda f, d: np.abs(f - alpha * d) > 1e-3 * np.maximum(f, alpha * d), i_f, i_d)
  n_sel = sum(int(s.sum()) for s in jax.tree.leaves(selected))
  assert 0 < n_sel < sum(s.size for s in jax.tree.leaves(selected))
  kept = jax.tree.map(lambda s, c: ~s & c, selected, clear)
  chex.assert_trees_all_equal(jax.tree.map(lambda a, k: a[k], after, kept),
                              jax.tree.map(lambda b, k: b[k], before, kept))
  damp = jax.tree.map(lambda s, c: s & c, selected, clear)
  beta = jax.tree.map(lambda f, d, k: np.minimum(lam * d[k] / f[k], 1.0), i_f, i_d, damp)
  chex.assert_trees_all_close(jax.tree.map(lambda a, k: a[k], after, damp),
                              jax.tree.map(lambda b, k, m: b[k] * m, before, damp, beta),
                              rtol=1e-3, atol=1e-9)
  chex.assert_trees_all_equal(r.state.batch_stats, _host(original.batch_stats))  # no BN update


def test_ssd_runs_on_multilabel(multilabel_state):
  ds = helpers.tiny_dataset("multilabel")
  state = multilabel_state
  r = methods.run_detailed(methods.create("ssd"), state, ds,
                           methods.RunConfig(batch_size=16, log_splits=()))
  assert not r.halted and r.aux["forget_batches"] > 0
