"""Trains the original (D_train) and/or retrained (D_retain) model of a config.

  python -m experiments.train --config=experiments/configs/synthetic.py:runlocal --workdir=/tmp/w

Running the same command again resumes from the latest checkpoint; finished stages are skipped.
Prints one line per stage: examples, training seconds and its directory.

On several hosts run one process per host, every one with the same flags and a workdir on a file
system they share, plus ``--distributed`` (:mod:`mu_jax.cli`; experiments.unlearn and
experiments.benchmark take it too) (arguments auto-detected on TPU pods and SLURM) or, e.g.
on two CPU machines:

  python -m experiments.train ... --distributed --coordinator_address=host0:1234 \
      --num_processes=2 --process_id=0     # and --process_id=1 on the other host
"""

from absl import flags
from ml_collections import config_flags

from mu_jax import cli
from mu_jax.experiment import Experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
_STAGES = flags.DEFINE_list("stages", ["original", "retrained"], "Which models to train.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Start a workdir made with another config again.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  exp = Experiment.create(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
  for stage in _STAGES.value:
    rec = exp.train_stage(stage)
    print(f"{stage}: {rec['examples']} examples in {rec['wall_s']:.1f} s -> {exp.trained_stage(stage).dir}")


if __name__ == "__main__":
  cli.run(main)
