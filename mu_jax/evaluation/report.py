"""One result row per model, and the files that hold them (``docs/workdir.md``, ``docs/metrics.md``).

:func:`model_row` turns the per-example outputs of every split (``<stage>/outputs/<split>.npz``)
into the flat row of the contract: accuracies, the reference attack (raw accuracy *and* forgetting
score, never confused), NoMUS, the stronger attacks, the distance to the retrained model, cost.
:func:`write_results` writes ``results.json``, ``results.csv`` and ``table.md``; the columns, their
labels and which direction is better come from :mod:`mu_jax.evaluation.columns`.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from mu_jax import checkpoints
from mu_jax.evaluation import attacks, columns, distances, metrics, mia, population

Outputs = Mapping[str, Mapping[str, np.ndarray]]


def accuracy(out: Mapping[str, np.ndarray], task: str, k: int = 1) -> float:
  """Top-k accuracy of one split's outputs ({"logits", "label"}); multi-label: per-attribute
  accuracy (k = 1 only); nan for an empty split."""
  if len(out["label"]) == 0:
    return float("nan")
  if task == "multilabel":
    return float(metrics.multilabel_accuracy(out["logits"], out["label"])[0]) if k == 1 else float("nan")
  return float(metrics.topk_accuracy(out["logits"], out["label"], k))


def model_row(name: str, outputs: Outputs, task: str, *, retrained: Outputs | None = None,
              params: Any = None, retrained_params: Any = None, nomus_lambda: float = 0.5,
              n_bootstrap: int = 200, wall_s: float | None = None, examples: int | None = None,
              retrain_wall_s: float | None = None) -> dict[str, Any]:
  """Every metric of one model from its per-example outputs.

  Args:
    name: the row's ``model`` (original, retrained, a method's registry name, sisa).
    outputs: {split: {"logits", "loss", "label", ...}} for train/retain/forget/test/unseen.
    task: "multiclass" or "multilabel".
    retrained: the retrained model's outputs, for the distances and ToW (None: they are omitted).
    params, retrained_params: parameter trees for the ℓ2 distance (optional).
    nomus_lambda: NoMUS weight of test accuracy.
    n_bootstrap: bootstrap replicates of the attack intervals.
    wall_s, examples: cost of producing this model.
    retrain_wall_s: the retrained model's wall seconds (for ``cost_vs_retrain``).

  Returns:
    A flat dict with the contract's keys plus extra columns (``*_ci_low/high``, SVC-MIA, ...).
  """
  row: dict[str, Any] = {"model": name}
  for s in ("test", "forget", "retain", "unseen", "train"):
    if s in outputs:
      row[f"{s}_acc"] = accuracy(outputs[s], task)
  row["test_top2_acc"] = accuracy(outputs["test"], task, k=2)
  ref = mia.reference_mia(outputs["forget"]["loss"], outputs["unseen"]["loss"])
  row["mia_attack_acc"] = ref["mia_attack_acc"]
  row["mia_forgetting_score"] = ref["mia_forgetting_score"]
  row["nomus"] = mia.nomus(row["test_acc"], ref["mia_attack_acc"], nomus_lambda)
  strong = attacks.loss_attack(outputs["forget"]["loss"], outputs["unseen"]["loss"],
                               n_bootstrap=n_bootstrap)
  row["mia_auroc"] = strong["auroc"]
  row["mia_tpr_at_1pct_fpr"] = strong["tpr_at_1pct_fpr"]
  row["mia_tpr_at_0.1pct_fpr"] = strong["tpr_at_0.1pct_fpr"]
  for k in ("auroc", "tpr_at_1pct_fpr"):
    if f"{k}_ci_low" in strong:
      row[f"mia_{k}_ci_low"], row[f"mia_{k}_ci_high"] = strong[f"{k}_ci_low"], strong[f"{k}_ci_high"]
  row["mia_auroc_forget_vs_test"] = attacks.auroc(-np.asarray(outputs["forget"]["loss"]),
                                                  -np.asarray(outputs["test"]["loss"]))
  if task == "multiclass" and len(outputs["retain"]["label"]) >= len(outputs["test"]["label"]):
    probs = {s: metrics.probabilities(outputs[s]["logits"], task) for s in ("retain", "test", "forget")}
    svc = attacks.svc_mia_forget_efficacy(probs["retain"], outputs["retain"]["label"], probs["test"],
                                          outputs["test"]["label"], probs["forget"],
                                          outputs["forget"]["label"], features=("confidence", "m_entropy"))
    row["svc_mia_confidence"], row["svc_mia_m_entropy"] = svc["confidence"], svc["m_entropy"]
  if retrained is not None:
    splits = ("forget", "retain", "test")
    if all(s in outputs and s in retrained for s in splits):
      row["tow"] = population.tow(*(row[f"{s}_acc"] for s in splits),
                                  *(accuracy(retrained[s], task) for s in splits))
    for s in ("forget", "test"):
      row[f"kl_to_retrained_{s}"] = distances.kl_divergence(outputs[s]["logits"], retrained[s]["logits"], task)
      row[f"js_to_retrained_{s}"] = distances.js_divergence(outputs[s]["logits"], retrained[s]["logits"], task)
      row[f"agreement_with_retrained_{s}"] = distances.top1_agreement(
          outputs[s]["logits"], retrained[s]["logits"], task)
  if params is not None and retrained_params is not None:
    row["param_l2_to_retrained"] = distances.param_l2_distance(params, retrained_params)
  if wall_s is not None:
    row["wall_s"] = float(wall_s)
  if examples is not None:
    row["examples"] = int(examples)
  if wall_s is not None and retrain_wall_s:
    row["cost_vs_retrain"] = float(wall_s) / float(retrain_wall_s)
  return row


def aggregate_seeds(rows_per_seed: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
  """Mean over seeds of every numeric key, plus ``<key>_std`` (population std, ddof=0).

  A row also keeps ``hparams``, the ``stage`` its seeds share, and ``halted`` when any seed halted.
  """
  by_model: dict[str, list[Mapping[str, Any]]] = {}
  for rows in rows_per_seed:
    for r in rows:
      by_model.setdefault(r["model"], []).append(r)
  out = []
  for model, rs in by_model.items():
    row: dict[str, Any] = {"model": model, "seeds": len(rs)}
    if "hparams" in rs[0]:
      row["hparams"] = rs[0]["hparams"]
    if rs[0].get("stage") and all(r.get("stage") == rs[0]["stage"] for r in rs):
      row["stage"] = rs[0]["stage"]
    if any(r.get("halted") for r in rs):
      row["halted"] = True
    for k in rs[0]:
      vals = [r.get(k) for r in rs]
      if k != "model" and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        row[k] = float(np.mean(vals))
        row[f"{k}_std"] = float(np.std(vals))
    out.append(row)
  return out


def markdown_table(rows: Sequence[Mapping[str, Any]], table: str = "classification") -> str:
  """Models as columns and metrics as rows (:func:`mu_jax.evaluation.columns.markdown_table`)."""
  return columns.markdown_table(rows, table)


def write_results(directory: str, rows: Sequence[Mapping[str, Any]], *, config: Mapping[str, Any],
                  manifest_hash: str, notes: str = "", name: str = "results",
                  table: str = "classification") -> dict[str, str]:
  """Writes ``<name>.json`` ({config, manifest_hash, rows}), ``<name>.csv`` and a Markdown table
  with its legend (``table.md`` for the benchmark, ``<name>.md`` otherwise), each atomically.

  Returns:
    {file name: path} of the three files.
  """
  os.makedirs(directory, exist_ok=True)
  md = "table.md" if name == "results" else f"{name}.md"
  paths = {n: os.path.join(directory, n) for n in (f"{name}.json", f"{name}.csv", md)}
  payload = {"config": config, "manifest_hash": manifest_hash, "rows": list(rows)}
  _atomic(paths[f"{name}.json"], json.dumps(payload, indent=1, default=checkpoints.json_default))
  write_csv(paths[f"{name}.csv"], rows)
  text = columns.markdown_table(rows, table) + "\n\n" + columns.legend(table) + "\n"
  _atomic(paths[md], text + (f"\n{notes}\n" if notes else ""))
  return paths


def write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
  """One CSV row per result row, columns in :func:`~mu_jax.evaluation.columns.csv_keys` order
  (atomic: temp + rename)."""
  keys = columns.csv_keys(rows)
  with checkpoints.atomic_write(path, newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    for r in rows:
      w.writerow({k: r.get(k, "") for k in keys})


def _atomic(path: str, text: str) -> None:
  with checkpoints.atomic_write(path) as f:
    f.write(text)

