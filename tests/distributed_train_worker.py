"""One process of tests/test_multiprocess.py's run of ``experiments.train --distributed``.

  python -m tests.distributed_train_worker KILL_AFTER [experiments.train flags...]

Runs ``experiments.train`` with the given flags; if ``KILL_AFTER`` > 0, the process SIGKILLs
itself right after its KILL_AFTER-th checkpoint save returns (orbax ends a save with a barrier, so
every process of the run stops at the same checkpoint, as a job killed between epochs would).
"""

from __future__ import annotations

import os
import signal
import sys

from absl import app

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
  from experiments import train
  app.run(train.main, argv=["experiments.train", *sys.argv[2:]])


if __name__ == "__main__":
  main()
