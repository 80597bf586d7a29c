"""``run``: the one loop that drives every unlearning method.

It rebuilds the state with the method's optimizer, calls the method's ``init``, then walks its
phases: each epoch feeds the phase's stream (retain, forget, train, paired or zip; partial
batches dropped, kept under a mask or skipped, as the phase's ``partial`` says) to the phase's
step, compiled data-parallel once per phase and batch shape. After every epoch it logs forget/retain/test loss and accuracy to
``metrics.jsonl`` and, given a checkpoint directory, saves state and aux with orbax, so the same
call after an interruption resumes where it stopped and ends with the same parameters.

Divergence: every step runs inside a guard that keeps the previous state when the loss or the new
parameters are not finite and raises a ``halted`` flag; the driver stops at the end of that epoch
and returns the last finite state with a message saying where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from mu_jax import checkpoints, parallel
from mu_jax.data import pipeline
from mu_jax.data.splits import Examples, FaceDataset
from mu_jax.methods.base import Spec, Unlearner
from mu_jax.training import evaluate, steps
from mu_jax.training.population import MEMBER_BATCH_SPEC, MEMBER_SPEC, place
from mu_jax.training.state import TrainState


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """How the driver runs a method.

  Attributes:
    batch_size: global batch of every stream (the reference: 64).
    seed: seeds data order, augmentation and the method's randomness (the reference calls
      ``set_seed(42)`` before each method).
    task: "multiclass" or "multilabel"; taken from the data when it is a FaceDataset.
    log_splits: splits evaluated after every epoch.
    eval_batch_size: batch of the evaluation passes.
    checkpoint_dir: ``WORKDIR/unlearned/<method>``: checkpoints and metrics.jsonl (None: none).
    progress: log every epoch at INFO level.
  """

  batch_size: int = 64
  seed: int = 42
  task: str | None = None
  log_splits: tuple[str, ...] = ("forget", "retain", "test")
  eval_batch_size: int = 256
  checkpoint_dir: str | None = None
  progress: bool = False

  def __post_init__(self):
    if self.batch_size <= 0:
      raise ValueError(f"unlearn batch_size must be positive, got {self.batch_size}")


@dataclasses.dataclass
class RunResult:
  """What :func:`run_detailed` returns.

  Attributes:
    state: the final state (or the last finite one), on the host.
    aux: the method's auxiliary state at the end.
    history: one dict per epoch (also written to metrics.jsonl).
    halted: the loss or parameters became non-finite; ``state`` is the last finite state.
    message: a one-line account of how the run ended.
    wall_s: seconds spent by this call.
    examples: examples fed to steps by this call (forget and retain counted separately).
  """

  state: TrainState
  aux: Any
  history: list[dict[str, Any]]
  halted: bool
  message: str
  wall_s: float
  examples: int


def _splits(data: Any) -> Mapping[str, Examples]:
  if isinstance(data, FaceDataset):
    return {s: data.split(s) for s in ("retain", "forget", "test")}
  return data


def _stream_plan(stream: str, sizes: Mapping[str, int], batch_size: int, seed: int, epoch: int,
                 n_dev: int, max_steps: int | None, partial: str = "drop", phase_epoch: int = 0
                 ) -> list[Any]:
  """Index batches of one epoch of ``stream``: ``(index, mask)`` or a dict of two of them.

  Args:
    stream: a :data:`mu_jax.methods.base.STREAMS` entry.
    sizes: examples per split ("retain", "forget").
    batch_size: the global batch.
    seed: the run's seed.
    epoch: the run's epoch index (every phase epoch has its own shuffles).
    n_dev: devices the batch is split over.
    max_steps: cap on the batches returned.
    partial: :data:`mu_jax.methods.base.PARTIAL`.
    phase_epoch: the epoch within the phase; the "skip" paired stream continues its forget
      iterator from the previous phase epoch, as the reference's loop does.

  Returns:
    The epoch's batches; indices of the "train" stream run over retain then forget.
  """
  n_r, n_f = sizes["retain"], sizes["forget"]

  def single(n: int, salt: int) -> list[tuple[np.ndarray, np.ndarray]]:
    if partial == "keep":
      if batch_size % n_dev:
        raise ValueError(f"batch size {batch_size} is not divisible by the {n_dev} devices")
      return pipeline.padded_train_batches(n, batch_size, seed * 1000 + salt, epoch)
    b = pipeline.effective_batch_size(n, batch_size, n_dev)
    return [(idx, np.ones(b, np.float32))
            for idx in pipeline.train_batches(n, b, seed * 1000 + salt, epoch)]

  if stream in ("retain", "forget"):
    out = single(n_r if stream == "retain" else n_f, 1 if stream == "forget" else 2)
  elif stream == "train":
    out = single(n_r + n_f, 3)
  elif stream == "paired" and partial == "skip":
    out = _reference_paired(n_f, n_r, batch_size, seed, epoch, n_dev, phase_epoch)
  else:
    f, r = single(n_f, 1), single(n_r, 2)
    n = max(len(f), len(r)) if stream == "paired" else min(len(f), len(r))
    out = [{"forget": f[i % len(f)], "retain": r[i % len(r)]} for i in range(n)]
  return out[:max_steps] if max_steps is not None else out


def _reference_paired(n_f: int, n_r: int, batch_size: int, seed: int, epoch: int, n_dev: int,
                      phase_epoch: int) -> list[Any]:
  """The reference's NegGrad loop: retain batches, a cycled forget iterator, full pairs only.

  Every retain batch of the epoch (the partial one included) draws the next forget batch (the
  partial one included) from an iterator made once per phase, which restarts with a new shuffle
  when exhausted; a pair is used only when both batches are full. On MUFAC (8,525 retain, 1,500
  forget, batch 64) that is 128 steps in the first epoch and 127 in the second, against 134
  iterations. A split smaller than the batch would never give a full batch (the reference then
  takes no step at all); its batch shrinks instead, as ``pipeline.effective_batch_size`` says.
  """
  b_f = pipeline.effective_batch_size(n_f, batch_size, n_dev)
  b_r = pipeline.effective_batch_size(n_r, batch_size, n_dev)
  retain = _chunks(pipeline.epoch_order(n_r, seed * 1000 + 2, epoch), b_r)
  per_cycle = -(-n_f // b_f)
  phase_start = epoch - phase_epoch  # the run epoch where the phase (and its iterator) began
  out, orders = [], {}
  for i, r in enumerate(retain):
    cycle, j = divmod(phase_epoch * len(retain) + i, per_cycle)
    if cycle not in orders:
      orders[cycle] = np.random.default_rng([seed * 1000 + 4, phase_start, cycle]).permutation(n_f)
    f = orders[cycle][j * b_f:(j + 1) * b_f]
    if len(f) == b_f and len(r) == b_r:
      out.append({"forget": (f, np.ones(b_f, np.float32)), "retain": (r, np.ones(b_r, np.float32))})
  return out


def _chunks(order: np.ndarray, size: int) -> list[np.ndarray]:
  return [order[i:i + size] for i in range(0, len(order), size)]


def _materialize(plan: list[Any], data: Mapping[str, Examples], stream: str) -> list[Any]:
  """Host batches ``{"image", "label", "mask"}`` (or a forget/retain dict of them) of a plan."""
  if stream in ("retain", "forget"):
    source = data[stream]
  elif stream == "train":
    source = Examples.concatenate([data["retain"], data["forget"]])

  def one(ex: Examples, item: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    idx, mask = item
    return {**pipeline.host_batch(ex, idx), "mask": mask}

  if stream in ("paired", "zip"):
    return [{"forget": one(data["forget"], b["forget"]), "retain": one(data["retain"], b["retain"])}
            for b in plan]
  return [one(source, b) for b in plan]


def _count(batch: Any) -> int:
  parts = [batch["forget"], batch["retain"]] if "forget" in batch else [batch]
  return int(sum(np.sum(x["mask"]) if "mask" in x else len(x["label"]) for x in parts))


def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def prepare_batch(batch: Any, rng: jax.Array, augment: bool) -> Any:
  """A phase batch's images as float, augmented when ``augment``: a single stream's with
  ``fold_in(aug, 0)``, a pair's forget and retain halves with ``fold_in(aug, 0)`` and
  ``fold_in(aug, 1)``, where ``aug`` is the first half of ``split(rng)`` (the step gets the
  second)."""
  keys = augment_keys(rng)
  one = lambda b, key: {**b, "image": steps.prepare_images(b, key, augment)}
  if "forget" in batch:
    return {"forget": one(batch["forget"], keys[0]), "retain": one(batch["retain"], keys[1])}
  return one(batch, keys[0])


def augment_keys(rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The augmentation keys of a phase step's ``rng``: ``fold_in(aug, 0)`` and ``fold_in(aug, 1)``
  with ``aug`` the first half of ``split(rng)``."""
  aug_rng = jax.random.split(rng)[0]
  return jax.random.fold_in(aug_rng, 0), jax.random.fold_in(aug_rng, 1)


def guarded(step, augment: bool):
  """Wraps a method step: float/augmented images in, the previous state kept on a non-finite loss.

  The compiled phases run the augmentation as a program of its own (:func:`prepare_batch`, then
  ``guarded(step, False)``, whose float images pass unchanged); ``guarded(step, True)`` is the
  same computation as one program.
  """

  def wrapped(state, aux, batch, rng, info, halted):
    batch = prepare_batch(batch, rng, augment)
    new_state, new_aux, metrics = step(state, aux, batch, jax.random.split(rng)[1], info)
    finite = jnp.isfinite(metrics["loss"]) & _all_finite(new_state.params)
    ok = finite & ~halted
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    return keep(new_state, state), keep(new_aux, aux), metrics, halted | ~finite

  return wrapped


def _with_prepared(step_program, prepare) -> parallel.Prepared:
  """``step_program(state, aux, batch, rng, ...)`` fed the batch ``prepare(batch, rng)`` makes."""
  return parallel.Prepared(prepare, step_program, lambda a: (a[2], a[3]),
                           lambda a, batch: (*a[:2], batch, *a[3:]))


_augment_keys = jax.jit(augment_keys)


def _prepare(batch: Any, rng: jax.Array) -> Any:
  """:func:`prepare_batch` with ``augment=True`` through the one augmentation program of
  :func:`mu_jax.training.steps.compiled_prepare` (a pair's halves are two calls)."""
  program = steps.compiled_prepare(True)
  keys = _augment_keys(rng)
  one = lambda b, key: {**b, "image": program(b["image"], key)}
  if "forget" in batch:
    return {"forget": one(batch["forget"], keys[0]), "retain": one(batch["retain"], keys[1])}
  return one(batch, keys[0])


@functools.lru_cache(maxsize=256)
def _compile_phase(step, augment: bool):
  R, S = parallel.REPLICATED, parallel.SHARDED
  program = parallel.data_parallel(guarded(step, False), in_specs=(R, R, S, R, R, R),
                                   out_specs=(R, R, R, R))
  return _with_prepared(program, _prepare) if augment else program


@functools.lru_cache(maxsize=256)
def _compile_after(after):
  return jax.jit(after)


# Compiled phase steps of this process, by (jitted step, argument structure, shapes and dtypes).
# Steps are built per static configuration (task, BatchNorm mode, ...) and read hyperparameters
# from ``info["hp"]`` and the optimizer state, so every method and stage whose step has the same
# computation and argument shapes runs one executable.
_EXECUTABLES: dict[Any, Any] = {}


def compiled_steps() -> int:
  """How many phase-step programs this process has compiled (each compiled once)."""
  return len(_EXECUTABLES)


def _executable(fn, *args) -> tuple[Any, float]:
  """The compiled ``fn`` for ``args`` and the seconds spent compiling it now (0 when cached)."""
  leaves, tree = jax.tree.flatten(args)
  key = (fn, tree, parallel.mesh(),
         tuple((np.shape(x), str(getattr(x, "dtype", type(x))), getattr(x, "weak_type", False))
               for x in leaves))
  if key in _EXECUTABLES:
    return _EXECUTABLES[key], 0.0
  compiled, seconds = parallel.compile_timed(fn, *args)
  _EXECUTABLES[key] = compiled
  return compiled, seconds


def step_info(unlearner: Unlearner, epoch: int = 0, progress: float = 0.0) -> dict[str, Any]:
  """The ``info`` argument of ``unlearner``'s steps and ``after`` functions (base module docstring).

  Args:
    unlearner: the method; its ``traced`` hyperparameters become ``info["hp"]``.
    epoch: the run's epoch index.
    progress: the fraction of the run's steps done.
  """
  return {"progress": jnp.float32(progress), "epoch": jnp.int32(epoch),
          "hp": {k: jnp.float32(v) for k, v in unlearner.traced.items()}}


def spec_for(state: TrainState, data: Mapping[str, Examples], task: str) -> Spec:
  model = getattr(state.apply_fn, "__self__", None)
  if model is None:
    raise ValueError("state.apply_fn must be a flax module's apply (model.apply)")
  n_cls = getattr(model, "num_classes", None) or state.params["fc"]["Dense_0"]["bias"].shape[-1]
  return Spec(model=model, task=task, num_classes=int(n_cls),
              image_shape=tuple(data["retain"].images.shape[1:]))


def run_detailed(unlearner: Unlearner, state: TrainState, data: Any,
                 config: RunConfig | None = None) -> RunResult:
  """Runs ``unlearner`` from ``state`` (the original model) on ``data``.

  Args:
    unlearner: a method, e.g. ``mu_jax.methods.scrub()``.
    state: the model to unlearn from (its optimizer is replaced by the method's).
    data: a :class:`FaceDataset`, or a mapping with ``retain`` and ``forget`` (and ``test`` for
      logging) :class:`Examples`.
    config: batch size, seed, task, logging and checkpointing.

  Returns:
    A :class:`RunResult`.

  Raises:
    MethodNotApplicable: the method does not apply to the task.
    ValueError: the data lack a split a phase needs.
  """
  config = config or RunConfig()
  task = data.task if isinstance(data, FaceDataset) else config.task
  if task is None:
    raise ValueError("RunConfig.task is required when data is not a FaceDataset")
  data = _splits(data)
  for name in ("retain", "forget"):
    if name not in data or len(data[name]) == 0:
      raise ValueError(f"unlearning needs a non-empty {name!r} split")
  unlearner.check_task(task)
  state = jax.tree.map(np.asarray, state)
  spec = spec_for(state, data, task)
  rng = jax.random.key(config.seed)
  tx = unlearner.optimizer
  state = state.replace(tx=tx, opt_state=tx.init(state.params), step=jnp.zeros((), jnp.int32))
  state, aux = unlearner.init(state, jax.random.fold_in(rng, 0), spec)
  phases = list(unlearner.phases(spec))
  epochs = [(p, e) for p in phases for e in range(p.epochs)]
  n_dev = parallel.num_devices()
  sizes = {"retain": len(data["retain"]), "forget": len(data["forget"])}
  plans = [_stream_plan(p.stream, sizes, config.batch_size, config.seed, k, n_dev, p.max_steps,
                        p.partial, e) for k, (p, e) in enumerate(epochs)]
  total_steps = sum(len(plan) for plan in plans)
  halted = jnp.bool_(False)
  start = 0
  ckpt = metrics_path = None
  if config.checkpoint_dir:
    ckpt = checkpoints.Checkpointer(os.path.join(config.checkpoint_dir, "checkpoints"))
    metrics_path = os.path.join(config.checkpoint_dir, "metrics.jsonl")
    if ckpt.latest_step() is not None:
      restored = ckpt.restore({"state": state, "aux": aux, "halted": np.bool_(False)})
      state, aux, halted, start = restored["state"], restored["aux"], jnp.asarray(restored["halted"]), ckpt.latest_step()
      logging.info("%s: resuming after epoch %d of %d", unlearner.name, start, len(epochs))
    if parallel.is_primary():  # process 0 alone writes the stage's files
      checkpoints.truncate_jsonl(metrics_path, lambda r: r.get("epoch_index", 0) <= start)
  state, aux, halted = parallel.replicate((state, aux, halted))
  history: list[dict[str, Any]] = []
  t0, seen, done_steps = time.time(), 0, 0
  message = f"{unlearner.name}: finished {len(epochs)} epochs"
  if bool(halted):  # a resumed run that had already diverged: nothing more to do
    epochs = []
    message = f"{unlearner.name}: the checkpointed run had stopped on a non-finite loss"
  def info_at(k: int) -> dict[str, Any]:
    return step_info(unlearner, k, done_steps / max(total_steps, 1))

  for k, (phase, e) in enumerate(epochs):
    if k < start:
      done_steps += len(plans[k])
      continue
    batches = _materialize(plans[k], data, phase.stream)
    fn = _compile_phase(phase.step, phase.augment)
    compile_s = 0.0
    if batches:
      fn, compile_s = _executable(fn, state, aux, parallel.shard(batches[0]), rng, info_at(k),
                                  halted)
    t_epoch, seen_epoch = time.time(), seen
    sums: dict[str, jax.Array] = {}
    for i, b in enumerate(batches):
      state, aux, m, halted = fn(state, aux, parallel.shard(b),
                                 jax.random.fold_in(jax.random.fold_in(rng, 1 + k), i), info_at(k),
                                 halted)
      sums = {n: sums.get(n, 0.0) + v for n, v in m.items()}
      seen += _count(b)
      done_steps += 1
    if phase.after is not None and e == phase.epochs - 1:
      state, aux = _compile_after(phase.after)(state, aux, info_at(k))
    row = {"epoch_index": k + 1, "phase": phase.name, "phase_epoch": e + 1, "steps": len(batches),
           **{f"train_{n}": float(v) / max(len(batches), 1) for n, v in sums.items()},
           # Unlearning cost of this epoch, evaluation and compilation (compile_s) excluded; a
           # resumed run sums its rows.
           "epoch_s": round(time.time() - t_epoch, 3), "examples": seen - seen_epoch,
           "compile_s": round(compile_s, 3)}
    logged = {n: data[n] for n in config.log_splits if n in data and len(data[n])}
    if logged:
      for name, out in evaluate.predict_splits(state, logged, task=task,
                                               batch_size=config.eval_batch_size).items():
        summary = evaluate.summarize(out, task)
        row[f"{name}_loss"], row[f"{name}_accuracy"] = summary["loss"], summary["accuracy"]
    is_halted = bool(halted)
    row["halted"] = is_halted
    history.append(row)
    if metrics_path and parallel.is_primary():
      checkpoints.append_jsonl(metrics_path, row)
    if ckpt:
      ckpt.save(k + 1, {"state": parallel.to_host(state), "aux": parallel.to_host(aux),
                        "halted": np.bool_(is_halted)})
    if config.progress:
      logging.info("%s %s", unlearner.name, row)
    if is_halted:
      message = (f"{unlearner.name}: the loss became non-finite in phase {phase.name!r} "
                 f"(epoch {e + 1}); stopped and returned the last finite state")
      logging.warning(message)
      break
  if ckpt:
    ckpt.close()
  return RunResult(parallel.to_host(state), parallel.to_host(aux), history, bool(halted), message,
                   time.time() - t0, seen)


class NotStackable(ValueError):
  """Members that one :func:`run_stacked` program cannot run: run them with :func:`run_detailed`."""


class ShapeMismatch(NotStackable):
  """Members of :func:`run_stacked` whose batches differ in shape: one program cannot run them."""


@dataclasses.dataclass
class StackedResult:
  """What :func:`run_stacked` returns.

  Attributes:
    states: the K final states stacked along a leading member axis, on the host (each member's last
      finite state).
    aux: the members' auxiliary states, stacked.
    halted: [K] which members stopped on a non-finite loss.
    steps: [K] steps each member took.
    examples: [K] examples fed to each member's steps.
    wall_s: seconds of this call, compilation excluded.
    compile_s: seconds spent compiling.
  """

  states: TrainState
  aux: Any
  halted: np.ndarray
  steps: np.ndarray
  examples: np.ndarray
  wall_s: float
  compile_s: float


@functools.lru_cache(maxsize=256)
def _compile_stacked(step, augment: bool, mesh: jax.sharding.Mesh):
  """``guarded(step)`` vmapped over members on a member mesh (:func:`mu_jax.parallel.member_mesh`):
  the members split over its member axis, each member's batch over its data axis.

  Arguments: states, aux, batches [K, B, ...], rng (shared), info (per member), halted [K] and
  active [K]; an inactive member (its epoch has no batch left) keeps its state.
  """
  one = guarded(step, False)

  def member(state, aux, batch, rng, info, halted, active):
    new_state, new_aux, metrics, new_halted = one(state, aux, batch, rng, info, halted)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(active, n, o), new, old)
    return (keep(new_state, state), keep(new_aux, aux), metrics,
            jnp.where(active, new_halted, halted))

  M, B, R = MEMBER_SPEC, MEMBER_BATCH_SPEC, jax.sharding.PartitionSpec()
  stacked = jax.vmap(member, in_axes=(0, 0, 0, None, 0, 0, 0))
  # check_vma=False: the steps use plain lax.pmean over the data axis (as parallel.data_parallel).
  program = jax.jit(jax.shard_map(stacked, mesh=mesh, in_specs=(M, M, B, R, M, M, M),
                                  out_specs=(M, M, M, M), check_vma=False))
  return _with_prepared(program, _stacked_prepare_program(mesh)) if augment else program


@functools.lru_cache(maxsize=None)
def _stacked_prepare_program(mesh: jax.sharding.Mesh):
  """:func:`prepare_batch` of every member's batch [K, B, ...] with the shared key."""
  prepare = jax.vmap(functools.partial(prepare_batch, augment=True), in_axes=(0, None))
  return jax.jit(jax.shard_map(prepare, mesh=mesh,
                               in_specs=(MEMBER_BATCH_SPEC, jax.sharding.PartitionSpec()),
                               out_specs=MEMBER_BATCH_SPEC, check_vma=False))


@functools.lru_cache(maxsize=256)
def _compile_stacked_after(after, mesh: jax.sharding.Mesh):
  def member(state, aux, info, skip):
    new_state, new_aux = after(state, aux, info)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(skip, o, n), new, old)
    return keep(new_state, state), keep(new_aux, aux)
  # The results go back where the stacked step expects them: members over the member axis.
  on_members = jax.sharding.NamedSharding(mesh, MEMBER_SPEC)
  return jax.jit(jax.vmap(member), out_shardings=(on_members, on_members))


def _batch_shape(item: Any) -> tuple[int, ...]:
  """A planned batch's size (forget and retain sizes of a paired one)."""
  if isinstance(item, dict):
    return (len(item["forget"][1]), len(item["retain"][1]))
  return (len(item[1]),)


def _stack(trees: list[Any]) -> Any:
  return jax.tree.map(lambda *x: np.stack(x), *trees)


def run_stacked(unlearner: Unlearner | Sequence[Unlearner], states: TrainState,
                data: Sequence[Mapping[str, Examples]], config: RunConfig, *,
                member_shards: int = 1, progress: str | None = None) -> StackedResult:
  """Runs ``unlearner`` on K members at once: one compiled program per step kind for all of them.

  Member k runs exactly what :func:`run_detailed` would run from ``states[k]`` on ``data[k]``
  (the same batches, keys, step info and ``after`` calls), up to float rounding: the steps are
  ``vmap``-ped over a leading member axis. Members whose splits differ in size take different
  numbers of steps; each runs the longest member's count and a member with no batch left keeps its
  state. Per-epoch logging and checkpoints are not kept (a population keeps its members' outputs).

  Args:
    unlearner: the method, or one per member: the same method with other values of its continuous
      hyperparameters (learning rates in the optimizer state, ``traced`` values), whose phases
      share their step functions; one program then serves every value.
    states: K original models stacked along a leading axis (host arrays).
    data: per member a mapping with ``retain`` and ``forget`` Examples.
    config: batch size, seed and task as for :func:`run_detailed` (``log_splits`` and
      ``checkpoint_dir`` are not used).
    member_shards: groups of devices the members are split over
      (:func:`mu_jax.parallel.member_mesh`); each member's batch is split over the devices of its
      group, so the batch size must be a multiple of that group's size.
    progress: a label: show a progress bar over the stacked steps of every epoch (None: none).

  Returns:
    A :class:`StackedResult`.

  Raises:
    ShapeMismatch: members whose batches differ in shape (a split smaller than the batch in some
      members only), which one program cannot run (run them with :func:`run_detailed`).
    NotStackable: a step JAX cannot vmap over the members (a batching rule it lacks); raised when
      that phase compiles, possibly after earlier phases ran (the inputs are left unchanged).
    ValueError: unlearners whose phases or optimizers are not one computation.
  """
  if config.task is None:
    raise ValueError("RunConfig.task is required")
  k_all = len(data)
  if k_all == 0:
    raise ValueError("run_stacked needs at least one member")
  unlearners = [unlearner] * k_all if isinstance(unlearner, Unlearner) else list(unlearner)
  if len(unlearners) != k_all:
    raise ValueError(f"{len(unlearners)} unlearners for {k_all} members")
  unlearner = unlearners[0]
  unlearner.check_task(config.task)
  mesh = parallel.member_mesh(member_shards)
  host = jax.tree.map(np.asarray, states)
  members = [jax.tree.map(lambda x: x[k], host) for k in range(k_all)]
  # Lanes beyond the K members (so the member axis divides evenly) copy member 0 and never step.
  pad = -k_all % member_shards
  unlearners, members, data = (unlearners + unlearners[:1] * pad, members + members[:1] * pad,
                               list(data) + list(data[:1]) * pad)
  real = np.arange(k_all + pad) < k_all
  rng = jax.random.key(config.seed)
  spec = spec_for(members[0], data[0], config.task)
  phases = list(unlearner.phases(spec))
  shape = lambda u: [(p.step, p.after, p.stream, p.epochs, p.partial, p.max_steps, p.augment)
                     for p in u.phases(spec)]
  for u in unlearners[1:]:
    if u.optimizer != unlearner.optimizer or shape(u) != shape(unlearner) or \
        set(u.traced) != set(unlearner.traced):
      raise ValueError(f"{u.name} with {u.hparams} and {unlearner.name} with {unlearner.hparams} "
                       "are not one computation (other phases, steps or optimizer): stack only "
                       "values of continuous hyperparameters")
  inits = []
  for u, st in zip(unlearners, members):
    st = st.replace(tx=u.optimizer, opt_state=u.optimizer.init(st.params),
                    step=jnp.zeros((), jnp.int32))
    inits.append(jax.tree.map(np.asarray, u.init(st, jax.random.fold_in(rng, 0), spec)))
  state, aux = _stack([s for s, _ in inits]), _stack([a for _, a in inits])
  epochs = [(p, e) for p in phases for e in range(p.epochs)]
  n_data = mesh.shape[parallel.AXIS]
  plans = [[_stream_plan(p.stream, {"retain": len(d["retain"]), "forget": len(d["forget"])},
                         config.batch_size, config.seed, k, n_data, p.max_steps, p.partial, e)
            for k, (p, e) in enumerate(epochs)] for d in data]
  totals = [max(sum(len(plan) for plan in member_plans), 1) for member_plans in plans]
  for k, (phase, _) in enumerate(epochs):
    shapes = {_batch_shape(item) for member_plans in plans for item in member_plans[k]}
    if len(shapes) > 1:
      raise ShapeMismatch(f"{unlearner.name}: phase {phase.name!r} would feed the members batches "
                          f"of {len(shapes)} shapes {sorted(shapes)[:3]} (a split smaller than the "
                          "batch in some members only); run the members one at a time")
  hp = [u.traced for u in unlearners]
  lanes = len(members)
  done = np.zeros(lanes, np.int64)
  examples = np.zeros(lanes, np.int64)
  on_members = lambda tree: place(tree, mesh, MEMBER_SPEC)  # noqa: E731

  def info_at(k: int) -> dict[str, Any]:
    return on_members({"progress": (done / np.asarray(totals)).astype(np.float32),
                       "epoch": np.full((lanes,), k, np.int32),
                       "hp": {n: np.asarray([h[n] for h in hp], np.float32) for n in hp[0]}})

  state, aux = on_members((state, aux))
  halted = on_members(np.zeros(lanes, bool))
  stopped_before = np.zeros(lanes, bool)
  t0, compile_s = time.time(), 0.0
  bar = tqdm(total=sum(max(len(member_plans[k]) for member_plans in plans)
                       for k in range(len(epochs))),
             desc=f"{progress}: {k_all} members", disable=True if progress is None else None,
             leave=False)
  for k, (phase, e) in enumerate(epochs):
    batches = [_materialize(member_plans[k], d, phase.stream)
               for member_plans, d in zip(plans, data)]
    n_steps = max(len(b) for b in batches)
    fn = _compile_stacked(phase.step, phase.augment, mesh)
    for i in range(n_steps):
      active = np.array([i < len(b) for b in batches]) & real
      step_batches = [b[min(i, len(b) - 1)] if b else None for b in batches]
      filler = next(b for b in step_batches if b is not None)
      batch = place(_stack([b if b is not None else filler for b in step_batches]), mesh,
                    MEMBER_BATCH_SPEC)
      args = (state, aux, batch, jax.random.fold_in(jax.random.fold_in(rng, 1 + k), i),
              info_at(k), halted, on_members(active))
      if i == 0:
        try:
          fn, seconds = _executable(fn, *args)
        except NotImplementedError as err:
          # Seen with JAX 0.10: a grouped convolution of mu_jax's CPU plan under the member vmap
          # inside UNSIR's class-noise loop, whose batching rule JAX does not implement.
          raise NotStackable(f"{unlearner.name}: phase {phase.name!r} cannot be vmapped over the "
                             f"members ({str(err) or type(err).__name__}); run the members one at a "
                             f"time") from err
        compile_s += seconds
      state, aux, _, halted = fn(*args)
      for m in np.flatnonzero(active & ~stopped_before):
        examples[m] += _count(step_batches[m])
      done += active
      bar.update(1)
    if phase.after is not None and e == phase.epochs - 1:
      # A member that had stopped before this epoch skips it, as run_detailed stops its loop.
      state, aux = _compile_stacked_after(phase.after, mesh)(state, aux, info_at(k),
                                                             stopped_before | ~real)
    stopped_before = np.asarray(parallel.to_host(halted))
  bar.close()
  first = lambda tree: jax.tree.map(lambda x: np.asarray(x)[:k_all], parallel.to_host(tree))  # noqa: E731
  return StackedResult(first(state), first(aux), first(halted), done[:k_all], examples[:k_all],
                       time.time() - t0 - compile_s, compile_s)


def run(unlearner: Unlearner, state: TrainState, data: Any, config: RunConfig | None = None
        ) -> TrainState:
  """Runs a method and returns the unlearned state (see :func:`run_detailed`)."""
  return run_detailed(unlearner, state, data, config).state
