"""Scores per-example outputs written by any framework into the benchmark's result rows.

A model that was trained or unlearned outside mu_jax (PyTorch, another JAX codebase) is evaluated by
the same code as mu_jax's own models: :func:`evaluate_outputs` reads one folder of ``.npz`` files per
model and turns each into the row of :func:`mu_jax.evaluation.report.model_row`, every model scored
against the retrained one (forget accuracy and attack numbers are judged by their distance to it).

The ``.npz`` contract, one file per split in each model's folder::

  DIR/forget.npz  DIR/retain.npz  DIR/test.npz  DIR/unseen.npz   required
  DIR/train.npz                                                  optional (adds train_acc)

  array       shape / dtype                    meaning
  logits      [N, C] float                     the model's eval-mode outputs, before softmax/sigmoid
  label       [N] int (multiclass)             class index 0..C-1
              [N, C] 0/1 (multilabel)          one column per attribute
  identity    [N] str or int                   the person each example shows
  loss        [N] float, optional              per-example loss; when absent it is computed from the
                                               logits: cross-entropy (multiclass) or binary cross-
                                               entropy averaged over the C attributes (multilabel),
                                               as mu_jax.training.evaluate computes it
  example_id  [N] str, optional                a stable id per example (e.g. the image path)

Every model's split must list the same examples in the same order as the retrained model's (checked
on ``example_id`` where both have it, else on the labels), because the distances to the retrained
model compare outputs example by example. Strings must be saved as numpy string arrays
(``np.asarray(list_of_str)``), not object arrays: the files are read without pickle.

Writing such files from PyTorch (``loaders`` maps each split to a DataLoader in a fixed order)::

  model.eval()
  for split, loader in loaders.items():
    with torch.no_grad():
      logits = torch.cat([model(x) for x, _ in loader]).numpy()
    np.savez(f"outputs/mymethod/{split}.npz", logits=logits, label=labels[split], identity=persons[split])

Then ``python -m experiments.evaluate_outputs --outputs=original=outputs/original,retrained=
outputs/retrained,mymethod=outputs/mymethod --task=multiclass --out=results`` prints the table.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from mu_jax.data.splits import SPLITS, SplitManifest
from mu_jax.evaluation import metrics, report

REQUIRED_SPLITS = ("forget", "retain", "test", "unseen")
OPTIONAL_SPLITS = ("train",)
TASKS = ("multiclass", "multilabel")


class OutputsError(ValueError):
  """Outputs that break the contract: the message names the model, file and array."""


def _array(z: Any, name: str, path: str) -> np.ndarray:
  try:
    return np.asarray(z[name])
  except ValueError as e:  # an object array needs pickle, which is refused
    raise OutputsError(f"{path}: array {name!r} cannot be read without pickle ({e}); save strings "
                       "as np.asarray(list_of_str), not as an object array") from None


def read_split(path: str | os.PathLike[str], task: str) -> dict[str, np.ndarray]:
  """Reads and validates one split's ``.npz``.

  Args:
    path: the file.
    task: "multiclass" or "multilabel".

  Returns:
    {"logits" float32 [N, C], "label", "identity" str [N], "loss" float [N], and "example_id" str
    [N] if the file has it}; ``loss`` computed from the logits when the file has none.

  Raises:
    OutputsError: the file is missing or unreadable, an array is missing, has the wrong rank, a
      length that differs from ``logits``', a label out of range, or non-finite values.
  """
  path = os.fspath(path)
  if task not in TASKS:
    raise OutputsError(f"task must be one of {TASKS}, got {task!r}")
  if not os.path.isfile(path):
    raise OutputsError(f"{path}: outputs file not found")
  try:
    z = np.load(path, allow_pickle=False)
  except Exception as e:  # noqa: BLE001  (numpy raises several types for a bad file)
    raise OutputsError(f"{path}: not a readable .npz file ({e})") from None
  with z:
    missing = [k for k in ("logits", "label", "identity") if k not in z.files]
    if missing:
      raise OutputsError(f"{path}: lacks arrays {missing}; found {sorted(z.files)}; each split needs "
                         "logits, label and identity (loss and example_id are optional)")
    out = {k: _array(z, k, path) for k in ("logits", "label", "identity", "loss", "example_id")
           if k in z.files}
  logits = out["logits"]
  if logits.ndim != 2 or not np.issubdtype(logits.dtype, np.number):
    raise OutputsError(f"{path}: logits must be a numeric [N, C] array, got shape {logits.shape} "
                       f"dtype {logits.dtype}")
  n, c = logits.shape
  for k, v in out.items():
    rows = len(v) if v.ndim else 0
    if rows != n:
      raise OutputsError(f"{path}: {k} has {rows} rows but logits has {n}; every array holds one "
                         "row per example")
  if not np.isfinite(logits).all():
    bad = int(np.flatnonzero(~np.isfinite(logits).all(axis=1))[0])
    raise OutputsError(f"{path}: logits of row {bad} are not finite")
  label = out["label"]
  if task == "multiclass":
    if label.ndim != 1 or not np.issubdtype(label.dtype, np.integer):
      raise OutputsError(f"{path}: multiclass label must be an integer [N] array, got shape "
                         f"{label.shape} dtype {label.dtype}")
    bad = np.flatnonzero((label < 0) | (label >= c))
    if bad.size:
      raise OutputsError(f"{path}: label {int(label[bad[0]])} of row {int(bad[0])} is not a class "
                         f"index below C={c} (the width of logits)")
  else:
    if label.shape != (n, c):
      raise OutputsError(f"{path}: multilabel label must be [N, C] = {(n, c)} like logits, got "
                         f"{label.shape}")
    bad = np.flatnonzero(~np.isin(label, (0, 1)).all(axis=1))
    if bad.size:
      raise OutputsError(f"{path}: multilabel label of row {int(bad[0])} is not all 0/1")
  out["logits"] = logits.astype(np.float32, copy=False)
  out["identity"] = out["identity"].astype(str)
  if "example_id" in out:
    out["example_id"] = out["example_id"].astype(str)
  if "loss" in out:
    if out["loss"].ndim != 1 or not np.isfinite(out["loss"]).all():
      raise OutputsError(f"{path}: loss must be a finite [N] vector")
  else:
    out["loss"] = metrics.per_example_loss(out["logits"], label, task).astype(np.float32)
  return out


def read_outputs(directory: str | os.PathLike[str], task: str) -> dict[str, dict[str, np.ndarray]]:
  """Reads one model's folder: {split: :func:`read_split`} for the required and present optional splits.

  Raises:
    OutputsError: the folder or a required split's file is missing, or a file breaks the contract.
  """
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise OutputsError(f"{directory}: outputs folder not found")
  missing = [s for s in REQUIRED_SPLITS if not os.path.isfile(os.path.join(directory, f"{s}.npz"))]
  if missing:
    raise OutputsError(f"{directory}: lacks split files {[f'{s}.npz' for s in missing]}; every model "
                       f"needs {[f'{s}.npz' for s in REQUIRED_SPLITS]}")
  splits = [s for s in SPLITS if s in REQUIRED_SPLITS
            or os.path.isfile(os.path.join(directory, f"{s}.npz"))]
  return {s: read_split(os.path.join(directory, f"{s}.npz"), task) for s in splits}


def _check_aligned(name: str, outputs: Mapping[str, Mapping[str, np.ndarray]],
                   retrained: Mapping[str, Mapping[str, np.ndarray]], retrained_name: str) -> None:
  for s, ref in retrained.items():
    if s not in outputs:
      continue
    out = outputs[s]
    where = f"{name}/{s}.npz vs {retrained_name}/{s}.npz"
    if len(out["logits"]) != len(ref["logits"]) or out["logits"].shape[1] != ref["logits"].shape[1]:
      raise OutputsError(f"{where}: logits of shape {out['logits'].shape} and {ref['logits'].shape}; "
                         "every model must be evaluated on the same examples with the same head")
    if "example_id" in out and "example_id" in ref:
      differ = np.flatnonzero(out["example_id"] != ref["example_id"])
      key = "example_id"
    else:
      unequal = np.asarray(out["label"]) != np.asarray(ref["label"])
      differ = np.flatnonzero(unequal.reshape(len(unequal), -1).any(axis=1))
      key = "label"
    if differ.size:
      i = int(differ[0])
      raise OutputsError(f"{where}: {key} of row {i} differs ({out[key][i]!r} vs {ref[key][i]!r}); "
                         "the examples must be in the same order in every model's files")


def manifest_hash(outputs: Mapping[str, Mapping[str, np.ndarray]]) -> str:
  """The split manifest's content hash, when the outputs carry it; else "".

  With all five splits and ``example_id`` in each, (example_id, identity) per split is the manifest
  (:class:`mu_jax.data.splits.SplitManifest`), so the hash equals the one of the workdir the outputs
  came from and ties the results to the exact split.
  """
  if not all(s in outputs and "example_id" in outputs[s] for s in SPLITS):
    return ""
  return SplitManifest("outputs", {s: list(zip(outputs[s]["example_id"].tolist(),
                                               outputs[s]["identity"].tolist())) for s in SPLITS}
                       ).content_hash


def evaluate_outputs(paths_by_model: Mapping[str, str | os.PathLike[str]], task: str, *,
                     retrained: str = "retrained", nomus_lambda: float = 0.5,
                     n_bootstrap: int = 200) -> list[dict[str, Any]]:
  """Result rows of every model, each against the retrained model.

  Args:
    paths_by_model: {model name: folder of split .npz files}, e.g. {"original": ..., "retrained":
      ..., "mymethod": ...}; rows come back in this order.
    task: "multiclass" or "multilabel".
    retrained: which entry is the retrained model.
    nomus_lambda: NoMUS weight of test accuracy.
    n_bootstrap: bootstrap replicates of the attack intervals.

  Returns:
    One :func:`mu_jax.evaluation.report.model_row` per model (``model`` = its name).

  Raises:
    OutputsError: no retrained entry, or a folder that breaks the contract (named).
  """
  if retrained not in paths_by_model:
    raise OutputsError(f"no {retrained!r} entry among {list(paths_by_model)}: every model is scored "
                       "against the retrained model's outputs")
  outputs = {name: read_outputs(path, task) for name, path in paths_by_model.items()}
  ref = outputs[retrained]
  for name, out in outputs.items():
    _check_aligned(name, out, ref, retrained)
  return [report.model_row(name, out, task, retrained=ref, nomus_lambda=nomus_lambda,
                           n_bootstrap=n_bootstrap) for name, out in outputs.items()]
