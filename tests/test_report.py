"""Result rows from fixed per-example outputs (a fake model with known logits), and the files."""

import csv
import json
import os

import numpy as np
import pytest

from mu_jax.evaluation import metrics, report


def _out(logits, labels, loss=None):
  logits = np.asarray(logits, np.float32)
  labels = np.asarray(labels)
  if loss is None:
    loss = metrics.per_example_loss(logits, labels)
  return {"logits": logits, "label": labels, "loss": np.asarray(loss, np.float32)}


def _fake_model(n=40, forget_loss=0.1, unseen_loss=2.0):
  rng = np.random.default_rng(0)
  labels = np.arange(n) % 4
  right = np.eye(4)[labels] * 5.0  # top-1 correct everywhere
  second = np.eye(4)[(labels + 1) % 4] * 5.0 + np.eye(4)[labels] * 4.0  # top-1 wrong, top-2 right
  outs = {
      "test": _out(np.concatenate([right[:30], second[30:]]), labels),  # top-1 0.75, top-2 1.0
      "retain": _out(right, labels),
      "train": _out(right, labels),
      "forget": _out(right[:20], labels[:20], forget_loss + rng.uniform(0, 0.01, 20)),
      "unseen": _out(second[:20], labels[:20], unseen_loss + rng.uniform(0, 0.01, 20)),
  }
  return outs


def test_fixed_logits_give_exact_accuracies_and_attack():
  row = report.model_row("fake", _fake_model(), "multiclass", n_bootstrap=0, wall_s=2.0,
                         examples=100, retrain_wall_s=8.0)
  assert row["test_acc"] == 0.75 and row["test_top2_acc"] == 1.0
  assert row["retain_acc"] == 1.0 and row["forget_acc"] == 1.0 and row["unseen_acc"] == 0.0
  # Forget losses all below unseen losses: the reference attack separates them perfectly.
  assert row["mia_attack_acc"] == 1.0 and row["mia_forgetting_score"] == 0.5
  assert row["nomus"] == pytest.approx(0.5 * 0.75 + 0.5 * 0.0)
  assert row["mia_auroc"] == 1.0 and row["mia_tpr_at_1pct_fpr"] == 1.0
  assert row["cost_vs_retrain"] == 0.25


def test_distances_to_itself_are_zero():
  outs = _fake_model()
  row = report.model_row("retrained", outs, "multiclass", retrained=outs, n_bootstrap=0,
                         params={"w": np.ones(3)}, retrained_params={"w": np.ones(3)})
  assert row["kl_to_retrained_forget"] == pytest.approx(0.0, abs=1e-9)
  assert row["agreement_with_retrained_forget"] == 1.0
  assert row["param_l2_to_retrained"] == 0.0


def test_multilabel_row_uses_mean_attribute_accuracy():
  labels = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 1]] * 5)
  logits = np.where(labels > 0, 3.0, -3.0)
  logits[:, 2] *= -1  # third attribute always wrong: mean accuracy 2/3
  o = {"logits": logits, "label": labels, "loss": np.linspace(0.1, 1, 20)}
  outs = {s: dict(o) for s in ("test", "retain", "forget", "unseen", "train")}
  row = report.model_row("m", outs, "multilabel", n_bootstrap=0)
  assert row["test_acc"] == pytest.approx(2 / 3)
  assert np.isnan(row["test_top2_acc"]) and "svc_mia_confidence" not in row


def test_seeds_aggregate_to_mean_and_std():
  rows = report.aggregate_seeds([[{"model": "a", "test_acc": 0.5}], [{"model": "a", "test_acc": 0.7}]])
  assert rows == [{"model": "a", "seeds": 2, "test_acc": pytest.approx(0.6), "test_acc_std": pytest.approx(0.1)}]


def test_write_results_files(tmp_path):
  rows = [{"model": "original", "test_acc": 0.5951, "mia_forgetting_score": 0.2136, "nomus": 0.5839},
          {"model": "retrained", "test_acc": 0.488, "examples": 100}]
  paths = report.write_results(str(tmp_path), rows, config={"seed": 0}, manifest_hash="abc")
  data = json.load(open(paths["results.json"]))
  assert data["manifest_hash"] == "abc" and data["rows"][0]["model"] == "original"
  with open(paths["results.csv"]) as f:
    got = list(csv.DictReader(f))
  assert got[1]["examples"] == "100" and got[0]["nomus"] == "0.5839"
  table = open(paths["table.md"]).read()
  assert "| Test Acc (↑) | 0.5951 | 0.4880 |" in table
  assert "| Final Score (NoMUS) (↑) | 0.5839 | – |" in table


def test_one_column_registry_drives_the_tables_the_csv_and_the_docs():
  from mu_jax.evaluation import columns
  rows = [{"model": "scrub", "stage": "unlearned/scrub-aaaaaaaaaa", "zeta": 1, "test_acc": 0.5,
           "forget_map": 0.25},
          {"model": "scrub", "stage": "unlearned/scrub-bbbbbbbbbb", "test_acc": 0.6}]
  assert columns.csv_keys(rows) == ["model", "stage", "test_acc", "forget_map", "zeta"]
  table = columns.markdown_table(rows)
  assert "| | scrub [aaaaaaaaaa] | scrub [bbbbbbbbbb] |" in table and "forget mAP" not in table
  assert "| Test Acc (↑) | 0.5000 | 0.6000 |" in table
  retrieval = columns.markdown_table(rows, "retrieval")
  assert "| forget mAP (≈ retrained) | 0.2500 | – |" in retrieval and "Test Acc" not in retrieval
  keys = [c.key for c in columns.COLUMNS]
  assert len(keys) == len(set(keys)) and all(c.better in columns.ARROWS for c in columns.COLUMNS)
  assert all(f"`{k}`" in columns.reference_markdown() for k in keys)
  with pytest.raises(ValueError, match="unknown table"):
    columns.for_table("regression")
  sisa = [c.key for c in columns.for_table("sisa")]
  assert sisa[:len(columns.for_table("classification"))] == [c.key for c in columns.for_table(
      "classification")] and sisa[-1] == "sisa_exact_match"
  flags = [{"model": "a", "sisa_exact_match": True}, {"model": "b", "sisa_exact_match": False}]
  assert "| Equals a from-scratch retrain, bit for bit (↑) | yes | no |" in columns.markdown_table(
      flags, "sisa")


def test_the_docs_column_reference_is_the_registry():
  from mu_jax.evaluation import columns
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  text = open(os.path.join(root, "docs", "metrics.md")).read()
  block = text.split("<!-- columns:begin -->\n")[1].split("\n<!-- columns:end -->")[0]
  assert block == columns.reference_markdown()
