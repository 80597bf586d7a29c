"""Bad Teacher: two teachers in aux, the membership-selected KL, drifting toward the bad one."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mu_jax import methods
from mu_jax.methods import common, driver
from mu_jax.methods.base import MethodNotApplicable, Spec
from mu_jax.training import evaluate, fit as fitlib
from tests import helpers

# mu_jax.methods binds each factory over its module's name; the module comes from importlib.
bt = importlib.import_module("mu_jax.methods.bad_teacher")


def _spec():
  return Spec(model=helpers.tiny_model(), task="multiclass", num_classes=8, image_shape=(16, 16, 3))


def _np_kl(t_logits, s_logits, temp):
  def log_softmax(z):
    z = z / temp
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
  lt, ls = log_softmax(t_logits), log_softmax(s_logits)
  return (np.exp(lt) * (lt - ls)).sum(-1)


def test_kl_selects_the_teacher_by_membership_without_a_t_squared_factor():
  rng = np.random.default_rng(0)
  s, good, bad = (rng.normal(size=(6, 5)).astype(np.float32) for _ in range(3))
  is_forget = np.array([1, 0, 1, 0, 0, 1], bool)
  got = np.asarray(bt.bad_teaching_kl(jnp.asarray(s), jnp.asarray(good), jnp.asarray(bad),
                                      jnp.asarray(is_forget), 2.0))
  want = np.where(is_forget, _np_kl(bad, s, 2.0), _np_kl(good, s, 2.0))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_incompetent_teacher_is_a_fresh_model_not_the_original():
  state = helpers.tiny_state(seed=0)
  _, aux = bt.init_teachers(state, jax.random.key(42), _spec())
  jax.tree.map(np.testing.assert_array_equal, aux["teacher"]["params"], state.params)
  assert jax.tree.structure(aux["bad_teacher"]["params"]) == jax.tree.structure(state.params)
  # Every weight matrix is redrawn (BN scales and biases start at 1 and 0 in both).
  kernels = [(jax.tree_util.keystr(p), np.asarray(a), np.asarray(b)) for (p, a), b in zip(
      jax.tree_util.tree_leaves_with_path(aux["bad_teacher"]["params"]),
      jax.tree.leaves(state.params)) if "kernel" in jax.tree_util.keystr(p)]
  assert len(kernels) == 4
  for path, a, b in kernels:
    assert not np.allclose(a, b), path
  # Fresh BN statistics (mean 0, variance 1), as an untrained torch model's.
  for leaf in jax.tree.leaves(aux["bad_teacher"]["batch_stats"]):
    assert np.all((np.asarray(leaf) == 0) | (np.asarray(leaf) == 1))


def test_steps_pull_the_student_toward_the_bad_teacher_on_forget_inputs_only():
  # Five steps on one fixed paired batch (Adam lr 3e-3, scaled up from the official 1e-4 so that
  # five steps move the tiny model). The KL is computed here in numpy from the train-mode logits
  # that the step optimises: KL(bad ‖ student) on the forget half must fall at every step and by
  # half, while the retain half stays close to the original.
  from mu_jax import parallel

  state = helpers.tiny_state(seed=0)
  u = bt.bad_teacher(lr=3e-3)
  state = state.replace(tx=u.optimizer, opt_state=u.optimizer.init(state.params))
  state, aux = u.init(state, jax.random.key(3), _spec())
  ds = helpers.tiny_dataset()
  f, r = ds.split("forget"), ds.split("retain")
  batch = {"forget": {"image": f.images[:16].astype(np.float32) / 255.0, "label": f.labels[:16]},
           "retain": {"image": r.images[:16].astype(np.float32) / 255.0, "label": r.labels[:16]}}
  images = np.concatenate([batch["forget"]["image"], batch["retain"]["image"]])
  one = jax.devices()[:1]
  R, S = parallel.REPLICATED, parallel.SHARDED
  step = parallel.data_parallel(
      lambda st, a, b: u.phases(_spec())[0].step(st, a, b, jax.random.key(0), driver.step_info(u)),
      in_specs=(R, R, S), out_specs=(R, R, R), devices=one)
  student = parallel.data_parallel(lambda st, x: common.forward(st, st.params, st.batch_stats, x)[0],
                                   in_specs=(R, S), out_specs=S, devices=one)

  def frozen(model):
    return np.asarray(state.apply_fn({"params": model["params"],
                                      "batch_stats": model["batch_stats"]}, images, train=False))

  # BN running statistics set to this batch's, so the train-mode student starts equal to the
  # eval-mode original: the retain KL starts at 0 and only the forget half has anything to learn.
  converge = parallel.data_parallel(
      lambda st, x: jax.lax.fori_loop(0, 300, lambda _, bs: common.forward(st, st.params, bs, x)[1],
                                      st.batch_stats), in_specs=(R, S), out_specs=R, devices=one)
  stats = parallel.to_host(converge(parallel.replicate(state, one), parallel.shard(images, one)))
  state = state.replace(batch_stats=stats)
  aux = {**aux, "teacher": {"params": state.params, "batch_stats": stats}}
  good, bad = frozen(aux["teacher"]), frozen(aux["bad_teacher"])

  def kls(st):
    s = np.asarray(parallel.to_host(student(parallel.replicate(st, one),
                                            parallel.shard(images, one))), np.float64)
    return _np_kl(bad[:16], s[:16], 1.0).mean(), _np_kl(good[16:], s[16:], 1.0).mean()

  to_bad, to_good = [], []
  for _ in range(6):
    kb, kg = kls(state)
    to_bad.append(kb)
    to_good.append(kg)
    state, aux, _ = parallel.to_host(step(parallel.replicate(state, one), parallel.replicate(aux, one),
                                          parallel.shard(batch, one)))
  assert np.all(np.diff(to_bad) < 0), to_bad
  # Measured: 0.037 → 0.011 with the retain KL at most 0.0025. Selecting the teachers the wrong way
  # round gives 0.037 → 0.026 with the retain KL up to 0.017: both bounds fail.
  assert to_bad[-1] < 0.5 * to_bad[0], to_bad
  assert max(to_good) < 0.1 * to_bad[0], (to_good, to_bad)


def test_a_default_run_moves_forget_outputs_toward_the_bad_teacher(tmp_path):
  ds = helpers.tiny_dataset()
  cfg = fitlib.TrainConfig(epochs=6, batch_size=16, lr=0.05, lr_boundaries=())
  state = fitlib.fit(helpers.tiny_model(), ds.split("train"), cfg, task="multiclass", seed=0,
                     stage_dir=str(tmp_path), progress=False).state
  u = methods.create("bad_teacher")
  assert u.hparams == {"temperature": 1.0, "lr": 1e-4, "epochs": 1, "stream": "paired"}
  run_cfg = methods.RunConfig(batch_size=16, seed=0, log_splits=())
  # The driver's init gets fold_in(key(seed), 0): rebuild the same bad teacher to measure against.
  _, aux = u.init(state, jax.random.fold_in(jax.random.key(run_cfg.seed), 0), _spec())
  bad_state = state.replace(params=aux["bad_teacher"]["params"],
                            batch_stats=aux["bad_teacher"]["batch_stats"])

  def kl_to_bad(s, split):
    out = evaluate.predict(s, ds.split(split), task="multiclass")["logits"]
    ref = evaluate.predict(bad_state, ds.split(split), task="multiclass")["logits"]
    return float(common.kl_div(jnp.asarray(ref), jnp.asarray(out), 1.0, "multiclass").mean())

  res = methods.run_detailed(u, state, ds, run_cfg)
  assert not res.halted and res.history[0]["steps"] == len(ds.split("retain")) // 16
  before, after = kl_to_bad(state, "forget"), kl_to_bad(res.state, "forget")
  assert after < 0.97 * before, (before, after)
  # Retain examples are distilled from the original: they move toward the bad teacher less.
  retain_ratio = kl_to_bad(res.state, "retain") / kl_to_bad(state, "retain")
  assert retain_ratio > after / before, (retain_ratio, after / before)


def test_bad_teacher_is_multiclass_only():
  with pytest.raises(MethodNotApplicable, match="multilabel"):
    methods.run(methods.create("bad_teacher"), helpers.tiny_state(helpers.tiny_model(3)),
                helpers.tiny_dataset("multilabel"))
  with pytest.raises(ValueError, match="stream"):
    methods.create("bad_teacher", stream="forget")
