"""Tests of the outputs evaluator: .npz files written with numpy, scored like the benchmark."""

import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from mu_jax.data.splits import SplitManifest
from mu_jax.evaluation import outputs_table, report
from mu_jax.training import losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"train": 50, "retain": 30, "forget": 20, "test": 40, "unseen": 24}
C = 4


def _split_arrays(rng, task, split, n, shift):
  """Logits of one model on one split; the same examples (ids, persons, labels) for every model."""
  ids_rng = np.random.default_rng(SIZES[split])
  labels = (ids_rng.integers(0, C, n) if task == "multiclass" else ids_rng.integers(0, 2, (n, C)))
  return {"logits": (rng.normal(size=(n, C)) + shift).astype(np.float32), "label": labels,
          "identity": np.asarray([f"p{split}{i // 2}" for i in range(n)]),
          "example_id": np.asarray([f"{split}/{i:03d}.png" for i in range(n)])}


def _write_model(directory, seed, task, *, with_loss, splits=tuple(SIZES)):
  rng = np.random.default_rng(seed)
  os.makedirs(directory, exist_ok=True)
  arrays = {}
  for s in splits:
    a = _split_arrays(rng, task, s, SIZES[s], shift=0.3 * seed)
    if with_loss:
      a["loss"] = rng.uniform(0, 2, SIZES[s]).astype(np.float32)
    np.savez(os.path.join(directory, f"{s}.npz"), **a)
    arrays[s] = a
  return arrays


def _same_row(got, want):
  assert list(got) == list(want)
  for k, v in want.items():
    if isinstance(v, float) and math.isnan(v):
      assert math.isnan(got[k]), k
    else:
      assert got[k] == v, k


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_rows_equal_model_row_on_the_same_arrays(tmp_path, task):
  written = {"original": _write_model(tmp_path / "original", 1, task, with_loss=False),
             "retrained": _write_model(tmp_path / "retrained", 2, task, with_loss=True),
             "mymethod": _write_model(tmp_path / "mymethod", 3, task, with_loss=False,
                                      splits=outputs_table.REQUIRED_SPLITS)}
  rows = outputs_table.evaluate_outputs({k: str(tmp_path / k) for k in written}, task, n_bootstrap=20)
  assert [r["model"] for r in rows] == ["original", "retrained", "mymethod"]
  # Files without "loss" get the training loss of mu_jax.training (jax) computed from the logits.
  for name in ("original", "mymethod"):
    loaded = outputs_table.read_outputs(tmp_path / name, task)
    a = written[name]["forget"]
    jax_loss = losses.per_example_loss(jnp.asarray(a["logits"]), jnp.asarray(a["label"]), task)
    np.testing.assert_allclose(loaded["forget"]["loss"], np.asarray(jax_loss), rtol=1e-5, atol=1e-6)
    for s, a in written[name].items():
      a["loss"] = loaded[s]["loss"]
  for row, (name, arrays) in zip(rows, written.items()):
    want = report.model_row(name, arrays, task, retrained=written["retrained"], n_bootstrap=20)
    assert ("train_acc" in row) == (name != "mymethod")
    _same_row(row, want)
  assert rows[1]["kl_to_retrained_forget"] == 0.0 and rows[0]["kl_to_retrained_forget"] > 0


def test_manifest_hash_from_outputs(tmp_path):
  arrays = _write_model(tmp_path / "retrained", 2, "multiclass", with_loss=True)
  outputs = outputs_table.read_outputs(tmp_path / "retrained", "multiclass")
  want = SplitManifest("any", {s: list(zip(a["example_id"], a["identity"])) for s, a in arrays.items()})
  assert outputs_table.manifest_hash(outputs) == want.content_hash
  del outputs["train"]
  assert outputs_table.manifest_hash(outputs) == ""


def test_contract_violations_are_named(tmp_path):
  _write_model(tmp_path / "retrained", 2, "multiclass", with_loss=True)
  good = {"retrained": str(tmp_path / "retrained")}
  with pytest.raises(outputs_table.OutputsError, match=r"no 'retrained' entry among \['a'\]"):
    outputs_table.evaluate_outputs({"a": good["retrained"]}, "multiclass")
  m = tmp_path / "m"
  _write_model(m, 3, "multiclass", with_loss=False)
  os.remove(m / "unseen.npz")
  with pytest.raises(outputs_table.OutputsError, match=r"m: lacks split files \['unseen.npz'\]"):
    outputs_table.evaluate_outputs({**good, "m": str(m)}, "multiclass")
  rng = np.random.default_rng(0)
  a = _split_arrays(rng, "multiclass", "unseen", SIZES["unseen"], 0.0)
  np.savez(m / "unseen.npz", logits=a["logits"], identity=a["identity"])
  with pytest.raises(outputs_table.OutputsError, match=r"unseen.npz: lacks arrays \['label'\]"):
    outputs_table.read_outputs(m, "multiclass")
  np.savez(m / "unseen.npz", **dict(a, label=a["label"][:-1]))
  with pytest.raises(outputs_table.OutputsError, match="unseen.npz: label has 23 rows but logits has 24"):
    outputs_table.read_outputs(m, "multiclass")
  np.savez(m / "unseen.npz", **dict(a, label=np.full(SIZES["unseen"], C)))
  with pytest.raises(outputs_table.OutputsError, match="unseen.npz: label 4 of row 0 is not a class index"):
    outputs_table.read_outputs(m, "multiclass")
  with pytest.raises(outputs_table.OutputsError, match=r"multilabel label must be \[N, C\]"):
    outputs_table.read_outputs(good["retrained"], "multilabel")
  np.savez(m / "unseen.npz", **dict(a, identity=np.asarray(list(a["identity"]), dtype=object)))
  with pytest.raises(outputs_table.OutputsError, match="'identity' cannot be read without pickle"):
    outputs_table.read_outputs(m, "multiclass")
  np.savez(m / "unseen.npz", **dict(a, example_id=a["example_id"][::-1]))
  with pytest.raises(outputs_table.OutputsError,
                     match=r"m/unseen.npz vs retrained/unseen.npz: example_id of row 0 differs"):
    outputs_table.evaluate_outputs({**good, "m": str(m)}, "multiclass")


def test_script_prints_the_table_and_writes_results(tmp_path):
  for k, seed in (("original", 1), ("retrained", 2)):
    _write_model(tmp_path / k, seed, "multiclass", with_loss=False)
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  res = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate_outputs", "--task=multiclass",
       f"--outputs=original={tmp_path / 'original'},retrained={tmp_path / 'retrained'}",
       f"--out={tmp_path / 'results'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  assert "| | original | retrained |" in res.stdout
  saved = json.loads((tmp_path / "results" / "results.json").read_text())
  assert [r["model"] for r in saved["rows"]] == ["original", "retrained"]
  assert len(saved["manifest_hash"]) == 16
  assert (tmp_path / "results" / "results.csv").exists()
  res = subprocess.run([sys.executable, "-m", "experiments.evaluate_outputs", "--outputs=original",
                        f"--out={tmp_path / 'r2'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
  assert res.returncode != 0 and "--outputs entry 'original' is not name=dir" in res.stderr
