"""Sweeps: candidates scored on validation persons from retain against a model retrained without
them; the reported forget set never reaches the scoring; the chosen values run as a stage."""

import os

import numpy as np
import pytest

from mu_jax import checkpoints, experiment as engine
from mu_jax.data import splits as splits_lib
from mu_jax.pipelines import benchmark, sweep
from tests import helpers
from tests.helpers import lax_convolutions  # noqa: F401  (applies to this module)

GRID = {"sweep.grid.finetune.lr": (0.001, 0.01, 0.1), "unlearn.hparams.finetune.epochs": 1}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  exp = engine.Experiment.create(helpers.tiny_config(GRID), str(tmp_path_factory.mktemp("sweep")),
                                 methods="finetune")
  logs = []
  out = sweep.run(exp, exp.selected, log=logs.append)
  return exp, out, logs


def test_candidates_are_scored_and_the_chosen_values_run_as_a_stage(swept):
  exp, (m,), logs = swept
  rec = checkpoints.read_json(os.path.join(exp.path, m["sweep_stage"], "done.json"))
  assert [c["hparams"] for c in rec["candidates"]] == [{"lr": v} for v in (0.001, 0.01, 0.1)]
  distances = [c["distance"] for c in rec["candidates"]]
  assert len(set(distances)) > 1  # the learning rate acted
  assert rec["chosen"] == rec["candidates"][sweep.choose(rec["candidates"], "distance")]["hparams"]
  assert rec["candidates"][distances.index(min(distances))]["hparams"] == rec["chosen"] or \
      rec["candidates"][distances.index(min(distances))]["halted"]
  tuned = checkpoints.read_json(os.path.join(exp.path, m["stage"], "done.json"))
  assert tuned["hparams"] == {**exp.selected[0].hparams, **rec["chosen"]}
  assert logs[0].startswith("sweep: 1 methods, 3 candidates on ")


def test_the_reported_forget_set_never_reaches_the_scoring(swept, monkeypatch):
  exp, (m,), _ = swept
  forget = exp.split("forget")
  persons = checkpoints.read_json(os.path.join(exp.path, m["sweep_stage"], "done.json"))[
      "validation_persons"]
  retain_persons = set(exp.split("retain").identities.astype(str))
  assert set(persons) <= retain_persons and not set(persons) & set(forget.identities.astype(str))
  scored = [checkpoints.load_outputs(os.path.join(exp.path, m["sweep_stage"], "outputs"), s)
            for s in sweep.SCORED]
  assert not set(np.concatenate([o["example_id"] for o in scored]).astype(str)) & set(
      forget.example_ids.astype(str))
  # A fresh sweep of another grid with the forget split unreadable runs to the end.
  real_split = splits_lib.FaceDataset.split

  def no_forget(self, name):
    if name == "forget":
      raise AssertionError("the sweep read the forget split")
    return real_split(self, name)

  runner = sweep.Runner(exp, sweep.Settings(grid={"finetune": {"lr": [0.02, 0.05]}}),
                        log=lambda _: None)
  monkeypatch.setattr(splits_lib.FaceDataset, "split", no_forget)
  rec = runner.sweep(exp.selected[0])
  assert len(rec["candidates"]) == 2


def test_running_again_reuses_the_sweep(swept):
  exp, (m,), _ = swept
  done = os.path.join(exp.path, m["sweep_stage"], "done.json")
  before = os.stat(done).st_mtime_ns
  (again,) = sweep.run(exp, exp.selected, log=lambda _: None)
  assert again["chosen"] == m["chosen"] and os.stat(done).st_mtime_ns == before


@pytest.mark.parametrize("section,match", [
    ({"grid": {"finetune": {"lr": []}}}, "grid.finetune.lr is empty"),
    ({"grid": {}, "criterion": "best"}, "criterion must be one of"),
    ({"grid": {}, "gird": 1}, "unknown keys"),
])
def test_bad_settings_are_refused(section, match):
  with pytest.raises(ValueError, match=match):
    sweep.Settings.from_config({"sweep": section})


def test_a_method_without_a_grid_or_a_value_changing_the_program_is_refused(swept):
  exp, _, _ = swept
  with pytest.raises(ValueError, match="no entry for 'ssd'"):
    sweep.Settings(grid={}).candidates("ssd")
  runner = sweep.Runner(exp, sweep.Settings(grid={"finetune": {"epochs": [1, 2]}}),
                        log=lambda _: None)
  with pytest.raises(ValueError, match="config.sweep.grid.finetune"):
    runner.sweep(exp.selected[0])


def test_the_benchmark_shows_default_and_tuned_rows_side_by_side(swept):
  exp, (m,), _ = swept
  out = benchmark.run_benchmark(exp.config, exp.path, "finetune", progress=False,
                                log=lambda _: None)
  rows = {r["model"]: r for r in out["rows"]}
  assert {"finetune", "finetune (tuned)"} <= set(rows)
  assert rows["finetune (tuned)"]["stage"] == m["stage"]
  assert rows["finetune (tuned)"]["hparams"]["lr"] == m["chosen"]["lr"]
  assert rows["finetune"]["hparams"]["lr"] == exp.selected[0].hparams["lr"]
  assert os.path.exists(os.path.join(exp.path, "results", "sweep_finetune.png"))
