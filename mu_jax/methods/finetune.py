"""Fine-tuning, CF-k and EU-k: forgetting by further training on the retain set only.

* ``finetune``: catastrophic forgetting by training on D_retain. MUFAC reference: 2 epochs of CE,
  SGD lr 0.001 without momentum, batch 64
  [ndb796/MachineUnlearning@9813cd7:01_MUFAC/Machine_Unlearning_MUFAC_FineTuing.ipynb cell 22];
  Unlearn-Sparse uses lr 0.01 for 10 epochs on CIFAR-10.
* ``cf_k`` (Goel et al., "Towards Adversarial Evaluations for Inexact Machine Unlearning", arXiv
  2201.06640): only the last k blocks train; k=3 on ResNet-18 is layer3, layer4 and fc, 2 epochs at
  lr 0.001 [the same notebook, cells 25-27]. BatchNorm statistics of frozen blocks still update, as
  in the reference (the model is in ``train()`` mode; only ``requires_grad`` is off).
* ``eu_k`` (same paper): the last k blocks are re-initialised, then trained on retain while the
  rest stays frozen.

BatchNorm mode (``bn_mode``). The MUFAC reference fine-tunes with BatchNorm in **eval** mode: its
fine-tuning notebook evaluates the model (``model.eval()``) in the cell before the loop and never
sets it back to ``train()``, so the batch statistics are never used and the running statistics
never move [ndb796/MachineUnlearning@9813cd7:01_MUFAC/Machine_Unlearning_MUFAC_FineTuing.ipynb;
ndb796/MachineUnlearning@14a106c, the MUFAC Full_Experiments notebook, cells 34-35, the run
behind the README's fine-tuning row]. ``finetune`` defaults to ``bn_mode="eval"``. CF-3 there, and every MUCAC
notebook, load a fresh model, which is in train mode: ``cf_k`` and ``eu_k`` default to "train",
and a MUCAC fine-tuning run sets ``bn_mode="train"``.

Batches: one pass over retain per epoch, the last partial batch kept (masked), as the reference's
``DataLoader`` does: 134 steps per MUFAC epoch (8,525 images at 64).
"""

from __future__ import annotations

from mu_jax.methods import common
from mu_jax.methods.base import Phase, Unlearner, check_positive
from mu_jax.models.registry import last_blocks
from mu_jax.training.state import init_variables


def finetune(lr: float = 1e-3, epochs: int = 2, momentum: float = 0.0,
             bn_mode: str = "eval") -> Unlearner:
  """Fine-tune on retain (defaults: the MUFAC reference).

  Args:
    lr: SGD learning rate (0.001).
    epochs: passes over retain (2).
    momentum: SGD momentum (none).
    bn_mode: "eval" (the MUFAC reference: running statistics, never updated) or "train" (MUCAC).

  Returns:
    The Unlearner.
  """
  check_positive("finetune", lr=lr, epochs=epochs)
  train = common.bn_train("finetune", bn_mode)
  return Unlearner(
      name="finetune",
      hparams={"lr": lr, "epochs": epochs, "momentum": momentum, "bn_mode": bn_mode},
      optimizer=common.reference_sgd(lr, momentum),
      phases=lambda spec: [Phase("retain", "retain", common.supervised_step(spec.task, train=train),
                                 epochs, partial="keep")])


def _frozen(name: str, k: int, lr: float, epochs: int, momentum: float, reinit: bool,
            bn_mode: str) -> Unlearner:
  check_positive(name, lr=lr, epochs=epochs, k=k)
  train = common.bn_train(name, bn_mode)

  def init(state, rng, spec):
    trainable = last_blocks(spec.model, k)
    if reinit:
      fresh = init_variables(spec.model, rng, spec.image_shape)
      params = {n: (fresh["params"][n] if n in trainable else p) for n, p in state.params.items()}
      stats = {n: (fresh["batch_stats"][n] if n in trainable and n in fresh["batch_stats"] else s)
               for n, s in state.batch_stats.items()}
      state = state.replace(params=params, batch_stats=stats)
    # Only the last k blocks change (the step's gradient mask); CF-k and EU-k share one step.
    return state, {"trainable": common.trainable_mask(state.params, trainable)}

  return Unlearner(name=name, hparams={"k": k, "lr": lr, "epochs": epochs, "momentum": momentum,
                                       "bn_mode": bn_mode},
                   optimizer=common.reference_sgd(lr, momentum), init=init,
                   phases=lambda spec: [Phase("retain", "retain",
                                              common.supervised_step(spec.task, train=train), epochs,
                                              partial="keep")])


def cf_k(k: int = 3, lr: float = 1e-3, epochs: int = 2, momentum: float = 0.0,
         bn_mode: str = "train") -> Unlearner:
  """CF-k: train only the last ``k`` blocks on retain (defaults: the MUFAC reference's CF-3).

  ``bn_mode``: "train" (the reference: a freshly loaded model) or "eval".
  """
  return _frozen("cf_k", k, lr, epochs, momentum, reinit=False, bn_mode=bn_mode)


def eu_k(k: int = 3, lr: float = 1e-2, epochs: int = 10, momentum: float = 0.9,
         bn_mode: str = "train") -> Unlearner:
  """EU-k: re-initialise the last ``k`` blocks and train them on retain.

  The reference has no EU-k run; the defaults (lr 0.01 with momentum, 10 epochs) give re-initialised
  blocks enough updates to recover utility, as in Goel et al.'s setting of training them anew.
  """
  return _frozen("eu_k", k, lr, epochs, momentum, reinit=True, bn_mode=bn_mode)
