"""Two CPU processes under jax.distributed train to the same parameters as one process, and save
and restore them through one orbax checkpoint."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from tests import multiprocess_common as common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_hold_the_parameters_of_one(tmp_path):
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  procs = [subprocess.Popen([sys.executable, "-m", "tests.multiprocess_worker", str(i), "2", str(port),
                             str(tmp_path / f"p{i}.npz"), str(tmp_path / "ckpt")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  logs = [p.communicate(timeout=300)[0].decode()[-3000:] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log
  # The reference: this process, 4 devices, the same global batches.
  ref = common.train_steps()
  flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(ref)[0]}
  for i in range(2):
    got = dict(np.load(tmp_path / f"p{i}.npz"))
    assert got.keys() == flat.keys()
    for k in flat:
      np.testing.assert_allclose(got[k], flat[k], rtol=2e-5, atol=2e-6, err_msg=f"process {i}: {k}")
  # One complete step directory, no temporary left behind.
  assert sorted(os.listdir(tmp_path / "ckpt")) == [str(common.STEPS)]
