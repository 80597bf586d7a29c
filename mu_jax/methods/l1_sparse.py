"""ℓ1-sparse unlearning (Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023,
arXiv 2304.04934): fine-tune on the retain set with an ℓ1 penalty that pushes weights towards zero.

Loss per step: CE(retain) + α_t·‖θ‖₁, with ‖θ‖₁ over every parameter (BN scales and biases
included, as ``model.parameters()`` in the official code) and the schedule of ``FT_l1``
[OPTML-Group/Unlearn-Sparse@16a2dbc:unlearn/FT.py; OPTML-Group/Unlearn-Saliency@f31f82e:
Classification/unlearn/FT.py]: constant within an epoch,

    α_t = α·(1 − t / (E − no_l1_epochs))   for epoch t < E − no_l1_epochs (t counts from 0),
    α_t = 0                                 for the last ``no_l1_epochs`` epochs,

so the first epoch uses α and the penalty decays linearly from there. When ``no_l1_epochs == E``
(no decaying epoch at all) the official code's non-ImageNet branch applies the full α in every epoch
(its ``elif args.unlearn_epochs - args.no_l1_epochs == 0`` case); its ImageNet branch applies 0. MUFAC
and MUCAC train at CIFAR scale, so mu_jax follows the non-ImageNet branch. The driver's
``info["epoch"]`` gives t (this method has a single phase, so the run's epoch is the phase's).

Defaults: lr 0.01, 10 epochs [OPTML-Group/Unlearn-Sparse@517c320:README.MD `--unlearn FT_prune
--unlearn_lr 0.01 --unlearn_epochs 10`], with the official code's SGD (momentum 0.9, weight decay
5e-4, [OPTML-Group/Unlearn-Saliency@f31f82e:Classification/arg_parser.py;
@1ceff3f:Classification/unlearn/impl.py]); there is no MUFAC reference run. α = 5e-4 is mu_jax's
choice, not a published value: the README leaves ``--alpha ${alpha}`` open. A later README example
writes ``--alpha 0.2``, the shared parser's default whose help text calls it the "unlearn noise"
of the Fisher methods; 0.2·‖θ‖₁ would dwarf the CE of a ResNet-18.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mu_jax.methods import common
from mu_jax.methods.base import Phase, Unlearner, check_non_negative, check_positive


def l1_coefficient(alpha: jax.Array, epoch: jax.Array, l1_epochs: jax.Array) -> jax.Array:
  """α_t of epoch ``epoch`` (0-based), with ``l1_epochs`` = E − no_l1_epochs.

  α·(1 − t/(E − no_l1)) while t < E − no_l1, else 0; the constant α when ``l1_epochs == 0``
  (the official non-ImageNet branch, see the module docstring). Every argument may be traced.
  """
  t = jnp.asarray(epoch, jnp.float32)
  alpha = jnp.asarray(alpha, jnp.float32)
  l1_epochs = jnp.asarray(l1_epochs, jnp.float32)
  decayed = jnp.where(t < l1_epochs, alpha * (1.0 - t / jnp.maximum(l1_epochs, 1.0)), 0.0)
  return jnp.where(l1_epochs == 0, alpha, decayed).astype(jnp.float32)


def l1_norm(params) -> jax.Array:
  """‖θ‖₁ over every leaf, with torch's subgradient sign(θ): 0 at exactly zero weights.

  ``jnp.abs`` differentiates to 1 at 0, so BatchNorm biases (initialised to 0) would be pushed
  negative by the penalty where ``torch.linalg.norm(·, ord=1)`` leaves them in place.
  """
  return sum((x * jax.lax.stop_gradient(jnp.sign(x))).sum() for x in jax.tree.leaves(params))


def l1_sparse(alpha: float = 5e-4, lr: float = 1e-2, epochs: int = 10, no_l1_epochs: int = 0,
              momentum: float = 0.9, weight_decay: float = 5e-4) -> Unlearner:
  """Fine-tune on retain with a linearly decaying ℓ1 penalty (defaults: the official code's).

  Args:
    alpha: the initial ℓ1 weight α (mu_jax's default, not a published value; see the module
      docstring).
    lr: SGD learning rate.
    epochs: passes over the retain set (E).
    no_l1_epochs: final epochs without the penalty; equal to ``epochs``, the full α applies in
      every epoch instead (the official non-ImageNet branch).
    momentum: SGD momentum (the official code's 0.9).
    weight_decay: L2 added to the gradient (the official code's 5e-4).

  Returns:
    The :class:`Unlearner`; its steps log ``l1_alpha`` (α_t) and ``l1_norm``.
  """
  check_positive("l1_sparse", lr=lr, epochs=epochs)
  check_non_negative("l1_sparse", alpha=alpha, no_l1_epochs=no_l1_epochs, momentum=momentum,
                     weight_decay=weight_decay)
  if no_l1_epochs > epochs:
    raise ValueError(f"l1_sparse: no_l1_epochs ({no_l1_epochs}) exceeds epochs ({epochs})")

  def phases(spec):
    return [Phase("retain_l1", "retain", _step(spec.task), epochs)]

  return Unlearner(
      "l1_sparse", {"alpha": alpha, "lr": lr, "epochs": epochs, "no_l1_epochs": no_l1_epochs,
                    "momentum": momentum, "weight_decay": weight_decay},
      common.reference_sgd(lr, momentum, weight_decay), phases,
      traced={"alpha": alpha, "l1_epochs": float(epochs - no_l1_epochs)})


@functools.cache
def _step(task: str):
  """CE + α_t·‖θ‖₁ on a retain batch; α and the decaying epochs come from ``info["hp"]``."""

  def step(state, aux, batch, rng, info):
    del rng
    coef = l1_coefficient(info["hp"]["alpha"], info["epoch"], info["hp"]["l1_epochs"])
    mask = batch.get("mask")

    def loss_fn(params):
      logits, stats = common.forward(state, params, state.batch_stats, batch["image"], mask=mask)
      ce = common.task_loss(logits, batch["label"], task, mask)
      norm = l1_norm(params)
      return ce + coef * norm, (stats, {
          "task_loss": ce, "l1_norm": norm, "l1_alpha": coef,
          "accuracy": common.accuracy(logits, batch["label"], task, mask)})

    state, metrics = common.gradient_step(state, loss_fn)
    return state, aux, metrics

  return step
