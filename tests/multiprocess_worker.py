"""One process of tests/test_multiprocess.py: a few data-parallel train steps under jax.distributed.

  python -m tests.multiprocess_worker PROCESS_ID NUM_PROCESSES PORT OUT.npz
"""

import os
import sys


def main():
  pid, n, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  os.environ["JAX_PLATFORMS"] = "cpu"
  from mu_jax import parallel
  parallel.init_distributed(f"localhost:{port}", n, pid)
  import jax
  import numpy as np
  from tests import multiprocess_common as common
  assert jax.process_count() == n and jax.device_count() == 2 * n
  params = common.train_steps()
  # Every process writes what it holds: both must equal the 1-process run.
  flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  np.savez(out, **flat)


if __name__ == "__main__":
  main()
