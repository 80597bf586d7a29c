"""One process of tests/test_fault_injection.py: a checkpoint save killed while files are removed.

  python -m tests.unlink_kill_worker DIRECTORY STEP VALUE N

Saves :func:`tree` ``(VALUE)`` as ``STEP`` in the :class:`mu_jax.checkpoints.Checkpointer` at
``DIRECTORY`` (``max_to_keep=2``) and SIGKILLs itself right after the N-th file removal of that
save: the removal of a step being replaced (a step saved again) or pruned (the oldest of three).
It exits normally if the save removes fewer than N files.
"""

from __future__ import annotations

import os
import signal
import sys

import numpy as np

from mu_jax import checkpoints

MAX_TO_KEEP = 2


def tree(value: float) -> dict[str, np.ndarray]:
  return {"w": np.full((3, 4), value, np.float32), "b": np.arange(5, dtype=np.int32) + int(value)}


def main(argv: list[str]) -> None:
  directory, step, value, n = argv[1], int(argv[2]), float(argv[3]), int(argv[4])
  c = checkpoints.Checkpointer(directory, max_to_keep=MAX_TO_KEEP)
  left = [n]
  real_unlink = os.unlink

  def unlink(*args, **kwargs):
    real_unlink(*args, **kwargs)
    left[0] -= 1
    if left[0] == 0:
      os.kill(os.getpid(), signal.SIGKILL)

  # shutil.rmtree and pathlib remove files through os.unlink.
  os.unlink = unlink
  c.save(step, tree(value))
  os.unlink = real_unlink
  c.close()


if __name__ == "__main__":
  main(sys.argv)
