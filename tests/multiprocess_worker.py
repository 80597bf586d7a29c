"""One process of tests/test_multiprocess.py: a few data-parallel train steps under jax.distributed,
then an orbax checkpoint of the result written (replacing a step) and read back by all processes
together.

  python -m tests.multiprocess_worker PROCESS_ID NUM_PROCESSES PORT OUT.npz CHECKPOINT_DIR
"""

import os
import sys


def main():
  pid, n = int(sys.argv[1]), int(sys.argv[2])
  port, out, ckpt_dir = sys.argv[3:6]
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  os.environ["JAX_PLATFORMS"] = "cpu"
  from mu_jax import parallel
  parallel.init_distributed(f"localhost:{port}", n, pid)
  import jax
  import numpy as np
  from mu_jax import checkpoints
  from tests import multiprocess_common as common
  assert jax.process_count() == n and jax.device_count() == 2 * n
  params = common.train_steps()
  # Every process saves (orbax coordinates the processes) and restores the checkpoint, then writes
  # what it restored: both must equal the 1-process run. Zeros saved first as steps 1, 2 and STEPS
  # make the real save replace a step, after a save that pruned one (max_to_keep=2).
  ckpt = checkpoints.Checkpointer(ckpt_dir, max_to_keep=2)
  zeros = jax.tree.map(np.zeros_like, params)
  for step in (1, 2, common.STEPS):
    ckpt.save(step, zeros)
  ckpt.save(common.STEPS, params)
  assert ckpt.all_steps() == [2, common.STEPS], ckpt.all_steps()
  params = ckpt.restore(jax.tree.map(np.zeros_like, params))  # values can only come from disk
  ckpt.close()
  flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  np.savez(out, **flat)


if __name__ == "__main__":
  main()
