"""Trains the original (D_train) and/or retrained (D_retain) model of a config.

  python -m experiments.train --config=experiments/configs/synthetic.py:runlocal --workdir=/tmp/w

Running the same command again resumes from the latest checkpoint; finished stages are skipped.
Prints one line per stage: examples, training seconds and its directory.

On several hosts run one process per host, every one with the same flags and a workdir on a file
system they share, plus ``--distributed`` (arguments auto-detected on TPU pods and SLURM) or, e.g.
on two CPU machines:

  python -m experiments.train ... --distributed --coordinator_address=host0:1234 \
      --num_processes=2 --process_id=0     # and --process_id=1 on the other host
"""

from absl import app, flags
from ml_collections import config_flags

from mu_jax import cli, parallel
from mu_jax.experiment import Experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
_STAGES = flags.DEFINE_list("stages", ["original", "retrained"], "Which models to train.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Start a workdir made with another config again.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize (one process per host).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "With --distributed: host:port of "
                                   "process 0 (auto-detected on TPU pods and SLURM).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --distributed: how many processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --distributed: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if _DISTRIBUTED.value:
    parallel.init_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  elif any(f.value is not None for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)):
    raise app.UsageError("--coordinator_address, --num_processes and --process_id need --distributed")
  exp = Experiment.create(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
  for stage in _STAGES.value:
    rec = exp.train_stage(stage)
    print(f"{stage}: {rec['examples']} examples in {rec['wall_s']:.1f} s -> {exp.trained_stage(stage).dir}")


if __name__ == "__main__":
  cli.run(main)
