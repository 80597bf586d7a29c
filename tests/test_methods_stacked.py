"""run_stacked: K members unlearned as one program equal K run_detailed runs, per member."""

import jax
import numpy as np
import pytest

from mu_jax import methods
from mu_jax.methods import driver
from mu_jax.training import fit as fitlib
from tests import helpers
from tests.helpers import lax_convolutions  # noqa: F401  (autouse fixture)

# vmapped and plain steps differ in float32 summation order only (grouped convolutions); a few
# steps of a tiny model keep that near 1e-6, far below what one step moves.
ATOL = 5e-5
BATCH = 8


@pytest.fixture(scope="module")
def setup():
  ds = helpers.tiny_dataset(size=8, identities=24, per=6)
  retain, forget = ds.split("retain"), ds.split("forget")
  model = helpers.tiny_model()
  cfg = fitlib.TrainConfig(epochs=1, batch_size=16, lr=0.05)
  members = [helpers.tiny_state(model, cfg, size=8, seed=s) for s in (0, 1, 2)]
  members = [m.replace(tx=members[0].tx) for m in members]  # one optimizer object: they stack
  # Unequal forget sets (every one at least a batch): members take different numbers of steps.
  sizes = [len(forget), len(forget) - 3, BATCH + 1]
  data = [{"retain": retain, "forget": forget.subset(np.arange(n))} for n in sizes]
  states = jax.tree.map(lambda *x: np.stack(x), *[jax.tree.map(np.asarray, m) for m in members])
  return members, states, data


def _max_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("name, hp", [
    ("finetune", {"epochs": 1}), ("unsir", {})])
def test_stacked_members_equal_separate_runs(setup, name, hp):
  members, states, data = setup
  cfg = driver.RunConfig(batch_size=BATCH, seed=3, task="multiclass", log_splits=())
  stacked = driver.run_stacked(methods.create(name, **hp), states, data, cfg)
  for k, (member, d) in enumerate(zip(members, data)):
    ref = driver.run_detailed(methods.create(name, **hp), member, d, cfg)
    mine = jax.tree.map(lambda x: x[k], stacked.states)
    assert _max_diff(mine.params, ref.state.params) < ATOL, (name, k)
    assert _max_diff(mine.batch_stats, ref.state.batch_stats) < ATOL, (name, k)
    assert int(mine.step) == int(ref.state.step)
    assert int(stacked.examples[k]) == ref.examples
    assert _max_diff(mine.params, member.params) > 1e-4  # the method moved this member
  assert not stacked.halted.any()
  if name != "finetune":  # it reads retain only, the same for every member
    assert len(set(stacked.steps.tolist())) > 1  # the members took different numbers of steps


def test_per_member_hyperparameters_share_one_program(setup):
  """Two learning rates in one call: each member matches its own separate run."""
  members, states, data = setup
  cfg = driver.RunConfig(batch_size=BATCH, seed=3, task="multiclass", log_splits=())
  lrs = [0.001, 0.01, 0.05]
  before = driver.compiled_steps()
  stacked = driver.run_stacked([methods.create("finetune", epochs=1, lr=v) for v in lrs], states,
                               data, cfg)
  assert driver.compiled_steps() - before <= 1
  for k, lr in enumerate(lrs):
    ref = driver.run_detailed(methods.create("finetune", epochs=1, lr=lr), members[k], data[k], cfg)
    assert _max_diff(jax.tree.map(lambda x: x[k], stacked.states).params,
                     ref.state.params) < ATOL, lr


def test_unlearners_that_are_not_one_computation_are_refused(setup):
  _, states, data = setup
  cfg = driver.RunConfig(batch_size=BATCH, seed=3, task="multiclass", log_splits=())
  with pytest.raises(ValueError, match="not one computation"):
    driver.run_stacked([methods.create("finetune", epochs=1), methods.create("finetune", epochs=2),
                        methods.create("finetune", epochs=1)], states, data, cfg)


def test_members_whose_batches_differ_in_shape_are_refused(setup):
  members, states, data = setup
  small = [data[0], data[1], {"retain": data[2]["retain"],
                              "forget": data[2]["forget"].subset(np.arange(BATCH - 2))}]
  cfg = driver.RunConfig(batch_size=BATCH, seed=3, task="multiclass", log_splits=())
  with pytest.raises(driver.ShapeMismatch, match="batches of 2 shapes"):
    driver.run_stacked(methods.create("neggrad", epochs=1), states, small, cfg)


def test_a_step_jax_cannot_vmap_is_refused_as_not_stackable(setup):
  """A batching rule JAX lacks (here a host callback without ``vmap_method``) surfaces as
  NotStackable when the phase compiles, so callers run the members one at a time."""
  import dataclasses
  import functools

  base = methods.create("finetune", epochs=1)

  @functools.cache  # one wrapped step per step: phases() is called more than once
  def with_callback(step):
    def stepped(state, aux, batch, rng, info):
      state, aux, metrics = step(state, aux, batch, rng, info)
      loss = jax.pure_callback(np.asarray, jax.ShapeDtypeStruct((), np.float32), metrics["loss"])
      return state, aux, dict(metrics, loss=loss)
    return stepped

  unlearner = dataclasses.replace(base, phases=lambda spec: [
      dataclasses.replace(p, step=with_callback(p.step)) for p in base.phases(spec)])
  _, states, data = setup
  cfg = driver.RunConfig(batch_size=BATCH, seed=3, task="multiclass", log_splits=())
  with pytest.raises(driver.NotStackable, match="cannot be vmapped over the members"):
    driver.run_stacked(unlearner, states, data, cfg)
  driver.run_detailed(unlearner, jax.tree.map(lambda x: x[0], states), data[0], cfg)  # it runs


def test_members_split_over_a_two_by_two_mesh_equal_one_group(setup):
  """member_shards=2 on 4 devices (2 groups of 2) gives the models of one group of 4; 3 members
  fill 2 groups with an idle lane that never steps."""
  _, states, data = setup
  cfg = driver.RunConfig(batch_size=BATCH, seed=3, task="multiclass", log_splits=())
  one = driver.run_stacked(methods.create("scrub", epochs=1), states, data, cfg)
  two = driver.run_stacked(methods.create("scrub", epochs=1), states, data, cfg, member_shards=2)
  assert _max_diff(two.states.params, one.states.params) < ATOL
  assert _max_diff(two.states.batch_stats, one.states.batch_stats) < ATOL
  assert two.steps.tolist() == one.steps.tolist() and two.examples.tolist() == one.examples.tolist()
  assert jax.tree.leaves(two.states.params)[0].shape[0] == 3
