"""UNSIR (reference instance-level and official class-level) and SCRUB (reference and official)."""

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mu_jax import methods, parallel
from mu_jax.methods import common, driver
from mu_jax.methods.base import MethodNotApplicable, Spec
from mu_jax.training import evaluate
from tests import helpers

# mu_jax.methods binds each factory over its module's name; the modules come from importlib.
scrub_lib, unsir_lib = (importlib.import_module(f"mu_jax.methods.{m}") for m in ("scrub", "unsir"))

R, S = parallel.REPLICATED, parallel.SHARDED


def _spec(task="multiclass", num_classes=8):
  return Spec(model=helpers.tiny_model(num_classes), task=task, num_classes=num_classes,
              image_shape=(16, 16, 3))


def _float(images):
  return jnp.asarray(images, jnp.float32) / 255.0


def _np_log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_ce(logits, labels):
  """Mean cross-entropy, written out in numpy."""
  return float(-np.mean(np.take_along_axis(_np_log_softmax(logits), np.asarray(labels)[:, None], 1)))


def _np_bce(logits, labels):
  """Mean over examples and attributes of BCE-with-logits (torch's stable form), in numpy."""
  z, y = np.asarray(logits, np.float64), np.asarray(labels, np.float64)
  return float(np.mean(np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))))


def _np_kl_t2(teacher_logits, student_logits, temperature):
  """Mean KL(softmax(t/T) ‖ softmax(s/T)) · T², in numpy."""
  t = _np_log_softmax(np.asarray(teacher_logits, np.float64) / temperature)
  s = _np_log_softmax(np.asarray(student_logits, np.float64) / temperature)
  return float(np.mean(np.sum(np.exp(t) * (t - s), -1)) * temperature**2)


def _kl_on(state, teacher_state, examples):
  """Mean eval-mode KL(teacher ‖ state) (T=1) over ``examples``."""
  s = evaluate.predict(state, examples, task="multiclass")["logits"]
  t = evaluate.predict(teacher_state, examples, task="multiclass")["logits"]
  return float(common.kl_div(jnp.asarray(t), jnp.asarray(s), 1.0, "multiclass").mean())


# ---------------------------------------------------------------- UNSIR, instance-level


def test_instance_noise_is_clamped_and_pushes_the_logits_away():
  state = helpers.tiny_state()
  x = _float(helpers.tiny_dataset().split("forget").images[:16])
  # Train mode: the path where each device's noise gradient goes through synchronised BN.
  fn = parallel.data_parallel(lambda s, x, r: unsir_lib.instance_noise(s, x, r, train=True),
                              in_specs=(R, S, R), out_specs=(S, R))
  noise, mse = parallel.to_host(fn(parallel.replicate(state), parallel.shard(x), jax.random.key(7)))
  assert noise.shape == x.shape and noise.min() >= 0.0 and noise.max() <= 1.0
  assert 0 < (noise == 0).mean() < 1 and 0 < (noise == 1).mean() < 1  # randn start, clamped
  # Five Adam steps on -MSE: the distance to the (fixed) forget logits grows at every step.
  assert mse.shape == (6,) and np.all(np.diff(mse) > 0), mse


def test_noise_takes_the_retain_label_at_its_global_position():
  labels = np.arange(16, dtype=np.int32) * 3
  for devices in (jax.devices(), jax.devices()[:1]):
    fn = parallel.data_parallel(lambda y: unsir_lib._labels_at_global_rows(y, y.shape[0] // 2),
                                in_specs=(S,), out_specs=S, devices=devices)
    np.testing.assert_array_equal(np.asarray(fn(parallel.shard(labels, devices))), labels[:8])


def test_unsir_phases_and_multilabel_impair_step():
  u = methods.create("unsir")
  assert u.hparams == {"noise_steps": 5, "noise_lr": 0.01, "lr": 1e-3, "impair_epochs": 2,
                       "repair_epochs": 1, "train_mode": False, "bn_mode": "eval"}
  assert methods.create("unsir", bn_mode="train").hparams["train_mode"] is True
  with pytest.raises(ValueError, match="contradicts"):
    methods.create("unsir", train_mode=True, bn_mode="eval")
  spec = _spec("multilabel", 3)
  phases = u.phases(spec)
  # The impair pairs skip partial batches; the repair keeps the last one, as the reference's loaders.
  assert [(p.name, p.stream, p.epochs, p.partial) for p in phases] == [
      ("impair", "zip", 2, "drop"), ("repair", "retain", 1, "keep")]
  ds = helpers.tiny_dataset("multilabel")
  f, r = ds.split("forget"), ds.split("retain")
  batch = {"forget": {"image": _float(f.images[:8]), "label": f.labels[:8]},
           "retain": {"image": _float(r.images[:8]), "label": r.labels[:8]}}
  state = helpers.tiny_state(helpers.tiny_model(3))
  fn = parallel.data_parallel(lambda s, b, k: phases[0].step(s, {}, b, k, driver.step_info(u)),
                              in_specs=(R, S, R), out_specs=(R, R, R))
  new, _, m = parallel.to_host(fn(parallel.replicate(state), parallel.shard(batch),
                                  jax.random.key(0)))
  assert np.isfinite(m["loss"]) and m["noise_mse_end"] > m["noise_mse_start"]
  # BCE on noise and retain, both labelled with the retain attributes, at the pre-step weights and
  # in eval mode: recomputed here in numpy from the model's logits, with the noise that the (tested)
  # instance_noise draws from the step's key.
  noise_fn = parallel.data_parallel(lambda s, x, k: unsir_lib.instance_noise(s, x, k)[0],
                                    in_specs=(R, S, R), out_specs=S)
  noise = parallel.to_host(noise_fn(parallel.replicate(state), parallel.shard(batch["forget"]["image"]),
                                    jax.random.key(0)))
  eval_logits = lambda x: np.asarray(state.apply_fn(
      {"params": state.params, "batch_stats": state.batch_stats}, x, train=False))
  y_r = batch["retain"]["label"]
  want_noise, want_retain = _np_bce(eval_logits(noise), y_r), _np_bce(eval_logits(batch["retain"]["image"]), y_r)
  np.testing.assert_allclose(m["retain_loss"], want_retain, rtol=1e-5)
  np.testing.assert_allclose(m["noise_loss"], want_noise, rtol=1e-5)
  np.testing.assert_allclose(m["loss"], want_noise + want_retain, rtol=1e-5)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), new.params, state.params)
  assert max(jax.tree.leaves(moved)) > 0
  # Eval mode (the reference's): running statistics are untouched.
  chex.assert_trees_all_equal(new.batch_stats, state.batch_stats)


# ---------------------------------------------------------------- UNSIR, official class-level


def test_class_noise_raises_the_ce_of_its_class_only_for_forget_classes():
  state = helpers.tiny_state()
  mask = jnp.zeros(8).at[jnp.array([2, 5])].set(1.0)
  fn = parallel.data_parallel(
      lambda s, m, k: unsir_lib.class_noise(s, m, k, noise_batch=8, image_shape=(16, 16, 3)),
      in_specs=(R, R, R), out_specs=(R, R))
  noise, m = parallel.to_host(fn(parallel.replicate(state), mask, jax.random.key(1)))
  assert noise.shape == (8, 8, 16, 16, 3)
  assert np.all(noise[[0, 1, 3, 4, 6, 7]] == 0) and np.abs(noise[[2, 5]]).max() > 0
  # 40 Adam steps on -CE + 0.1·‖N‖²: the CE of the noise's own class goes up.
  assert m["noise_ce_end"] > m["noise_ce_start"] + 0.05, m


def test_noise_rows_cycle_through_the_forget_classes():
  noise = jnp.arange(4 * 2, dtype=jnp.float32).reshape(4, 2, 1, 1, 1)  # value = 2 * class + row
  aux = {"noise": noise, "forget_classes": jnp.array([0.0, 1.0, 0.0, 1.0])}
  fn = parallel.data_parallel(lambda a: unsir_lib.noise_rows(a, 2, jnp.int32(0)),
                              in_specs=(R,), out_specs=(S, S))
  x, y = parallel.to_host(fn(aux))
  np.testing.assert_array_equal(y, [1, 3, 1, 3, 1, 3, 1, 3])
  np.testing.assert_array_equal(x.ravel(), [2, 6, 3, 7, 2, 6, 3, 7])


def test_unsir_class_phases_and_task():
  u = methods.create("unsir_class")
  assert [(p.name, p.stream, p.max_steps, p.partial) for p in u.phases(_spec())] == [
      ("classes", "forget", None, "keep"), ("noise", "forget", 1, "drop"),
      ("impair", "retain", None, "drop"), ("repair", "retain", None, "keep")]
  ds = helpers.tiny_dataset("multilabel")
  with pytest.raises(MethodNotApplicable, match="multilabel"):
    methods.run(u, helpers.tiny_state(helpers.tiny_model(3)), ds)


# ---------------------------------------------------------------- SCRUB


def _converged_bn(state, images, iters=300):
  """Runs train-mode passes until every running statistic equals this batch's statistic."""

  def fn(s, x):
    def body(_, stats):
      return common.forward(s, s.params, stats, x, train=True)[1]
    return jax.lax.fori_loop(0, iters, body, s.batch_stats)

  stats = parallel.data_parallel(fn, in_specs=(R, S), out_specs=R)(parallel.replicate(state),
                                                                    parallel.shard(images))
  return state.replace(batch_stats=parallel.to_host(stats))


def test_scrub_kl_is_zero_on_the_first_step_and_the_forget_pass_raises_it():
  ds = helpers.tiny_dataset()
  tr, forget = ds.split("retain"), ds.split("forget")
  x = _float(tr.images[:16])
  # Student == teacher, and BN running statistics == this batch's: the train-mode student and the
  # eval-mode teacher then give the same logits, so KL must vanish (CE alone remains).
  state = _converged_bn(helpers.tiny_state(), x)
  state, aux = scrub_lib.teacher_init(state, None, None)
  spec = _spec()
  min_phase, max_phase = methods.create("scrub").phases(spec)[:2]
  assert (min_phase.name, max_phase.name) == ("min_retain", "max_forget")
  step_min = parallel.data_parallel(min_phase.step, in_specs=(R, R, S, R, R), out_specs=(R, R, R))
  _, _, m = step_min(parallel.replicate(state), parallel.replicate(aux),
                     parallel.shard({"image": x, "label": tr.labels[:16]}), jax.random.key(0),
                     driver.step_info(methods.create("scrub")))
  assert abs(float(m["kl"])) < 1e-5, m
  # CE + KL with KL = 0: the loss is the CE of the (equal) logits, written out in numpy.
  logits = np.asarray(state.apply_fn({"params": state.params, "batch_stats": state.batch_stats}, x,
                                     train=False))
  np.testing.assert_allclose(m["loss"], _np_ce(logits, tr.labels[:16]), rtol=1e-5)

  # A forget pass (-KL) moves the student away from the teacher on the forget set.
  teacher = state
  before = _kl_on(state, teacher, forget)
  step_max = parallel.data_parallel(max_phase.step, in_specs=(R, R, S, R, R), out_specs=(R, R, R))
  s = parallel.replicate(state)
  b = 8 * (len(forget) // 8)
  forget_batch = parallel.shard({"image": _float(forget.images[:b]), "label": forget.labels[:b]})
  # The student's train-mode forget logits (BN statistics of the forget batch, synchronised over
  # the devices) against the eval-mode teacher: the max-step loss is −KL·T² (T = 4), here in numpy.
  train_logits = parallel.data_parallel(
      lambda st, xb: common.forward(st, st.params, st.batch_stats, xb)[0], in_specs=(R, S),
      out_specs=S)
  teacher_forget = np.asarray(teacher.apply_fn(
      {"params": teacher.params, "batch_stats": teacher.batch_stats},
      _float(forget.images[:b]), train=False))
  for i in range(3):
    student_forget = parallel.to_host(train_logits(s, forget_batch["image"]))
    want = -_np_kl_t2(teacher_forget, student_forget, 4.0)
    s, _, m = step_max(s, parallel.replicate(aux), forget_batch, jax.random.key(i),
                       driver.step_info(methods.create("scrub")))
    np.testing.assert_allclose(m["loss"], want, rtol=1e-3, atol=1e-6)
  after = _kl_on(parallel.to_host(s), teacher, forget)
  assert before < 1e-6 and after > before + 1e-4, (before, after)


def test_scrub_phases_alternate_and_multilabel_runs_the_retain_pass_only():
  u = methods.create("scrub")
  assert u.hparams == {"temperature": 4.0, "lr": 1e-3, "epochs": 2, "bn_mode": "train"}
  assert [p.name for p in u.phases(_spec())] == ["min_retain", "max_forget"] * 2
  assert {p.partial for p in u.phases(_spec())} == {"keep"}  # both passes see every example
  assert [(p.name, p.epochs) for p in u.phases(_spec("multilabel", 3))] == [("min_retain", 2)]
  assert "multilabel" in u.tasks


def test_scrub_official_runs_max_steps_only_in_the_first_msteps_epochs():
  u = methods.create("scrub_official")
  names = [p.name for p in u.phases(_spec())]
  assert names == ["max_forget", "min_retain"] * 3 + ["min_retain"] * 7
  u = methods.scrub_official(msteps=1, epochs=3)
  assert [p.name for p in u.phases(_spec())] == ["max_forget"] + ["min_retain"] * 3
  with pytest.raises(MethodNotApplicable):
    u.check_task("multilabel")
  with pytest.raises(ValueError, match="beta"):
    methods.scrub_official(beta=0.5)


def test_lr_factor_is_the_official_schedule():
  got = [float(scrub_lib.lr_factor(jnp.int32(e), (5, 8, 9), 0.1)) for e in range(1, 11)]
  np.testing.assert_allclose(got, [1] * 5 + [0.1] * 3 + [0.01, 0.001], rtol=1e-6)


def test_scrub_official_steps_follow_the_lr_decay():
  ds = helpers.tiny_dataset()
  tr = ds.split("retain")
  batch = parallel.shard({"image": _float(tr.images[:16]), "label": tr.labels[:16]})
  u = methods.create("scrub_official")
  state = helpers.tiny_state()
  state = state.replace(tx=u.optimizer, opt_state=u.optimizer.init(state.params))
  state, aux = u.init(state, None, _spec())
  assert int(aux["epoch"]) == 1
  min_phase = u.phases(_spec())[1]
  step = parallel.data_parallel(min_phase.step, in_specs=(R, R, S, R, R), out_specs=(R, R, R))
  deltas, lrs = {}, {}
  for epoch in (1, 6, 10):
    at_epoch = parallel.replicate({**aux, "epoch": jnp.int32(epoch)})
    s, _, m = step(parallel.replicate(state), at_epoch, batch, jax.random.key(0),
                   driver.step_info(u))
    s = parallel.to_host(s)
    lrs[epoch] = float(m["lr"])
    assert float(s.opt_state.hyperparams["learning_rate"]) == pytest.approx(lrs[epoch])
    deltas[epoch] = s.params["fc"]["Dense_0"]["kernel"] - state.params["fc"]["Dense_0"]["kernel"]
  assert lrs == pytest.approx({1: 5e-4, 6: 5e-5, 10: 5e-7})
  # Adam's first update is lr · m̂/(√v̂+ε): the same direction, scaled by the scheduled rate.
  # (5e-7 steps on weights of ~0.1 are resolved by float32 to ~1.5%.)
  np.testing.assert_allclose(deltas[6] * 10, deltas[1], rtol=2e-3)
  np.testing.assert_allclose(deltas[10] * 1000, deltas[1], rtol=3e-2)
  # The epoch counter advances after each min pass (the phase's `after`).
  _, aux2 = jax.jit(min_phase.after)(state, aux, driver.step_info(u))
  assert int(aux2["epoch"]) == 2
