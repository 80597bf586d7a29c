"""Populations trained as one program: equal to separate fit runs, masks, meshes, resume."""

from __future__ import annotations

import json
import os

import chex
import jax
import numpy as np
import optax
import pytest

from mu_jax import checkpoints, parallel
from mu_jax.training import evaluate
from mu_jax.training import fit as fitlib
from mu_jax.training import population as pop
from mu_jax.training.state import step_schedule
from tests import helpers
from tests.helpers import lax_convolutions  # noqa: F401  (fixture)

# Stacked and separate runs differ only in float32 summation order (XLA runs the vmapped
# convolutions as grouped ones, BatchNorm means over another device split); a few SGD steps of a
# tiny model keep that at ~1e-7 (measured), far below the 1e-2-scale changes one step makes.
ATOL = 2e-5
CFG = fitlib.TrainConfig(epochs=2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=1e-3,
                         lr_boundaries=(1,), lr_decay=0.1)
SEEDS = (3, 5, 7)
LRS = (0.02, 0.05, 0.05)


@pytest.fixture(scope="module")
def data():
  ds = helpers.tiny_dataset(size=8)
  return ds.split("train"), ds.split("test")


@pytest.fixture(scope="module")
def masks(data):
  train, _ = data
  m = (np.random.default_rng(0).random((3, len(train))) < 0.6).astype(np.int8)
  m[2] = 1  # one member on everything: unequal step counts per epoch across members
  return m


@pytest.fixture(scope="module")
def model():
  return helpers.tiny_model()


@pytest.fixture(scope="module")
def reference(data, masks, model, tmp_path_factory):
  """Three members, unequal subsets and learning rates, trained uninterrupted."""
  train, test = data
  return pop.train_population(model, train, CFG, task="multiclass", seeds=SEEDS, masks=masks,
                              lrs=LRS, stage_dir=str(tmp_path_factory.mktemp("ref")),
                              eval_sets={"test": test}, progress=False)


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_stacked_equals_separate_fit_runs(data, masks, model, reference, tmp_path):
  train, test = data
  outputs = pop.evaluate_population(model, reference.states, test, task="multiclass",
                                    batch_size=32)
  assert outputs["logits"].shape == (3, len(test), 8) and outputs["loss"].shape == (3, len(test))
  steps = []
  for k in (0, 2):  # the smallest member (its own learning rate) and the one on every example
    rows = np.flatnonzero(masks[k])
    cfg = fitlib.TrainConfig(**{**CFG.__dict__, "lr": LRS[k]})
    ref = fitlib.fit(model, train.subset(rows), cfg, task="multiclass", seed=SEEDS[k],
                     stage_dir=str(tmp_path / str(k)), progress=False)
    mine = pop.member(reference.states, k)
    assert int(mine.step) == int(ref.state.step)
    assert reference.examples[k] == ref.examples
    assert _max_diff(mine.params, parallel.to_host(ref.state.params)) < ATOL
    assert _max_diff(mine.batch_stats, parallel.to_host(ref.state.batch_stats)) < ATOL
    # Training changed the parameters far more than the tolerance (the comparison means something).
    assert _max_diff(mine.params, pop.init_states(
        model, [pop.plan_members(len(train), CFG, [SEEDS[k]])[0]], (8, 8, 3), CFG).params) > 1e-2
    p = evaluate.predict(ref.state, test, task="multiclass", batch_size=32)
    np.testing.assert_allclose(outputs["logits"][k], p["logits"], atol=1e-4)
    np.testing.assert_allclose(outputs["loss"][k], p["loss"], atol=1e-4)
    steps.append(int(ref.state.step))
  assert steps[0] < steps[1]  # the members really took different numbers of steps


def test_epoch_learning_rate_is_the_schedule_value_exactly():
  spe = 7
  sched = step_schedule(0.05, spe, (2, 4, 4), 0.3)
  for epoch in range(6):
    for i in (0, spe - 1):
      assert pop.epoch_learning_rate(0.05, epoch, (2, 4, 4), 0.3) == np.float32(
          sched(epoch * spe + i))


def test_masks_respected_planted_example(data, model, tmp_path):
  """An example only member 1 includes changes member 1 and leaves member 0 bit for bit alone."""
  train, _ = data
  cfg = fitlib.TrainConfig(epochs=1, batch_size=16, lr=0.05, lr_boundaries=())
  masks = np.ones((2, len(train)), np.int8)
  planted = 5
  masks[0, planted] = 0
  plans = pop.plan_members(len(train), cfg, [1, 2], masks, data_devices=4)
  assert [len(p.rows) for p in plans] == [len(train) - 1, len(train)]
  assert all(planted not in np.concatenate(plans[0].batches(e)) for e in range(3))

  def run(images, name):
    altered = type(train)(images, train.labels, train.identities, train.example_ids)
    return pop.train_population(model, altered, cfg, task="multiclass", seeds=[1, 2],
                                masks=masks, stage_dir=str(tmp_path / name), progress=False)

  a = run(train.images, "a")
  images = train.images.copy()
  images[planted] = 255 - images[planted]
  b = run(images, "b")
  assert a.examples == [len(plans[0].batches(0)) * 16, len(plans[1].batches(0)) * 16]
  chex.assert_trees_all_equal(pop.member(a.states, 0).params, pop.member(b.states, 0).params)
  assert _max_diff(pop.member(a.states, 1).params, pop.member(b.states, 1).params) > 0


def test_two_by_two_mesh_equals_one_device(data, masks, model, tmp_path):
  train, test = data
  # The batched plan here (the other tests run "auto"): lax convolutions vmapped by XLA.
  kw = dict(task="multiclass", seeds=SEEDS, masks=masks, lrs=LRS, progress=False,
            convolution="batched")
  grid = pop.train_population(model, train, CFG, stage_dir=str(tmp_path / "grid"),
                              member_shards=2, **kw)
  one = pop.train_population(model, train, CFG, stage_dir=str(tmp_path / "one"),
                             devices=jax.devices()[:1], **kw)
  assert parallel.member_mesh(2).devices.shape == (2, 2)
  assert grid.examples == one.examples
  assert _max_diff(grid.states.params, one.states.params) < ATOL
  assert _max_diff(grid.states.batch_stats, one.states.batch_stats) < ATOL
  e_grid = pop.evaluate_population(model, grid.states, test, task="multiclass", batch_size=32,
                                   member_shards=2, convolution="batched")
  e_one = pop.evaluate_population(model, grid.states, test, task="multiclass", batch_size=32,
                                  devices=jax.devices()[:1], convolution="batched")
  np.testing.assert_allclose(e_grid["logits"], e_one["logits"], atol=1e-5)


def test_resume_after_interrupt_equals_uninterrupted(data, masks, model, reference, tmp_path):
  train, test = data
  stage = str(tmp_path / "cut")

  class Stop(Exception):
    pass

  def interrupt(epoch):
    if epoch == 1:
      raise Stop()

  kw = dict(task="multiclass", seeds=SEEDS, masks=masks, lrs=LRS, stage_dir=stage,
            eval_sets={"test": test}, progress=False)
  with pytest.raises(Stop):
    pop.train_population(model, train, CFG, on_epoch_end=interrupt, **kw)
  # A row of the epoch the kill interrupted (written before its checkpoint) is dropped on resume.
  checkpoints.append_jsonl(os.path.join(stage, "metrics.jsonl"), {"epoch": 2, "partial": True})
  resumed = pop.train_population(model, train, CFG, **kw)
  assert resumed.resumed_from_epoch == 1 and reference.resumed_from_epoch == 0
  chex.assert_trees_all_equal(resumed.states.params, reference.states.params)
  chex.assert_trees_all_equal(resumed.states.opt_state, reference.states.opt_state)
  rows = [json.loads(line) for line in open(os.path.join(stage, "metrics.jsonl"))]
  assert [r["epoch"] for r in rows] == [1, 2] and "partial" not in rows[1]
  assert len(rows[1]["train_loss"]) == 3 and len(rows[1]["test_accuracy"]) == 3
  assert rows[0]["steps"][0] < rows[0]["steps"][2]
  with pytest.raises(checkpoints.WorkdirError, match="seeds"):
    pop.train_population(model, train, CFG, **{**kw, "seeds": (3, 5, 8)})


def test_bad_populations_are_refused():
  cfg = fitlib.TrainConfig(epochs=1, batch_size=16)
  with pytest.raises(ValueError, match=r"shape \[members, examples\] = \(2, 40\)"):
    pop.plan_members(40, cfg, [0, 1], np.ones((2, 39)))
  m = np.ones((2, 40))
  m[1, 7] = 2
  with pytest.raises(ValueError, match="member 1, example 7"):
    pop.plan_members(40, cfg, [0, 1], m)
  m = np.ones((2, 40))
  m[0, 10:] = 0
  with pytest.raises(ValueError, match=r"members \[0\] include fewer than batch_size=16"):
    pop.plan_members(40, cfg, [0, 1], m)
  with pytest.raises(ValueError, match="lrs has 1 values for 2 members"):
    pop.plan_members(40, cfg, [0, 1], lrs=[0.1])
  with pytest.raises(ValueError, match="member_shards=3"):
    parallel.member_mesh(3)
  with pytest.raises(ValueError, match="convolution must be one of"):
    pop.resolve_convolution("fast")
  with pytest.raises(ValueError, match="a population needs at least one member"):
    pop.plan_members(40, cfg, [])
  # optax's own schedule agrees on the unscaled value too (the 0-boundary case)
  assert pop.epoch_learning_rate(0.1, 0, (0,), 0.5) == np.float32(
      optax.piecewise_constant_schedule(0.1, {0: 0.5})(0))
