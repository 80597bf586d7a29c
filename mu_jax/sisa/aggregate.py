"""Aggregating the S constituent models into one prediction.

After cleverhans-lab/machine-unlearning@b8e3d31:aggregation.py (Bourtoule et al., arXiv 1912.03817):

* ``vote`` (the official default): each shard contributes the one-hot of its argmax, weighted
  uniformly (1/S) or by given weights (the official ``proportional`` uses shard sizes); the
  aggregate "probabilities" are the vote fractions and the prediction is their argmax, ties going
  to the lowest class index as ``argmax`` does in the official code.
* ``mean``: the mean of the shards' softmax outputs (the official ``--output_type softmax``).

Multi-label heads (``task="multilabel"``) are aggregated per attribute: ``vote`` is the weighted
fraction of shards whose logit is positive (sigmoid > 0.5), ``mean`` is the mean sigmoid, and an
attribute is predicted present when the aggregate exceeds 0.5 (an exact tie, possible with an even
number of shards, counts as absent).

The per-example outputs of the aggregate follow docs/metrics.md#per-example-outputs: ``logits`` is
the log of the aggregated probabilities (for a multi-label task the log-odds, so that ``logits > 0``
is the prediction), and ``loss`` is the cross-entropy of the aggregated probabilities (multi-label:
the binary cross-entropy averaged over attributes). Vote fractions can be exactly 0 or 1, so the
probabilities are clipped to [1e-7, 1 − 1e-7] first; a shard-unanimous wrong vote then costs
−log(1e-7) ≈ 16.1 instead of infinity. This loss is what the membership attack reads.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mu_jax import parallel
from mu_jax.data.splits import Examples
from mu_jax.evaluation import metrics
from mu_jax.training import evaluate

METHODS = ("vote", "mean")
EPS = 1e-7


def _weights(num_shards: int, weights: Sequence[float] | None) -> np.ndarray:
  if weights is None:
    return np.full(num_shards, 1.0 / num_shards)
  w = np.asarray(weights, np.float64)
  if w.shape != (num_shards,) or np.any(w < 0) or not w.sum() > 0:
    raise ValueError(f"weights must be {num_shards} non-negative numbers with a positive sum, got {w}")
  return w / w.sum()


def aggregate_probs(logits, task: str = "multiclass", method: str = "vote",
              weights: Sequence[float] | None = None) -> np.ndarray:
  """Aggregated probabilities from the shards' logits.

  Args:
    logits: [S, N, C] logits of the S shard models.
    task: "multiclass" (softmax head) or "multilabel" (one sigmoid per attribute).
    method: "vote" or "mean".
    weights: per-shard weights (default uniform).

  Returns:
    [N, C]: vote fractions or mean probabilities; rows sum to 1 for a multiclass task.
  """
  if task not in metrics.TASKS:
    raise ValueError(f"SISA aggregation supports tasks {metrics.TASKS}, got {task!r}")
  if method not in METHODS:
    raise ValueError(f"aggregation must be one of {METHODS}, got {method!r}")
  z = np.asarray(logits, np.float64)
  if z.ndim != 3:
    raise ValueError(f"logits must be [shards, examples, classes], got shape {z.shape}")
  w = _weights(z.shape[0], weights)[:, None, None]
  if task == "multiclass":
    if method == "vote":
      per_shard = np.eye(z.shape[-1])[np.argmax(z, axis=-1)]
    else:
      per_shard = metrics.softmax(z, axis=-1)
  else:
    per_shard = (z > 0).astype(np.float64) if method == "vote" else metrics.sigmoid(z)
  return (w * per_shard).sum(axis=0)


def predictions(probs, task: str = "multiclass") -> np.ndarray:
  """Class indices [N] (argmax, ties to the lowest index) or 0/1 attributes [N, A] (p > 0.5)."""
  p = np.asarray(probs)
  return np.argmax(p, axis=-1) if task == "multiclass" else (p > 0.5).astype(np.int32)


def outputs_from_probs(probs, labels, identities, example_ids, task: str = "multiclass"
                       ) -> dict[str, np.ndarray]:
  """The per-example output contract (logits, loss, label, identity, example_id) of an aggregate."""
  p = np.clip(np.asarray(probs, np.float64), EPS, 1.0 - EPS)
  labels = np.asarray(labels)
  if task == "multiclass":
    logits = np.log(p)
    loss = -logits[np.arange(len(labels)), labels.astype(np.int64)]
  else:
    logits = np.log(p) - np.log1p(-p)
    y = labels.astype(np.float64)
    loss = -(y * np.log(p) + (1 - y) * np.log1p(-p)).mean(axis=-1)
  return {"logits": logits.astype(np.float32), "loss": loss.astype(np.float32), "label": labels,
          "identity": np.asarray(identities), "example_id": np.asarray(example_ids)}


def shard_logits(states: Sequence[Any], examples: Examples, *, task: str,
                 batch_size: int = 256) -> np.ndarray:
  """Eval-mode logits [S, N, C] of every shard model (host states) on ``examples``."""
  return np.stack([evaluate.predict(parallel.replicate(s), examples, task=task,
                                    batch_size=batch_size)["logits"] for s in states])


def predict(states: Sequence[Any], examples: Examples, *, task: str, method: str = "vote",
            weights: Sequence[float] | None = None, batch_size: int = 256,
            logits: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Per-example outputs of the aggregate of ``states`` on ``examples``.

  Args:
    states: the S shard models (host train states).
    examples: the examples.
    task: "multiclass" or "multilabel".
    method: "vote" or "mean".
    weights: per-shard weights (default uniform).
    batch_size: evaluation batch size.
    logits: precomputed :func:`shard_logits` (then ``states`` is not evaluated).

  Returns:
    The per-example outputs (docs/metrics.md#per-example-outputs) of the aggregate.
  """
  z = shard_logits(states, examples, task=task, batch_size=batch_size) if logits is None else logits
  probs = aggregate_probs(z, task, method, weights)
  return outputs_from_probs(probs, examples.labels, examples.identities, examples.example_ids, task)


def accuracy(outputs: dict[str, np.ndarray], task: str = "multiclass") -> float:
  """Top-1 accuracy (multi-label: mean per-attribute accuracy) of aggregate outputs."""
  if len(outputs["label"]) == 0:
    return float("nan")
  pred = outputs["logits"].argmax(-1) if task == "multiclass" else (outputs["logits"] > 0)
  if task == "multiclass":
    return float(np.mean(pred == outputs["label"]))
  return float(np.mean(pred == (outputs["label"] > 0.5)))
