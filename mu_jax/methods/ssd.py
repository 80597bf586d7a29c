"""Selective Synaptic Dampening (Foster, Schoepf and Brintrup, "Fast Machine Unlearning Without
Retraining Through Selective Synaptic Dampening", AAAI 2024, arXiv 2308.07707).

A retraining-free edit of the weights. Two passes measure a diagonal Fisher importance, the mean
over batches of the squared batch-mean gradient of the task loss, in eval mode and without
augmentation [if-loops/selective-synaptic-dampening@77161cc:ssd.py ``calc_importance``]:
I_f over the forget set and I_D over the full training set (stream ``train`` = retain + forget).
Then, for every parameter entry (BN scales and biases included; BN running statistics untouched),

    if I_f > α·I_D:   θ ← β·θ  with  β = min(λ·I_D / I_f, 1),

and every other entry stays exactly as it was. No gradient step touches the model (its optimizer
is ``optax.set_to_zero()``); the passes only accumulate into aux.

Hyperparameters (α = "selection weighting", λ = "dampening constant" in the official code):
  * α = 10, λ = 1: the paper's values for ResNet-18 on all CIFAR tasks (the defaults here; the
    official code notes α = 50, λ = 0.1 for PinsFaceRecognition, where classes are more alike).
  * MUFAC in De Min et al., "Unlearning Personal Data from a Single Image", TMLR 2025
    [tdemin16/one-shui@d2b895b:method/configs/const.py, batch 128]: dampening 0.1 with selection
    weighting 50 for 5 forget identities and 1 for 10, i.e. ``ssd(alpha=50, lambda_=0.1)`` and
    ``ssd(alpha=1, lambda_=0.1)``.
Multilabel tasks use the BCE task loss in the importance (the rule itself is task-agnostic).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax import lax

from mu_jax import parallel
from mu_jax.methods import common
from mu_jax.methods.base import Phase, Unlearner, check_positive


def dampen(params, imp_forget, imp_data, alpha: float | jax.Array, lambda_: float | jax.Array):
  """Applies the SSD rule leaf by leaf (see the module docstring).

  Args:
    params: the model parameters.
    imp_forget: I_f, a tree like ``params``.
    imp_data: I_D, a tree like ``params``.
    alpha: selection weighting α.
    lambda_: dampening constant λ.

  Returns:
    The dampened parameters; entries with I_f ≤ α·I_D are returned unchanged.
  """

  def one(p, i_f, i_d):
    selected = i_f > alpha * i_d
    # Selected entries have I_f > 0 (I_D ≥ 0), so the division is safe where it is used.
    beta = jnp.minimum(lambda_ * i_d / jnp.where(selected, i_f, 1.0), 1.0)
    return jnp.where(selected, p * beta.astype(p.dtype), p)

  return jax.tree.map(one, params, imp_forget, imp_data)


@functools.cache
def _importance_step(task: str):
  """Adds the squared global-batch gradient to ``aux["running"]`` and counts the batch."""

  def step(state, aux, batch, rng, info):
    del rng, info

    def loss(params):
      logits, _ = common.forward(state, params, state.batch_stats, batch["image"], train=False)
      return common.task_loss(logits, batch["label"], task, batch.get("mask"))

    value, grads = jax.value_and_grad(loss)(state.params)
    # The global batch's mean gradient (equal shards per device), squared after averaging as the
    # official code squares the gradient of the batch-mean loss.
    grads, value = lax.pmean((grads, value), parallel.AXIS)
    aux = {**aux, "running": jax.tree.map(lambda s, g: s + g * g, aux["running"], grads),
           "running_batches": aux["running_batches"] + 1.0}
    return state, aux, {"loss": value}

  return step


def ssd(alpha: float = 10.0, lambda_: float = 1.0) -> Unlearner:
  """Selective Synaptic Dampening (defaults: the paper's ResNet-18 CIFAR values).

  Args:
    alpha: selection weighting α: dampen where I_f > α·I_D.
    lambda_: dampening constant λ: multiply by min(λ·I_D/I_f, 1).

  Returns:
    The :class:`Unlearner`. Both passes run the same step, which sums squared gradients into
    ``aux["running"]`` (and counts batches in ``running_batches``), so it is compiled once; the
    end of the forget pass moves that sum to ``aux["forget"]`` (``forget_batches``), and at the
    end of the training-set pass ``running`` holds the training-set sum.
  """
  check_positive("ssd", alpha=alpha, lambda_=lambda_)

  def init(state, rng, spec):
    del rng, spec
    zeros = lambda: jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
    return state, {"forget": zeros(), "running": zeros(),
                   "forget_batches": jnp.zeros((), jnp.float32),
                   "running_batches": jnp.zeros((), jnp.float32)}

  def phases(spec):
    step = _importance_step(spec.task)
    return [Phase("importance_forget", "forget", step, 1, augment=False, after=_end_forget_pass),
            Phase("importance_train", "train", step, 1, augment=False, after=_end_train_pass)]

  return Unlearner("ssd", {"alpha": alpha, "lambda_": lambda_}, optax.set_to_zero(), phases, init,
                   traced={"alpha": alpha, "lambda_": lambda_})


def _end_forget_pass(state, aux, info):
  del info
  return state, {"forget": aux["running"], "forget_batches": aux["running_batches"],
                 "running": jax.tree.map(jnp.zeros_like, aux["running"]),
                 "running_batches": jnp.zeros_like(aux["running_batches"])}


def _end_train_pass(state, aux, info):
  mean = lambda s, n: jax.tree.map(lambda x: x / jnp.maximum(n, 1.0), s)
  imp_forget = mean(aux["forget"], aux["forget_batches"])
  imp_data = mean(aux["running"], aux["running_batches"])
  hp = info["hp"]
  return state.replace(params=dampen(state.params, imp_forget, imp_data, hp["alpha"],
                                     hp["lambda_"])), aux
