"""Slice-checkpointed training of the SISA constituent models, one shard at a time or all at once.

For every shard s and slice sl (see :mod:`mu_jax.sisa.partition`), the model restored from slice
sl−1 (a fresh initialisation for sl = 0) trains ``slice_epochs(sl)`` epochs on the cumulative data
of slices 0..sl minus the removed examples, and the result is saved with orbax under
``ROOT/shard_<s>/slices/<sl>-<key>/checkpoint/``, with ``slice.json`` beside it, written last, as
the mark of a complete slice. A slice whose (index, key) is already on disk is not trained again:
after a forget request only the slices whose key changed are retrained, starting from the
checkpoint of the last untouched slice. That is exact unlearning, and the tests check it bit for
bit on the CPU.

Everything that decides the numbers depends only on the seed, the shard, the slice, the epoch and the
retained data, never on the order in which shards or requests were served:

* the initialisation of shard s uses ``fold_in(fold_in(key(seed), s), 0)``;
* epoch ep of slice sl visits the retained examples in the order
  ``default_rng([seed, s, sl, ep]).permutation(n)`` in full batches (the last partial batch is
  dropped, as in :mod:`mu_jax.training.fit`);
* step t of shard s (counted over all its slices) uses ``fold_in(fold_in(fold_in(key(seed), s), 1), t)``
  for the augmentation, as ``fit`` does with one model.

Learning rate: SISA trains each slice for a different number of steps, so an epoch-indexed decay has
no single meaning; like the official code (which trains with a fixed learning rate), the constituent
models use the recipe's ``lr`` (with its momentum and weight decay) and ignore ``lr_boundaries``.
The optimizer state is part of each slice checkpoint, so momentum carries over between slices.

Two modes give the same models:

* ``sequential``: one shard at a time, through the data-parallel step that ``fit`` uses.
* ``stacked``: the S train states are stacked along a leading axis and trained by the population
  trainer's step (:func:`mu_jax.training.population.compiled_train_step`: ``jax.vmap`` of the
  per-device step inside ``shard_map``, BatchNorm's ``pmean`` reducing each model's statistics
  separately), one member group over all devices, every lane at the recipe's learning rate.
  Shards of unequal size are handled by masking: every lane runs the longest shard's step count,
  and a lane whose shard has no batch left keeps its state unchanged, so its model is the same as
  if it had stopped. Lanes must share a batch size, so slices whose batch sizes differ (tiny
  shards only) run in separate stacked calls.

The two modes agree to float32 rounding, not bit for bit: XLA computes a vmapped convolution as a
grouped convolution, whose summation order differs from the plain one and, measured on XLA:CPU,
also depends on the number of groups (but not on a lane's position or on the other lanes' data).
One step differs by ~1e-7; training amplifies it (on the runlocal config, 21 steps per shard end
~3e-3 apart in the largest parameter), as any change of summation order would.
So stacked mode always runs exactly ``lanes`` lanes: a retrain of one shard fills the unused lanes
with inactive copies. And shard s always trains in lane ``s mod lanes`` (two shards of one lane
never share a call): under ``jax.distributed`` on CPU, where the gradient all-reduce crosses
processes through gloo, the lane does change the rounding. Measured on two processes × two
devices, a shard trained in lane 1 and retrained in lane 0 ended 1.8e-7 away from itself; a ring
all-reduce, which sums each chunk of the buffer starting from another device, would explain it.
Both rules keep stacked results bit-exact across initial training, unlearning and from-scratch
retraining, at the price of computing the idle lanes. The mode, the lane count and the device
count are fixed per ``ROOT`` (``settings.json``), since each changes the rounding.

Under ``jax.distributed`` every process runs the same calls on one shared ``ROOT``: each feeds its
part of every batch, orbax writes the checkpoints from all processes together, and process 0 alone
writes the JSON files (:func:`write_json`), each followed by a barrier.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import time
from datetime import datetime, timezone
from typing import AbstractSet, Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mu_jax import checkpoints, parallel
from mu_jax.data import pipeline
from mu_jax.data.splits import Examples
from mu_jax.sisa import partition as partition_lib
from mu_jax.training import fit as fitlib
from mu_jax.training import steps
from mu_jax.training import population
from mu_jax.training.state import TrainState, create_state, traced_optimizer

MODES = ("auto", "stacked", "sequential")
# Fraction of accelerator memory the stacked step may use before "auto" falls back to sequential.
_MEMORY_FRACTION = 0.8


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_variables(model, image_shape: tuple[int, ...], rng: jax.Array) -> dict[str, Any]:
  # One compile per (model, input shape), shared by every trainer and shard.
  return model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)


@functools.lru_cache(maxsize=None)
def _canonical_model(model):
  # Equal flax modules (compared by value) map to one object: ``apply_fn``, a method bound to it, is
  # a static field of TrainState, and bound methods compare their module by identity.
  return model


def write_json(path: str, obj: Any) -> None:
  """Writes a JSON file from process 0 alone; every process returns once it is written.

  Under ``jax.distributed`` all processes run the same SISA code on one shared directory: orbax
  writes the checkpoints from all of them, the rest is written once, and the barrier lets the
  others read it next (``has_slice``, ``removed.json``).
  """
  if parallel.is_primary():
    checkpoints.write_json(path, obj)
  parallel.barrier(f"mu_jax.sisa:{path}")


def stack(trees: Sequence[Any]) -> Any:
  """Stacks host pytrees of one structure along a new leading axis."""
  return jax.tree.map(lambda *x: np.stack(x), *trees)


def unstack(tree: Any, n: int) -> list[Any]:
  return [jax.tree.map(lambda x: x[i], tree) for i in range(n)]


@dataclasses.dataclass(frozen=True)
class SlicePlan:
  """What training one slice of one shard does.

  Attributes:
    shard: s.
    slice: sl.
    key: the slice's content hash.
    example_ids: the retained cumulative ids it trains on, in shard order.
    epochs: ``slice_epochs(sl)``.
    batch: the batch size (0 when the slice trains no step: fewer examples than devices).
    steps_per_epoch: full batches per epoch.
  """

  shard: int
  slice: int
  key: str
  example_ids: tuple[str, ...]
  epochs: int
  batch: int
  steps_per_epoch: int

  @property
  def steps(self) -> int:
    return self.epochs * self.steps_per_epoch

  @property
  def examples(self) -> int:
    """Examples processed (the dropped partial batches are not counted)."""
    return self.steps * self.batch


@dataclasses.dataclass
class ShardReport:
  """What :meth:`ShardTrainer.train` did to one shard."""

  shard: int
  trained_slices: list[int] = dataclasses.field(default_factory=list)
  reused_slices: list[int] = dataclasses.field(default_factory=list)
  examples: int = 0
  wall_s: float = 0.0

  @property
  def first_trained_slice(self) -> int | None:
    return self.trained_slices[0] if self.trained_slices else None

  def to_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "first_trained_slice": self.first_trained_slice}


@dataclasses.dataclass
class TrainReport:
  """Per shard reports plus totals (wall seconds of this call, examples processed)."""

  mode: str
  lanes: int
  shards: dict[int, ShardReport]
  wall_s: float
  examples: int

  @property
  def retrained_shards(self) -> list[int]:
    return [s for s, r in self.shards.items() if r.trained_slices]

  def to_dict(self) -> dict[str, Any]:
    return {"mode": self.mode, "lanes": self.lanes, "wall_s": self.wall_s, "examples": self.examples,
            "retrained_shards": self.retrained_shards,
            "shards": {str(s): r.to_dict() for s, r in self.shards.items()}}


class ShardTrainer:
  """Trains, checkpoints and restores the S constituent models of one SISA partition.

  Args:
    model: a flax module (:func:`mu_jax.models.create_model`).
    examples: the examples the partition's ids refer to (at least all of them).
    partition: the shards and slices.
    cfg: the recipe: ``epochs`` is the official e, ``batch_size``, ``lr``, ``momentum``,
      ``weight_decay`` and ``augment`` are used (``lr_boundaries`` is not, see the module docstring).
    task: "multiclass" or "multilabel".
    seed: the run seed.
    root: the SISA directory (``WORKDIR/sisa``).
    mode: "stacked", "sequential", or "auto" (stacked when the stacked step fits in accelerator
      memory; on the CPU it always does).
    lanes: stacked mode only: models per stacked step (default: what ``root`` was made with, else
      all S shards).

  Raises:
    WorkdirError: ``root`` holds slices made with other settings (partition, recipe, seed, mode,
      lanes or device count), which would not give the same numbers.
  """

  def __init__(self, model, examples: Examples, partition: partition_lib.Partition,
               cfg: fitlib.TrainConfig, *, task: str, seed: int, root: str, mode: str = "auto",
               lanes: int | None = None):
    if mode not in MODES:
      raise ValueError(f"SISA mode must be one of {MODES}, got {mode!r}")
    self.model = model = _canonical_model(model)
    self.examples = examples
    self.partition = partition
    self.cfg = cfg
    self.task = task
    self.seed = int(seed)
    self.root = os.path.abspath(root)
    self.num_devices = parallel.num_devices()
    self._rows = {e: i for i, e in enumerate(examples.example_ids.tolist())}
    missing = [e for ids in partition.shards for e in ids if e not in self._rows]
    if missing:
      raise ValueError(f"the partition names examples that are not given: {missing[:5]}")
    self._image_shape = tuple(examples.images.shape[1:])
    # torch's SGD with its values in the optimizer state: the population trainer's stacked step
    # writes each lane's learning rate there (every lane here takes the recipe's fixed lr).
    self._tx = traced_optimizer("sgd", learning_rate=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    self._mesh = parallel.member_mesh(1)
    self._template = jax.tree.map(np.asarray, self._fresh_state(0))
    settings = self._read_settings()
    if lanes is None:
      stacked_before = settings and settings["mode"] == "stacked"
      lanes = settings["lanes"] if stacked_before else partition.num_shards
    self.lanes = int(lanes)
    if self.lanes < 1:
      raise ValueError(f"lanes must be >= 1, got {self.lanes}")
    if mode == "auto":
      mode = settings["mode"] if settings else ("stacked" if self._stacked_fits() else "sequential")
    if mode == "stacked" and self.lanes == 1:
      mode = "sequential"
    self.mode = mode
    if mode == "sequential":
      self.lanes = 1
    self._check_settings(settings)

  def identity(self, example_id: str) -> str:
    """The person an example of the partition shows."""
    return str(self.examples.identities[self._rows[example_id]])

  # ---------------------------------------------------------------- settings

  def settings(self) -> dict[str, Any]:
    """What fixes the numbers of every slice checkpoint under ``root``."""
    return {"partition_hash": self.partition.content_hash, "num_shards": self.partition.num_shards,
            "num_slices": self.partition.num_slices, "by": self.partition.by,
            "seed": self.seed, "task": self.task, "mode": self.mode, "lanes": self.lanes,
            "devices": self.num_devices, "image_shape": list(self._image_shape),
            "optimizer": "sgd, values in the state",
            "train": {k: v for k, v in dataclasses.asdict(self.cfg).items()
                      if k not in ("lr_boundaries", "lr_decay", "eval_batch_size")},
            "model": type(self.model).__name__ + repr(sorted(
                (f.name, repr(getattr(self.model, f.name))) for f in dataclasses.fields(self.model)
                if f.name not in ("parent", "name")))}

  def _read_settings(self) -> dict[str, Any] | None:
    path = os.path.join(self.root, "settings.json")
    return checkpoints.read_json(path) if os.path.exists(path) else None

  def _check_settings(self, old: dict[str, Any] | None) -> None:
    new = self.settings()
    if old is None:
      # settings.json comes second: process 0 writes it only after the first barrier, when every
      # process has already found it missing, so all of them take this branch.
      write_json(os.path.join(self.root, "partition.json"), self.partition.to_dict())
      write_json(os.path.join(self.root, "settings.json"), new)
      return
    diff = sorted(k for k in new.keys() | old.keys() if old.get(k) != new.get(k))
    if diff:
      detail = "; ".join(f"{k}: {old.get(k)!r} != {new.get(k)!r}" for k in diff)[:600]
      raise checkpoints.WorkdirError(
          f"{self.root} holds SISA slices made with other settings ({detail}); their checkpoints "
          "would not give the same models: use another --workdir or delete that directory")

  def _stacked_fits(self) -> bool:
    """Whether one stacked step of all lanes fits in the memory of every accelerator."""
    limits = [(d.memory_stats() or {}).get("bytes_limit") for d in jax.local_devices()
              if d.platform != "cpu"]
    limits = [x for x in limits if x]
    if not limits:
      return True  # host memory: the CPU backend reports no limit and pages instead of failing
    batch = self.cfg.batch_size - self.cfg.batch_size % self.num_devices or self.num_devices
    args = self._stacked_args([self._template] * self.lanes, [np.zeros(batch, np.int64)] * self.lanes,
                              [self.examples] * self.lanes, [0] * self.lanes, [True] * self.lanes)
    mem = self._stacked_step().lower(*args).compile().memory_analysis()
    need = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
            - mem.alias_size_in_bytes)
    logging.info("stacked SISA step of %d lanes needs %.2f GiB per device", self.lanes, need / 2**30)
    return need <= _MEMORY_FRACTION * min(limits)

  # ------------------------------------------------------------------- plans

  def _shard_key(self, s: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(self.seed), s)

  def batch_plan(self, sl: int, n: int) -> tuple[int, int, int]:
    """(epochs, batch, steps per epoch) of slice ``sl`` trained on ``n`` retained examples."""
    epochs = partition_lib.slice_epochs(sl, self.partition.num_slices, self.cfg.epochs)
    if n < self.num_devices:
      # Not one example per device: the slice trains nothing and passes its input model on
      # (the next slice, being cumulative, still trains on these examples).
      return epochs, 0, 0
    batch = pipeline.effective_batch_size(n, self.cfg.batch_size, self.num_devices)
    return epochs, batch, n // batch

  def slice_examples(self, sl: int, n: int) -> int:
    epochs, batch, steps_per_epoch = self.batch_plan(sl, n)
    return epochs * batch * steps_per_epoch

  def plan(self, s: int, sl: int, removed: AbstractSet[str] = frozenset()) -> SlicePlan:
    ids = self.partition.seen(s, sl, removed)
    epochs, batch, steps_per_epoch = self.batch_plan(sl, len(ids))
    return SlicePlan(s, sl, partition_lib.slice_key(ids), ids, epochs, batch, steps_per_epoch)

  def cost(self, removed: AbstractSet[str] = frozenset(), from_slices: dict[int, int] | None = None
           ) -> int:
    """Examples processed to train shards from given slices (default: every shard from scratch).

    Args:
      removed: the removed ids.
      from_slices: {shard: first slice trained}; shards not named are not trained.
    """
    if from_slices is None:
      from_slices = {s: 0 for s in range(self.partition.num_shards)}
    total = 0
    for s, first in from_slices.items():
      counts = self.partition.retained_counts(s, removed)
      total += sum(self.slice_examples(sl, counts[sl]) for sl in range(first, self.partition.num_slices))
    return total

  def _batches(self, plan: SlicePlan, epoch: int) -> list[np.ndarray]:
    order = np.random.default_rng([self.seed, plan.shard, plan.slice, epoch]).permutation(
        len(plan.example_ids))
    b = plan.batch
    return [order[i:i + b] for i in range(0, plan.steps_per_epoch * b, b)]

  def _data(self, plan: SlicePlan) -> Examples:
    return self.examples.subset([self._rows[e] for e in plan.example_ids])

  # ------------------------------------------------------------- checkpoints

  def slice_dir(self, s: int, sl: int, key: str) -> str:
    """``ROOT/shard_<s>/slices/<sl>-<key>``.

    The slice index is part of the name because a request that removes every new example of a
    slice leaves it the seen set, and so the key, of the slice before it; the official code then
    reuses the earlier checkpoint and silently skips the slice's epochs. Here the slice still
    trains its epochs, so the epoch budget does not depend on which examples were removed.
    """
    return os.path.join(self.root, f"shard_{s}", "slices", f"{sl}-{key}")

  def has_slice(self, s: int, sl: int, key: str) -> bool:
    return os.path.exists(os.path.join(self.slice_dir(s, sl, key), "slice.json"))

  def slice_record(self, s: int, sl: int, key: str) -> dict[str, Any]:
    return checkpoints.read_json(os.path.join(self.slice_dir(s, sl, key), "slice.json"))

  def restore_slice(self, s: int, sl: int, key: str) -> TrainState:
    """The host train state saved for slice ``key`` of shard ``s``.

    Raises:
      CheckpointError: the slice is not on disk (or does not match the model).
    """
    if not self.has_slice(s, sl, key):
      raise checkpoints.CheckpointError(f"shard {s} has no complete slice {sl}-{key[:12]} under "
                                        f"{self.root}; train it first")
    ckpt = checkpoints.Checkpointer(os.path.join(self.slice_dir(s, sl, key), "checkpoint"),
                                    max_to_keep=1)
    try:
      return jax.tree.map(np.asarray, ckpt.restore(self._template))
    finally:
      ckpt.close()

  def _save_slice(self, plan: SlicePlan, state: TrainState, record: dict[str, Any]) -> None:
    d = self.slice_dir(plan.shard, plan.slice, plan.key)
    if parallel.is_primary() and os.path.exists(d):
      shutil.rmtree(d)  # a slice interrupted between its checkpoint and its slice.json
    parallel.barrier(f"mu_jax.sisa:clear:{d}")
    ckpt = checkpoints.Checkpointer(os.path.join(d, "checkpoint"), max_to_keep=1)
    ckpt.save(int(state.step), state)  # by every process together
    ckpt.close()
    write_json(os.path.join(d, "slice.json"), {
        "shard": plan.shard, "slice": plan.slice, "key": plan.key,
        "examples_seen": len(plan.example_ids), "epochs": plan.epochs, "batch": plan.batch,
        "steps_per_epoch": plan.steps_per_epoch, "end_step": int(state.step),
        "examples": plan.examples, "mode": self.mode, "lanes": self.lanes,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **record})

  def final_keys(self, removed: AbstractSet[str] = frozenset()) -> list[str]:
    return [self.plan(s, self.partition.num_slices - 1, removed).key
            for s in range(self.partition.num_shards)]

  def final_paths(self, removed: AbstractSet[str] = frozenset()) -> dict[int, str]:
    """{shard: directory of its final slice} for a removal set."""
    last = self.partition.num_slices - 1
    return {s: self.slice_dir(s, last, k) for s, k in enumerate(self.final_keys(removed))}

  def final_state(self, s: int, removed: AbstractSet[str] = frozenset()) -> TrainState:
    """Shard ``s``'s model (host state) for a removal set; it must have been trained."""
    last = self.partition.num_slices - 1
    return self.restore_slice(s, last, self.plan(s, last, removed).key)

  def final_states(self, removed: AbstractSet[str] = frozenset()) -> list[TrainState]:
    """The S constituent models (host states) for a removal set; they must have been trained."""
    return [self.final_state(s, removed) for s in range(self.partition.num_shards)]

  # ---------------------------------------------------------------- training

  def _fresh_state(self, s: int) -> TrainState:
    variables = _init_variables(self.model, self._image_shape,
                                jax.random.fold_in(self._shard_key(s), 0))
    return create_state(self.model, {"params": variables["params"],
                                     "batch_stats": variables.get("batch_stats", {})}, self._tx)

  def init_state(self, s: int) -> TrainState:
    """Shard ``s``'s initial host state (same tx and apply_fn objects as every other state)."""
    fresh = jax.tree.map(np.asarray, self._fresh_state(s))
    return self._template.replace(step=fresh.step, params=fresh.params,
                                  batch_stats=fresh.batch_stats, opt_state=fresh.opt_state)

  def warmup(self, removed: AbstractSet[str] = frozenset(), shards: Iterable[int] | None = None
             ) -> None:
    """Compiles every step shape that training ``shards`` for ``removed`` uses.

    Cost comparisons then time training, not compilation. The warm-up steps run on a throwaway
    copy of the template state and change no model.
    """
    shard_list = range(self.partition.num_shards) if shards is None else shards
    sizes = {self.plan(s, sl, removed).batch for s in shard_list
             for sl in range(self.partition.num_slices)} - {0}
    for b in sorted(sizes):
      index = np.arange(b) % len(self.examples)
      if self.mode == "sequential":
        out = steps.compiled_train_step(self.task, self.cfg.augment)(
            parallel.replicate(self._template),
            parallel.shard(pipeline.host_batch(self.examples, index)), jax.random.key(0))
      else:
        out = self._stacked_step()(*self._stacked_args(
            [self._template] * self.lanes, [index] * self.lanes, [self.examples] * self.lanes,
            [0] * self.lanes, [False] * self.lanes))
      jax.block_until_ready(out)

  def train(self, shards: Iterable[int] | None = None,
            removed: AbstractSet[str] = frozenset()) -> TrainReport:
    """Brings every slice of ``shards`` up to date for the removal set ``removed``.

    Slices already on disk are reused; the others train from the last slice before them (restored
    from its checkpoint, or the fresh initialisation). Running it again after an interruption
    continues from the last complete slice.

    Args:
      shards: which shards (default: all).
      removed: example ids that must not be trained on.

    Returns:
      What was trained and reused, with examples and wall seconds.
    """
    shard_list = sorted(set(range(self.partition.num_shards) if shards is None else shards))
    removed = frozenset(removed)
    reports = {s: ShardReport(s) for s in shard_list}
    current: dict[int, TrainState] = {}
    t0 = time.time()
    for sl in range(self.partition.num_slices):
      todo = []
      for s in shard_list:
        plan = self.plan(s, sl, removed)
        if self.has_slice(s, sl, plan.key):
          reports[s].reused_slices.append(sl)
          current.pop(s, None)
          continue
        if s not in current:
          current[s] = (self.init_state(s) if sl == 0 else
                        self.restore_slice(s, sl - 1, self.plan(s, sl - 1, removed).key))
        todo.append(plan)
      for group in self._groups(todo):
        t = time.time()
        results = self._run_group(group, [current[p.shard] for p in group])
        dt = (time.time() - t) / len(group)
        for plan, (state, metrics) in zip(group, results):
          current[plan.shard] = state
          self._save_slice(plan, state, {**metrics, "wall_s": round(dt, 4)})
          r = reports[plan.shard]
          r.trained_slices.append(sl)
          r.examples += plan.examples
          r.wall_s += dt
          logging.info("sisa shard %d slice %d: %d examples, %d epochs, %s", plan.shard, sl,
                       len(plan.example_ids), plan.epochs, metrics)
    return TrainReport(self.mode, self.lanes, reports, time.time() - t0,
                       sum(r.examples for r in reports.values()))

  def _groups(self, plans: list[SlicePlan]) -> list[list[SlicePlan]]:
    """Plans trained by one call: one each (sequential, or no step), else lanes of one batch size."""
    idle = [[p] for p in plans if p.steps == 0]
    busy = [p for p in plans if p.steps > 0]
    if self.mode == "sequential":
      return idle + [[p] for p in busy]
    by_shape: dict[tuple[int, int], list[dict[int, SlicePlan]]] = {}
    for p in busy:
      calls = by_shape.setdefault((p.batch, p.epochs), [])
      # Shard s always trains in lane s mod lanes (module docstring): a call takes it only if
      # that lane is free.
      free = next((c for c in calls if self.lane(p.shard) not in c), None)
      if free is None:
        free = {}
        calls.append(free)
      free[self.lane(p.shard)] = p
    return idle + [[c[lane] for lane in sorted(c)] for calls in by_shape.values() for c in calls]

  def lane(self, s: int) -> int:
    """The lane shard ``s`` trains in, in stacked mode."""
    return s % self.lanes

  def _run_group(self, group: list[SlicePlan], states: list[TrainState]
                 ) -> list[tuple[TrainState, dict[str, float]]]:
    if group[0].steps == 0:
      return [(states[0], {"train_loss": None, "train_accuracy": None})]
    if self.mode == "sequential":
      return [self._run_sequential(group[0], states[0])]
    return self._run_stacked(group, states)

  def _run_sequential(self, plan: SlicePlan, state: TrainState
                      ) -> tuple[TrainState, dict[str, float]]:
    data = self._data(plan)
    step_fn = steps.compiled_train_step(self.task, self.cfg.augment)
    step_key = jax.random.fold_in(self._shard_key(plan.shard), 1)
    global_step = int(state.step)
    st = parallel.replicate(state)
    history = []
    for epoch in range(plan.epochs):
      for idx in self._batches(plan, epoch):
        st, m = step_fn(st, parallel.shard(pipeline.host_batch(data, idx)),
                        jax.random.fold_in(step_key, global_step))
        global_step += 1
        history.append(m)
    # Metrics are fetched once per slice so that the host never waits for a step.
    history = parallel.to_host(history)
    return parallel.to_host(st), {
        "train_loss": float(np.mean([m["loss"] for m in history])),
        "train_accuracy": float(np.mean([m["accuracy"] for m in history]))}

  def _stacked_step(self):
    """The population trainer's stacked step over one member group of all devices (states
    donated)."""
    return population.compiled_train_step(self.task, self.cfg.augment, "installed", self._mesh)

  def _lane_values(self, shards: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """Each lane's step key (as key data) and learning rate, on the devices."""
    keys = np.stack([np.asarray(jax.random.key_data(jax.random.fold_in(self._shard_key(s), 1)))
                     for s in shards])
    lrs = np.full(len(shards), self.cfg.lr, np.float32)
    return (population.place(keys, self._mesh, population.MEMBER_SPEC),
            population.place(lrs, self._mesh, population.MEMBER_SPEC))

  def _stacked_args(self, states, index, datas, shards, active):
    """Device arguments of one stacked step; lane j takes ``datas[j]``'s rows ``index[j]``."""
    batch = stack([pipeline.host_batch(d, i) for d, i in zip(datas, index)])
    return (population.place(stack(states), self._mesh, population.MEMBER_SPEC),
            population.place(batch, self._mesh, population.MEMBER_BATCH_SPEC),
            *self._lane_values(shards),
            population.place(np.asarray(active), self._mesh, population.MEMBER_SPEC))

  def _run_stacked(self, group: list[SlicePlan], states: list[TrainState]
                   ) -> list[tuple[TrainState, dict[str, float]]]:
    # Lane l runs the plan of the group in that lane; an idle lane copies the group's first plan
    # and stays inactive, so the lane count, which sets the rounding, is fixed.
    where = {self.lane(p.shard): j for j, p in enumerate(group)}
    src = [where.get(lane, 0) for lane in range(self.lanes)]
    used = [lane in where for lane in range(self.lanes)]
    plans = [group[j] for j in src]
    datas = [self._data(p) for p in group]
    datas = [datas[j] for j in src]
    step_fn = self._stacked_step()
    keys, lrs = self._lane_values([p.shard for p in plans])
    st = population.place(stack([states[j] for j in src]), self._mesh, population.MEMBER_SPEC)
    masks: dict[tuple[bool, ...], jax.Array] = {}
    history = []
    for epoch in range(group[0].epochs):
      orders = [self._batches(p, epoch) for p in plans]
      for i in range(max(len(o) for o in orders)):
        act = tuple(used[lane] and i < len(orders[lane]) for lane in range(self.lanes))
        if act not in masks:
          masks[act] = population.place(np.asarray(act), self._mesh, population.MEMBER_SPEC)
        index = [o[min(i, len(o) - 1)] for o in orders]
        batch = stack([pipeline.host_batch(d, ix) for d, ix in zip(datas, index)])
        st, m = step_fn(st, population.place(batch, self._mesh, population.MEMBER_BATCH_SPEC),
                        keys, lrs, masks[act])
        history.append((act, m))
    lanes = unstack(parallel.to_host(st), self.lanes)
    acts = np.asarray([a for a, _ in history], np.float64)
    metrics = parallel.to_host([m for _, m in history])
    loss = np.asarray([m["loss"] for m in metrics], np.float64)
    acc = np.asarray([m["accuracy"] for m in metrics], np.float64)
    out = []
    for p in group:
      j = self.lane(p.shard)
      n = acts[:, j].sum()
      out.append((lanes[j], {"train_loss": float((loss[:, j] * acts[:, j]).sum() / n),
                             "train_accuracy": float((acc[:, j] * acts[:, j]).sum() / n)}))
    return out
