"""The device mesh and the one data-parallel wrapper every mu_jax step goes through.

Steps are written per device, the way ``pmap`` runs them: they see their shard of the global batch
and average gradients (and, through ``BatchNorm(axis_name=AXIS)``, batch statistics) over the named
axis :data:`AXIS`. :func:`data_parallel` maps such a step over a 1-D mesh of every device of every
process with ``jax.shard_map`` under ``jax.jit``, so the same code runs on one CPU, on four virtual
CPU devices in the tests, and under ``jax.distributed`` on many hosts.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = "data"
REPLICATED = P()
SHARDED = P(AXIS)
# The leading axis of a population of models trained as one program (mu_jax.training.population).
MEMBER_AXIS = "member"


@functools.lru_cache(maxsize=None)
def _mesh_for(devices: tuple[Any, ...]) -> Mesh:
  return Mesh(np.asarray(devices), (AXIS,))


def mesh(devices: Sequence[Any] | None = None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: every device of every process)."""
  return _mesh_for(tuple(devices if devices is not None else jax.devices()))


@functools.lru_cache(maxsize=None)
def _member_mesh_for(devices: tuple[Any, ...], member_shards: int) -> Mesh:
  grid = np.asarray(devices).reshape(member_shards, len(devices) // member_shards)
  return Mesh(grid, (MEMBER_AXIS, AXIS))


def member_mesh(member_shards: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
  """A 2-D mesh (:data:`MEMBER_AXIS` × :data:`AXIS`) over ``devices`` (default: all of them).

  A population's models are split over the ``member_shards`` rows and each model's batch over the
  devices of its row, so collectives over :data:`AXIS` (gradient means, BatchNorm statistics)
  reduce within one group of models and never mix models.

  Raises:
    ValueError: ``member_shards`` does not divide the device count.
  """
  devices = tuple(devices if devices is not None else jax.devices())
  if member_shards < 1 or len(devices) % member_shards:
    raise ValueError(f"member_shards={member_shards} must be a positive divisor of the "
                     f"{len(devices)} devices")
  return _member_mesh_for(devices, int(member_shards))


def num_devices(m: Mesh | None = None) -> int:
  return (m or mesh()).size


def data_parallel(step: Callable[..., Any], in_specs: Any, out_specs: Any, *,
                  donate_argnums: Sequence[int] = (), static_argnums: Sequence[int] = (),
                  devices: Sequence[Any] | None = None) -> Callable[..., Any]:
  """Compiles a per-device ``step`` to run data-parallel over all devices.

  Args:
    step: a function written for one device; collectives use axis name :data:`AXIS`.
    in_specs: per positional argument, :data:`REPLICATED` (the same on every device, e.g. the
      train state) or :data:`SHARDED` (split along the leading axis, e.g. a batch); a pytree of
      specs is allowed per argument.
    out_specs: the same for the outputs: replicated results must be identical on every device
      (reduce them with ``lax.pmean``/``psum`` inside the step), sharded ones are concatenated.
    donate_argnums: arguments whose buffers the step may reuse (the train state), as in big_vision.
    static_argnums: not supported through shard_map; kept out on purpose so callers close over
      static values with ``functools.partial`` instead. Must be empty.
    devices: restrict to these devices (default: every device).

  Returns:
    The jitted data-parallel function; it takes global arrays (see :func:`shard` and
    :func:`replicate`) and returns global arrays.
  """
  if static_argnums:
    raise ValueError("close over static values with functools.partial; static_argnums is unsupported")
  m = mesh(devices)
  # check_vma=False: steps use plain lax.pmean/psum as under pmap; replicated outputs are produced
  # by explicit reductions, which the tests check against the 1-device result.
  mapped = jax.shard_map(step, mesh=m, in_specs=tuple(in_specs), out_specs=out_specs,
                         check_vma=False)
  return jax.jit(mapped, donate_argnums=tuple(donate_argnums))


class Prepared:
  """A step whose batch is prepared (uint8 to float, augmented) by a program of its own.

  The reference augmentation is as large a computation for XLA as a small model's training step
  (its random draws and per-image branches); inside every method step, training step and member
  step it would be compiled again each time. As its own program it compiles once per batch shape
  and serves every step, and the step programs compile about twice as fast.

  ``Prepared(prepare, step, select, merge)`` behaves like the jitted ``step`` it wraps: calling it
  with the step's arguments runs ``prepare(*select(args))`` (jitted programs, compiled on their
  first call and shared) and then ``step(*merge(args, prepared))``; ``lower(*args).compile()``
  compiles the step ahead of time for the prepared batch, as :func:`compile_timed` and the method
  driver do.

  Args:
    prepare: makes the prepared batch by calling jitted programs.
    step: the jitted step.
    select: the step's arguments → ``prepare``'s arguments (the batch and its keys).
    merge: (the step's arguments, the prepared batch) → the arguments ``step`` runs with.
  """

  def __init__(self, prepare: Callable[..., Any], step: Callable[..., Any],
               select: Callable[[tuple], tuple], merge: Callable[[tuple, Any], tuple]):
    self.prepare, self.step, self.select, self.merge = prepare, step, select, merge

  def __call__(self, *args: Any) -> Any:
    return self.run(self.step, *args)

  def run(self, step: Callable[..., Any], *args: Any) -> Any:
    """``step`` (this step, or its compiled form) on the prepared arguments."""
    return step(*self.merge(args, self.prepare(*self.select(args))))

  def lower(self, *args: Any) -> "_PreparedLowering":
    return _PreparedLowering(self, args)


class _PreparedLowering:

  def __init__(self, fn: Prepared, args: tuple):
    self.fn, self.args = fn, args

  def compile(self) -> Callable[..., Any]:
    fn = self.fn
    # The step is lowered for a prepared batch itself, so it gets the shardings it will see.
    step = fn.step.lower(*fn.merge(self.args, fn.prepare(*fn.select(self.args)))).compile()
    return functools.partial(fn.run, step)


def compile_timed(fn: Callable[..., Any], *args: Any) -> tuple[Callable[..., Any], float]:
  """Compiles a jitted ``fn`` for ``args`` ahead of time; returns (executable, seconds).

  Costs are reported without one-time compilation (as a separate number), so a method that runs
  two epochs is not charged the same 30 s of XLA compilation as a 30-epoch retraining.
  """
  t = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - t


def replicate(tree: Any, devices: Sequence[Any] | None = None) -> Any:
  """Places a pytree on every device of the mesh, replicated."""
  sharding = NamedSharding(mesh(devices), REPLICATED)
  if jax.process_count() > 1:
    def one(x):
      if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        # Typed PRNG keys have no numpy form: their key data travels and is wrapped again.
        return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
      return jax.make_array_from_callback(np.shape(x), sharding, lambda idx: np.asarray(x)[idx])
    return jax.tree.map(one, tree)
  return jax.device_put(tree, sharding)


def shard(batch: Any, devices: Sequence[Any] | None = None) -> Any:
  """Splits a global host batch along its leading axis over the mesh.

  Every process passes the same global batch (mu_jax's data order is a pure function of the seed
  and epoch, so all processes compute it); with several processes each contributes only its own
  slice (:func:`process_slice`) and the result is one global array.
  """
  sharding = NamedSharding(mesh(devices), SHARDED)
  if jax.process_count() > 1:
    def local(x):
      x = np.asarray(x)
      return jax.make_array_from_process_local_data(sharding, x[process_slice(len(x))], x.shape)
    return jax.tree.map(local, batch)
  return jax.device_put(batch, sharding)


def init_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> None:
  """Starts ``jax.distributed`` (arguments auto-detected on TPU pods, SLURM and similar).

  On CPU the cross-process collectives need an implementation; gloo is selected here.
  """
  if jax.config.jax_platforms in (None, "", "cpu") or os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id)


def is_primary() -> bool:
  """Whether this process writes the workdir's files: process 0 (the only one, usually).

  Under ``jax.distributed`` every process runs the same code on one shared workdir; orbax
  coordinates checkpoint writes itself, the rest (config, manifest, metrics rows, done.json) is
  written once, by process 0.
  """
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process has reached ``name`` (nothing to wait for in one process).

  Follows a write by :func:`is_primary` that the other processes read next.
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def share(value: Any) -> Any:
  """Process 0's ``value`` (JSON data) on every process; ``value`` itself in one process.

  For what process 0 alone decides and the others need too, e.g. the id of a request whose audit
  line process 0 wrote.
  """
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils
  data = np.frombuffer(json.dumps(value).encode(), np.uint8) if is_primary() else np.zeros(0, np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
  padded = np.zeros(size, np.uint8)
  padded[:data.size] = data  # the other processes send zeros: the broadcast sums over processes
  return json.loads(np.asarray(multihost_utils.broadcast_one_to_all(padded)).tobytes().decode())


def process_slice(global_batch_size: int) -> slice:
  """The part of a global batch this process feeds (contiguous, equal parts per process)."""
  n = jax.process_count()
  if global_batch_size % n:
    raise ValueError(f"global batch {global_batch_size} is not divisible by {n} processes")
  per = global_batch_size // n
  return slice(jax.process_index() * per, (jax.process_index() + 1) * per)


def to_host(tree: Any) -> Any:
  """Fetches a (possibly multi-process) global pytree to numpy on every process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
  return jax.tree.map(np.asarray, tree)


def global_index(local_size: int) -> jax.Array:
  """Inside a step: the position of each local example in the global batch."""
  return jax.lax.axis_index(AXIS) * local_size + jnp.arange(local_size)
