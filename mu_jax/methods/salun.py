"""SalUn: saliency-masked random-label unlearning (Fan et al., "SalUn: Empowering Machine Unlearning
via Gradient-based Weight Saliency in Both Image Classification and Generation", ICLR 2024,
arXiv 2310.12508).

Two phases, as the official code runs them [OPTML-Group/Unlearn-Saliency@ac880a2:
Classification/generate_mask.py and Classification/unlearn/RL.py]:

1. ``saliency`` (one pass over the forget set, no augmentation, model in eval mode, nothing on the
   model changes): accumulate g = Σ_batches ∇θ(−CE(f(x_f), y_f)), the batch-mean gradient summed
   over batches. At the end the mask keeps the top ``threshold`` fraction of all weights by |g|,
   ranked globally over every parameter (BN scales and biases included): exactly
   ⌊N·threshold⌋ ones, like ``generate_mask``'s hard mask ``hard_{threshold}.pt``. (The official
   script also takes optimizer steps between batches while it accumulates; here every gradient is
   taken at the original weights.)
2. ``random_labels``: the RL step of :mod:`mu_jax.methods.random_labels` (CE on forget with random
   wrong labels + CE on retain, paired batches) with gradients multiplied by the mask. Masked-out
   weights stay at their original values bit for bit: with plain SGD a zero gradient already does
   that, and the step also restores them after the update, so momentum or weight decay cannot
   move them (SalUn's code restores them from θ₀ the same way).

Defaults: threshold 0.5 (the README's ``with_0.5.pt``); SGD lr 0.001 without momentum, 2 epochs,
batch 64 (the MUFAC reference's unlearning optimizer and budget, docs/methods.md#finetune). The SalUn
README's CIFAR-10 example uses lr 0.013 for 10 epochs with the code's SGD (momentum 0.9, weight
decay 5e-4); that lr is tuned for CIFAR-10 at batch 256 and is not carried over.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mu_jax import parallel
from mu_jax.methods import common
from mu_jax.methods.base import Phase, Unlearner, check_non_negative, check_positive
from mu_jax.methods.random_labels import make_step


def saliency_mask(grads, threshold: float):
  """A 0/1 tree like ``grads``: 1 on the ⌊N·threshold⌋ weights with the largest |grad|.

  Args:
    grads: accumulated gradients (a tree of arrays).
    threshold: the fraction of weights kept trainable, in (0, 1].

  Returns:
    A float32 tree of 0/1 with the structure of ``grads`` (see :func:`top_mask`).
  """
  return top_mask(grads, int(_size(grads) * threshold))


def _size(tree) -> int:
  return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))


def top_mask(grads, count: int | jax.Array):
  """A 0/1 tree like ``grads``: 1 on the ``count`` weights with the largest |grad|.

  The ranking is global over all leaves; ties are broken by position in the flattened tree, so
  the count of ones is exact. ``count`` may be traced: one program serves every threshold.
  """
  leaves, treedef = jax.tree.flatten(grads)
  flat = jnp.concatenate([jnp.abs(x).ravel().astype(jnp.float32) for x in leaves])
  n = flat.shape[0]
  order = jnp.argsort(-flat, stable=True)
  ranks = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
  keep = (ranks < count).astype(jnp.float32)
  sizes = np.cumsum([x.size for x in leaves])[:-1]
  parts = jnp.split(keep, sizes)
  return jax.tree.unflatten(treedef, [p.reshape(x.shape) for p, x in zip(parts, leaves)])


@functools.cache
def _saliency_step(task: str):

  def step(state, aux, batch, rng, info):
    del rng, info

    def forget_loss(params):
      # Eval mode, as generate_mask.py: running BN statistics, nothing to update.
      logits, _ = common.forward(state, params, state.batch_stats, batch["image"], train=False)
      return -common.task_loss(logits, batch["label"], task, batch.get("mask"))

    loss, grads = jax.value_and_grad(forget_loss)(state.params)
    # The global batch's mean gradient (equal shards per device), the same on every device.
    grads, loss = lax.pmean((grads, loss), parallel.AXIS)
    aux = {**aux, "grad": jax.tree.map(jnp.add, aux["grad"], grads)}
    return state, aux, {"loss": loss}

  return step


def salun(threshold: float = 0.5, lr: float = 1e-3, epochs: int = 2, momentum: float = 0.0,
          weight_decay: float = 0.0) -> Unlearner:
  """SalUn = saliency mask over the forget gradient + masked random-label training.

  Args:
    threshold: the fraction of weights that may change (SalUn's masks: 0.1 to 1.0; 0.5 is the
      README's example).
    lr: SGD learning rate of the random-label phase.
    epochs: passes of the paired stream in the random-label phase.
    momentum: SGD momentum (masked-out weights are restored each step, so it cannot move them).
    weight_decay: L2 added to the gradient (same remark).

  Returns:
    The :class:`Unlearner`; its aux holds ``grad`` (the accumulated forget gradient), ``mask``
    and ``count`` (⌊N·threshold⌋, the number of weights the mask keeps).
  """
  check_positive("salun", lr=lr, epochs=epochs)
  check_non_negative("salun", momentum=momentum, weight_decay=weight_decay)
  if not 0.0 < threshold <= 1.0:
    raise ValueError(f"salun: threshold must be in (0, 1], got {threshold}")

  def init(state, rng, spec):
    del rng, spec
    # Both entries exist from the start so the aux tree keeps one structure through the run
    # (the driver checkpoints and restores it against the initial structure).
    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
    ones = jax.tree.map(lambda p: jnp.ones(p.shape, jnp.float32), state.params)
    # ⌊N·threshold⌋ in float64 here, exact; the mask's program takes it as data.
    count = jnp.int32(int(_size(state.params) * threshold))
    return state, {"grad": zeros, "mask": ones, "count": count}

  def phases(spec):
    return [
        Phase("saliency", "forget", _saliency_step(spec.task), 1, augment=False, after=_make_mask),
        Phase("random_labels", "paired", make_step(spec.task, spec.num_classes, masked=True),
              epochs),
    ]

  return Unlearner(
      "salun", {"threshold": threshold, "lr": lr, "epochs": epochs, "momentum": momentum,
                "weight_decay": weight_decay},
      common.reference_sgd(lr, momentum, weight_decay), phases, init)


def _make_mask(state, aux, info):
  del info
  return state, {**aux, "mask": top_mask(aux["grad"], aux["count"])}
