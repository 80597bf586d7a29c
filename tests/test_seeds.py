"""``--seeds=N``: the N seeds' models train and unlearn as populations; the table is mean ± std."""

import json
import os

import numpy as np
import pytest

from mu_jax import checkpoints
from mu_jax import experiment as engine
from mu_jax.pipelines import benchmark, seeds
from tests import helpers
from tests.helpers import lax_convolutions  # noqa: F401  (applies to this module)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  cfg = helpers.tiny_config({"unlearn.hparams.finetune.epochs": 1})
  wd = str(tmp_path_factory.mktemp("seeds"))
  out = benchmark.run_benchmark(cfg, wd, "finetune", seeds=2, progress=False, log=lambda _: None)
  return cfg, wd, out


def _stage_outputs(wd, row, split):
  return checkpoints.load_outputs(os.path.join(wd, row["stage"], "outputs"), split)


def test_rows_are_means_over_the_seeds_of_stacked_stages(run):
  cfg, wd, out = run
  rows = {r["model"]: r for r in json.load(open(os.path.join(wd, "results", "results.json")))["rows"]}
  assert set(rows) == {"original", "retrained", "finetune"}
  labels = engine.Experiment.create(cfg, wd).split("test").labels
  for name, row in rows.items():
    assert row["seeds"] == 2 and row["stage"].startswith("seeds/"), row
    logits = _stage_outputs(wd, row, "test")["logits"]
    assert logits.shape[0] == 2  # a leading member axis
    accs = np.mean(np.argmax(logits, -1) == labels[None], axis=1)
    assert row["test_acc"] == pytest.approx(accs.mean()) and row["test_acc_std"] == pytest.approx(
        accs.std()), name
    assert "mia_attack_acc_std" in row
  # Seed 1's models are other models.
  assert np.abs(np.diff(_stage_outputs(wd, rows["original"], "test")["logits"], axis=0)).max() > 1e-3
  assert rows["finetune"]["hparams"]["epochs"] == 1
  assert "seeds: 2 (mean ± std)" in open(os.path.join(wd, "results", "table.md")).read()
  assert [r["stage"] for r in out["costs"]][1:4] == ["original (2 seeds)", "retrained (2 seeds)",
                                                     "finetune"]


def test_a_seed_member_equals_the_one_seed_run_of_that_seed(run, tmp_path):
  cfg, wd, _ = run
  rows = {r["model"]: r for r in json.load(open(os.path.join(wd, "results", "results.json")))["rows"]}
  one = engine.Experiment.create(dict(cfg, seed=cfg["seed"] + 1), str(tmp_path / "one"))
  one.train_stage("original", progress=False)
  want = one.task.outputs(one, one.trained_stage("original"))["test"]["logits"]
  got = _stage_outputs(wd, rows["original"], "test")["logits"][1]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_running_again_reuses_every_stage_untouched(run):
  cfg, wd, out = run
  done = sorted(os.path.join(r, "done.json") for r, _, files in os.walk(os.path.join(wd, "seeds"))
                if "done.json" in files)
  assert len(done) == 3
  before = {p: os.stat(p).st_mtime_ns for p in done}
  again = benchmark.run_benchmark(cfg, wd, "finetune", seeds=2, progress=False, log=lambda _: None)
  assert {p: os.stat(p).st_mtime_ns for p in done} == before
  assert again["rows"] == out["rows"]
  # Another unlearning hyperparameter is another stage beside the first.
  other = helpers.tiny_config({"unlearn.hparams.finetune.epochs": 1,
                                "unlearn.hparams.finetune.lr": 0.02})
  benchmark.run_benchmark(other, wd, "finetune", seeds=2, progress=False, log=lambda _: None)
  assert len(os.listdir(os.path.join(wd, "seeds", "unlearned"))) == 2
  assert {p: os.stat(p).st_mtime_ns for p in done} == before


@pytest.mark.parametrize("change,seeds_n,match", [
    ({}, 0, "positive integer"),
    ({"population": {"members": 6}}, 2, "population section"),
    ({"model": {"checkpoint": "/x/model.pt"}}, 2, "imports one"),
])
def test_what_seeds_cannot_run_is_refused_before_any_work(tmp_path, change, seeds_n, match):
  cfg = helpers.tiny_config()
  for key, value in change.items():
    cfg[key] = {**cfg.get(key, {}), **value}
  with pytest.raises(ValueError, match=match):
    benchmark.run_benchmark(cfg, str(tmp_path / "wd"), "finetune", seeds=seeds_n, progress=False)
  assert not os.path.exists(tmp_path / "wd")
  with pytest.raises(ValueError, match=match):
    seeds.check(cfg, seeds_n)
