"""Populations: K models of one architecture trained and evaluated as one compiled program.

Membership-inference attacks with shadow models (Carlini et al., "Membership Inference Attacks
From First Principles", IEEE S&P 2022, arXiv 2112.03570; U-LiRA, Hayes et al., arXiv 2403.01218)
and the NeurIPS 2023 unlearning score (Triantafillou et al., arXiv 2406.09073) need many models
of one architecture, each with its own seed and its own subset of the training data. Small models
at small batches leave a CPU's cores (and an accelerator) mostly idle; here the K train states are
stacked along a leading *member* axis and one compiled step runs ``jax.vmap`` of the per-device
step :func:`mu_jax.training.steps.train_step` over them inside ``shard_map``.

Member k is defined by a seed, a 0/1 inclusion mask over the training examples and a learning
rate, and trains exactly as :func:`mu_jax.training.fit.fit` would on ``train.subset(rows_k)`` with
that seed (``rows_k`` the included rows in order):

* initialisation from ``fold_in(key(seed), 0)``;
* epoch e visits the subset in the order ``pipeline.train_batches(n_k, batch, seed, e)`` (full
  batches, the last partial one dropped);
* step t (the member's own step count) augments with ``fold_in(fold_in(key(seed), 1), t)``;
* the learning rate of epoch e is ``lr_k`` times ``lr_decay`` for every boundary of
  ``lr_boundaries`` at or before e, rounded as ``optax.piecewise_constant_schedule`` rounds it.

Members with different subset sizes take different numbers of steps per epoch: every member runs
the longest member's step count, and a member with no batch left keeps its state unchanged
(``jnp.where`` over the whole state). SISA's stacked shards (:mod:`mu_jax.sisa.train`) train
through this module's step too. The learning rate is a value in the optimizer state
(:func:`mu_jax.training.state.traced_optimizer`, torch's SGD),
written at the start of each epoch, so members with different step counts and learning rates
share one program and epoch-indexed decays are applied exactly.

A stacked run equals K separate ``fit`` runs to float32 rounding, not bit for bit: XLA computes a
vmapped convolution as a grouped one, whose summation order differs (see :mod:`mu_jax.sisa.train`).
Stopping and resuming a stacked run gives the same numbers, bit for bit, as a run that never
stopped: the state is checkpointed after every epoch and the data order and augmentation of an
epoch depend only on the member's seed and the epoch.

Devices: the population runs on a 2-D mesh (:func:`mu_jax.parallel.member_mesh`): its members are
split over ``member_shards`` groups of devices, and each member's batch over the devices of its
group. Gradients and BatchNorm statistics are averaged over the data axis only, so members never
mix.

Convolutions: under ``vmap``, mu_jax's per-member CPU convolution kernels (:mod:`mu_jax.ops.conv`)
run one member after another, while XLA's own convolution batches the members as one grouped
convolution. ``convolution="batched"`` traces the stacked steps with plain ``lax`` convolutions
(:func:`mu_jax.models.layers.set_convolution`'s default), ``"installed"`` with whatever the hook
holds (mu_jax's plans after :func:`mu_jax.runtime.configure_cpu`); ``"auto"`` picks the one
measured faster (:data:`AUTO_CONVOLUTION`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from mu_jax import checkpoints, parallel
from mu_jax.data import pipeline
from mu_jax.data.splits import Examples
from mu_jax.models import layers
from mu_jax.training import steps
from mu_jax.training.fit import TrainConfig
from mu_jax.training.state import TrainState, create_state, traced_optimizer, with_hyperparams

CONVOLUTIONS = ("auto", "installed", "batched")
# What "auto" means. Measured with `benchmarks/population.py --convolutions=batched,installed
# --nosequential` on the synthetic runlocal model (small CNN width 16, 16 px, 8 epochs, batch 32,
# members on random halves of 270 images; 2-core Xeon with AVX-512, shared with other jobs):
# wall seconds minus the step's compilation, 16 members 4.3 (installed: mu_jax's CPU plans, one
# member after another) against 10.8 (batched: XLA's grouped convolution), 32 members 7.0 against
# 22.1. Off the CPU the installed hook is plain lax, so the two plans coincide there.
AUTO_CONVOLUTION = "installed"

# Stacked states, per-member keys, learning rates and flags: split over the member axis.
MEMBER_SPEC = P(parallel.MEMBER_AXIS)
# Per-member batches [members, batch, ...]: members over the member axis, examples over the data
# axis.
MEMBER_BATCH_SPEC = P(parallel.MEMBER_AXIS, parallel.AXIS)
# One batch [batch, ...] every member evaluates: examples over the data axis.
SHARED_BATCH_SPEC = P(parallel.AXIS)


def epoch_learning_rate(lr: float, epoch: int, boundaries: Sequence[int], decay: float
                        ) -> np.float32:
  """``fit``'s learning rate in ``epoch`` (0-based), rounded as optax's piecewise schedule rounds.

  ``optax.piecewise_constant_schedule`` multiplies the float32 value by each passed boundary's
  scale in turn; a step at an epoch boundary already takes the new rate.
  """
  v = np.float32(lr)
  for b in sorted(set(int(b) for b in boundaries)):
    if epoch >= b:
      v = np.float32(np.float32(decay) * v)
  return v


# ------------------------------------------------------------------ convolution plan


def resolve_convolution(convolution: str) -> str:
  """"auto" → :data:`AUTO_CONVOLUTION`; the others as given.

  Raises:
    ValueError: an unknown name.
  """
  if convolution not in CONVOLUTIONS:
    raise ValueError(f"convolution must be one of {CONVOLUTIONS}, got {convolution!r}")
  return AUTO_CONVOLUTION if convolution == "auto" else convolution


@contextlib.contextmanager
def _convolution(plan: str):
  """Installs the plan's convolution while a stacked step is traced (the hook is read then)."""
  if plan == "installed":
    yield
    return
  old = layers.get_convolution()
  layers.set_convolution(layers.lax_conv2d, layers.lax_max_pool)
  try:
    yield
  finally:
    layers.set_convolution(*old)


# ------------------------------------------------------------------ steps


def stacked_train_step(states: TrainState, batch: steps.Batch, keys: jax.Array, lrs: jax.Array,
                       active: jax.Array, *, task: str, augment: bool, convolution: str
                       ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step of every member on this device (vmapped :func:`steps.train_step`).

  Args:
    states: this device's members' train states, stacked along a leading member axis.
    batch: this device's part of each member's batch: ``image`` [members, b, H, W, 3], ``label``.
    keys: [members, 2] uint32 key data of each member's step key; step t of a member uses
      ``fold_in(key, t)`` with t the member's own ``state.step``, as ``fit`` does.
    lrs: [members] the learning rate of the current epoch, written into the optimizer state.
    active: [members] bool; an inactive member returns its state unchanged.
    task: "multiclass" or "multilabel".
    augment: apply the reference augmentation.
    convolution: "installed" or "batched" (see the module docstring).

  Returns:
    The new states and per-member ``loss`` and ``accuracy``, averaged over the data axis.
  """

  def one(state, b, key, lr, act):
    state = state.replace(opt_state=with_hyperparams(state.opt_state, learning_rate=lr))
    key = jax.random.fold_in(jax.random.wrap_key_data(key), state.step)
    new, metrics = steps.train_step(state, b, key, task=task, augment=augment)
    return jax.tree.map(lambda n, o: jnp.where(act, n, o), new, state), metrics

  with _convolution(convolution):
    return jax.vmap(one)(states, batch, keys, lrs, active)


def stacked_eval_step(variables: dict[str, Any], batch: steps.Batch, *, apply_fn: Callable,
                      task: str, convolution: str) -> dict[str, jax.Array]:
  """Eval-mode logits [members, b, C] and per-example losses [members, b] of one shared batch."""

  def one(v):
    state = TrainState(step=0, apply_fn=apply_fn, params=v["params"], tx=None, opt_state=None,
                       batch_stats=v["batch_stats"])
    return steps.eval_step(state, batch, task=task)

  with _convolution(convolution):
    return jax.vmap(one)(variables)


def stacked_prepare(images: jax.Array, keys: jax.Array, member_steps: jax.Array, *,
                    augment: bool) -> jax.Array:
  """Every member's images of one stacked step, as :func:`stacked_train_step` would augment them
  (member m keyed by ``fold_in(keys[m], member_steps[m])``)."""

  def one(x, key, step):
    return steps.prepare_images({"image": x}, jax.random.fold_in(jax.random.wrap_key_data(key),
                                                                 step), augment)

  return jax.vmap(one)(images, keys, member_steps)


@functools.lru_cache(maxsize=None)
def compiled_train_step(task: str, augment: bool, convolution: str, mesh: Mesh
                        ) -> Callable[..., Any]:
  """The stacked step over a member mesh (states donated): one program for the whole population,
  its images prepared by a program of their own (:class:`mu_jax.parallel.Prepared`)."""
  fn = functools.partial(stacked_train_step, task=task, augment=False, convolution=convolution)
  # check_vma=False: the per-device step uses plain lax.pmean over the data axis (as parallel.py).
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=(MEMBER_SPEC, MEMBER_BATCH_SPEC, MEMBER_SPEC,
                                                  MEMBER_SPEC, MEMBER_SPEC),
                         out_specs=(MEMBER_SPEC, MEMBER_SPEC), check_vma=False)
  prepare = jax.jit(jax.shard_map(functools.partial(stacked_prepare, augment=augment), mesh=mesh,
                                  in_specs=(MEMBER_BATCH_SPEC, MEMBER_SPEC, MEMBER_SPEC),
                                  out_specs=MEMBER_BATCH_SPEC, check_vma=False))
  return parallel.Prepared(prepare, jax.jit(mapped, donate_argnums=(0,)),
                           lambda a: (a[1]["image"], a[2], a[0].step), steps.with_images)


@functools.lru_cache(maxsize=None)
def compiled_eval_step(model, task: str, convolution: str, mesh: Mesh) -> Callable[..., Any]:
  fn = functools.partial(stacked_eval_step, apply_fn=model.apply, task=task,
                         convolution=convolution)
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=(MEMBER_SPEC, SHARED_BATCH_SPEC),
                         out_specs=MEMBER_BATCH_SPEC, check_vma=False)
  return jax.jit(mapped)


def place(tree: Any, mesh: Mesh, spec: P) -> Any:
  """Puts a host pytree on ``mesh`` with ``spec`` (every process passes the whole global value)."""
  sharding = NamedSharding(mesh, spec)
  if jax.process_count() > 1:
    def put(x):
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
    return jax.tree.map(put, tree)
  return jax.device_put(tree, sharding)


# ------------------------------------------------------------------ members


@dataclasses.dataclass(frozen=True)
class MemberPlan:
  """What training one member does.

  Attributes:
    seed: its seed.
    rows: the training rows it includes, ascending (``train.subset(rows)`` is its data set).
    batch: its batch size (``fit``'s for ``len(rows)`` examples).
    steps_per_epoch: full batches per epoch.
    lr: its initial learning rate.
  """

  seed: int
  rows: np.ndarray
  batch: int
  steps_per_epoch: int
  lr: float

  def batches(self, epoch: int) -> list[np.ndarray]:
    """Epoch ``epoch``'s batches as rows of the full training set, in ``fit``'s order."""
    return [self.rows[i] for i in pipeline.train_batches(len(self.rows), self.batch, self.seed,
                                                         epoch)]


def plan_members(num_examples: int, cfg: TrainConfig, seeds: Sequence[int],
                 masks: np.ndarray | None = None, lrs: Sequence[float] | None = None,
                 data_devices: int = 1) -> list[MemberPlan]:
  """Checks a population's definition and plans each member.

  Args:
    num_examples: N, the training examples the masks refer to.
    cfg: the recipe (``batch_size`` and ``lr`` are the defaults of every member).
    seeds: K seeds, one per member.
    masks: [K, N] of 0/1 (or bool): which examples member k trains on (default: all).
    lrs: K initial learning rates (default: ``cfg.lr`` for every member).
    data_devices: devices each member's batch is split over.

  Returns:
    One plan per member.

  Raises:
    ValueError: shapes or values that do not fit, naming the member; members whose batch sizes
      differ (a member with fewer than ``cfg.batch_size`` examples), which one program cannot run.
  """
  seeds = [int(s) for s in seeds]
  k = len(seeds)
  if k == 0:
    raise ValueError("a population needs at least one member (seeds is empty)")
  if masks is None:
    masks = np.ones((k, num_examples), np.int8)
  masks = np.asarray(masks)
  if masks.shape != (k, num_examples):
    raise ValueError(f"masks must have shape [members, examples] = ({k}, {num_examples}), "
                     f"got {masks.shape}")
  bad = np.argwhere((masks != 0) & (masks != 1))
  if len(bad):
    m, e = bad[0]
    raise ValueError(f"masks must be 0/1: member {m}, example {e} is {masks[m, e]!r}")
  if lrs is None:
    lrs = [cfg.lr] * k
  lrs = [float(v) for v in lrs]
  if len(lrs) != k:
    raise ValueError(f"lrs has {len(lrs)} values for {k} members")
  plans = []
  for m, (seed, mask, lr) in enumerate(zip(seeds, masks, lrs)):
    if not lr > 0:
      raise ValueError(f"member {m}: learning rate must be positive, got {lr}")
    rows = np.flatnonzero(mask)
    if len(rows) < data_devices:
      raise ValueError(f"member {m} includes {len(rows)} examples, fewer than the "
                       f"{data_devices} devices its batch is split over")
    batch = pipeline.effective_batch_size(len(rows), cfg.batch_size, data_devices)
    plans.append(MemberPlan(seed, rows, batch, len(rows) // batch, lr))
  sizes = sorted({p.batch for p in plans})
  if len(sizes) > 1:
    small = [m for m, p in enumerate(plans) if p.batch != cfg.batch_size]
    raise ValueError(
        f"members {small[:10]} include fewer than batch_size={cfg.batch_size} examples, so their "
        f"batches ({sizes}) differ from the others'; one stacked program needs one batch size: "
        "lower train.batch_size or include more examples in those members")
  return plans


def rows_digest(rows: np.ndarray) -> str:
  """A short hash of the rows one member includes (recorded beside its checkpoints)."""
  return hashlib.sha256(np.asarray(rows, np.int64).tobytes()).hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _init_fn(model, image_shape: tuple[int, ...]) -> Callable[..., Any]:
  """One member's initial state, compiled once per model and input shape.

  Not vmapped: compiling the vmapped initialisation took twice as long (7 s against 3.5 s for the
  runlocal small CNN, mostly the random number generation), and running it once per member takes
  milliseconds; it also gives exactly ``fit``'s initial parameters.
  """
  tx = traced_optimizer("sgd")

  def init_member(key, lr, momentum, weight_decay):
    v = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    st = create_state(model, {"params": v["params"], "batch_stats": v.get("batch_stats", {})}, tx)
    return st.replace(opt_state=with_hyperparams(st.opt_state, learning_rate=lr, momentum=momentum,
                                                 weight_decay=weight_decay))

  return jax.jit(init_member)


def init_states(model, plans: Sequence[MemberPlan], image_shape: Sequence[int], cfg: TrainConfig
                ) -> TrainState:
  """The members' fresh host states, stacked: ``fit``'s initialisation for each member's seed."""
  init = _init_fn(model, tuple(int(d) for d in image_shape))
  states = [jax.tree.map(np.asarray, init(jax.random.fold_in(jax.random.key(p.seed), 0),
                                          np.float32(p.lr), np.float32(cfg.momentum),
                                          np.float32(cfg.weight_decay))) for p in plans]
  return jax.tree.map(lambda *x: np.stack(x), *states)


def member(states: TrainState, k: int) -> TrainState:
  """Member ``k``'s state out of stacked states."""
  return jax.tree.map(lambda x: x[k], states)


# ------------------------------------------------------------------ training


@dataclasses.dataclass
class PopulationResult:
  """What :func:`train_population` returns.

  Attributes:
    states: the K final host states, stacked along the leading axis (:func:`member` takes one).
    wall_s: wall seconds of this call.
    examples: examples each member processed in this call.
    resumed_from_epoch: the epoch this call started from (0 for a fresh run).
    compile_s: seconds spent compiling the stacked step (once per call).
    convolution: the convolution plan used ("installed" or "batched").
  """

  states: TrainState
  wall_s: float
  examples: list[int]
  resumed_from_epoch: int
  compile_s: float
  convolution: str

  @property
  def num_members(self) -> int:
    return len(self.examples)


def _settings(plans: Sequence[MemberPlan], cfg: TrainConfig, task: str, mesh: Mesh,
              convolution: str, image_shape: Sequence[int], model) -> dict[str, Any]:
  """What fixes the numbers of a population's checkpoints (compared when resuming)."""
  return {"task": task, "seeds": [p.seed for p in plans],
          "rows": [rows_digest(p.rows) for p in plans],
          "examples": [len(p.rows) for p in plans], "lrs": [p.lr for p in plans],
          "batch": plans[0].batch, "mesh": dict(mesh.shape), "convolution": convolution,
          "image_shape": list(image_shape), "model": repr(model),
          "train": {k: v for k, v in dataclasses.asdict(cfg).items()
                    if k not in ("eval_batch_size", "lr")}}


def _check_settings(stage_dir: str, new: dict[str, Any]) -> None:
  path = os.path.join(stage_dir, "population.json")
  if not os.path.exists(path):
    if parallel.is_primary():
      checkpoints.write_json(path, new)
    return
  old = checkpoints.read_json(path)
  old["train"]["lr_boundaries"] = list(old["train"].get("lr_boundaries", []))
  new = {**new, "train": {**new["train"], "lr_boundaries": list(new["train"]["lr_boundaries"])}}
  diff = sorted(k for k in new.keys() | old.keys() if old.get(k) != new.get(k))
  if diff:
    raise checkpoints.WorkdirError(
        f"{stage_dir} holds a population trained with other settings (differing: {diff}); its "
        "checkpoints would not give the same models: use another stage directory or delete it")


def train_population(model, train: Examples, cfg: TrainConfig, *, task: str, seeds: Sequence[int],
                     stage_dir: str, masks: np.ndarray | None = None,
                     lrs: Sequence[float] | None = None, member_shards: int = 1,
                     devices: Sequence[Any] | None = None, convolution: str = "auto",
                     eval_sets: Mapping[str, Examples] | None = None, progress: bool = True,
                     on_epoch_end: Callable[[int], None] | None = None) -> PopulationResult:
  """Trains K members from scratch as one program, or resumes them from ``stage_dir``.

  Args:
    model: a flax module (:func:`mu_jax.models.create_model`), the architecture of every member.
    train: the training examples the masks refer to.
    cfg: the recipe (``epochs``, ``batch_size``, ``momentum``, ``weight_decay``,
      ``lr_boundaries``, ``lr_decay``, ``augment``, ``eval_batch_size``; ``lr`` unless ``lrs``).
    task: "multiclass" or "multilabel".
    seeds: one seed per member: its initialisation, data order and augmentation, as in ``fit``.
    stage_dir: checkpoints (one per epoch), ``metrics.jsonl`` (one row per epoch, per-member
      lists) and ``population.json`` (the settings, checked on resume) go there.
    masks: [K, N] 0/1 inclusion masks over ``train`` (default: every member trains on all).
    lrs: per-member initial learning rates (default: ``cfg.lr``).
    member_shards: groups of devices the members are split over (a divisor of the device count;
      each member's batch is split over the devices of its group).
    devices: the devices (default: all).
    convolution: "auto", "installed" or "batched" (module docstring).
    eval_sets: splits evaluated by every member after every epoch, logged as per-member lists
      ``<name>_loss`` and ``<name>_accuracy``.
    progress: show a progress bar over epochs × steps.
    on_epoch_end: called with the finished epoch after its checkpoint is written.

  Returns:
    The stacked host states and what this call did.

  Raises:
    ValueError: a population that does not fit (see :func:`plan_members`).
    WorkdirError: ``stage_dir`` holds a population with other settings.
    FloatingPointError: a member's training loss is not finite (the last checkpoint is kept).
  """
  mesh = parallel.member_mesh(member_shards, devices)
  shards, data_devices = mesh.shape[parallel.MEMBER_AXIS], mesh.shape[parallel.AXIS]
  plans = plan_members(len(train), cfg, seeds, masks, lrs, data_devices)
  convolution = resolve_convolution(convolution)
  k = len(plans)
  # Lanes beyond K (so the member axis divides evenly) repeat member 0 and never train.
  lanes = plans + [plans[0]] * (-k % shards)
  image_shape = tuple(train.images.shape[1:])
  os.makedirs(stage_dir, exist_ok=True)
  _check_settings(stage_dir, _settings(plans, cfg, task, mesh, convolution, image_shape, model))
  states = init_states(model, lanes, image_shape, cfg)
  ckpt = checkpoints.Checkpointer(os.path.join(stage_dir, "checkpoints"))
  metrics_path = os.path.join(stage_dir, "metrics.jsonl")
  start_epoch = 0
  if ckpt.latest_step() is not None:
    states = ckpt.restore(states)
    start_epoch = int(ckpt.latest_step())
    logging.info("resuming population %s from epoch %d", stage_dir, start_epoch)
  if parallel.is_primary():
    checkpoints.truncate_jsonl(metrics_path, lambda r: r.get("epoch", 0) <= start_epoch)
  total_steps = sum(max(p.steps_per_epoch for p in lanes) for _ in range(start_epoch, cfg.epochs))
  logging.info("population %s: %d models, %d epochs, %d stacked steps of batch %d",
               stage_dir, k, cfg.epochs - start_epoch, total_steps, plans[0].batch)
  states = place(states, mesh, MEMBER_SPEC)
  keys = place(np.stack([np.asarray(jax.random.key_data(
      jax.random.fold_in(jax.random.key(p.seed), 1))) for p in lanes]), mesh, MEMBER_SPEC)
  step_fn = compiled_train_step(task, cfg.augment, convolution, mesh)
  flags: dict[tuple[bool, ...], jax.Array] = {}
  t0, compile_s = time.time(), 0.0
  seen = [0] * k
  bar = tqdm(total=total_steps, desc=f"{os.path.basename(stage_dir)}: {k} models",
             disable=None if progress else True, leave=False)
  for epoch in range(start_epoch, cfg.epochs):
    orders = [p.batches(epoch) for p in lanes]
    n_steps = max(len(o) for o in orders)
    lr = place(np.asarray([epoch_learning_rate(p.lr, epoch, cfg.lr_boundaries, cfg.lr_decay)
                           for p in lanes], np.float32), mesh, MEMBER_SPEC)
    history = []
    t_epoch = None
    for i in range(n_steps):
      act = tuple(j < k and i < len(o) for j, o in enumerate(orders))
      if act not in flags:
        flags[act] = place(np.asarray(act), mesh, MEMBER_SPEC)
      index = np.stack([o[min(i, len(o) - 1)] for o in orders])
      batch = place({"image": train.images[index], "label": train.labels[index]}, mesh,
                    MEMBER_BATCH_SPEC)
      if epoch == start_epoch and i == 0:
        step_fn, compile_s = parallel.compile_timed(step_fn, states, batch, keys, lr, flags[act])
      if t_epoch is None:
        t_epoch = time.time()
      states, m = step_fn(states, batch, keys, lr, flags[act])
      history.append((act, m))
      bar.update(1)
    acts = np.asarray([a for a, _ in history], np.float64)[:, :k]
    metrics = parallel.to_host([m for _, m in history])
    loss = np.asarray([m["loss"] for m in metrics], np.float64)[:, :k]
    acc = np.asarray([m["accuracy"] for m in metrics], np.float64)[:, :k]
    n_act = acts.sum(0)
    epoch_examples = [int(n) * plans[0].batch for n in n_act]
    seen = [a + b for a, b in zip(seen, epoch_examples)]
    row = {"epoch": epoch + 1, "steps": [int(n) for n in n_act],
           "train_loss": ((loss * acts).sum(0) / n_act).tolist(),
           "train_accuracy": ((acc * acts).sum(0) / n_act).tolist(),
           "epoch_s": round(time.time() - t_epoch, 3), "examples": sum(epoch_examples),
           "member_examples": epoch_examples}
    if epoch == start_epoch:
      row["compile_s"] = round(compile_s, 3)
    for name, ex in (eval_sets or {}).items():
      out = _evaluate(model, states, ex, task, cfg.eval_batch_size, convolution, mesh, k)
      row[f"{name}_loss"] = out["loss"].mean(1).tolist()
      row[f"{name}_accuracy"] = _accuracy(out["logits"], ex.labels, task).tolist()
    bad = [j for j, v in enumerate(row["train_loss"]) if not np.isfinite(v)]
    if bad:
      raise FloatingPointError(f"{stage_dir}: the training loss of members {bad[:10]} is not "
                               f"finite at epoch {epoch + 1}; the last finite checkpoint is kept")
    if parallel.is_primary():
      checkpoints.append_jsonl(metrics_path, row)
    ckpt.save(epoch + 1, parallel.to_host(states))
    logging.info("%s epoch %d: mean train loss %.4f", stage_dir, epoch + 1,
                 float(np.mean(row["train_loss"])))
    if on_epoch_end is not None:
      on_epoch_end(epoch + 1)
  bar.close()
  ckpt.close()
  host = jax.tree.map(lambda x: x[:k], parallel.to_host(states))
  return PopulationResult(host, time.time() - t0, seen, start_epoch, compile_s, convolution)


# ------------------------------------------------------------------ evaluation


def _accuracy(logits: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray:
  """Per-member accuracy [K] of logits [K, N, C] (``evaluate.summarize``'s definition)."""
  if logits.shape[1] == 0:
    return np.full(logits.shape[0], np.nan)
  if task == "multiclass":
    return np.mean(np.argmax(logits, -1) == labels[None], axis=1)
  return np.mean((logits > 0) == (labels[None] > 0.5), axis=(1, 2))


def _evaluate(model, states: Any, examples: Examples, task: str, batch_size: int,
              convolution: str, mesh: Mesh, k: int) -> dict[str, np.ndarray]:
  data_devices = mesh.shape[parallel.AXIS]
  batch_size = max(data_devices, (batch_size // data_devices) * data_devices)
  variables = place({"params": states.params, "batch_stats": states.batch_stats}, mesh,
                    MEMBER_SPEC)
  step = compiled_eval_step(model, task, convolution, mesh)
  parts: dict[str, list[np.ndarray]] = {"logits": [], "loss": []}
  for idx, mask in pipeline.eval_batches(len(examples), batch_size):
    out = parallel.to_host(step(variables, place(pipeline.host_batch(examples, idx), mesh,
                                                 SHARED_BATCH_SPEC)))
    keep = mask > 0
    for name in parts:
      parts[name].append(out[name][:k, keep])
  if not parts["logits"]:
    n_out = int(getattr(model, "num_classes", 0))
    return {"logits": np.zeros((k, 0, n_out), np.float32), "loss": np.zeros((k, 0), np.float32)}
  return {name: np.concatenate(v, axis=1) for name, v in parts.items()}


def evaluate_population(model, states: TrainState, examples: Examples, *, task: str,
                        batch_size: int = 256, member_shards: int = 1,
                        devices: Sequence[Any] | None = None, convolution: str = "auto"
                        ) -> dict[str, np.ndarray]:
  """Every member's eval-mode outputs on a split, in one compiled program.

  Args:
    model: the members' architecture.
    states: stacked states (host or device), e.g. :attr:`PopulationResult.states`.
    examples: the split, every example evaluated once by every member.
    task: "multiclass" or "multilabel".
    batch_size: examples per step (rounded down to a multiple of the data devices).
    member_shards: groups of devices the members are split over.
    devices: the devices (default: all).
    convolution: "auto", "installed" or "batched".

  Returns:
    {"logits": [K, N, C], "loss": [K, N], "label", "identity", "example_id"}: per member the
    per-example outputs of :func:`mu_jax.training.evaluate.predict`.
  """
  mesh = parallel.member_mesh(member_shards, devices)
  k = int(np.shape(jax.tree.leaves(states.params)[0])[0])
  pad = -k % mesh.shape[parallel.MEMBER_AXIS]
  host = jax.tree.map(np.asarray, parallel.to_host(
      {"params": states.params, "batch_stats": states.batch_stats}))
  if pad:
    host = jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[:1], pad, 0)]), host)
  padded = TrainState(step=0, apply_fn=model.apply, params=host["params"], tx=None,
                      opt_state=None, batch_stats=host["batch_stats"])
  out = _evaluate(model, padded, examples, task, batch_size, resolve_convolution(convolution),
                  mesh, k)
  return {**out, "label": examples.labels, "identity": examples.identities,
          "example_id": examples.example_ids}
