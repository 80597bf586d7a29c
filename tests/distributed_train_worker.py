"""One process of tests/test_multiprocess.py's runs of ``experiments.<SCRIPT> --distributed``.

  python -m tests.distributed_train_worker KILL_AFTER SCRIPT [--record_writes=PATH] [experiments.SCRIPT flags...]

Runs ``experiments.<SCRIPT>`` (train, unlearn, retrieval, sisa) with the given flags, as its
``python -m`` command does; if ``KILL_AFTER`` > 0, the process SIGKILLs
itself right after its KILL_AFTER-th checkpoint save returns (orbax ends a save with a barrier, so
every process of the run stops at the same checkpoint, as a job killed between epochs would).
``--record_writes=PATH`` lists the files the process writes in PATH at exit
(:func:`tests.multiprocess_common.record_writes`).
"""

from __future__ import annotations

import os
import signal
import sys

from mu_jax import checkpoints


def main() -> None:
  kill_after = int(sys.argv[1])
  if kill_after > 0:
    real_save = checkpoints.Checkpointer.save
    saves = [0]

    def save(self, *args, **kwargs):
      real_save(self, *args, **kwargs)
      saves[0] += 1
      if saves[0] == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoints.Checkpointer.save = save
  import importlib
  from mu_jax import cli
  script = importlib.import_module(f"experiments.{sys.argv[2]}")
  flags = sys.argv[3:]
  for arg in [a for a in flags if a.startswith("--record_writes=")]:
    from tests import multiprocess_common
    multiprocess_common.record_writes(arg.split("=", 1)[1])
    flags.remove(arg)
  sys.argv = [f"experiments.{sys.argv[2]}", *flags]
  cli.run(script.main)


if __name__ == "__main__":
  main()
