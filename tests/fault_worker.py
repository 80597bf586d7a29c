"""One process of tests/test_fault_injection.py: train the original model, then unlearn it.

  python -m tests.fault_worker WORKDIR [KILL_POINT]

It does what ``experiments.train --stages=original`` followed by ``experiments.unlearn
--method=eu_k`` do, on the tiny config :func:`config` (the same config those commands get from
:func:`cli_flags`), so runs of the scripts and of this worker share one workdir and resume each
other. EU-k is the method because it needs everything a resume has to restore: ten epochs (ten
checkpoints), SGD momentum (optimizer state) and re-initialised layers drawn from the run's key.

``KILL_POINT`` (``WHEN:REL[:N]``) makes the process SIGKILL itself in the middle of the N-th
(default: first) checkpoint write under ``WORKDIR/REL`` (REL may hold ``*``: stage directories end
in their identity's hash), where a kill from outside would land only by luck:

* ``create``: right after orbax created the step's temporary directory (holding only its
  metadata file);
* ``finalize``: after every file of the step is written, before the rename that completes it.

The worker writes nothing itself; everything it leaves is what the library writes.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import sys
from typing import Any

METHOD = "eu_k"

# Dotted config overrides of ``experiments/configs/synthetic.py:runlocal``: 16 persons x 4 images
# at 8x8 (48 train images, 6 steps of 8 per epoch), a small CNN of width 4, 4 epochs. Training
# runs without augmentation, whose compilation costs more than the rest of the run; EU-k's phase
# augments, so the randomness of a resumed run is still checked.
OVERRIDES = {
    "data.num_identities": 16, "data.images_per_identity": 4, "data.image_size": 8,
    "model.width": 4, "train.epochs": 4, "train.batch_size": 8, "train.eval_batch_size": 64,
    "train.augment": False,
    "unlearn.batch_size": 8,
}
CONFIG_FILE = "experiments/configs/synthetic.py:runlocal"


def config() -> dict[str, Any]:
  """The config dict that ``--config=CONFIG_FILE`` plus :func:`cli_flags` gives the scripts."""
  from experiments.configs import synthetic
  c = synthetic.get_config("runlocal")
  for key, value in OVERRIDES.items():
    section, name = key.split(".")
    c[section][name] = value
  return c.to_dict()


def cli_flags(workdir: str) -> list[str]:
  return [f"--config={CONFIG_FILE}", *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
          f"--workdir={workdir}"]


def arm(workdir: str, kill_point: str) -> None:
  """Patches orbax so that the process kills itself at ``kill_point`` (module docstring)."""
  from orbax.checkpoint._src.path import atomicity
  when, rel, *nth = kill_point.split(":")
  if when not in ("create", "finalize"):
    raise ValueError(f"kill point must be create:REL[:N] or finalize:REL[:N], got {kill_point!r}")
  target = os.path.join(os.path.realpath(workdir), rel)
  remaining = [int(nth[0]) if nth else 1]
  cls = atomicity.AtomicRenameTemporaryPath
  real = getattr(cls, when)

  def maybe_kill(tmp_path) -> None:
    # A step is written as STEP.orbax-checkpoint-tmp/ holding ITEM.orbax-checkpoint-tmp/; only the
    # outer directory sits in ``target``.
    if fnmatch.fnmatchcase(os.path.realpath(os.path.dirname(str(tmp_path))), target):
      remaining[0] -= 1
      if remaining[0] == 0:
        os.kill(os.getpid(), signal.SIGKILL)

  async def create(self, *args, **kwargs):
    out = await real(self, *args, **kwargs)
    maybe_kill(self.get())
    return out

  async def finalize(self, *args, **kwargs):
    maybe_kill(self.get())
    return await real(self, *args, **kwargs)

  setattr(cls, when, create if when == "create" else finalize)


def run(workdir: str) -> None:
  """Trains (or resumes) the original model, then runs (or resumes) :data:`METHOD`."""
  from mu_jax import experiment
  exp = experiment.Experiment.create(config(), workdir)
  exp.train_stage("original", progress=False)
  exp.unlearn_stage(METHOD)


def main(argv: list[str]) -> None:
  from mu_jax import runtime
  runtime.configure_cpu()  # as the experiment scripts do, whose runs this one resumes
  workdir = argv[1]
  if len(argv) > 2:
    arm(workdir, argv[2])
  run(workdir)


if __name__ == "__main__":
  main(sys.argv)
