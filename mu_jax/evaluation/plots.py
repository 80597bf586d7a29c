"""Plots of a benchmark run: loss histograms, ROC curves of the loss attack, a per-method bar chart."""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mu_jax.evaluation import attacks  # noqa: E402


def loss_histograms(path: str, outputs: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]) -> str:
  """One panel per model: per-example loss of forget (members) against unseen (non-members)."""
  names = list(outputs)
  cols = min(4, len(names))
  rows = math.ceil(len(names) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
  for ax, name in zip(axes.flat, names):
    f, u = outputs[name]["forget"]["loss"], outputs[name]["unseen"]["loss"]
    hi = float(np.percentile(np.concatenate([f, u]), 99)) or 1.0
    bins = np.linspace(0, hi, 30)
    ax.hist(np.clip(f, 0, hi), bins, alpha=0.6, density=True, label="forget")
    ax.hist(np.clip(u, 0, hi), bins, alpha=0.6, density=True, label="unseen")
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("per-example loss", fontsize=8)
  for ax in list(axes.flat)[len(names):]:
    ax.axis("off")
  axes.flat[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def roc_curves(path: str, outputs: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]) -> str:
  """ROC of the loss-threshold attack (forget vs unseen) for every model, log-scaled FPR."""
  fig, ax = plt.subplots(figsize=(5.5, 4.5))
  for name, out in outputs.items():
    fpr, tpr, _ = attacks.roc_curve_scores(-np.asarray(out["forget"]["loss"]), -np.asarray(out["unseen"]["loss"]))
    ax.plot(np.maximum(fpr, 1e-4), tpr, label=f"{name} (AUC {attacks.auroc(-out['forget']['loss'], -out['unseen']['loss']):.3f})",
            lw=2 if name in ("original", "retrained") else 1)
  grid = np.logspace(-4, 0, 50)
  ax.plot(grid, grid, "k:", lw=1)
  ax.set_xscale("log")
  ax.set_xlabel("false-positive rate (unseen called member)")
  ax.set_ylabel("true-positive rate (forget called member)")
  ax.legend(fontsize=6, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def method_bars(path: str, rows: Sequence[Mapping[str, Any]]) -> str:
  """NoMUS and forget accuracy per model, with the retrained model's values as reference lines."""
  names = [r["model"] for r in rows]
  x = np.arange(len(names))
  fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 3.8))
  for off, key, label in ((-0.2, "nomus", "NoMUS"), (0.2, "forget_acc", "forget accuracy")):
    vals = [r.get(key, np.nan) for r in rows]
    errs = [r.get(f"{key}_std", 0.0) for r in rows]
    ax.bar(x + off, vals, 0.4, yerr=errs, label=label)
  retrained = next((r for r in rows if r["model"] == "retrained"), None)
  if retrained:
    ax.axhline(retrained.get("forget_acc", np.nan), color="C1", ls="--", lw=1)
    ax.axhline(retrained.get("nomus", np.nan), color="C0", ls="--", lw=1)
  ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
  ax.set_ylim(0, 1)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def sweep_candidates(path: str, method: str, candidates: Sequence[Mapping[str, Any]],
                     criterion: str, chosen: Mapping[str, Any]) -> str:
  """A sweep's criterion against each hyperparameter it varied (log axis for positive values),
  one panel per hyperparameter, the chosen candidate marked."""
  names = sorted({k for c in candidates for k in c["hparams"]})
  fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
  for ax, name in zip(axes[0], names):
    xs = np.asarray([c["hparams"][name] for c in candidates], np.float64)
    ys = np.asarray([c[criterion] for c in candidates], np.float64)
    ax.scatter(xs, ys, s=18)
    ax.scatter([chosen[name]], [ys[[c["hparams"] == dict(chosen) for c in candidates]][0]],
               s=80, facecolors="none", edgecolors="C3", label="chosen")
    if np.all(xs > 0):
      ax.set_xscale("log")
    ax.set_xlabel(name)
    ax.set_ylabel(f"{criterion} ({'higher' if criterion == 'tow' else 'lower'} is better)")
    ax.set_title(method, fontsize=9)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def write_plots(directory: str, outputs, rows) -> list[str]:
  os.makedirs(directory, exist_ok=True)
  return [loss_histograms(os.path.join(directory, "loss_histograms.png"), outputs),
          roc_curves(os.path.join(directory, "roc_curves.png"), outputs),
          method_bars(os.path.join(directory, "methods.png"), rows)]
