"""Boundary Unlearning (Chen et al., "Boundary Unlearning: Rapid Forgetting of Deep Networks via
Shifting the Decision Boundary", CVPR 2023, arXiv 2303.11570): Boundary Shrink and Boundary Expanding.

Both fine-tune on the forget set only, following SalUn's baselines
[OPTML-Group/Unlearn-Saliency@ac880a2:Classification/unlearn/boundary_sh.py and
@f31f82e:Classification/unlearn/boundary_ex.py] (docs/methods.md#boundary_shrink).

* ``boundary_shrink``: a frozen copy f₀ of the original model (kept in aux, eval mode) finds for
  each forget image its neighbouring class. One FGSM step of size ``bound`` against f₀,
  x_adv = round(255·clip(x + bound·sign(∇ₓ CE(f₀(x), y)), 0, 1))/255, and ŷ = argmax f₀(x_adv);
  then f is trained with CE(f(x), ŷ). bound = 0.1 is "hard coding in the paper" in SalUn's code.
  **Difference:** SalUn's code keeps argmax f₀(x_adv) even when it is the true label (the step
  then fine-tunes on the true label); here ŷ is the best class *other than* y, the nearest wrong
  class the paper describes, so every forget example is pushed across a boundary. Multiclass only:
  "the nearest wrong class" needs one softmax over exclusive classes.
* ``boundary_expand``: a shadow class C is added to the head and the forget set is trained to it
  (CE over C+1 logits with label C); pruning the shadow neuron afterwards leaves the forget
  activations spread over the remaining classes. The model's own head keeps its C outputs: the
  shadow column (kernel [D, 1], bias [1], torch.nn.Linear's default init like SalUn's freshly
  built C+1-way layer) lives in aux and gets its own SGD update with the same lr inside each step.
  Pruning = dropping that column: the final state keeps the C outputs exactly as training left
  them. SalUn's code trains to the shadow label but does not show the pruning; the pruning follows
  the paper's description. Multiclass only.

Defaults: SGD lr 0.001 without momentum and batch 64 (the MUFAC reference's unlearning optimizer,
docs/methods.md#neggrad; MUFAC has no boundary runs), 10 epochs over the forget set (SalUn's
``--unlearn_epochs`` default, and the 10 epochs for BS and BE that the same group states in
OPTML-Group/Unlearn-WorstCase issue #1; the forget set is small, so this is ~10·|D_f|/64 steps). SalUn's parser default lr is 0.01 with momentum 0.9
and weight decay 5e-4; its authors searched the lr per setting.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from mu_jax.methods import common
from mu_jax.methods.base import Phase, Unlearner, check_positive


def fgsm(apply_fn, variables, images: jax.Array, labels: jax.Array, bound: float | jax.Array
         ) -> jax.Array:
  """One FGSM step against a model in eval mode, clipped to [0, 1] and rounded to the /255 grid.

  Args:
    apply_fn: the model's apply.
    variables: {"params", "batch_stats"} of the attacked (original) model.
    images: float [N, H, W, C] in [0, 1].
    labels: integer labels [N].
    bound: the step size ε (L∞); |x_adv − x| ≤ ε + 1/510 after rounding.

  Returns:
    x_adv, float32 like ``images``.
  """

  def loss(x):
    logits = apply_fn(variables, x, train=False)
    # Summed, not averaged: each example's input gradient is its own, whatever the batch size.
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels.astype(jnp.int32)).sum()

  step = bound * jnp.sign(jax.grad(loss)(images))
  return jnp.round(jnp.clip(images + step, 0.0, 1.0) * 255.0) / 255.0


def nearest_wrong_label(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """argmax over the classes other than the true one: argmax(logits) whenever that is wrong."""
  is_true = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.bool_)
  return jnp.argmax(jnp.where(is_true, -jnp.inf, logits), axis=-1).astype(labels.dtype)


def shrink_labels(state, original, images: jax.Array, labels: jax.Array, bound: float | jax.Array
                  ) -> jax.Array:
  """Boundary Shrink's new labels for a forget batch (``original`` = {"params", "batch_stats"})."""
  x_adv = fgsm(state.apply_fn, original, images, labels, bound)
  logits_adv = state.apply_fn(original, x_adv, train=False)
  return nearest_wrong_label(logits_adv, labels)


def _copy_original(state, rng, spec):
  del rng, spec
  # The original model, frozen: arrays are immutable, so the steps' new states never touch it.
  return state, {"params": state.params, "batch_stats": state.batch_stats}


def boundary_shrink(bound: float = 0.1, lr: float = 1e-3, epochs: int = 10,
                    momentum: float = 0.0) -> Unlearner:
  """Boundary Shrink: fine-tune forget images to their nearest wrong class under the original model.

  Args:
    bound: FGSM step size (SalUn's code: 0.1, fixed).
    lr: SGD learning rate.
    epochs: passes over the forget set.
    momentum: SGD momentum.

  Returns:
    The :class:`Unlearner` (multiclass only); aux holds the original model.
  """
  check_positive("boundary_shrink", bound=bound, lr=lr, epochs=epochs)

  def phases(spec):
    return [Phase("shrink", "forget", _shrink_step(spec.task), epochs)]

  return Unlearner("boundary_shrink", {"bound": bound, "lr": lr, "epochs": epochs,
                                       "momentum": momentum},
                   common.reference_sgd(lr, momentum), phases, _copy_original,
                   tasks=("multiclass",), traced={"bound": bound})


@functools.cache
def _shrink_step(task: str):
  """CE to the nearest wrong class under the original model; ``bound`` from ``info["hp"]``."""

  def step(state, aux, batch, rng, info):
    del rng
    x, y, mask = batch["image"], batch["label"], batch.get("mask")
    y_new = shrink_labels(state, aux, x, y, info["hp"]["bound"])

    def loss_fn(params):
      logits, stats = common.forward(state, params, state.batch_stats, x, mask=mask)
      loss = common.task_loss(logits, y_new, task, mask)
      return loss, (stats, {"accuracy": common.accuracy(logits, y, task, mask),
                            "shrink_label_accuracy": common.accuracy(logits, y_new, task, mask)})

    state, metrics = common.gradient_step(state, loss_fn)
    return state, aux, metrics

  return step


def shadow_logits(pooled: jax.Array, shadow) -> jax.Array:
  """The shadow class's logit [N, 1] from the pooled features."""
  return pooled @ shadow["kernel"] + shadow["bias"]


def boundary_expand(lr: float = 1e-3, epochs: int = 10) -> Unlearner:
  """Boundary Expanding: train the forget set to a shadow class C, then prune the shadow neuron.

  Args:
    lr: SGD learning rate (model and shadow column alike; plain SGD, no momentum, so the shadow
      column needs no optimizer state).
    epochs: passes over the forget set.

  Returns:
    The :class:`Unlearner` (multiclass only); aux holds the shadow column ``{"kernel", "bias"}``.
  """
  check_positive("boundary_expand", lr=lr, epochs=epochs)

  def init(state, rng, spec):
    del spec
    dim = state.params["fc"]["Dense_0"]["kernel"].shape[0]
    limit = 1.0 / jnp.sqrt(jnp.float32(dim))
    k_rng, b_rng = jax.random.split(rng)
    # torch.nn.Linear's default init: U(−1/√D, 1/√D) for the new row's weight and bias.
    return state, {"kernel": jax.random.uniform(k_rng, (dim, 1), jnp.float32, -limit, limit),
                   "bias": jax.random.uniform(b_rng, (1,), jnp.float32, -limit, limit)}

  def phases(spec):
    # Pruning the shadow neuron needs no ``after``: the model's head never had it, so the state
    # ends with its C outputs as training left them. The column stays in aux, a record of what was
    # trained and one aux structure for the whole run (checkpoints are restored against it).
    return [Phase("expand", "forget", _expand_step(spec.num_classes), epochs)]

  return Unlearner("boundary_expand", {"lr": lr, "epochs": epochs}, common.reference_sgd(lr),
                   phases, init, tasks=("multiclass",))


@functools.cache
def _expand_step(shadow_class: int):
  """CE of the forget batch to the shadow class ``shadow_class`` (= C) over C + 1 logits."""

  def ce_to_shadow(logits, shadow_logit, mask):
    full = jnp.concatenate([logits.astype(jnp.float32), shadow_logit], axis=-1)
    target = jnp.full((full.shape[0],), shadow_class, jnp.int32)
    return common.mean(optax.softmax_cross_entropy_with_integer_labels(full, target), mask)

  def step(state, aux, batch, rng, info):
    del rng, info
    # The shadow column takes the model's SGD step at the same (traced) learning rate.
    lr = state.opt_state.hyperparams["learning_rate"]
    x, y, mask = batch["image"], batch["label"], batch.get("mask")

    def loss_fn(params):
      (logits, pooled), stats = common.forward(state, params, state.batch_stats, x, features=True,
                                               mask=mask)
      shadow = shadow_logits(pooled, aux)
      loss = ce_to_shadow(logits, shadow, mask)
      # The shadow column's gradient, taken here where the features are at hand: the loss
      # depends on it only through the shadow logit, so differentiating the head alone (with
      # the network's outputs held fixed) gives exactly its part of the joint gradient.
      # It rides out in the metrics, which gradient_step averages over devices like the
      # model's gradients.
      fixed_logits, fixed_pooled = jax.lax.stop_gradient((logits, pooled))
      shadow_grad = jax.grad(
          lambda s: ce_to_shadow(fixed_logits, shadow_logits(fixed_pooled, s), mask))(aux)
      to_shadow = jnp.argmax(jnp.concatenate([logits, shadow], -1), -1) == shadow_class
      return loss, (stats, {"accuracy": common.accuracy(logits, y, "multiclass", mask),
                            "shadow_rate": common.mean(to_shadow.astype(jnp.float32), mask),
                            "shadow_grad": shadow_grad})

    state, metrics = common.gradient_step(state, loss_fn)
    grad = metrics.pop("shadow_grad")
    aux = jax.tree.map(lambda s, g: s - lr * g, aux, grad)
    return state, aux, metrics

  return step
