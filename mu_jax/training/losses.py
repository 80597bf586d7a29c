"""Per-example task losses and correctness, shared by training, unlearning and evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

TASKS = ("multiclass", "multilabel")


def _check(task: str) -> None:
  if task not in TASKS:
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def per_example_loss(logits: jax.Array, labels: jax.Array, task: str) -> jax.Array:
  """CE for "multiclass" (integer labels); BCE-with-logits averaged over attributes for "multilabel".

  The multi-label reduction is the reference's ``BCEWithLogits(reduction="none").mean(dim=1)``.
  """
  _check(task)
  logits = logits.astype(jnp.float32)
  if task == "multiclass":
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))
  return optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)).mean(-1)


def per_example_correct(logits: jax.Array, labels: jax.Array, task: str) -> jax.Array:
  """1.0 where top-1 is right (multiclass), or the fraction of right attributes (multilabel)."""
  _check(task)
  if task == "multiclass":
    return (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  return ((logits > 0) == (labels > 0.5)).astype(jnp.float32).mean(-1)


def soft_targets_loss(logits: jax.Array, target_probs: jax.Array, task: str) -> jax.Array:
  """Per-example CE against soft targets (softmax) or per-attribute BCE against probabilities."""
  _check(task)
  logits = logits.astype(jnp.float32)
  if task == "multiclass":
    return optax.softmax_cross_entropy(logits, target_probs)
  return optax.sigmoid_binary_cross_entropy(logits, target_probs).mean(-1)


def weighted_mean(values: jax.Array, weights: jax.Array | None) -> jax.Array:
  if weights is None:
    return values.mean()
  return (values * weights).sum() / jnp.maximum(weights.sum(), 1.0)
