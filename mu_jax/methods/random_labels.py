"""Random Labeling (RL): train on the forget set with random wrong labels, and on the retain set.

The idea goes back to Amnesiac unlearning (Graves, Nagisetty and Ganesh, "Amnesiac Machine
Learning", AAAI 2021, arXiv 2010.10981). The version here follows the RL baseline of SalUn's code
[OPTML-Group/Unlearn-Saliency@ac880a2:Classification/unlearn/RL.py]: forget images get random
labels and the model is trained with CE on them and on the retain set. SalUn runs either a pass
over the relabelled forget set then a pass over retain (CIFAR-10/SVHN), or one pass over their
concatenation (CIFAR-100/TinyImageNet);
here each step takes a forget batch and a retain batch together (``paired`` stream: an epoch is a
pass over retain with the forget set cycled) and minimises CE(forget, random labels) + CE(retain).

Two deliberate differences from SalUn's code:
  * labels are uniform over the C−1 *wrong* classes (SalUn draws ``randint(0, C)``, which keeps the
    true label 1/C of the time and so partly fine-tunes on the forget set);
  * each example's label is keyed by its position in the global batch, so 1 and 4 devices draw
    the same labels.
Multilabel tasks get an independent fair coin per attribute (a "wrong" 0/1 vector is not defined).

Defaults: SGD lr 0.001 without momentum, batch 64, 2 epochs (the MUFAC reference's unlearning
optimizer and budget, docs/methods.md#finetune; MUFAC itself has no RL run). SalUn uses 10 epochs with
lr searched in [1e-4, 1e-1] on CIFAR-10.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from mu_jax import parallel
from mu_jax.methods import common
from mu_jax.methods.base import Phase, Unlearner, check_non_negative, check_positive


def relabel(rng: jax.Array, labels: jax.Array, positions: jax.Array, num_classes: int,
            task: str) -> jax.Array:
  """Random labels for one batch, each drawn from ``fold_in(rng, position)``.

  Args:
    rng: the step's key (the same on every device).
    labels: true labels [N] (multiclass) or [N, A] (multilabel).
    positions: each example's index in the global batch (:func:`mu_jax.parallel.global_index`).
    num_classes: C.
    task: "multiclass" (uniform over the C−1 wrong classes) or "multilabel" (fair coins).

  Returns:
    Labels of the same shape and dtype as ``labels``.
  """
  keys = jax.vmap(lambda p: jax.random.fold_in(rng, p))(positions)
  return jax.vmap(lambda k, y: common.random_wrong_labels(k, y, num_classes, task))(keys, labels)


@functools.cache
def make_step(task: str, num_classes: int, masked: bool = False) -> Callable[..., Any]:
  """The RL step on a paired batch: CE(forget, random labels) + CE(retain).

  Args:
    task: "multiclass" or "multilabel".
    num_classes: C.
    masked: only the weights where ``aux["mask"]`` is 1 change (SalUn): their gradient is masked
      and the others are kept exactly (:func:`mu_jax.methods.common.gradient_step`).

  Returns:
    ``step(state, aux, batch, rng, info) -> (state, aux, metrics)``.
  """

  def step(state, aux, batch, rng, info):
    del info
    f, r = batch["forget"], batch["retain"]
    y_rand = relabel(rng, f["label"], parallel.global_index(f["label"].shape[0]), num_classes, task)
    mf, mr = f.get("mask"), r.get("mask")

    def loss_fn(params):
      # Forget first, then retain, chaining BN statistics as SalUn's epoch does (forget pass first).
      logits_f, stats = common.forward(state, params, state.batch_stats, f["image"], mask=mf)
      logits_r, stats = common.forward(state, params, stats, r["image"], mask=mr)
      ce_f = common.task_loss(logits_f, y_rand, task, mf)
      ce_r = common.task_loss(logits_r, r["label"], task, mr)
      return ce_f + ce_r, (stats, {
          "forget_random_ce": ce_f, "retain_ce": ce_r,
          "forget_accuracy": common.accuracy(logits_f, f["label"], task, mf),
          "retain_accuracy": common.accuracy(logits_r, r["label"], task, mr)})

    state, metrics = common.gradient_step(state, loss_fn, aux["mask"] if masked else None)
    return state, aux, metrics

  return step


def random_labels(lr: float = 1e-3, epochs: int = 2, momentum: float = 0.0,
                  weight_decay: float = 0.0) -> Unlearner:
  """Random-label unlearning (defaults: the MUFAC reference's SGD lr 0.001, 2 epochs).

  Args:
    lr: SGD learning rate.
    epochs: passes of the paired stream (one pass over retain, forget cycled).
    momentum: SGD momentum (SalUn's code: 0.9; the MUFAC reference: none).
    weight_decay: L2 added to the gradient (SalUn's code: 5e-4; the MUFAC reference: none).

  Returns:
    The :class:`Unlearner`.
  """
  check_positive("random_labels", lr=lr, epochs=epochs)
  check_non_negative("random_labels", momentum=momentum, weight_decay=weight_decay)
  return Unlearner(
      "random_labels",
      {"lr": lr, "epochs": epochs, "momentum": momentum, "weight_decay": weight_decay},
      common.reference_sgd(lr, momentum, weight_decay),
      lambda spec: [Phase("random_labels", "paired", make_step(spec.task, spec.num_classes),
                          epochs)])
