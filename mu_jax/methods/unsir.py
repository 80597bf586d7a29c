"""UNSIR: impair the model with error-maximising noise, then repair it on the retain set.

Tarun, Chundawat, Mandal and Kankanhalli, "Fast Yet Effective Machine Unlearning", IEEE TNNLS 2023
(arXiv 2111.08947). Two variants, kept apart on purpose (docs/methods.md#unsir):

* :func:`unsir`: the MUFAC/MUCAC reference's instance-level variant, which the reference README's
  UNSIR-1 (after impair) and UNSIR-2 (after repair) rows come from
  [ndb796/MachineUnlearning@14a106c:01_MUFAC/Machine_Unlearning_MUFAC_UNSIR.ipynb cells 23-27; the
  same in the ndb796/MachineUnlearning@7275986 MUCAC notebooks]. Per pair of a retain and a forget
  batch (``zip``, stopping at the shorter; the reference skips pairs where either batch is not full,
  which is the driver's drop-last):

  1. N ~ randn with the batch shape; 5 Adam steps (lr 0.01) on ``-MSE(f(N), f(x_f))``, the
     forget logits held fixed, which pushes the noise logits away from the forget logits;
  2. clamp N to [0, 1];
  3. one SGD step (lr 0.001, no momentum) on ``CE(f(N), y_retain) + CE(f(x_r), y_retain)``: the
     noise is labelled with the **retain** labels, as the reference does.

  Then the repair: CE on retain, 1 epoch, the same SGD. Impair 2 epochs, repair 1 epoch, batch 64.
  The repair's loader keeps its last partial batch (masked here): 134 steps on MUFAC.

  **Eval mode, as the reference runs it.** The reference calls ``evaluation(unlearned_model, ...)``
  (whose first statement is ``model.eval()``) right before stage 1 and never calls ``.train()``
  again, so every forward pass of both stages uses the BatchNorm running statistics and none of
  them updates them [that UNSIR notebook: the ``evaluation`` cell and the cell that loads the
  original model]. ``bn_mode="eval"`` (the default; ``train_mode=False`` says the same)
  reproduces that; ``bn_mode="train"`` runs the
  model steps in train mode (batch statistics, running statistics updated by the noise and retain
  forward passes of the model step, chained) and the noise steps with batch statistics too, but
  never lets the noise-learning passes move the running statistics.

  Multilabel (MUCAC): the same rule with BCE in place of CE (the noise objective is task-free).

* :func:`unsir_class`: the official class-level UNSIR
  [vikram2000b/Fast-Machine-Unlearning@fc217ce:"Machine Unlearning.ipynb", cells "Training the
  Noise", "Impair Step", "Repair Step"]:

  1. for each forget class c, a noise batch N_c learned by Adam (lr 0.1, 5 epochs x 8 steps) on
     ``-CE(f(N_c), c) + 0.1 * mean_i ||N_c[i]||^2`` (the official batch is 256 images of 32x32;
     here ``noise_batch`` images of the model's input shape, 64 by default: the reference's
     unlearning batch at 128x128, a step the MUFAC setup is known to fit);
  2. impair: 1 epoch of CE on the noise (labelled with its class) mixed with retain, Adam lr 0.02;
  3. repair: 1 epoch of CE on retain with a fresh Adam, lr 0.01.

  Adaptation to identity unlearning: UNSIR forgets *classes*. Here the forget classes are the
  classes present in the forget split (found by a first pass over it), so with MUFAC identities
  and age labels the noise is learned per age class present among the forgotten people, usually
  all eight: the method then impairs every age class and relies on the repair to restore them.
  Multiclass only (the noise maximises the CE of one class).

  Official details not reproduced: the impair set there is ``20`` copies of each noise batch plus
  1,000 retain images per retain class; the notebook's loop appends only 3 images per copy (it
  iterates over ``batch[0].size(0)``, the channel count) and labels every noise image with class 0
  (``class_num`` is never incremented). Here every impair batch is the retain batch plus
  ``noise_ratio`` times as many noise images, cycling through the noise of every forget class with
  its own label (noise_ratio 1: the official intent, 2 x 20 x 256 noise images against 8,000
  retain ones, is about half noise); the whole retain split is used, not a per-class subset. The
  official noise is learned with the freshly loaded model in ``train()`` mode, so batch statistics
  of the noise are used and its running statistics are overwritten 40 times per class; here the
  noise is learned with batch statistics but the running statistics are left alone.
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
from mu_jax.training.state import with_hyperparams


def _axis_size() -> int:
  return lax.axis_size(parallel.AXIS)


def instance_noise(state, forget_images: jax.Array, rng: jax.Array, *, steps: int = 5,
                   lr: float = 0.01, train: bool = False) -> tuple[jax.Array, jax.Array]:
  """The reference's per-batch error-maximising noise (per device, inside a data-parallel step).

  Args:
    state: the model being unlearned (held fixed here).
    forget_images: this device's forget images, float [b, H, W, C].
    rng: the step's key, the same on every device; example i of the global batch draws its
      initial noise from ``fold_in(rng, i)``, so the noise does not depend on the device count.
    steps: Adam steps on the noise (reference: 5).
    lr: Adam learning rate of the noise (reference: 0.01).
    train: forward passes with batch statistics (True) or running statistics (False).

  Returns:
    ``(noise, mse)``: the noise clamped to [0, 1] and detached, [b, H, W, C]; and the global
    ``MSE(f(N), f(x_f))`` before each Adam step and after the last one (before clamping), [steps+1].
  """
  n_dev = _axis_size()
  positions = parallel.global_index(forget_images.shape[0])
  keys = jax.vmap(lambda p: jax.random.fold_in(rng, p))(positions)
  noise = jax.vmap(lambda k: jax.random.normal(k, forget_images.shape[1:], jnp.float32))(keys)
  # The forget logits are a fixed target (the reference computes them under no_grad).
  target, _ = common.forward(state, state.params, state.batch_stats, forget_images, train=train)
  target = lax.stop_gradient(target)

  def mse(n):
    # A train-mode pass's new running statistics are dropped: only the model step moves them.
    out, _ = common.forward(state, state.params, state.batch_stats, n, train=train)
    return jnp.mean(jnp.square(out.astype(jnp.float32) - target))

  tx = optax.adam(lr)

  def body(i, carry):
    n, opt, hist = carry
    value, grad = jax.value_and_grad(mse)(n)
    # Each device differentiates the mean over its own rows, n_dev times the gradient of the
    # global mean for those rows (through synchronised BN as well); rescale so the Adam steps
    # equal the one-device steps exactly (Adam is scale-free but for its epsilon).
    upd, opt = tx.update(jax.tree.map(lambda g: -g / n_dev, grad), opt, n)
    return optax.apply_updates(n, upd), opt, hist.at[i].set(lax.pmean(value, parallel.AXIS))

  hist = jnp.zeros((steps + 1,), jnp.float32)
  noise, _, hist = lax.fori_loop(0, steps, body, (noise, tx.init(noise), hist))
  hist = hist.at[steps].set(lax.pmean(mse(noise), parallel.AXIS))
  return lax.stop_gradient(jnp.clip(noise, 0.0, 1.0)), hist


def _labels_at_global_rows(labels: jax.Array, rows: int) -> jax.Array:
  """Retain labels for ``rows`` local noise examples, matched by global batch position.

  With equal forget and retain batches (the reference's case) this is this device's own retain
  labels; otherwise noise example i takes retain label ``i mod B_retain`` of the global batch.
  """
  all_labels = lax.all_gather(labels, parallel.AXIS, tiled=True)
  return all_labels[parallel.global_index(rows) % all_labels.shape[0]]


def unsir(noise_steps: int = 5, noise_lr: float = 0.01, lr: float = 1e-3, impair_epochs: int = 2,
          repair_epochs: int = 1, train_mode: bool = False, bn_mode: str | None = None
          ) -> Unlearner:
  """The MUFAC/MUCAC reference's instance-level UNSIR (defaults: the MUFAC reference).

  Args:
    noise_steps: Adam steps on each noise batch (5).
    noise_lr: Adam learning rate of the noise (0.01).
    lr: SGD learning rate of the model, no momentum (0.001).
    impair_epochs: epochs of the impair stage over zip(retain, forget) (2).
    repair_epochs: epochs of CE on retain (1).
    train_mode: run the model in train mode; the reference runs both stages in eval mode (see the
      module docstring).
    bn_mode: "train" or "eval", the name the other methods use for ``train_mode``; when given it
      must agree with ``train_mode`` or leave it at its default.

  Returns:
    The Unlearner; its history logs UNSIR-1 after the impair epochs and UNSIR-2 after the repair.
  """
  check_positive("unsir", noise_steps=noise_steps, noise_lr=noise_lr, lr=lr,
                 impair_epochs=impair_epochs)
  if repair_epochs < 0:
    raise ValueError(f"unsir: repair_epochs must be >= 0, got {repair_epochs}")
  if bn_mode is not None:
    from_mode = common.bn_train("unsir", bn_mode)
    if train_mode and not from_mode:
      raise ValueError("unsir: train_mode=True contradicts bn_mode='eval'")
    train_mode = from_mode
  bn_mode = "train" if train_mode else "eval"

  def phases(spec):
    out = [Phase("impair", "zip", _impair_step(spec.task, noise_steps, train_mode), impair_epochs)]
    if repair_epochs:
      out.append(Phase("repair", "retain", common.supervised_step(spec.task, train=train_mode),
                       repair_epochs, partial="keep"))
    return out

  return Unlearner(
      name="unsir",
      hparams={"noise_steps": noise_steps, "noise_lr": noise_lr, "lr": lr,
               "impair_epochs": impair_epochs, "repair_epochs": repair_epochs,
               "train_mode": train_mode, "bn_mode": bn_mode},
      optimizer=common.reference_sgd(lr), phases=phases, traced={"noise_lr": noise_lr})


@functools.cache
def _impair_step(task: str, noise_steps: int, train_mode: bool):
  """A model step on a batch of fresh error-maximising noise (retain labels) plus the retain batch."""

  def impair(state, aux, batch, rng, info):
    f, r = batch["forget"], batch["retain"]
    noise, mse = instance_noise(state, f["image"], rng, steps=noise_steps,
                                lr=info["hp"]["noise_lr"], train=train_mode)
    noise_labels = _labels_at_global_rows(r["label"], noise.shape[0])

    def loss_fn(params):
      # Two passes, noise then retain, chaining BN statistics as the reference's two calls do.
      logits_n, stats = common.forward(state, params, state.batch_stats, noise, train=train_mode)
      logits_r, stats = common.forward(state, params, stats, r["image"], train=train_mode)
      noise_loss = common.task_loss(logits_n, noise_labels, task)
      retain_loss = common.task_loss(logits_r, r["label"], task)
      return noise_loss + retain_loss, (stats, {
          "noise_loss": noise_loss, "retain_loss": retain_loss,
          "retain_accuracy": common.accuracy(logits_r, r["label"], task)})

    state, metrics = common.gradient_step(state, loss_fn)
    # mse is already averaged over the devices.
    return state, aux, {**metrics, "noise_mse_start": mse[0], "noise_mse_end": mse[-1]}

  return impair


def class_noise(state, forget_classes: jax.Array, rng: jax.Array, *, noise_batch: int,
                image_shape: tuple[int, ...], steps: int = 40, lr: float = 0.1,
                reg_weight: float = 0.1) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The official per-class error-maximising noise (per device, inside a data-parallel step).

  Args:
    state: the model (held fixed).
    forget_classes: [C] 0/1, the classes to learn noise for (others stay zero).
    rng: the same key on every device.
    noise_batch: noise images per class; must be divisible by the device count.
    image_shape: [H, W, C] of the model input.
    steps: Adam steps per class (official: 5 epochs x 8 steps).
    lr: Adam learning rate (official: 0.1).
    reg_weight: weight of ``mean_i ||N[i]||^2`` (official: 0.1).

  Returns:
    ``(noise [C, noise_batch, H, W, C_in], metrics)``, replicated; metrics hold the CE of the
    learned classes before and after (averaged over the learned classes).
  """
  n_dev = _axis_size()
  if noise_batch % n_dev:
    raise ValueError(f"unsir_class: noise_batch {noise_batch} must be divisible by the "
                     f"{n_dev} devices")
  local = noise_batch // n_dev
  # Every device holds the whole noise; each computes the gradient of its own rows (with batch
  # statistics synchronised over the devices, so BN sees the class's whole noise batch).
  rows = parallel.global_index(local)
  num_classes = forget_classes.shape[0]
  classes = jnp.arange(num_classes)
  tx = optax.adam(lr)

  def class_objective(noise_c, cls):
    logits, _ = common.forward(state, state.params, state.batch_stats, noise_c, train=True)
    ce = common.task_loss(logits, jnp.full((noise_c.shape[0],), cls, jnp.int32), "multiclass")
    reg = jnp.mean(jnp.sum(jnp.square(noise_c), axis=tuple(range(1, noise_c.ndim))))
    return -ce + reg_weight * reg, ce

  def objective(local_noise):
    # vmap over classes: one batched pass, yet each class normalised by its own batch statistics
    # as the official loop (one class at a time) does. Classes are independent, so the gradient
    # of the masked sum is each learned class's own gradient; the others get none.
    losses, ces = jax.vmap(class_objective)(local_noise, classes)
    return jnp.sum(losses * forget_classes), ces

  def mean_ce(ces):
    total = jnp.sum(lax.pmean(ces, parallel.AXIS) * forget_classes)
    return total / jnp.maximum(forget_classes.sum(), 1.0)

  keys = jax.vmap(lambda c: jax.random.fold_in(rng, c))(classes)
  noise = jax.vmap(lambda k: jax.vmap(lambda i: jax.random.normal(
      jax.random.fold_in(k, i), image_shape, jnp.float32))(jnp.arange(noise_batch)))(keys)

  def body(i, carry):
    n, opt, ce0 = carry
    (_, ces), g = jax.value_and_grad(objective, has_aux=True)(n[:, rows])
    # Local means give n_dev times the global gradient of each row (see instance_noise).
    g = lax.all_gather(g, parallel.AXIS, axis=1, tiled=True) / n_dev
    upd, opt = tx.update(g, opt, n)
    return optax.apply_updates(n, upd), opt, jnp.where(i == 0, mean_ce(ces), ce0)

  noise, _, ce_start = lax.fori_loop(0, steps, body, (noise, tx.init(noise), jnp.float32(0)))
  _, ces = objective(noise[:, rows])
  noise = noise * forget_classes.reshape((-1,) + (1,) * (noise.ndim - 1))
  return noise, {"noise_ce_start": ce_start, "noise_ce_end": mean_ce(ces)}


def noise_rows(aux, count: int, offset: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``count`` local noise images and labels for an impair step (per device).

  Global noise position q = offset + (position in the global noise batch); q cycles through the
  forget classes first, then through each class's noise rows, so consecutive steps see new rows
  and the choice does not depend on how the batch is split over devices.
  """
  noise, mask = aux["noise"], aux["forget_classes"]
  k = jnp.maximum(mask.sum(), 1.0).astype(jnp.int32)
  order = jnp.argsort(-mask, stable=True)  # the forget classes first, in class order
  q = offset + parallel.global_index(count)
  cls = order[q % k]
  row = (q // k) % noise.shape[1]
  return noise[cls, row], cls.astype(jnp.int32)


def unsir_class(noise_batch: int = 64, noise_lr: float = 0.1, noise_epochs: int = 5,
                noise_steps: int = 8, reg_weight: float = 0.1, noise_ratio: float = 1.0,
                impair_lr: float = 0.02, repair_lr: float = 0.01, impair_epochs: int = 1,
                repair_epochs: int = 1) -> Unlearner:
  """The official class-level UNSIR (defaults: the official notebook; see the module docstring).

  Args:
    noise_batch: noise images per forget class (official 256 at 32x32; 64 here).
    noise_lr: Adam learning rate of the noise (0.1).
    noise_epochs: noise "epochs" (5); with ``noise_steps`` (8) they make 40 Adam steps per class.
    noise_steps: noise steps per epoch (8).
    reg_weight: weight of the noise's mean squared norm (0.1).
    noise_ratio: noise images per retain image in an impair batch (1.0).
    impair_lr: Adam learning rate of the impair epoch (0.02).
    repair_lr: Adam learning rate of the repair epoch, with fresh moments (0.01).
    impair_epochs: impair epochs (1).
    repair_epochs: repair epochs (1).

  Returns:
    The Unlearner (multiclass only). Its phases: ``classes`` (one pass over forget to find the
    forget classes, no update), ``noise`` (one step that learns every class's noise), ``impair``,
    ``repair``.
  """
  check_positive("unsir_class", noise_batch=noise_batch, noise_lr=noise_lr,
                 noise_epochs=noise_epochs, noise_steps=noise_steps, noise_ratio=noise_ratio,
                 impair_lr=impair_lr, repair_lr=repair_lr, impair_epochs=impair_epochs)
  if reg_weight < 0 or repair_epochs < 0:
    raise ValueError("unsir_class: reg_weight and repair_epochs must be >= 0")

  def init(state, rng, spec):
    del rng
    aux = {"noise": jnp.zeros((spec.num_classes, noise_batch, *spec.image_shape), jnp.float32),
           "forget_classes": jnp.zeros((spec.num_classes,), jnp.float32)}
    return state, aux

  def phases(spec):
    # The class pass keeps the last partial batch, so every forget example is seen.
    out = [Phase("classes", "forget", _find_classes(spec.num_classes), 1, augment=False,
                 partial="keep"),
           Phase("noise", "forget",
                 _learn_noise(noise_batch, tuple(spec.image_shape), noise_epochs * noise_steps), 1,
                 augment=False, max_steps=1),
           Phase("impair", "retain", _class_impair_step(noise_ratio), impair_epochs,
                 after=_restart_adam)]
    if repair_epochs:
      out.append(Phase("repair", "retain", common.supervised_step("multiclass"), repair_epochs,
                       partial="keep"))
    return out

  return Unlearner(
      name="unsir_class",
      hparams={"noise_batch": noise_batch, "noise_lr": noise_lr, "noise_epochs": noise_epochs,
               "noise_steps": noise_steps, "reg_weight": reg_weight, "noise_ratio": noise_ratio,
               "impair_lr": impair_lr, "repair_lr": repair_lr, "impair_epochs": impair_epochs,
               "repair_epochs": repair_epochs},
      optimizer=common.reference_adam(impair_lr), phases=phases, init=init, tasks=("multiclass",),
      traced={"noise_lr": noise_lr, "reg_weight": reg_weight, "repair_lr": repair_lr})


@functools.cache
def _find_classes(num_classes: int):
  """Marks the classes of a forget batch in ``aux["forget_classes"]`` (no update)."""

  def find_classes(state, aux, batch, rng, info):
    del rng, info
    seen = jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.float32)
    if "mask" in batch:  # padded rows of the last batch are no forget examples
      seen = seen * batch["mask"][:, None]
    seen = seen.max(0)
    seen = lax.pmax(seen, parallel.AXIS)
    aux = {**aux, "forget_classes": jnp.maximum(aux["forget_classes"], seen)}
    return state, aux, {"loss": jnp.float32(0), "forget_classes": aux["forget_classes"].sum()}

  return find_classes


@functools.cache
def _learn_noise(noise_batch: int, image_shape: tuple[int, ...], steps: int):
  """Learns every forget class's noise in one step (``noise_lr``, ``reg_weight`` from hp)."""

  def learn_noise(state, aux, batch, rng, info):
    del batch
    hp = info["hp"]
    noise, metrics = class_noise(state, aux["forget_classes"], rng, noise_batch=noise_batch,
                                 image_shape=image_shape, steps=steps, lr=hp["noise_lr"],
                                 reg_weight=hp["reg_weight"])
    return state, {**aux, "noise": noise}, {"loss": -metrics["noise_ce_end"], **metrics}

  return learn_noise


@functools.cache
def _class_impair_step(noise_ratio: float):
  """A model step on the retain batch mixed with ``noise_ratio`` times as many noise images."""

  def impair(state, aux, batch, rng, info):
    del rng, info
    b = batch["image"].shape[0]
    m = max(1, int(round(noise_ratio * b)))
    # state.step counts impair steps (the earlier phases take no optimizer step).
    x_noise, y_noise = noise_rows(aux, m, state.step * m * _axis_size())
    images = jnp.concatenate([batch["image"], x_noise.astype(batch["image"].dtype)])
    labels = jnp.concatenate([batch["label"].astype(jnp.int32), y_noise])

    def loss_fn(params):
      # One train-mode pass over the mixed batch, as the official shuffled loader feeds it.
      logits, stats = common.forward(state, params, state.batch_stats, images, train=True)
      loss = common.task_loss(logits, labels, "multiclass")
      return loss, (stats, {
          "retain_accuracy": common.accuracy(logits[:b], batch["label"], "multiclass"),
          "noise_accuracy": common.accuracy(logits[b:], y_noise, "multiclass")})

    state, metrics = common.gradient_step(state, loss_fn)
    return state, aux, metrics

  return impair


def _restart_adam(state, aux, info):
  # The official repair builds a new Adam (lr 0.01): zero moments, its own learning rate.
  opt_state = with_hyperparams(state.tx.init(state.params), learning_rate=info["hp"]["repair_lr"])
  return state.replace(opt_state=opt_state), aux
