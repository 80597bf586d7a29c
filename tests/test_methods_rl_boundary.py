"""Random labels, Boundary Shrink and Boundary Expanding: the properties specific to each rule."""

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from mu_jax import methods, parallel
from mu_jax.data import pipeline
from mu_jax.methods import boundary
from tests import helpers

# mu_jax.methods binds each factory over its module's name; the module comes from importlib.
random_labels = importlib.import_module("mu_jax.methods.random_labels")

R, S = parallel.REPLICATED, parallel.SHARDED
NO_LOGS = methods.RunConfig(batch_size=16, log_splits=())


def _forget_batch(n=16):
  f = helpers.tiny_dataset().split("forget")
  return {"image": np.asarray(pipeline.to_float(f.images[:n])), "label": f.labels[:n]}


def _variables(state):
  return {"params": state.params, "batch_stats": state.batch_stats}


# Jitted once here: run eagerly, each primitive would be compiled on its own.
_relabel = jax.jit(random_labels.relabel, static_argnums=(3, 4))
_fgsm = jax.jit(boundary.fgsm, static_argnums=(0, 4))
_shrink_labels = jax.jit(boundary.shrink_labels, static_argnums=(4,))


def _logits(state, variables, images):
  return jax.jit(lambda v, x: state.apply_fn(v, x, train=False))(variables, images)


# ----- random labels -----

def test_random_labels_are_never_the_true_label_and_cover_the_wrong_classes():
  labels = jnp.asarray(np.random.default_rng(0).integers(0, 8, 4000), jnp.int32)
  new = _relabel(jax.random.key(0), labels, jnp.arange(4000), 8, "multiclass")
  assert new.dtype == labels.dtype
  assert not np.any(np.asarray(new) == np.asarray(labels))
  shift = np.bincount(np.asarray((new - labels) % 8), minlength=8) / 4000
  assert shift[0] == 0
  np.testing.assert_allclose(shift[1:], 1 / 7, atol=0.03)  # uniform over the 7 wrong classes


def test_random_labels_depend_on_the_global_position_not_the_device_shard():
  labels = jnp.zeros(16, jnp.int32)
  whole = _relabel(jax.random.key(1), labels, jnp.arange(16), 8, "multiclass")
  # Device 2 of 4 sees positions 8..11: it must draw what one device draws there.
  part = _relabel(jax.random.key(1), labels[8:12], jnp.arange(8, 12), 8, "multiclass")
  np.testing.assert_array_equal(whole[8:12], part)


def test_random_labels_multilabel_are_fair_coins():
  labels = jnp.ones((2000, 3), jnp.int32)
  new = np.asarray(_relabel(jax.random.key(2), labels, jnp.arange(2000), 3, "multilabel"))
  assert new.shape == (2000, 3) and set(np.unique(new)) <= {0, 1}
  np.testing.assert_allclose(new.mean(0), 0.5, atol=0.05)


def test_random_labels_runs_on_multilabel(multilabel_state):
  ds = helpers.tiny_dataset("multilabel")
  state = multilabel_state
  r = methods.run_detailed(methods.create("random_labels", epochs=1, lr=0.05), state, ds, NO_LOGS)
  assert not r.halted and np.isfinite(r.history[-1]["train_loss"])
  kernel = lambda s: s.params["fc"]["Dense_0"]["kernel"]
  assert not np.allclose(kernel(r.state), kernel(state))


# ----- Boundary Shrink -----

def test_nearest_wrong_label_on_fixed_logits():
  logits = jnp.array([[5.0, 1.0, 0.0], [0.0, 3.0, 2.0], [0.0, 3.0, 2.0]])
  # Row 0 and 1: argmax is the true label, so the best other class; row 2: argmax is already wrong.
  got = boundary.nearest_wrong_label(logits, jnp.array([0, 1, 2]))
  np.testing.assert_array_equal(got, [1, 2, 1])


def test_fgsm_stays_within_the_bound_and_the_unit_interval(original):
  batch = _forget_batch()
  x = batch["image"]
  x_adv = np.asarray(_fgsm(original.apply_fn, _variables(original), x, batch["label"], 0.1))
  assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
  assert np.abs(x_adv - x).max() <= 0.1 + 0.5 / 255 + 1e-6
  np.testing.assert_allclose(x_adv * 255, np.round(x_adv * 255), atol=1e-3)  # on the /255 grid
  assert np.abs(x_adv - x).mean() > 0.05  # a real step, not a no-op

  def ce(images):
    logits = _logits(original, _variables(original), images)
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean())

  assert ce(x_adv) > ce(x)  # an ascent step on the original model's loss


def test_shrink_labels_are_wrong_and_follow_the_adversarial_prediction(original):
  batch = _forget_batch()
  y = batch["label"]
  got = np.asarray(_shrink_labels(original, _variables(original), batch["image"], y, 0.1))
  assert not np.any(got == y)
  x_adv = _fgsm(original.apply_fn, _variables(original), batch["image"], y, 0.1)
  pred = np.asarray(jnp.argmax(_logits(original, _variables(original), x_adv), -1))
  moved = pred != y
  np.testing.assert_array_equal(got[moved], pred[moved])


def test_boundary_shrink_keeps_the_original_model_in_aux(original):
  unl = methods.create("boundary_shrink")
  spec = methods.Spec(model=helpers.tiny_model(), task="multiclass", num_classes=8,
                      image_shape=(16, 16, 3))
  state, aux = unl.init(original, jax.random.key(0), spec)
  chex.assert_trees_all_equal(aux, _variables(original))
  assert unl.hparams["bound"] == 0.1 and unl.tasks == ("multiclass",)


@pytest.mark.parametrize("name", ["boundary_shrink", "boundary_expand"])
def test_boundary_methods_are_multiclass_only(name, multilabel_state):
  with pytest.raises(methods.MethodNotApplicable, match=name):
    methods.run(methods.create(name), multilabel_state, helpers.tiny_dataset("multilabel"), NO_LOGS)


# ----- Boundary Expanding -----

def _expand_setup(original, lr):
  unl = methods.create("boundary_expand", lr=lr)
  state = original.replace(tx=unl.optimizer, opt_state=unl.optimizer.init(original.params))
  spec = methods.Spec(model=helpers.tiny_model(), task="multiclass", num_classes=8,
                      image_shape=(16, 16, 3))
  state, aux = unl.init(state, jax.random.key(5), spec)
  return unl, spec, state, aux


def test_boundary_expand_step_equals_joint_training_of_a_c_plus_1_head(original):
  lr = 0.1
  unl, spec, state, aux = _expand_setup(original, lr)
  assert aux["kernel"].shape == (original.params["fc"]["Dense_0"]["kernel"].shape[0], 1)
  batch = _forget_batch()
  step = unl.phases(spec)[0].step
  run = parallel.data_parallel(step, in_specs=(R, R, S, R, R), out_specs=(R, R, R))
  info = methods.driver.step_info(unl)
  new_state, new_aux, metrics = run(state, aux, batch, jax.random.key(0), info)

  # Reference: one SGD step on the (C+1)-way head as a single differentiable model.
  def reference(params, shadow, batch):
    def loss(p, s):
      (logits, pooled), upd = state.apply_fn({"params": p, "batch_stats": state.batch_stats},
                                             batch["image"], train=True, features=True,
                                             mutable=["batch_stats"])
      full = jnp.concatenate([logits, pooled @ s["kernel"] + s["bias"]], -1)
      target = jnp.full(full.shape[:1], 8)
      return optax.softmax_cross_entropy_with_integer_labels(full, target).mean()

    grads = lax.pmean(jax.grad(loss, argnums=(0, 1))(params, shadow), parallel.AXIS)
    return jax.tree.map(lambda x, g: x - lr * g, (params, shadow), grads)

  ref = parallel.data_parallel(reference, in_specs=(R, R, S), out_specs=R)
  ref_params, ref_shadow = ref(state.params, aux, batch)
  chex.assert_trees_all_close(parallel.to_host(new_state.params), parallel.to_host(ref_params),
                              rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(parallel.to_host(new_aux), parallel.to_host(ref_shadow),
                              rtol=1e-5, atol=1e-6)
  assert "shadow_grad" not in metrics and np.isfinite(float(metrics["loss"]))


def test_boundary_expand_ends_with_c_outputs_and_the_trained_head(original):
  r = methods.run_detailed(methods.create("boundary_expand", epochs=2, lr=0.5), original,
                           helpers.tiny_dataset(), NO_LOGS)
  fc, fc0 = r.state.params["fc"]["Dense_0"], original.params["fc"]["Dense_0"]
  assert fc["kernel"].shape == fc0["kernel"].shape and fc["bias"].shape == (8,)
  # The C original columns are what training made them (moved, and not reset by the pruning).
  assert not np.allclose(fc["kernel"], fc0["kernel"])
  # Training to the shadow class pushes the forget logits of the real classes down.
  f = helpers.tiny_dataset().split("forget")
  x = pipeline.to_float(f.images)
  before = _logits(original, _variables(original), x)
  after = _logits(r.state, _variables(r.state), x)
  assert after.shape == before.shape
  assert float(jax.nn.logsumexp(after, -1).mean()) < float(jax.nn.logsumexp(before, -1).mean())
