"""The main job end to end on a tiny config: every result file, resume, audit log, bad workdirs."""

import json
import os

import pytest

from mu_jax import audit, checkpoints, experiment
from mu_jax.models import create_model
from mu_jax.pipelines import benchmark
from tests import helpers


tiny_config = helpers.tiny_config


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("bench"))
  lines = []
  out = benchmark.run_benchmark(tiny_config(), wd, ["finetune", "neggrad"], progress=False, log=lines.append)
  return wd, out, lines


def test_benchmark_writes_every_result_file(finished):
  wd, out, _ = finished
  res = os.path.join(wd, "results")
  for name in ("results.json", "results.csv", "table.md", "loss_histograms.png", "roc_curves.png",
               "methods.png"):
    assert os.path.getsize(os.path.join(res, name)) > 0, name
  data = json.load(open(os.path.join(res, "results.json")))
  assert [r["model"] for r in data["rows"]] == ["original", "retrained", "finetune", "neggrad"]
  for key in ("test_acc", "test_top2_acc", "forget_acc", "retain_acc", "unseen_acc", "mia_attack_acc",
              "mia_forgetting_score", "nomus", "mia_auroc", "mia_tpr_at_1pct_fpr",
              "kl_to_retrained_forget", "js_to_retrained_forget", "tow", "wall_s", "examples", "cost_vs_retrain"):
    assert all(key in r for r in data["rows"]), key
  stages = [r["stage"] for r in data["rows"]]
  assert [s.rsplit("-", 1)[0] for s in stages] == ["original", "retrained", "unlearned/finetune",
                                                   "unlearned/neggrad"]
  for stage in stages:
    for split in ("train", "retain", "forget", "test", "unseen"):
      o = checkpoints.load_outputs(os.path.join(wd, stage, "outputs"), split)
      assert set(o) == {"logits", "loss", "label", "identity", "example_id"}
  assert data["rows"][2]["hparams"] == {"lr": 0.001, "epochs": 2, "momentum": 0.0, "bn_mode": "eval"}
  assert "| Test Acc (↑) |" in out["table"]


def test_every_request_has_one_complete_audit_line(finished):
  wd, _, _ = finished
  rows = audit.read_requests(wd)
  assert {r["method"] for r in rows} == {"finetune", "neggrad"}
  assert not audit.incomplete_requests(wd)
  done = [r for r in rows if r["status"] == "complete"]
  assert len(done) == 2
  for r in done:
    assert {"forget_acc", "retain_acc", "test_acc", "mia_attack_acc", "nomus"} <= set(r["evaluation"])


def test_rerun_skips_finished_stages(finished):
  wd, out, _ = finished
  lines = []
  again = benchmark.run_benchmark(tiny_config(), wd, ["finetune", "neggrad"], progress=False, log=lines.append)
  assert all("(0.0 s this call)" in l for l in lines[:2]), lines
  assert [r["test_acc"] for r in again["rows"]] == [r["test_acc"] for r in out["rows"]]


def test_workdir_of_another_config_is_refused(finished):
  wd, _, _ = finished
  other = tiny_config()
  other["train"]["lr"] = 0.5
  with pytest.raises(checkpoints.WorkdirError, match="another config"):
    experiment.Experiment.create(other, wd)


def test_checkpoint_of_another_model_is_refused(finished):
  wd, _, _ = finished
  cfg = tiny_config()
  cfg["model"]["width"] = 8
  exp = experiment.Experiment.create(tiny_config(), wd)
  exp.model = create_model("small_cnn", 8, width=8)
  with pytest.raises(checkpoints.CheckpointError, match="another model"):
    exp.load_state("original")


def test_crash_between_done_and_audit_completion_is_closed_on_rerun(finished):
  wd, _, _ = finished
  path = os.path.join(wd, audit.LOG_NAME)
  lines = open(path).read().splitlines(keepends=True)
  last_complete = max(i for i, l in enumerate(lines) if json.loads(l)["status"] == "complete")
  request_id = json.loads(lines[last_complete])["request_id"]
  with open(path, "w") as f:  # as if killed after done.json, before the complete line
    f.writelines(lines[:last_complete] + lines[last_complete + 1:])
  assert [r["request_id"] for r in audit.incomplete_requests(wd)] == [request_id]
  benchmark.run_benchmark(tiny_config(), wd, ["finetune", "neggrad"], progress=False, log=lambda _: None)
  assert not audit.incomplete_requests(wd)
  completes = [r["request_id"] for r in audit.read_requests(wd) if r["status"] == "complete"]
  assert sorted(completes) == sorted(set(completes)) and request_id in completes
