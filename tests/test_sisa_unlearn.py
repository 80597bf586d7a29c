"""Exact SISA unlearning, untouched shards and slices, bad requests, cost accounting, aggregation,
and the experiment script end to end (audit log, crash and resume).

Six persons × 8 images at 16×16 in two identity shards of three slices: every slice holds exactly
one person, every slice trains on multiples of the batch (8), so the whole module compiles one
sequential and one stacked step (the same ones as test_sisa_train.py).
"""

import hashlib
import os

import chex
import numpy as np
import pytest
from flax import serialization

from mu_jax.pipelines import sisa as sisa_script
from mu_jax import audit, sisa
from mu_jax.data import synthetic
from mu_jax.data.splits import DataError
from mu_jax.models import create_model
from mu_jax.sisa import aggregate as agg
from mu_jax.training import fit
from tests import helpers

CFG = fit.TrainConfig(epochs=2, batch_size=8, lr=0.01, momentum=0.9, lr_boundaries=())


def _state_dict(state):
  return serialization.to_state_dict(state)


def _tree_digest(path):
  """sha256 over every file (name and bytes) below ``path``."""
  h = hashlib.sha256()
  for d, _, files in sorted(os.walk(path)):
    for f in sorted(files):
      h.update(os.path.relpath(os.path.join(d, f), path).encode())
      with open(os.path.join(d, f), "rb") as fh:
        h.update(fh.read())
  return h.hexdigest()


def _slice_dirs(root):
  out = {}
  for s in sorted(os.listdir(root)):
    if s.startswith("shard_"):
      for name in os.listdir(os.path.join(root, s, "slices")):
        p = os.path.join(root, s, "slices", name)
        out[p] = _tree_digest(p)
  return out


@pytest.fixture(scope="module")
def setup():
  examples, _, _ = synthetic.generate(6, 8, 16, 0)
  part = sisa.make_partition(examples.example_ids, examples.identities, 2, 3, by="identity", seed=0)
  # Persons in slice order, per shard.
  persons = [[examples.identities[list(examples.example_ids).index(ids[k])] for k in (0, 8, 16)]
             for ids in part.shards]
  return examples, part, create_model("small_cnn", 8, width=8), persons


def _trainer(setup, root, mode="sequential"):
  examples, part, model, _ = setup
  return sisa.ShardTrainer(model, examples, part, CFG, task="multiclass", seed=0, root=str(root),
                           mode=mode)


@pytest.fixture(scope="module")
def served(setup, tmp_path_factory):
  """Trains both shards, then forgets the person in slice 1 of shard 0."""
  tr = _trainer(setup, tmp_path_factory.mktemp("sisa"))
  sisa.ensure_trained(tr)
  dirs_before = _slice_dirs(tr.root)
  states_before = [_state_dict(s) for s in tr.final_states()]
  person = setup[3][0][1]
  report = sisa.unlearn_request(tr, sisa.make_request(tr, identities=[person]), "req-1")
  return tr, report, dirs_before, states_before, person


def test_unlearning_equals_training_from_scratch_without_the_request(served, tmp_path):
  tr, report, _, _, person = served
  removed = sisa.removed_ids(tr.root)
  assert len(removed) == 8 and {tr.identity(e) for e in removed} == {person}
  scratch, _, examples = sisa.retrain_from_scratch(tr, str(tmp_path), removed, shards=[0])
  chex.assert_trees_all_equal(_state_dict(tr.final_state(0, removed)),
                              _state_dict(scratch.final_state(0, removed)))
  # The restored slice 0 plus retrained slices 1 and 2 cost less than the from-scratch run.
  assert report.examples == tr.cost(removed, {0: 1}) < examples == tr.cost(removed, {0: 0})


def test_only_the_touched_shard_is_retrained_from_its_last_clean_slice(served):
  tr, report, dirs_before, states_before, _ = served
  assert report.touched == {0: 1} and report.retrained == {0: [1, 2]}
  assert report.untouched_shards == [1]
  assert report.restored_from[0] == tr.slice_dir(0, 0, tr.plan(0, 0).key)
  assert report.checkpoints_before[1] == report.checkpoints_after[1]
  dirs_after = _slice_dirs(tr.root)
  # Every slice that existed is byte for byte the same; the new ones are shard 0's slices 1 and 2.
  assert all(dirs_after[p] == digest for p, digest in dirs_before.items())
  new = sorted(os.path.relpath(p, tr.root).split("/slices/")[0] + "/" +
               os.path.basename(p).split("-")[0] for p in set(dirs_after) - set(dirs_before))
  assert new == ["shard_0/1", "shard_0/2"]
  after = sisa.removed_ids(tr.root)
  chex.assert_trees_all_equal(_state_dict(tr.final_state(1, after)), states_before[1])


def test_a_later_request_for_example_ids_is_exact_too(served, tmp_path):
  tr, _, _, _, _ = served
  last_person_of_shard_1 = tr.partition.shards[1][16:24]
  request = sisa.make_request(tr, example_ids=[last_person_of_shard_1[3]])
  report = sisa.unlearn_request(tr, request, "req-2")
  assert report.touched == {1: 2} and report.retrained == {1: [2]}
  removed = sisa.removed_ids(tr.root)
  scratch, _, _ = sisa.retrain_from_scratch(tr, str(tmp_path), removed, shards=[1])
  chex.assert_trees_all_equal(_state_dict(tr.final_state(1, removed)),
                              _state_dict(scratch.final_state(1, removed)))
  assert [r["request_id"] for r in sisa.applied_requests(tr.root)] == ["req-1", "req-2"]


def test_bad_requests_change_nothing(served, setup):
  tr, _, _, _, person = served
  dirs, removal = _slice_dirs(tr.root), sisa.applied_requests(tr.root)
  with pytest.raises(sisa.RequestError, match="not in the SISA training data.*nobody"):
    sisa.make_request(tr, identities=["nobody"])
  with pytest.raises(sisa.RequestError, match="example ids that are not in"):
    sisa.make_request(tr, example_ids=["synthetic/none.png"])
  with pytest.raises(sisa.RequestError, match="already removed by request.*req-1"):
    sisa.make_request(tr, identities=[person])
  with pytest.raises(sisa.RequestError, match="already removed"):
    sisa.make_request(tr, example_ids=[sorted(sisa.removed_ids(tr.root))[0]])
  with pytest.raises(sisa.RequestError, match="exactly one"):
    sisa.make_request(tr)
  # All persons of shard 0 that are left: the shard would be empty.
  with pytest.raises(sisa.RequestError, match="leave shard 0 with 0 examples"):
    sisa.make_request(tr, identities=[p for p in setup[3][0] if p != person])
  with pytest.raises(sisa.RequestError, match="already applied"):
    sisa.unlearn_request(tr, sisa.make_request(tr, identities=[setup[3][1][0]]), "req-1")
  assert _slice_dirs(tr.root) == dirs and sisa.applied_requests(tr.root) == removal


def test_exact_unlearning_in_stacked_mode(setup, tmp_path):
  tr = _trainer(setup, tmp_path / "a", "stacked")
  assert tr.lanes == 2
  sisa.ensure_trained(tr)
  person = setup[3][1][2]
  report = sisa.unlearn_request(tr, sisa.make_request(tr, identities=[person]), "req-s")
  assert report.touched == {1: 2} and report.retrained == {1: [2]}
  removed = sisa.removed_ids(tr.root)
  # The retrain of one shard ran in a 2-lane stack (one idle lane), as the from-scratch run does.
  scratch, _, _ = sisa.retrain_from_scratch(tr, str(tmp_path / "b"), removed, shards=[1])
  chex.assert_trees_all_equal(_state_dict(tr.final_state(1, removed)),
                              _state_dict(scratch.final_state(1, removed)))


def test_expected_cost_of_single_identity_requests(setup, tmp_path):
  tr = _trainer(setup, tmp_path)  # nothing is trained: the cost is computed from the plan
  exp = sisa.expected_cost(tr, unit="identity")
  # Removing the person of slice j leaves 8·sl examples in slices sl >= j (1 epoch each, batch 8):
  # SISA retrains 24, 24 or 16 examples; a full retrain of both shards costs 72, 80 or 88.
  sisa_cost, full = np.array([24, 24, 16] * 2), np.array([72, 80, 88] * 2)
  assert exp["requests"] == 6 and exp["first_slice_histogram"] == [2, 2, 2]
  assert exp["expected_examples"] == pytest.approx(sisa_cost.mean())
  assert exp["expected_full_examples"] == pytest.approx(full.mean())
  assert exp["expected_speedup"] == pytest.approx(80 / (64 / 3))
  assert exp["mean_cost_fraction"] == pytest.approx(np.mean(sisa_cost / full))
  assert exp["mean_shards_touched"] == 1.0
  assert sisa.expected_cost(tr, unit="example")["requests"] == 48


def test_vote_and_mean_aggregation_on_fixed_logits():
  logits = np.array([
      [[1.0, 0.9, 0.0], [0.0, 0.0, 1.0]],    # shard 0 votes 0, 2
      [[1.0, 0.9, 0.0], [0.0, 1.0, 0.0]],    # shard 1 votes 0, 1
      [[0.0, 9.0, 0.0], [1.0, 0.0, 0.0]],    # shard 2 votes 1 (very sure), 0
  ])
  vote = agg.aggregate_probs(logits, "multiclass", "vote")
  np.testing.assert_allclose(vote, [[2 / 3, 1 / 3, 0], [1 / 3, 1 / 3, 1 / 3]])
  # Example 0: the majority says 0, the mean softmax follows the confident shard to 1.
  # Example 1: a three-way tie goes to the lowest class, as argmax does in the official code.
  np.testing.assert_array_equal(agg.predictions(vote), [0, 0])
  mean = agg.aggregate_probs(logits, "multiclass", "mean")
  soft = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(mean, soft.mean(0))
  np.testing.assert_array_equal(agg.predictions(mean), [1, 0])
  weighted = agg.aggregate_probs(logits, "multiclass", "vote", weights=[1, 1, 4])
  np.testing.assert_array_equal(agg.predictions(weighted), [1, 0])
  out = agg.outputs_from_probs(vote, np.array([0, 2]), np.array(["a", "b"]), np.array(["x", "y"]))
  np.testing.assert_allclose(out["loss"], [np.log(1.5), np.log(3.0)], rtol=1e-6)
  out = agg.outputs_from_probs(vote, np.array([2, 0]), np.array(["a", "b"]), np.array(["x", "y"]))
  assert out["loss"][0] == pytest.approx(-np.log(agg.EPS), rel=1e-5)  # no shard voted for it
  assert agg.accuracy(out) == 0.5


def test_multilabel_aggregation_votes_per_attribute():
  logits = np.array([[[1.0, -1.0]], [[2.0, 3.0]], [[-5.0, -1.0]], [[0.5, 0.0]]])  # 4 shards
  vote = agg.aggregate_probs(logits, "multilabel", "vote")
  np.testing.assert_allclose(vote, [[0.75, 0.25]])
  np.testing.assert_array_equal(agg.predictions(vote, "multilabel"), [[1, 0]])
  tie = agg.aggregate_probs(logits[:2, :, 1:], "multilabel", "vote")
  assert tie[0, 0] == 0.5 and agg.predictions(tie, "multilabel")[0, 0] == 0  # a tie is absent
  mean = agg.aggregate_probs(logits, "multilabel", "mean")
  np.testing.assert_allclose(mean, (1 / (1 + np.exp(-logits))).mean(0))
  out = agg.outputs_from_probs(vote, np.array([[1, 1]]), ["a"], ["x"], task="multilabel")
  assert (out["logits"] > 0).tolist() == [[True, False]]
  assert out["loss"][0] == pytest.approx(-(np.log(0.75) + np.log(0.25)) / 2, rel=1e-6)
  with pytest.raises(ValueError, match="tasks"):
    agg.aggregate_probs(logits, "regression")


def _tiny_config():
  # Larger than helpers.tiny_config: 10 persons × 8 images at 16×16, width 8.
  return helpers.tiny_config({
      "data.num_identities": 10, "data.images_per_identity": 8, "data.image_size": 16,
      "data.forget.fraction": 0.2, "model.width": 8, "train.batch_size": 32, "train.lr": 0.01,
      "train.momentum": 0.9, "train.weight_decay": 0.0, "unlearn.batch_size": 32})


def test_the_experiment_script_serves_a_request_and_resumes_after_a_crash(tmp_path, monkeypatch):
  wd, lines = str(tmp_path), []
  kw = dict(shards=2, slices=3, mode="sequential", batch_size=8, log=lines.append)
  with pytest.raises(sisa.RequestError, match="nobody"):
    sisa_script.run_sisa(_tiny_config(), wd, forget="identities", identities=["nobody"], **kw)
  assert not audit.read_requests(wd)

  real = sisa.unlearn_request

  def crash_after_retraining(*args):
    real(*args)
    raise KeyboardInterrupt("killed")

  monkeypatch.setattr(sisa, "unlearn_request", crash_after_retraining)
  with pytest.raises(KeyboardInterrupt):
    sisa_script.run_sisa(_tiny_config(), wd, **kw)
  [pending] = audit.incomplete_requests(wd)
  monkeypatch.setattr(sisa, "unlearn_request", real)

  res = sisa_script.run_sisa(_tiny_config(), wd, **kw)  # the same command again completes it
  assert not audit.incomplete_requests(wd)
  rows = audit.read_requests(wd)
  assert {r["request_id"] for r in rows} == {pending["request_id"]}
  assert [r["status"] for r in rows] == ["started", "started", "complete"]
  complete = rows[-1]
  assert complete["method"] == "sisa" and complete["exact_match"] is True
  assert set(complete["checkpoints_after"]) == {"0", "1"}
  assert {"test_acc", "mia_attack_acc", "nomus"} <= set(complete["evaluation"]["after"])
  assert "image" not in str(rows)
  row = res["row"]
  for key in ("model", "test_acc", "forget_acc", "retain_acc", "unseen_acc", "mia_attack_acc",
              "mia_forgetting_score", "nomus", "wall_s", "examples", "cost_vs_retrain"):
    assert key in row, key
  assert row["model"] == "sisa" and row["sisa_exact_match"] is True
  retrained = row["sisa_retrained_shards"]
  assert res["request"]["untouched_shards"] == [s for s in (0, 1) if s not in retrained]
  assert row["stage"].startswith("sisa/sisa-")
  for split in ("train", "retain", "forget", "test", "unseen"):
    assert os.path.exists(os.path.join(wd, row["stage"], "outputs", f"{split}.npz"))
  # The summary is the registry's SISA table: before and after the request, SISA's own columns.
  summary = "\n".join(lines)
  assert "| | before | after |" in summary
  assert "| Equals a from-scratch retrain, bit for bit (↑) | – | yes |" in summary
  assert f"| Shards retrained (↓) | – | {retrained} |" in summary

  lines.clear()
  again = sisa_script.run_sisa(_tiny_config(), wd, **kw)  # a served request is not served twice
  assert any("already served" in line for line in lines)
  assert again["request"]["request_id"] == res["request"]["request_id"]
  assert len(audit.read_requests(wd)) == 3

  # Another setting is another deployment beside the first, which stays as it was.
  first = _tree_digest(os.path.join(wd, row["stage"]))
  other = sisa_script.run_sisa(_tiny_config(), wd, **dict(kw, aggregation="mean"),
                               full_retrain=False)
  assert other["row"]["stage"] != row["stage"] and other["row"]["sisa_aggregation"] == "mean"
  assert sorted(os.listdir(os.path.join(wd, "sisa"))) == sorted(
      os.path.basename(r["row"]["stage"]) for r in (res, other))
  assert _tree_digest(os.path.join(wd, row["stage"])) == first


def test_more_shards_than_persons_is_refused_before_the_workdir_is_written(tmp_path):
  wd = tmp_path / "wd"
  with pytest.raises(DataError, match="identities cannot fill 50 shards"):
    sisa_script.run_sisa(_tiny_config(), str(wd), shards=50, slices=3, mode="sequential")
  assert not wd.exists() or not os.listdir(wd)
