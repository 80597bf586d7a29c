"""NegGrad (gradient ascent on the forget set) and NegGrad+ ("Advanced"/"Enhanced" NegGrad).

* ``neggrad``: minimise −CE(f(x_f), y_f). The MUFAC reference loops over the retain loader and
  uses only a cycled forget batch per step (134 steps per epoch, 2 epochs, SGD lr 0.001)
  [ndb796/MachineUnlearning@9813cd7:01_MUFAC/Machine_Unlearning_MUFAC_NegGrad.ipynb cell 23]:
  ``stream="paired"`` reproduces that; ``stream="forget"`` is one pass over the forget set per
  epoch (the MUCAC multi-label reference, and SalUn's GA).
* ``neggrad_plus`` (Kurmanji et al., NeurIPS 2023, arXiv 2302.09880): minimise
  α·CE(retain) − (1−α)·CE(forget) in one joint step on paired batches. The MUFAC reference's
  "Advanced NegGrad" is CE_r − CE_f, i.e. α = 0.5 with the loss doubled: ``alpha=0.5, scale=2.0``
  (the defaults).
"""

from __future__ import annotations

from mu_jax.methods import common
from mu_jax.methods.base import Phase, Unlearner, check_positive


def neggrad(lr: float = 1e-3, epochs: int = 2, stream: str = "paired") -> Unlearner:
  """Gradient ascent on forget (defaults: the MUFAC reference)."""
  check_positive("neggrad", lr=lr, epochs=epochs)
  if stream not in ("paired", "forget"):
    raise ValueError(f"neggrad: stream must be 'paired' or 'forget', got {stream!r}")

  def phases(spec):
    ascent = common.supervised_step(spec.task, sign=-1.0)
    if stream == "forget":
      return [Phase("ascent", "forget", ascent, epochs)]
    # Paired batches: ignore the retain half, as the reference does.
    return [Phase("ascent", "paired", lambda s, a, b, r, i: ascent(s, a, b["forget"], r, i), epochs)]

  return Unlearner("neggrad", {"lr": lr, "epochs": epochs, "stream": stream},
                   common.reference_sgd(lr), phases)


def neggrad_plus(alpha: float = 0.5, scale: float = 2.0, lr: float = 1e-3, epochs: int = 2) -> Unlearner:
  """scale·(α·CE(retain) − (1−α)·CE(forget)) on paired batches (defaults: the reference's CE_r − CE_f)."""
  check_positive("neggrad_plus", lr=lr, epochs=epochs, scale=scale)
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"neggrad_plus: alpha must be in [0, 1], got {alpha}")

  def phases(spec):
    task = spec.task

    def step(state, aux, batch, rng, info):
      del rng, info
      f, r = batch["forget"], batch["retain"]

      def loss_fn(params):
        lr_, stats = common.forward(state, params, state.batch_stats, r["image"])
        lf_, stats = common.forward(state, params, stats, f["image"])
        ce_r, ce_f = common.task_loss(lr_, r["label"], task), common.task_loss(lf_, f["label"], task)
        loss = scale * (alpha * ce_r - (1 - alpha) * ce_f)
        return loss, (stats, {"retain_ce": ce_r, "forget_ce": ce_f})

      state, metrics = common.gradient_step(state, loss_fn)
      return state, aux, metrics

    return [Phase("joint", "paired", step, epochs)]

  return Unlearner("neggrad_plus", {"alpha": alpha, "scale": scale, "lr": lr, "epochs": epochs},
                   common.reference_sgd(lr), phases)
