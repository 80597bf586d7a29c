"""How far an unlearned model is from the retrained one, from saved logits and parameters.

The retrained model (trained from scratch on D_retain) is the gold standard of unlearning, so the
report always compares against it, never against the original (docs/metrics.md, result columns
``kl_to_retrained_forget``, ``js_to_retrained_forget``).

Direction: :func:`kl_divergence` takes ``p_logits`` from the unlearned model and ``q_logits`` from the
retrained one and returns KL(p‖q) = E_p[log p − log q], the expected extra log-loss of describing the
unlearned model's predictions with the retrained model's. KL is asymmetric and unbounded;
:func:`js_divergence` is its symmetric, bounded companion (natural logarithm, so at most ln 2).

For a multi-label head each attribute is a Bernoulli variable; the divergence of an example is the
mean over attributes of the Bernoulli divergences (the same averaging the reference uses for the
multi-label loss), and the reported number is the mean over examples.

All work is in float64 from log-probabilities (log-softmax / log-sigmoid), so saturated logits give
finite results.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from mu_jax.evaluation.metrics import log_sigmoid, log_softmax

_TASKS = ("multiclass", "multilabel")


def _log_probs(logits, task: str, name: str) -> np.ndarray:
  """Log-probabilities with the outcome on the last axis: [N, C], or [N, A, 2] for multi-label."""
  if task not in _TASKS:
    raise ValueError(f"task must be one of {_TASKS}, got {task!r}")
  x = np.asarray(logits, dtype=np.float64)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f"{name} must be a non-empty [N, C] array, got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} holds non-finite values (nan or inf)")
  if task == "multiclass":
    return log_softmax(x)
  # A Bernoulli attribute is a two-outcome distribution (present, absent): log σ(x), log σ(−x).
  return np.stack([log_sigmoid(x), log_sigmoid(-x)], axis=-1)


def _pair(p_logits, q_logits, task: str) -> tuple[np.ndarray, np.ndarray]:
  log_p = _log_probs(p_logits, task, "p_logits")
  log_q = _log_probs(q_logits, task, "q_logits")
  if log_p.shape != log_q.shape:
    raise ValueError(f"p_logits and q_logits must have the same shape, got "
                     f"{np.shape(p_logits)} and {np.shape(q_logits)}")
  return log_p, log_q


def _mean_over_examples(per_outcome: np.ndarray) -> float:
  """Sums over outcomes, averages over attributes (multi-label) and then over examples."""
  d = np.sum(per_outcome, axis=-1)
  return float(np.mean(d))


def kl_divergence(p_logits, q_logits, task: str = "multiclass") -> float:
  """Mean over examples of KL(p‖q), p = unlearned model, q = retrained model.

  Args:
    p_logits: [N, C] logits of the unlearned model.
    q_logits: [N, C] logits of the retrained model on the same examples.
    task: "multiclass" (softmax) or "multilabel" (per-attribute sigmoid; mean of Bernoulli KLs).

  Returns:
    KL in nats, ≥ 0 (0 when the predictive distributions coincide).
  """
  log_p, log_q = _pair(p_logits, q_logits, task)
  # Rounding can leave −1e-17 for identical inputs; a divergence is never negative.
  return max(_mean_over_examples(np.exp(log_p) * (log_p - log_q)), 0.0)


def js_divergence(p_logits, q_logits, task: str = "multiclass") -> float:
  """Mean over examples of the Jensen-Shannon divergence ½KL(p‖m) + ½KL(q‖m), m = (p+q)/2.

  Args:
    p_logits: [N, C] logits of the unlearned model.
    q_logits: [N, C] logits of the retrained model on the same examples.
    task: "multiclass" or "multilabel" (mean over attributes of Bernoulli JS divergences).

  Returns:
    JS in nats, in [0, ln 2]; symmetric in its two arguments.
  """
  log_p, log_q = _pair(p_logits, q_logits, task)
  log_m = np.logaddexp(log_p, log_q) - np.log(2.0)
  per_outcome = 0.5 * (np.exp(log_p) * (log_p - log_m) + np.exp(log_q) * (log_q - log_m))
  return float(np.clip(_mean_over_examples(per_outcome), 0.0, np.log(2.0)))


def top1_agreement(p_logits, q_logits, task: str = "multiclass") -> float:
  """Fraction of predictions on which the two models agree.

  Args:
    p_logits: [N, C] logits of one model.
    q_logits: [N, C] logits of the other on the same examples.
    task: "multiclass" (same argmax) or "multilabel" (same present/absent decision, logit > 0,
      averaged over attributes and examples).

  Returns:
    The agreement in [0, 1].
  """
  _pair(p_logits, q_logits, task)  # Validates shapes, finiteness and the task.
  p, q = np.asarray(p_logits, np.float64), np.asarray(q_logits, np.float64)
  if task == "multiclass":
    return float(np.mean(np.argmax(p, axis=1) == np.argmax(q, axis=1)))
  return float(np.mean((p > 0) == (q > 0)))


def _flatten(tree: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
  """Collects the leaves of nested mappings (and lists/tuples) under "a/b/0"-style paths."""
  if isinstance(tree, Mapping):
    for k in sorted(tree, key=str):
      _flatten(tree[k], f"{prefix}/{k}" if prefix else str(k), out)
  elif isinstance(tree, (list, tuple)):
    for i, v in enumerate(tree):
      _flatten(v, f"{prefix}/{i}" if prefix else str(i), out)
  else:
    out[prefix] = np.asarray(tree)


def param_l2_distance(params_a: Any, params_b: Any) -> float:
  """Euclidean distance ‖θ_a − θ_b‖₂ between two parameter trees of the same structure.

  Args:
    params_a: nested dicts (e.g. Flax ``params``, a ``FrozenDict`` works too) of arrays.
    params_b: a tree with the same paths and shapes.

  Returns:
    The distance over all leaves, accumulated in float64.

  Raises:
    ValueError: the trees differ in a path or a shape; the message names the first such path in
      sorted order.
  """
  flat_a: dict[str, np.ndarray] = {}
  flat_b: dict[str, np.ndarray] = {}
  _flatten(params_a, "", flat_a)
  _flatten(params_b, "", flat_b)
  for path in sorted(flat_a.keys() | flat_b.keys()):
    if path not in flat_b:
      raise ValueError(f"parameter trees differ: {path!r} is in params_a but not in params_b")
    if path not in flat_a:
      raise ValueError(f"parameter trees differ: {path!r} is in params_b but not in params_a")
    if flat_a[path].shape != flat_b[path].shape:
      raise ValueError(f"parameter trees differ at {path!r}: shape {flat_a[path].shape} in params_a, "
                       f"{flat_b[path].shape} in params_b")
  total = 0.0
  for path, a in flat_a.items():
    diff = a.astype(np.float64) - flat_b[path].astype(np.float64)
    total += float(np.sum(diff * diff))
  return float(np.sqrt(total))
