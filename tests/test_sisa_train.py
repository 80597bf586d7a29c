"""SISA slice-checkpointed training: stacked (vmap) against sequential, slice reuse, settings, resume.

Tiny on purpose: 16×16 images, ``small_cnn`` width 8, batch 8, every slice one batch shape, so the
module compiles one sequential and one stacked step (shared with test_sisa_unlearn.py).
"""

import os

import chex
import jax
import numpy as np
import pytest
from flax import serialization

from mu_jax import checkpoints
from mu_jax.data import synthetic
from mu_jax.models import create_model
from mu_jax.sisa import partition as P
from mu_jax.sisa import train as T
from mu_jax.training import fit

CFG = fit.TrainConfig(epochs=2, batch_size=8, lr=0.01, momentum=0.9, lr_boundaries=())


@pytest.fixture(scope="module")
def data():
  examples, _, _ = synthetic.generate(5, 8, 16, 0)
  # Five persons dealt to two shards: 24 and 16 examples, so the stacked lanes differ in step count.
  part = P.make_partition(examples.example_ids, examples.identities, 2, 2, by="identity", seed=0)
  assert sorted(len(s) for s in part.shards) == [16, 24]
  return examples, part, create_model("small_cnn", 8, width=8)


def _trainer(data, root, mode, **kw):
  examples, part, model = data
  return T.ShardTrainer(model, examples, part, CFG, task="multiclass", seed=0, root=str(root),
                        mode=mode, **kw)


def _state_dict(state):
  return serialization.to_state_dict(state)


@pytest.fixture(scope="module")
def sequential(data, tmp_path_factory):
  tr = _trainer(data, tmp_path_factory.mktemp("seq"), "sequential")
  return tr, tr.train()


def test_stacked_training_equals_sequential(data, sequential, tmp_path):
  seq, seq_report = sequential
  stk = _trainer(data, tmp_path, "stacked")
  assert (stk.mode, stk.lanes) == ("stacked", 2)
  stk_report = stk.train()
  assert stk_report.examples == seq_report.examples > 0
  for s in range(2):
    a, b = seq.final_state(s), stk.final_state(s)
    assert int(a.step) == int(b.step) == sum(stk.plan(s, sl).steps for sl in range(2))
    # Equal up to float32 rounding only: XLA lowers a vmapped convolution as a grouped one.
    chex.assert_trees_all_close(_state_dict(a), _state_dict(b), atol=1e-5, rtol=1e-5)
    for sl in range(2):
      rec_a = seq.slice_record(s, sl, seq.plan(s, sl).key)
      rec_b = stk.slice_record(s, sl, stk.plan(s, sl).key)
      assert rec_a["train_loss"] == pytest.approx(rec_b["train_loss"], rel=1e-4)


def test_training_again_reuses_every_slice(sequential):
  tr, _ = sequential
  again = tr.train()
  assert again.retrained_shards == [] and again.examples == 0
  assert all(r.reused_slices == [0, 1] for r in again.shards.values())


def test_an_interrupted_slice_is_trained_again_to_the_same_state(sequential):
  tr, _ = sequential
  key = tr.plan(1, 1).key
  before = _state_dict(tr.final_state(1))
  os.remove(os.path.join(tr.slice_dir(1, 1, key), "slice.json"))  # died after orbax, before the mark
  rep = tr.train()
  assert rep.retrained_shards == [1] and rep.shards[1].trained_slices == [1]
  chex.assert_trees_all_equal(_state_dict(tr.final_state(1)), before)


def test_the_epoch_schedule_and_data_order_are_the_official_ones(sequential):
  tr, _ = sequential
  assert [tr.plan(0, sl).epochs for sl in range(2)] == P.epoch_schedule(2, CFG.epochs)
  plan = tr.plan(0, 1)
  batches = tr._batches(plan, 0)
  expected = np.random.default_rng([0, 0, 1, 0]).permutation(len(plan.example_ids))
  np.testing.assert_array_equal(np.concatenate(batches), expected[:len(batches) * plan.batch])


def test_a_root_made_with_other_settings_is_refused(data, sequential):
  tr, _ = sequential
  with pytest.raises(checkpoints.WorkdirError, match="other settings.*mode"):
    _trainer(data, tr.root, "stacked")
  # "auto" adopts what the root was made with.
  assert _trainer(data, tr.root, "auto").mode == "sequential"


def test_stacked_step_keeps_inactive_lanes_unchanged(data, sequential):
  tr, _ = sequential
  states = [tr.init_state(0), tr.init_state(1)]
  index = [np.arange(8)] * 2
  args = tr._stacked_args(states, index, [tr.examples] * 2, [0, 1], [True, False])
  new, metrics = tr._stacked_step()(*args)
  new = jax.device_get(new)
  chex.assert_trees_all_equal(_state_dict(T.unstack(new, 2)[1]), _state_dict(states[1]))
  assert int(new.step[0]) == 1 and int(new.step[1]) == 0


def test_each_shard_keeps_its_lane(data, tmp_path):
  """Shard s trains in lane s mod lanes in every call (under jax.distributed the lane sets the
  all-reduce's summation order): two shards of one lane never share a call, whatever else fits."""
  examples, _, model = data
  part = P.make_partition(examples.example_ids, examples.identities, 5, 2, by="identity", seed=0)
  tr = T.ShardTrainer(model, examples, part, CFG, task="multiclass", seed=0, root=str(tmp_path),
                      mode="stacked", lanes=2)
  plans = [tr.plan(s, 1) for s in range(5)]
  assert len({(p.batch, p.epochs) for p in plans}) == 1  # one shape: only the lanes split them
  groups = tr._groups(plans)
  assert [[p.shard for p in g] for g in groups] == [[0, 1], [2, 3], [4]]
  assert [[p.shard for p in g] for g in tr._groups(plans[2:])] == [[2, 3], [4]]
  assert [[p.shard for p in g] for g in tr._groups([plans[0], plans[2]])] == [[0], [2]]
  assert [[p.shard for p in g] for g in tr._groups([plans[3], plans[4]])] == [[4, 3]]
