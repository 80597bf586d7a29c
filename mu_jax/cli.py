"""What every experiment script does around its one library call: CPU settings, quiet logs, errors.

:func:`run` replaces ``absl.app.run`` in ``experiments/*.py``: it makes mu_jax's CPU settings
(:func:`mu_jax.runtime.configure_cpu`) before anything starts XLA, logs warnings and errors only
unless ``--verbosity`` asks for more (``--verbosity=0`` brings back INFO lines, orbax's included),
and turns the errors a user can fix (bad data, a workdir of another config, an unknown method or
hyperparameter, an unservable request) into one line on stderr and exit status 2, with nothing
written.
"""

from __future__ import annotations

import sys
from typing import Callable

from absl import app, flags, logging

from mu_jax import checkpoints, runtime
from mu_jax.data.splits import DataError
from mu_jax.methods.registry import MethodError

USER_ERRORS = (DataError, checkpoints.WorkdirError, checkpoints.CheckpointError, MethodError)


def run(main: Callable[[list[str]], None]) -> None:
  """Runs an absl ``main`` as the experiment scripts do (module docstring)."""

  def wrapped(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:  # --verbosity on the command line wins
      logging.set_verbosity(logging.WARNING)
    runtime.configure_cpu()
    try:
      main(argv)
    except USER_ERRORS as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  app.run(wrapped)
