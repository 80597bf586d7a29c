"""Properties every registered method must have: pure steps traced once, equal on 4 and 1 devices,
each method's own effect on the synthetic data, and a clean stop when the loss explodes."""

import functools

import chex
import jax
import numpy as np
import pytest

from mu_jax import methods, parallel
from mu_jax.data import pipeline
from mu_jax.methods import driver, registry
from mu_jax.training import evaluate, fit as fitlib
from tests import helpers

EXPECTED = {"finetune", "cf_k", "eu_k", "neggrad", "neggrad_plus", "random_labels", "boundary_shrink",
            "boundary_expand", "unsir", "unsir_class", "scrub", "scrub_official", "salun", "l1_sparse",
            "bad_teacher", "ssd"}


def test_registry_lists_every_method():
  assert set(registry.names()) == EXPECTED
  for name in registry.names():
    assert getattr(methods, name) is registry.factory(name)  # the factory, not its module
  for name in registry.names():
    u = methods.create(name)
    assert u.name == name and isinstance(u.hparams, dict)
  with pytest.raises(KeyError, match="unknown method 'scurb'"):
    methods.create("scurb")
  with pytest.raises(TypeError, match="method 'scrub'"):
    methods.create("scrub", temprature=2.0)


@functools.lru_cache(maxsize=None)
def _original():
  ds = helpers.tiny_dataset(size=8)
  cfg = fitlib.TrainConfig(epochs=8, batch_size=16, lr=0.05, lr_boundaries=(6,), augment=False)
  import tempfile
  res = fitlib.fit(helpers.tiny_model(width=8), ds.split("train"), cfg, task="multiclass", seed=0,
                   stage_dir=tempfile.mkdtemp(), progress=False)
  return ds, parallel.to_host(res.state)


def _batch(stream, data, size=8):
  ex = {"forget": data["forget"], "retain": data["retain"]}
  one = lambda e: pipeline.host_batch(e, np.arange(size))
  if stream in ("paired", "zip"):
    return {"forget": one(ex["forget"]), "retain": one(ex["retain"])}
  return one(ex["retain"] if stream in ("retain", "train") else ex["forget"])


def _prepared(name, **hparams):
  ds, original = _original()
  u = methods.create(name, **hparams)
  data = {s: ds.split(s) for s in ("retain", "forget", "test")}
  spec = driver.spec_for(original, data, ds.task)
  state = original.replace(tx=u.optimizer, opt_state=u.optimizer.init(original.params))
  state, aux = u.init(state, jax.random.key(0), spec)
  return u, state, aux, u.phases(spec), data


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_step_is_pure_traced_once_and_equal_on_4_and_1_devices(name):
  # The settings and batch size of the method's short run below: on 4 devices this is the program
  # the driver compiles for that run (the run's compilation cache serves the second of the two).
  settings, expect = _BEHAVIOUR[name]
  u, state, aux, phases, data = _prepared(name, **settings)
  R, S = parallel.REPLICATED, parallel.SHARDED
  # The step that does the forgetting: the first phase fed forget data, else the first phase.
  phase = next((p for p in phases if p.epochs and p.stream in ("paired", "zip", "forget")), phases[0])
  b1 = _batch(phase.stream, data, expect.get("batch_size", 16))
  b2 = jax.tree.map(lambda x: x[::-1].copy(), b1)
  info = driver.step_info(u, progress=0.1)
  results = {}
  for n in (1, 4):
    devs = jax.devices()[:n]
    args = parallel.replicate((state, aux), devs)
    halted = parallel.replicate(np.bool_(False), devs)
    run = lambda b, key: fn(*args, parallel.shard(b, devs), key, info, halted)  # noqa: E731
    if n == 1:
      step = chex.assert_max_traces(phase.step, n=1)
      fn = parallel.data_parallel(driver.guarded(step, phase.augment), in_specs=(R, R, S, R, R, R),
                                  out_specs=(R, R, R, R), devices=devs)
    else:  # the driver's own compiled step: one program, which cannot retrace
      fn, _ = driver._executable(driver._compile_phase(phase.step, phase.augment),  # pylint: disable=protected-access
                                 *args, parallel.shard(b1, devs), jax.random.key(1), info, halted)
    out_a = parallel.to_host(run(b1, jax.random.key(1)))
    out_b = parallel.to_host(run(b1, jax.random.key(1)))
    run(b2, jax.random.key(2))  # same shapes: no retrace
    chex.assert_trees_all_equal(out_a, out_b)  # pure: same inputs, same outputs
    results[n] = out_a
    chex.clear_trace_counter()
  s1, a1, m1, _ = results[1]
  s4, a4, m4, _ = results[4]
  chex.assert_trees_all_close((s1.params, s1.batch_stats, a1, m1), (s4.params, s4.batch_stats, a4, m4),
                              rtol=2e-4, atol=2e-5)


# Each method's own effect on the tiny model, as (settings, expectations). Settings are scaled up
# from the reference defaults, which are tuned for 10,000 images and 134 steps per epoch and barely
# move this model within a short run; entries that differ further say why. Expectations are on the
# changes (after − before) measured in eval mode on the whole split: ``df``/``dr`` the forget/retain
# mean loss, ``gap`` = df − dr (how much more the forget set loses than retain), ``daf``/``dar`` the
# accuracies. A weight perturbation at random (tried by hand: 4–6 seeds × relative scales 0.05–0.5)
# moves forget and retain alike: gap between −0.47 and 0.18, dr ≥ −0.015, and the one draw with gap
# 0.18 costs 0.32 of retain accuracy. Every entry below therefore needs gap ≥ 0.15 with retain
# accuracy down by at most ``dar_min`` (default 0.25), dr ≤ −0.04, or a property a random
# perturbation cannot have. Sign errors tried by hand fail too: NegGrad descending, fine-tuning
# ascending, SCRUB's max-step descending, SSD selecting I_f < α·I_D. The bounds sit at about half
# of the values measured when they were set (in comments).
_BEHAVIOUR = {
    # Fine-tuning on retain: retain loss down (−0.10), forget loss not down as much (gap 0.17).
    # BatchNorm in train mode: the MUFAC default (eval mode, the reference's) at this learning rate
    # breaks the tiny model's fit everywhere (forget and retain loss both up by 1.3).
    "finetune": (dict(lr=0.05, epochs=3, bn_mode="train"), dict(dr_max=-0.04, gap_min=0.08)),
    # Only the last k=2 blocks train (checked bit for bit); retain loss down (−0.08).
    "cf_k": (dict(lr=0.05, epochs=3, k=2), dict(dr_max=-0.04, gap_min=0.04, frozen=("conv1", "bn1", "layer1"))),
    # The last blocks are re-initialised: the forget set loses its fit (df 1.56, gap 0.78).
    "eu_k": (dict(lr=0.05, epochs=3, k=2), dict(df_min=0.8, gap_min=0.4, dar_min=-0.5,
                                                 frozen=("conv1", "bn1", "layer1"))),
    # Gradient ascent on forget (df 0.61, gap 0.44). Batch 8: the reference loop skips pairs that
    # are not full, and at 16 the 24 forget images give one full batch in two.
    "neggrad": (dict(lr=0.01, epochs=2), dict(df_min=0.3, gap_min=0.2, batch_size=8,
                                               dar_min=-0.5)),
    # Descent on retain and ascent on forget together (df 2.22, gap 1.78); batch 8 as NegGrad.
    "neggrad_plus": (dict(lr=0.02, epochs=2), dict(df_min=1.0, gap_min=0.9, dar_min=-0.5,
                                                    batch_size=8)),
    # Forget trained toward wrong labels (df 0.61, gap 0.46).
    "random_labels": (dict(lr=0.02, epochs=2), dict(df_min=0.3, gap_min=0.2)),
    # Forget trained toward the nearest wrong class (gap 0.29, forget accuracy −0.29).
    "boundary_shrink": (dict(lr=0.05, epochs=3), dict(gap_min=0.15, daf_max=-0.1)),
    # Forget trained toward a shadow class that is then pruned (df 0.59, gap 0.31).
    "boundary_expand": (dict(lr=0.1, epochs=3), dict(df_min=0.25, gap_min=0.15)),
    # Noise impair plus retain repair (df 0.57, gap 0.27); batch 8 as NegGrad (the impair stage
    # skips pairs that are not full).
    "unsir": (dict(lr=0.05), dict(df_min=0.25, gap_min=0.15, batch_size=8)),
    # Class-level noise needs a class-level task: the forget set here is every training image of
    # classes 0 and 1 (the identity forget set spans 7 of the 8 classes). One noise epoch and 16
    # noise images per class keep it fast; impair lr 0.01 and repair lr 0.002 (Adam) instead of
    # 0.02 and 0.01, whose first Adam steps wreck the tiny model's retain fit (dr 2.6) (gap 0.36,
    # forget accuracy −0.43). On class-level splits a random perturbation can look alike (it hits
    # some classes harder), so the noise phase must also have raised its classes' CE (its history).
    "unsir_class": (dict(impair_lr=0.01, repair_lr=0.002, noise_epochs=1, noise_batch=16),
                    dict(gap_min=0.15, daf_max=-0.2, dar_min=-0.5, class_level=(0, 1),
                         noise_ce_rise_min=0.05)),
    # Min-max distillation. Batch 8: with 16 the 24 forget images give one max-step per epoch and
    # the run is fine-tuning in all but name (the max-step's sign flipped still passes gap 0.2);
    # with 8, gap 0.72 against 0.09 flipped.
    # The retain pass keeps its last partial batch (the reference's loader): retain accuracy falls
    # by up to 0.4 at this learning rate while the gap is far above any random draw's.
    "scrub": (dict(lr=0.05, epochs=3), dict(gap_min=0.35, batch_size=8, dar_min=-0.5)),
    # The forget outputs leave the original's: KL(original ‖ unlearned) on forget is 4.1 times that
    # on retain (2.0 with the max-step's sign flipped, about 1 for fine-tuning); gap 0.37.
    "scrub_official": (dict(lr=5e-3), dict(gap_min=0.18, kl_ratio_min=3.0)),
    # Random labels through the saliency mask (gap 0.33).
    "salun": (dict(lr=0.02, epochs=2), dict(gap_min=0.16)),
    # Fine-tuning with an l1 penalty: the l1 norm falls (to 0.87 of the original's) and the forget
    # set loses most (gap 0.61). α = 5e-3: the default 5e-4 does not outweigh the CE gradients of
    # the tiny model in three epochs (the norm rises by 2%).
    "l1_sparse": (dict(lr=0.05, epochs=3, alpha=5e-3), dict(gap_min=0.3, l1_ratio_max=0.93)),
    # Distillation from the incompetent teacher on forget (gap 0.26; lr 2e-3: 1e-4 does not move
    # the tiny model in one epoch).
    "bad_teacher": (dict(lr=2e-3), dict(gap_min=0.15)),
    # Dampening only: every weight is scaled by a factor in [0, 1] (checked per weight); selection
    # weighting α = 2 and λ = 0.5 instead of 10 and 1, so that the forget set's few gradients select
    # weights at all on this model (gap 0.38). The gap bound is above half here: with the selection
    # inverted (I_f < α·I_D) the gap is 0.27.
    "ssd": (dict(alpha=2.0, lambda_=0.5), dict(gap_min=0.3, dar_min=-0.5, dampen_only=True)),
}


def _l1(params):
  return sum(np.abs(np.asarray(x, np.float64)).sum() for x in jax.tree.leaves(params))


def _mean_kl(teacher_state, student_state, examples):
  """Mean KL(softmax(teacher) ‖ softmax(student)) in numpy, eval mode."""
  def log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))
  t, s = (log_softmax(evaluate.predict(st, examples, task="multiclass")["logits"])
          for st in (teacher_state, student_state))
  return float(np.mean(np.sum(np.exp(t) * (t - s), -1)))


def _class_level(ds, classes):
  """Splits for class unlearning: forget = every training image of ``classes``, retain = the rest."""
  train = ds.split("train")
  is_forget = np.isin(train.labels, classes)
  return {"forget": train.subset(np.nonzero(is_forget)[0]),
          "retain": train.subset(np.nonzero(~is_forget)[0]), "test": ds.split("test")}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_short_run_has_the_methods_own_effect(name):
  ds, original = _original()
  settings, expect = _BEHAVIOUR[name]
  data = (_class_level(ds, expect["class_level"]) if "class_level" in expect else
          {s: ds.split(s) for s in ("forget", "retain", "test")})
  before = {s: evaluate.summarize(evaluate.predict(original, data[s], task=ds.task), ds.task)
            for s in ("forget", "retain")}
  res = methods.run_detailed(methods.create(name, **settings), original, data,
                             methods.RunConfig(batch_size=expect.get("batch_size", 16), task=ds.task,
                                               log_splits=("forget", "retain")))
  assert not res.halted, res.message
  after = res.history[-1]
  d = {"df": after["forget_loss"] - before["forget"]["loss"],
       "dr": after["retain_loss"] - before["retain"]["loss"],
       "daf": after["forget_accuracy"] - before["forget"]["accuracy"],
       "dar": after["retain_accuracy"] - before["retain"]["accuracy"]}
  d["gap"] = d["df"] - d["dr"]
  for key in ("df", "gap"):
    if f"{key}_min" in expect:
      assert d[key] >= expect[f"{key}_min"], (name, key, d)
  for key in ("dr", "daf"):
    if f"{key}_max" in expect:
      assert d[key] <= expect[f"{key}_max"], (name, key, d)
  assert d["dar"] >= expect.get("dar_min", -0.25), (name, "dar", d)
  if "noise_ce_rise_min" in expect:
    noise = [row for row in res.history if row["phase"] == "noise"]
    assert noise and (noise[0]["train_noise_ce_end"] - noise[0]["train_noise_ce_start"]
                      >= expect["noise_ce_rise_min"]), noise
  new, old = res.state.params, original.params
  for block in expect.get("frozen", ()):
    chex.assert_trees_all_equal(new[block], old[block])
  if "l1_ratio_max" in expect:
    assert _l1(new) <= expect["l1_ratio_max"] * _l1(old), (_l1(new), _l1(old))
  if "kl_ratio_min" in expect:
    kl_f, kl_r = (_mean_kl(original, res.state, data[k]) for k in ("forget", "retain"))
    assert kl_f >= expect["kl_ratio_min"] * kl_r, (name, kl_f, kl_r)
  if expect.get("dampen_only"):
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)):
      a, b = np.asarray(a), np.asarray(b)
      assert np.all(a * b >= 0) and np.all(np.abs(a) <= np.abs(b)), name
    assert any(np.any(np.asarray(a) != np.asarray(b))
               for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)))


def test_exploding_loss_stops_with_the_last_finite_state(tmp_path):
  ds, original = _original()
  res = methods.run_detailed(methods.create("neggrad", lr=1e6, epochs=10, stream="forget"), original, ds,
                             methods.RunConfig(batch_size=16, checkpoint_dir=str(tmp_path)))
  assert res.halted and "non-finite" in res.message
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(res.state.params))
  assert res.history[-1]["halted"] and len(res.history) < 10
  # Running the same command again does not resume past the divergence.
  again = methods.run_detailed(methods.create("neggrad", lr=1e6, epochs=10, stream="forget"), original, ds,
                               methods.RunConfig(batch_size=16, checkpoint_dir=str(tmp_path)))
  assert again.halted and again.history == []
  chex.assert_trees_all_equal(again.state.params, res.state.params)


def test_interrupted_method_resumes_to_identical_parameters(tmp_path, monkeypatch):
  ds, original = _original()
  u = methods.create("scrub", lr=0.02, epochs=2)
  cfg = lambda d: methods.RunConfig(batch_size=16, checkpoint_dir=str(d), log_splits=())
  full = methods.run_detailed(u, original, ds, cfg(tmp_path / "full"))

  class Stop(Exception):
    pass

  calls = {"n": 0}
  real_save = driver.checkpoints.Checkpointer.save

  def save_then_stop(self, step, tree, force=True):
    real_save(self, step, tree, force)
    calls["n"] += 1
    if calls["n"] == 2:
      raise Stop()

  # Interrupt right after the second epoch's checkpoint is on disk, as a kill there would.
  monkeypatch.setattr(driver.checkpoints.Checkpointer, "save", save_then_stop)
  with pytest.raises(Stop):
    methods.run_detailed(u, original, ds, cfg(tmp_path / "cut"))
  monkeypatch.setattr(driver.checkpoints.Checkpointer, "save", real_save)
  resumed = methods.run_detailed(u, original, ds, cfg(tmp_path / "cut"))
  assert len(resumed.history) == len(full.history) - 2
  chex.assert_trees_all_equal(resumed.state.params, full.state.params)


def test_learning_rates_and_methods_of_one_step_kind_share_one_compiled_step():
  """Two learning rates of fine-tuning, two temperatures of SCRUB, CF-k and EU-k: each second run
  compiles nothing, yet its hyperparameters act (the models differ)."""
  ds = helpers.tiny_dataset(size=8)
  original = parallel.to_host(helpers.tiny_state(size=8))
  cfg = methods.RunConfig(batch_size=16, log_splits=())

  def run(unlearner):
    before = driver.compiled_steps()
    res = methods.run_detailed(unlearner, original, ds, cfg)
    return res.state.params, driver.compiled_steps() - before

  for first, second in [(methods.finetune(lr=0.01, epochs=1), methods.finetune(lr=0.2, epochs=1)),
                        (methods.scrub(temperature=4.0, epochs=1),
                         methods.scrub(temperature=1.5, epochs=1)),
                        (methods.cf_k(k=1, epochs=1), methods.eu_k(k=1, epochs=1))]:
    params_a, _ = run(first)
    params_b, compiled = run(second)
    assert compiled == 0, (second.name, compiled)
    gap = max(float(np.abs(a - b).max())
              for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)))
    assert gap > 1e-6, (first.name, second.name)


def test_augmentation_is_one_program_shared_by_every_step_and_changes_no_value():
  """The compiled phases run the augmentation as its own program (parallel.Prepared): a single
  stream and both halves of a pair go through one executable per batch shape, and the two programs
  give what the one-program step (augmentation inside) gives."""
  from mu_jax.training import steps  # pylint: disable=import-outside-toplevel
  prepare = steps.compiled_prepare(True)
  before = prepare._cache_size()  # pylint: disable=protected-access
  R, S = parallel.REPLICATED, parallel.SHARDED
  for name in ("finetune", "random_labels"):  # a single stream; a pair (forget and retain halves)
    u, state, aux, phases, data = _prepared(name, **_BEHAVIOUR[name][0])
    phase = phases[0]
    assert phase.augment
    batch = _batch(phase.stream, data, 16)
    args = (*parallel.replicate((state, aux)), parallel.shard(batch), jax.random.key(3),
            driver.step_info(u, progress=0.2), parallel.replicate(np.bool_(False)))
    one = parallel.data_parallel(driver.guarded(phase.step, True), in_specs=(R, R, S, R, R, R),
                                 out_specs=(R, R, R, R))
    two = driver._compile_phase(phase.step, True)  # pylint: disable=protected-access
    assert isinstance(two, parallel.Prepared)
    chex.assert_trees_all_close(parallel.to_host(two.lower(*args).compile()(*args)),
                                parallel.to_host(one(*args)), rtol=1e-6, atol=1e-7)
  # Both methods' batches (16 rows of the tiny images) ran through one augmentation executable (made
  # here, or by an earlier test of this process).
  assert prepare._cache_size() - before <= 1  # pylint: disable=protected-access
