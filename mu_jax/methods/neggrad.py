"""NegGrad (gradient ascent on the forget set) and NegGrad+ ("Advanced"/"Enhanced" NegGrad).

* ``neggrad``: minimise −CE(f(x_f), y_f). The MUFAC reference loops over the retain loader and
  uses only a cycled forget batch per step, skipping every step where the two batches differ in
  size (2 epochs, SGD lr 0.001)
  [ndb796/MachineUnlearning@9813cd7:01_MUFAC/Machine_Unlearning_MUFAC_NegGrad.ipynb cell 23]:
  ``stream="paired"`` reproduces that loop (the driver's ``partial="skip"``: 134 iterations per
  MUFAC epoch, of which 128 and then 127 are steps, since the forget iterator carries over between
  epochs). ``stream="forget"`` is one pass over the forget loader per epoch, partial batch skipped:
  the MUCAC multi-label reference (159 steps per epoch) [ndb796/MachineUnlearning@7275986:
  02_MUCAC/multi_label_classification NegGrad notebook cell 37], and SalUn's GA.
* ``neggrad_plus`` (Kurmanji et al., NeurIPS 2023, arXiv 2302.09880): minimise
  α·CE(retain) − (1−α)·CE(forget) in one joint step on paired batches. The MUFAC reference's
  "Advanced NegGrad" is CE_r − CE_f, i.e. α = 0.5 with the loss doubled: ``alpha=0.5, scale=2.0``
  (the defaults), on the same loop as NegGrad (``stream="paired"``); the MUCAC reference iterates
  ``zip(forget, retain)``, stopping at the shorter and skipping partial batches (``stream="zip"``:
  159 steps per MUCAC epoch) [the same notebook, cell 41].

Both load a fresh model in the reference, so the model is in train mode (``bn_mode="train"``).
"""

from __future__ import annotations

import functools

from mu_jax.methods import common
from mu_jax.methods.base import Phase, Unlearner, check_positive


def neggrad(lr: float = 1e-3, epochs: int = 2, stream: str = "paired",
            bn_mode: str = "train") -> Unlearner:
  """Gradient ascent on forget (defaults: the MUFAC reference).

  Args:
    lr: SGD learning rate (0.001).
    epochs: epochs of the stream (2).
    stream: "paired" (the MUFAC loop over retain with a cycled forget batch) or "forget" (the
      MUCAC loop over the forget loader).
    bn_mode: "train" (the reference) or "eval".

  Returns:
    The Unlearner.
  """
  check_positive("neggrad", lr=lr, epochs=epochs)
  if stream not in ("paired", "forget"):
    raise ValueError(f"neggrad: stream must be 'paired' or 'forget', got {stream!r}")
  train = common.bn_train("neggrad", bn_mode)

  def phases(spec):
    ascent = common.supervised_step(spec.task, sign=-1.0, train=train)
    if stream == "forget":
      return [Phase("ascent", "forget", ascent, epochs)]
    # Paired batches: ignore the retain half, as the reference does.
    return [Phase("ascent", "paired", common.forget_half(ascent), epochs, partial="skip")]

  return Unlearner("neggrad", {"lr": lr, "epochs": epochs, "stream": stream, "bn_mode": bn_mode},
                   common.reference_sgd(lr), phases)


def neggrad_plus(alpha: float = 0.5, scale: float = 2.0, lr: float = 1e-3, epochs: int = 2,
                 stream: str = "paired", bn_mode: str = "train") -> Unlearner:
  """scale·(α·CE(retain) − (1−α)·CE(forget)) on pairs of batches (defaults: the MUFAC reference).

  Args:
    alpha: weight of the retain CE (0.5).
    scale: factor of the whole loss (2: the reference's CE_r − CE_f).
    lr: SGD learning rate (0.001).
    epochs: epochs of the stream (2).
    stream: "paired" (the MUFAC loop: one pass over retain, forget cycled) or "zip" (the MUCAC
      loop: zip(forget, retain), stopping at the shorter); pairs with a partial batch are skipped.
    bn_mode: "train" (the reference) or "eval".

  Returns:
    The Unlearner.
  """
  check_positive("neggrad_plus", lr=lr, epochs=epochs, scale=scale)
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"neggrad_plus: alpha must be in [0, 1], got {alpha}")
  if stream not in ("paired", "zip"):
    raise ValueError(f"neggrad_plus: stream must be 'paired' or 'zip', got {stream!r}")
  train = common.bn_train("neggrad_plus", bn_mode)

  def phases(spec):
    return [Phase("joint", stream, _joint_step(spec.task, train), epochs, partial="skip")]

  return Unlearner("neggrad_plus", {"alpha": alpha, "scale": scale, "lr": lr, "epochs": epochs,
                                    "stream": stream, "bn_mode": bn_mode},
                   common.reference_sgd(lr), phases, traced={"alpha": alpha, "scale": scale})


@functools.cache
def _joint_step(task: str, train: bool):
  """The NegGrad+ step on a forget/retain pair; ``alpha`` and ``scale`` come from ``info["hp"]``."""

  def step(state, aux, batch, rng, info):
    del rng
    alpha, scale = info["hp"]["alpha"], info["hp"]["scale"]
    f, r = batch["forget"], batch["retain"]

    def loss_fn(params):
      lr_, stats = common.forward(state, params, state.batch_stats, r["image"], train=train,
                                  mask=r.get("mask"))
      lf_, stats = common.forward(state, params, stats, f["image"], train=train,
                                  mask=f.get("mask"))
      ce_r = common.task_loss(lr_, r["label"], task, r.get("mask"))
      ce_f = common.task_loss(lf_, f["label"], task, f.get("mask"))
      loss = scale * (alpha * ce_r - (1 - alpha) * ce_f)
      return loss, (stats, {"retain_ce": ce_r, "forget_ce": ce_f})

    state, metrics = common.gradient_step(state, loss_fn)
    return state, aux, metrics

  return step
