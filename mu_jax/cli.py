"""What every experiment script does around its one library call: CPU settings, hosts, logs, errors.

:func:`run` replaces ``absl.app.run`` in ``experiments/*.py``: it makes mu_jax's CPU settings
(:func:`mu_jax.runtime.configure_cpu`) before anything starts XLA, starts ``jax.distributed`` when
``--distributed`` is given (one process per host, the same command on each; arguments
auto-detected on TPU pods and SLURM, else ``--coordinator_address``, ``--num_processes`` and
``--process_id``), keeps compiled programs in JAX's persistent cache for the next run
(:func:`mu_jax.runtime.enable_compilation_cache`; ``--nocompilation_cache`` turns it off), logs
warnings and errors only
unless ``--verbosity`` asks for more (``--verbosity=0`` brings back INFO lines, orbax's included),
and turns the errors a user can fix (bad data, a workdir of another config, an unknown method or
hyperparameter, an unservable request) into one line on stderr and exit status 2, with nothing
written.
"""

from __future__ import annotations

import sys
from typing import Callable

from absl import app, flags, logging

from mu_jax import checkpoints, parallel, runtime
from mu_jax.data.splits import DataError
from mu_jax.methods.registry import MethodError

USER_ERRORS = (DataError, checkpoints.WorkdirError, checkpoints.CheckpointError, MethodError)

_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize (one "
                                 "process per host, the same command on each).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "With --distributed: host:port of "
                                   "process 0 (auto-detected on TPU pods and SLURM).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --distributed: how many "
                                      "processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --distributed: this process's index.")
_CACHE = flags.DEFINE_bool("compilation_cache", True, "Keep compiled XLA programs in "
                           "$XDG_CACHE_HOME/mu_jax/jax (~/.cache/mu_jax/jax) for later runs.")


def run(main: Callable[[list[str]], None]) -> None:
  """Runs an absl ``main`` as the experiment scripts do (module docstring)."""

  def wrapped(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:  # --verbosity on the command line wins
      logging.set_verbosity(logging.WARNING)
    runtime.configure_cpu()
    if _CACHE.value:
      runtime.enable_compilation_cache()
    if _DISTRIBUTED.value:
      parallel.init_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif any(f.value is not None for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)):
      raise app.UsageError("--coordinator_address, --num_processes and --process_id need "
                           "--distributed")
    try:
      main(argv)
    except USER_ERRORS as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(wrapped)
