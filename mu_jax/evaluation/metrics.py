"""Accuracy and per-example loss from saved logits, on the host (numpy and scipy).

Every evaluation in mu_jax starts from the per-example outputs a model wrote to
``WORKDIR/<stage>/outputs/<split>.npz`` (docs/metrics.md#per-example-outputs): logits of shape [N,
C] and labels of shape [N] (``task="multiclass"``: softmax + cross-entropy) or [N, A] of 0/1
(``task="multilabel"``: one sigmoid per attribute + binary cross-entropy). The functions here turn
those arrays into the accuracies and losses the reference protocol reports
(ndb796/MachineUnlearning@9813cd7:01_MUFAC/ Machine_Unlearning_MUFAC_Base_Models.ipynb cells 26-27;
docs/metrics.md):

- top-1 and top-2 accuracy (MUFAC reports both);
- multi-label accuracy: an attribute is predicted present when its sigmoid exceeds 0.5, which is the
  same as its logit exceeding 0, and the reported number is the mean of the per-attribute accuracies;
- per-example losses with ``reduction="none"`` semantics: CE for a class task, and for a multi-label
  task the BCE-with-logits averaged over attributes (what the MUCAC ``cal_mia`` feeds its attacker).

The losses are computed in float64 with the usual log-sum-exp and softplus rearrangements (scipy's
``log_softmax`` and ``log_expit``), so a logit of ±1000 gives a finite, exact loss instead of
``inf`` or ``nan``. tests/test_metrics_against_libraries.py checks top-k accuracy and the losses
against scikit-learn's ``top_k_accuracy_score`` and ``log_loss``.
"""

from __future__ import annotations

import numpy as np
from scipy import special

TASKS = ("multiclass", "multilabel")


def _check_task(task: str) -> None:
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _as_logits(logits, name: str = "logits", ndim: int = 2) -> np.ndarray:
  """Returns ``logits`` as float64 after checking rank and finiteness."""
  x = np.asarray(logits, dtype=np.float64)
  if x.ndim != ndim:
    raise ValueError(f"{name} must have {ndim} dimensions ([N, C]), got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} holds non-finite values (nan or inf)")
  return x


def _class_labels(labels, n: int, num_classes: int, name: str = "labels") -> np.ndarray:
  """Checks class-index labels against the logits they go with."""
  y = np.asarray(labels)
  if y.shape != (n,):
    raise ValueError(f"{name} must have shape ({n},) to match the logits, got {y.shape}")
  if n and not np.issubdtype(y.dtype, np.integer):
    # Float labels that hold whole numbers are accepted (they come back from some savers that way).
    if not np.all(np.equal(np.mod(y, 1), 0)):
      raise ValueError(f"{name} must be integer class indices, got dtype {y.dtype}")
  y = y.astype(np.int64)
  if n and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"{name} must lie in [0, {num_classes}), got values in [{y.min()}, {y.max()}]")
  return y


def _binary_labels(labels, shape: tuple[int, ...], name: str = "labels") -> np.ndarray:
  """Checks 0/1 multi-label targets against the logits they go with."""
  y = np.asarray(labels)
  if y.shape != shape:
    raise ValueError(f"{name} must have shape {shape} to match the logits, got {y.shape}")
  y = y.astype(np.float64)
  if not np.all((y == 0) | (y == 1)):
    raise ValueError(f"{name} of a multi-label task must be 0 or 1")
  return y


def log_softmax(logits, axis: int = -1) -> np.ndarray:
  """Numerically stable log-softmax in float64 (``scipy.special.log_softmax``)."""
  return special.log_softmax(np.asarray(logits, dtype=np.float64), axis=axis)


def softmax(logits, axis: int = -1) -> np.ndarray:
  """Numerically stable softmax (``scipy.special.softmax``).

  Args:
    logits: array of any shape.
    axis: the class axis.

  Returns:
    float64 probabilities that sum to 1 along ``axis``.
  """
  return special.softmax(np.asarray(logits, dtype=np.float64), axis=axis)


def log_sigmoid(logits) -> np.ndarray:
  """log σ(x), with neither tail overflowing (``scipy.special.log_expit``)."""
  return special.log_expit(np.asarray(logits, dtype=np.float64))


def sigmoid(logits) -> np.ndarray:
  """σ(x) without overflow for large |x| (``scipy.special.expit``)."""
  return special.expit(np.asarray(logits, dtype=np.float64))


def probabilities(logits, task: str = "multiclass") -> np.ndarray:
  """Model probabilities from logits: softmax for a class task, per-attribute sigmoid otherwise.

  Args:
    logits: [N, C] logits.
    task: "multiclass" or "multilabel".

  Returns:
    float64 [N, C] probabilities.
  """
  _check_task(task)
  x = _as_logits(logits)
  return softmax(x) if task == "multiclass" else sigmoid(x)


def topk_accuracy(logits, labels, k: int = 1) -> float:
  """Fraction of examples whose label is among the ``k`` largest logits.

  Ties are broken the way ``np.argmax`` breaks them, toward the lower class index, so ``k=1`` always
  equals ``mean(argmax(logits) == labels)``: the label's rank is the number of classes with a larger
  logit plus the number of lower-indexed classes with an equal one.

  Args:
    logits: [N, C] logits (or probabilities; only the order matters).
    labels: [N] integer class indices.
    k: how many top classes count as a hit (MUFAC reports k=1 and k=2).

  Returns:
    The accuracy in [0, 1].
  """
  x = _as_logits(logits)
  n, c = x.shape
  if not 1 <= k <= c:
    raise ValueError(f"k must be in [1, {c}] for {c} classes, got {k}")
  if n == 0:
    raise ValueError("logits is empty: accuracy of no examples is undefined")
  y = _class_labels(labels, n, c)
  true_logit = x[np.arange(n), y][:, None]
  lower_index = np.arange(c)[None, :] < y[:, None]
  rank = np.sum(x > true_logit, axis=1) + np.sum((x == true_logit) & lower_index, axis=1)
  return float(np.mean(rank < k))


def multilabel_accuracy(logits, labels) -> tuple[float, np.ndarray]:
  """Accuracy of a multi-label head, as MUCAC reports it.

  An attribute is predicted present when σ(logit) > 0.5, i.e. when logit > 0 (a logit of exactly 0
  is "absent", as ``sigmoid > 0.5`` would say).

  Args:
    logits: [N, A] logits, one per attribute.
    labels: [N, A] 0/1 targets.

  Returns:
    ``(mean, per_attribute)``: the mean over attributes of the per-attribute accuracies, and those
    A accuracies as a float64 array.
  """
  x = _as_logits(logits)
  if x.shape[0] == 0:
    raise ValueError("logits is empty: accuracy of no examples is undefined")
  y = _binary_labels(labels, x.shape)
  per_attribute = np.mean((x > 0) == (y == 1), axis=0)
  return float(np.mean(per_attribute)), per_attribute


def per_example_loss(logits, labels, task: str = "multiclass") -> np.ndarray:
  """Per-example training loss, as the reference computes it with ``reduction="none"``.

  Args:
    logits: [N, C] logits.
    labels: [N] class indices for "multiclass"; [N, C] 0/1 targets for "multilabel".
    task: "multiclass" (cross-entropy) or "multilabel" (BCE-with-logits averaged over the C
      attributes, the MUCAC ``.mean(dim=1)``).

  Returns:
    float64 [N] losses, all finite for finite logits.
  """
  _check_task(task)
  x = _as_logits(logits)
  if task == "multiclass":
    y = _class_labels(labels, x.shape[0], x.shape[1])
    return -log_softmax(x)[np.arange(x.shape[0]), y]
  y = _binary_labels(labels, x.shape)
  # BCE(x, y) = −y·log σ(x) − (1−y)·log σ(−x) = max(x, 0) − x·y + log(1 + exp(−|x|)).
  bce = np.maximum(x, 0.0) - x * y + np.log1p(np.exp(-np.abs(x)))
  return np.mean(bce, axis=1)
