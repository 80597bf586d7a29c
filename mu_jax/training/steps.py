"""Pure per-device train and eval steps, and their data-parallel compiled forms.

A step sees its device's shard of the global batch and reduces over :data:`mu_jax.parallel.AXIS`;
:func:`mu_jax.parallel.data_parallel` runs it on every device. Batches are dicts with ``image``
(uint8 or float NHWC) and ``label``; eval batches also carry ``mask``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

from mu_jax import parallel
from mu_jax.data import pipeline
from mu_jax.training import losses
from mu_jax.training.state import TrainState

Batch = dict[str, jax.Array]


def prepare_images(batch: Batch, rng: jax.Array | None, augment: bool) -> jax.Array:
  """uint8 → float [0, 1], then the reference augmentation when ``augment`` (keyed by global position)."""
  images = pipeline.to_float(batch["image"])
  if augment:
    images = pipeline.augment(rng, images, parallel.global_index(images.shape[0]))
  return images


def forward_train(state: TrainState, params: Any, images: jax.Array, features: bool = False):
  """Train-mode forward; returns (outputs, new batch_stats)."""
  out, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, images,
                                train=True, features=features, mutable=["batch_stats"])
  return out, updates["batch_stats"]


def forward_eval(state: TrainState, images: jax.Array, params: Any = None, features: bool = False):
  return state.apply_fn({"params": state.params if params is None else params,
                         "batch_stats": state.batch_stats}, images, train=False, features=features)


def train_step(state: TrainState, batch: Batch, rng: jax.Array, *, task: str, augment: bool
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on the task loss (per device; gradients averaged over the data axis)."""
  images = prepare_images(batch, rng, augment)

  def loss_fn(params):
    logits, new_stats = forward_train(state, params, images)
    per_ex = losses.per_example_loss(logits, batch["label"], task)
    return per_ex.mean(), (logits, new_stats)

  (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = lax.pmean(grads, parallel.AXIS)
  state = state.apply_gradients(grads=grads, batch_stats=new_stats)
  metrics = {"loss": loss, "accuracy": losses.per_example_correct(logits, batch["label"], task).mean()}
  return state, lax.pmean(metrics, parallel.AXIS)


def eval_step(state: TrainState, batch: Batch, *, task: str) -> dict[str, jax.Array]:
  """Per-example eval-mode logits and losses (no augmentation), sharded like the batch."""
  logits = forward_eval(state, pipeline.to_float(batch["image"]))
  return {"logits": logits.astype(jnp.float32),
          "loss": losses.per_example_loss(logits, batch["label"], task)}


@functools.lru_cache(maxsize=None)
def compiled_prepare(augment: bool) -> Callable[..., Any]:
  """``(images, key) -> float images``: :func:`prepare_images` as its own data-parallel program.

  Shared by every step of the same batch shape (:class:`mu_jax.parallel.Prepared`).
  """
  return parallel.data_parallel(lambda images, key: prepare_images({"image": images}, key, augment),
                                in_specs=(parallel.SHARDED, parallel.REPLICATED),
                                out_specs=parallel.SHARDED)


def prepared(step: Callable[..., Any], augment: bool) -> parallel.Prepared:
  """``step(state, batch, key)`` fed the batch :func:`compiled_prepare` makes with ``key``.

  ``step`` must not augment again (its float images pass :func:`prepare_images` unchanged).
  """
  return parallel.Prepared(compiled_prepare(augment), step, lambda a: (a[1]["image"], a[2]),
                           with_images)


def with_images(args: tuple, images: jax.Array) -> tuple:
  """``(state, batch, ...)`` with the batch's images replaced (the merge of the train steps)."""
  return (args[0], {**args[1], "image": images}, *args[2:])


@functools.lru_cache(maxsize=None)
def compiled_train_step(task: str, augment: bool) -> Callable[..., Any]:
  """The data-parallel train step (state donated), its images prepared by their own program."""
  step = parallel.data_parallel(
      functools.partial(train_step, task=task, augment=False),
      in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED),
      out_specs=(parallel.REPLICATED, parallel.REPLICATED), donate_argnums=(0,))
  return prepared(step, augment)


@functools.lru_cache(maxsize=None)
def compiled_eval_step(task: str) -> Callable[..., Any]:
  return parallel.data_parallel(functools.partial(eval_step, task=task),
                                in_specs=(parallel.REPLICATED, parallel.SHARDED),
                                out_specs=parallel.SHARDED)
