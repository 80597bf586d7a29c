"""Building blocks shared by the method steps: forward passes, a gradient step, optimizers.

Padded batches. A phase that keeps the last partial batch (``Phase.partial="keep"``) gets it padded
to the static batch shape with a 0/1 ``mask`` (every batch the driver feeds carries one). The
helpers here take that mask: :func:`forward` restricts train-mode BatchNorm statistics to the real
rows, :func:`mean` (and :func:`task_loss`, :func:`accuracy`) average over the real rows of the
global batch. A masked step therefore equals the unpadded step on the real examples (loss,
gradient, BatchNorm statistics), on any number of devices, including a device whose shard is all
padding. ``mask=None`` is a full batch.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mu_jax import parallel
from mu_jax.training import losses
from mu_jax.training.state import TrainState, traced_optimizer


def reference_sgd(lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0
                  ) -> optax.GradientTransformation:
  """The reference's unlearning optimizer: ``optim.SGD(params, lr=0.001)`` (no momentum, no decay).

  torch's SGD with its hyperparameters in the optimizer state
  (:func:`mu_jax.training.state.traced_optimizer`): every learning rate runs one compiled step.
  """
  if not lr > 0:
    raise ValueError(f"lr must be positive, got {lr}")
  return traced_optimizer("sgd", learning_rate=lr, momentum=momentum, weight_decay=weight_decay)


def reference_adam(lr: float, weight_decay: float = 0.0) -> optax.GradientTransformation:
  """torch's Adam (betas 0.9, 0.999, eps 1e-8, coupled weight decay), hyperparameters in the state."""
  if not lr > 0:
    raise ValueError(f"lr must be positive, got {lr}")
  return traced_optimizer("adam", learning_rate=lr, weight_decay=weight_decay)


# BatchNorm modes of a method's model steps: "train" (batch statistics; the running statistics
# move, as after ``model.train()``) or "eval" (running statistics, never updated: ``model.eval()``).
BN_MODES = ("train", "eval")


def bn_train(name: str, bn_mode: str) -> bool:
  """``bn_mode == "train"``; a ValueError naming the method for an unknown mode."""
  if bn_mode not in BN_MODES:
    raise ValueError(f"{name}: bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
  return bn_mode == "train"


def forward(state: TrainState, params: Any, batch_stats: Any, images: jax.Array, *,
            train: bool = True, features: bool = False, mask: jax.Array | None = None
            ) -> tuple[Any, Any]:
  """Runs the model; in train mode returns the updated BN statistics, else the given ones.

  Chaining ``batch_stats`` through several train-mode calls reproduces the reference, which calls
  the model on the retain batch and on the forget batch one after the other in ``train()`` mode.
  ``mask`` (this device's rows, 0/1) keeps padded rows out of the train-mode BN statistics.
  """
  variables = {"params": params, "batch_stats": batch_stats}
  kwargs = {"features": features}
  if train and mask is not None:
    kwargs["mask"] = mask
  if train:
    out, upd = state.apply_fn(variables, images, train=True, mutable=["batch_stats"], **kwargs)
    return out, upd["batch_stats"]
  return state.apply_fn(variables, images, train=False, **kwargs), batch_stats


def mean(values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """The mean of per-example ``values`` over the real rows, as this device's share.

  Without a mask: this device's mean (the driver's shards are equal, so the mean over devices is
  the global mean). With a mask: ``n_dev · Σ_local(v·m) / Σ_global(m)``, whose mean over the
  devices is the global mean over the real rows and whose gradient, averaged over the devices as
  :func:`gradient_step` does, is the gradient of that global mean, whatever each device's count.
  """
  if mask is None:
    return values.mean()
  m = mask.astype(jnp.float32).reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
  m = jnp.broadcast_to(m, values.shape)
  total = lax.psum(m.sum(), parallel.AXIS)
  local = (values.astype(jnp.float32) * m).sum()
  return lax.axis_size(parallel.AXIS) * local / jnp.maximum(total, 1.0)


def task_loss(logits: jax.Array, labels: jax.Array, task: str, mask: jax.Array | None = None
              ) -> jax.Array:
  return mean(losses.per_example_loss(logits, labels, task), mask)


def accuracy(logits: jax.Array, labels: jax.Array, task: str, mask: jax.Array | None = None
             ) -> jax.Array:
  return mean(losses.per_example_correct(logits, labels, task), mask)


def gradient_step(state: TrainState, loss_fn: Callable[[Any], tuple[jax.Array, tuple[Any, dict]]],
                  grad_mask: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on ``loss_fn(params) -> (loss, (new_batch_stats, metrics))``.

  Gradients, loss and metrics are averaged over the data-parallel axis. ``grad_mask`` (a tree of
  0/1 like the params, or one 0/1 scalar per leaf) zeroes the gradient of masked-out weights and
  keeps them exactly at their value before the step: a zero gradient leaves a weight in place only
  under plain SGD, while weight decay (and momentum fed by it) would still move it. That equals
  torch's frozen parameters (``requires_grad=False``), which the optimizer skips.
  """
  (loss, (new_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = lax.pmean(grads, parallel.AXIS)
  if grad_mask is not None:
    grads = jax.tree.map(lambda g, m: g * m.astype(g.dtype), grads, grad_mask)
  new_state = state.apply_gradients(grads=grads, batch_stats=new_stats)
  if grad_mask is not None:
    new_state = new_state.replace(params=jax.tree.map(
        lambda m, new, old: jnp.where(m > 0, new, old), grad_mask, new_state.params, state.params))
  return new_state, lax.pmean({"loss": loss, **metrics}, parallel.AXIS)


@functools.cache
def supervised_step(task: str, sign: float = 1.0, train: bool = True) -> Callable[..., Any]:
  """A step on ``sign · task loss`` of a single-stream batch (sign −1 is gradient ascent).

  ``train``: BatchNorm in train mode (batch statistics over the real rows, running statistics
  updated) or eval mode (running statistics, left exactly as they are). ``aux["trainable"]``, when
  the method keeps one, is the :func:`gradient_step` mask of the weights that may change.
  """

  def step(state, aux, batch, rng, info):
    del rng, info
    mask = batch.get("mask")

    def loss_fn(params):
      logits, stats = forward(state, params, state.batch_stats, batch["image"], train=train,
                              mask=mask)
      loss = task_loss(logits, batch["label"], task, mask)
      return sign * loss, (stats, {"task_loss": loss,
                                   "accuracy": accuracy(logits, batch["label"], task, mask)})

    state, metrics = gradient_step(state, loss_fn, aux.get("trainable"))
    return state, aux, metrics

  return step


@functools.cache
def forget_half(step: Callable[..., Any]) -> Callable[..., Any]:
  """``step`` fed the forget half of a paired batch (the retain half is ignored)."""
  return lambda state, aux, batch, rng, info: step(state, aux, batch["forget"], rng, info)


def trainable_mask(params: Any, trainable: Sequence[str]) -> Any:
  """One 0/1 float32 scalar per leaf of ``params``: 1 under the top-level names in ``trainable``.

  Scalars, not arrays like the weights: the mask of whole blocks costs nothing to carry, and
  :func:`gradient_step` broadcasts it.
  """
  unknown = sorted(set(trainable) - set(params))
  if unknown:
    raise ValueError(f"no top-level parameters named {unknown}; the model has {sorted(params)}")
  return {k: jax.tree.map(lambda x, on=(k in trainable): jnp.float32(on), v)
          for k, v in params.items()}


def kl_div(teacher_logits: jax.Array, student_logits: jax.Array, temperature: float, task: str
           ) -> jax.Array:
  """Per-example KL(teacher ‖ student) of temperature-softened outputs, times T².

  Multiclass: over the softmax. Multilabel: over a softmax across the attribute logits, as the
  MUCAC reference does for SCRUB (it applies the same DistillKL to the 3 sigmoid logits).
  """
  del task
  t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, -1)
  s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, -1)
  return (jnp.exp(t) * (t - s)).sum(-1) * temperature**2


def random_wrong_labels(rng: jax.Array, labels: jax.Array, num_classes: int, task: str) -> jax.Array:
  """Random labels: multiclass, uniform over the C−1 wrong classes; multilabel, every attribute an
  independent fair coin (a true "wrong label" is not defined for a 0/1 attribute vector)."""
  if task == "multiclass":
    shift = jax.random.randint(rng, labels.shape, 1, num_classes)
    return (labels + shift) % num_classes
  return jax.random.bernoulli(rng, 0.5, labels.shape).astype(labels.dtype)
