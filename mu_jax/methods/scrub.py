"""SCRUB: a student distils from the original model on retain and moves away from it on forget.

Kurmanji, Triantafillou, Hayes and Triantafillou, "Towards Unbounded Machine Unlearning",
NeurIPS 2023, arXiv 2302.09880. The student starts as the original model; the teacher is a frozen
copy of the original, kept in ``aux`` (parameters and BatchNorm statistics). Two variants
(docs/methods.md#scrub):

* :func:`scrub`: the MUFAC/MUCAC reference's simplified SCRUB
  [ndb796/MachineUnlearning@9813cd7:01_MUFAC/Machine_Unlearning_MUFAC_SCRUB.ipynb cells 24-26].
  Each epoch is a full pass over **retain**
  minimising ``CE + KL`` followed by a full pass over **forget** minimising ``-KL``, with
  ``DistillKL(T=4)`` = KL(softmax(t/T) ‖ log_softmax(s/T)) · T² / batch (``size_average=False``,
  i.e. the per-example KL averaged over the batch: :func:`mu_jax.methods.common.kl_div`), SGD lr
  0.001 without momentum, 2 epochs, batch 64.
  MUCAC multi-label reference: **only the retain pass** runs, with BCE + KL, where the KL is the
  same DistillKL applied to the 3 attribute logits (a softmax across attributes), 2 epochs, lr
  0.001 [ndb796/MachineUnlearning@7275986:02_MUCAC/multi_label_classification/
  Machine_Unlearning_MUCAC_Multi_Label_Full_Experiments.ipynb cells 73-78]; ``task="multilabel"``
  does exactly that.
  MUCAC binary reference: lr 0.0001, 1 epoch, both passes (``scrub(lr=1e-4, epochs=1)``).
  Both passes keep the last partial batch (masked), as the reference's loaders do: the forget
  pass sees all 1,500 MUFAC forget images (24 steps, the last with 28 of them).
* :func:`scrub_official`: the official algorithm [meghdadk/SCRUB@812dd5d:small_scale_unlearning.ipynb
  cell 30 (config), cell 34 (loop); meghdadk/SCRUB@98ffb11:thirdparty/repdistiller/helper/loops.py
  ``train_distill``]: for epoch
  e = 1..10, max-steps (``-KL`` on forget) only while e <= msteps = 3, then min-steps
  (``gamma * CE + alpha * KL`` on retain) every epoch, with gamma 1, alpha 0.5, beta 0, T 2, Adam
  lr 5e-4 with (coupled, torch-style) weight decay 0.1, the learning rate multiplied by 0.1 for
  every boundary in (5, 8, 9) that the epoch number exceeds. The official batches are 32 (retain)
  and 64 (forget); the driver feeds every stream with one batch size (``RunConfig.batch_size``).

Teacher and student modes (both variants, as both references do): the teacher runs in eval mode
(``teacher.eval()``: running statistics, never updated), the student in train mode (batch
statistics; its running statistics move with each step's single forward pass).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax.numpy as jnp
import optax

from mu_jax.methods import common
from mu_jax.methods.base import Phase, Unlearner, check_non_negative, check_positive


def teacher_init(state, rng, spec):
  """``aux = {"teacher": {"params", "batch_stats"}}``: a frozen copy of the original model."""
  del rng, spec
  return state, {"teacher": {"params": state.params, "batch_stats": state.batch_stats}}


def teacher_logits(state, aux, images):
  """The frozen teacher's logits, in eval mode."""
  t = aux["teacher"]
  logits, _ = common.forward(state, t["params"], t["batch_stats"], images, train=False)
  return logits


@functools.cache
def min_step(task: str, train: bool = True):
  """A step on ``gamma * task loss + alpha * KL(teacher ‖ student)`` of a retain batch.

  ``temperature`` (and ``gamma``, ``alpha``, each 1 when absent) come from ``info["hp"]``.
  ``train``: the student's BatchNorm mode (the teacher always runs in eval mode).
  """

  def step(state, aux, batch, rng, info):
    del rng
    hp = info["hp"]
    temperature, gamma, alpha = hp["temperature"], hp.get("gamma", 1.0), hp.get("alpha", 1.0)
    mask = batch.get("mask")
    t_logits = teacher_logits(state, aux, batch["image"])

    def loss_fn(params):
      s_logits, stats = common.forward(state, params, state.batch_stats, batch["image"], train=train,
                                       mask=mask)
      ce = common.task_loss(s_logits, batch["label"], task, mask)
      kl = common.mean(common.kl_div(t_logits, s_logits, temperature, task), mask)
      return gamma * ce + alpha * kl, (stats, {
          "ce": ce, "kl": kl, "accuracy": common.accuracy(s_logits, batch["label"], task, mask)})

    state, metrics = common.gradient_step(state, loss_fn)
    return state, aux, metrics

  return step


@functools.cache
def max_step(task: str, train: bool = True):
  """A step on ``-KL(teacher ‖ student)`` of a forget batch (moves the student away).

  ``temperature`` comes from ``info["hp"]``.
  """

  def step(state, aux, batch, rng, info):
    del rng
    temperature = info["hp"]["temperature"]
    mask = batch.get("mask")
    t_logits = teacher_logits(state, aux, batch["image"])

    def loss_fn(params):
      s_logits, stats = common.forward(state, params, state.batch_stats, batch["image"], train=train,
                                       mask=mask)
      kl = common.mean(common.kl_div(t_logits, s_logits, temperature, task), mask)
      return -kl, (stats, {"kl": kl,
                           "accuracy": common.accuracy(s_logits, batch["label"], task, mask)})

    state, metrics = common.gradient_step(state, loss_fn)
    return state, aux, metrics

  return step


def scrub(temperature: float = 4.0, lr: float = 1e-3, epochs: int = 2,
          bn_mode: str = "train") -> Unlearner:
  """The MUFAC/MUCAC reference's simplified SCRUB (defaults: the MUFAC reference).

  Args:
    temperature: DistillKL temperature (4).
    lr: SGD learning rate, no momentum (0.001; MUCAC binary: 0.0001).
    epochs: epochs, each a retain pass then a forget pass (2; MUCAC binary: 1).
    bn_mode: the student's BatchNorm mode, "train" (the reference) or "eval".

  Returns:
    The Unlearner. Multiclass phases alternate ``min_retain``, ``max_forget`` per epoch;
    multilabel has ``min_retain`` only (the MUCAC reference).
  """
  check_positive("scrub", temperature=temperature, lr=lr, epochs=epochs)
  train = common.bn_train("scrub", bn_mode)

  def phases(spec):
    # The same step objects for every epoch: each compiles once.
    retain = min_step(spec.task, train=train)
    if spec.task == "multilabel":
      return [Phase("min_retain", "retain", retain, epochs, partial="keep")]
    forget = max_step(spec.task, train=train)
    out = []
    for _ in range(epochs):
      out += [Phase("min_retain", "retain", retain, partial="keep"),
              Phase("max_forget", "forget", forget, partial="keep")]
    return out

  return Unlearner(name="scrub", hparams={"temperature": temperature, "lr": lr, "epochs": epochs,
                                          "bn_mode": bn_mode},
                   optimizer=common.reference_sgd(lr), phases=phases, init=teacher_init,
                   traced={"temperature": temperature})


def lr_factor(epoch: jnp.ndarray, decay_epochs: Sequence[int], decay_rate: float | jnp.ndarray
              ) -> jnp.ndarray:
  """The official ``sgda_adjust_learning_rate``: rate ** (number of boundaries below ``epoch``).

  ``epoch`` counts from 1, so with boundaries (5, 8, 9) epochs 1-5 run at the full rate, 6-8 at
  0.1, 9 at 0.01 and 10 at 0.001.
  """
  if not decay_epochs:
    return jnp.ones((), jnp.float32)
  passed = jnp.sum(jnp.asarray(epoch) > jnp.asarray(tuple(decay_epochs), jnp.int32))
  return jnp.asarray(decay_rate, jnp.float32) ** passed.astype(jnp.float32)


def _official_optimizer(lr: float, weight_decay: float, momentum: float, optimizer: str
                        ) -> optax.GradientTransformation:
  """torch Adam / SGD with coupled weight decay; the learning rate lives in the state."""
  if optimizer == "adam":
    return common.reference_adam(lr, weight_decay)
  return common.reference_sgd(lr, momentum, weight_decay)


def with_learning_rate(state, lr: jnp.ndarray):
  """The state with its injected ``learning_rate`` hyperparameter set to ``lr``.

  Setting it right before the update equals torch's ``param_group["lr"] = lr``: Adam's and
  momentum SGD's update is linear in the rate and their moments do not depend on it.
  """
  opt = state.opt_state
  hp = dict(opt.hyperparams)
  hp["learning_rate"] = jnp.asarray(lr, jnp.asarray(hp["learning_rate"]).dtype)
  return state.replace(opt_state=opt._replace(hyperparams=hp))


def scrub_official(alpha: float = 0.5, gamma: float = 1.0, beta: float = 0.0,
                   temperature: float = 2.0, msteps: int = 3, epochs: int = 10, lr: float = 5e-4,
                   lr_decay_epochs: Sequence[int] = (5, 8, 9), lr_decay_rate: float = 0.1,
                   weight_decay: float = 0.1, momentum: float = 0.9, optimizer: str = "adam"
                   ) -> Unlearner:
  """The official SCRUB (defaults: the official small-scale config, docs/methods.md#scrub_official).

  Args:
    alpha: weight of KL(teacher ‖ student) in the min-steps (0.5).
    gamma: weight of CE in the min-steps (1).
    beta: weight of repdistiller's "other distillation" term, which is 0 for the official
      ``distill='kd'``; only 0 is accepted, the term does not exist here.
    temperature: DistillKL temperature ``kd_T`` (2).
    msteps: epochs (counted from 1) that run max-steps before their min-steps (3).
    epochs: ``sgda_epochs`` (10).
    lr: ``sgda_learning_rate`` (5e-4).
    lr_decay_epochs: the rate is multiplied by ``lr_decay_rate`` once per boundary the epoch
      number exceeds ((5, 8, 9)).
    lr_decay_rate: (0.1).
    weight_decay: ``sgda_weight_decay``, added to the gradient as torch does (0.1).
    momentum: ``sgda_momentum``, used by ``optimizer="sgd"`` only (0.9).
    optimizer: "adam" (the official config) or "sgd".

  Returns:
    The Unlearner (multiclass). Phases: per epoch e, ``max_forget`` if e <= msteps, then
    ``min_retain``. The epoch number lives in ``aux["epoch"]`` (advanced after each min pass), and
    every step sets the learning rate from it, logged as ``lr``.
  """
  check_positive("scrub_official", temperature=temperature, epochs=epochs, lr=lr,
                 lr_decay_rate=lr_decay_rate)
  check_non_negative("scrub_official", alpha=alpha, gamma=gamma, msteps=msteps,
                     weight_decay=weight_decay, momentum=momentum)
  if beta != 0:
    raise ValueError("scrub_official: beta weights repdistiller's feature-distillation term, which "
                     "the official distill='kd' config sets to 0; only beta=0 is implemented")
  if optimizer not in ("adam", "sgd"):
    raise ValueError(f"scrub_official: optimizer must be 'adam' or 'sgd', got {optimizer!r}")
  decay = tuple(int(e) for e in lr_decay_epochs)

  def init(state, rng, spec):
    state, aux = teacher_init(state, rng, spec)
    return state, {**aux, "epoch": jnp.ones((), jnp.int32)}

  def phases(spec):
    forget = _scheduled(max_step(spec.task), decay)
    retain = _scheduled(min_step(spec.task), decay)
    out = []
    for e in range(1, epochs + 1):
      if e <= msteps:
        out.append(Phase("max_forget", "forget", forget))
      out.append(Phase("min_retain", "retain", retain, after=_next_epoch))
    return out

  return Unlearner(
      name="scrub_official",
      hparams={"alpha": alpha, "gamma": gamma, "beta": beta, "temperature": temperature,
               "msteps": msteps, "epochs": epochs, "lr": lr, "lr_decay_epochs": list(decay),
               "lr_decay_rate": lr_decay_rate, "weight_decay": weight_decay, "momentum": momentum,
               "optimizer": optimizer},
      optimizer=_official_optimizer(lr, weight_decay, momentum, optimizer), phases=phases,
      init=init, tasks=("multiclass",),
      traced={"alpha": alpha, "gamma": gamma, "temperature": temperature, "lr": lr,
              "lr_decay_rate": lr_decay_rate})


@functools.cache
def _scheduled(step, decay_epochs: tuple[int, ...]):
  """``step`` run at ``hp["lr"]`` times the official schedule's factor for ``aux["epoch"]``."""

  def wrapped(state, aux, batch, rng, info):
    hp = info["hp"]
    rate = hp["lr"] * lr_factor(aux["epoch"], decay_epochs, hp["lr_decay_rate"])
    state, aux, metrics = step(with_learning_rate(state, rate), aux, batch, rng, info)
    return state, aux, {**metrics, "lr": rate}

  return wrapped


def _next_epoch(state, aux, info):
  del info
  return state, {**aux, "epoch": aux["epoch"] + 1}
