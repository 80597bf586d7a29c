"""Trains the original (D_train) and/or retrained (D_retain) model of a config.

  python -m experiments.train --config=experiments/configs/synthetic.py:runlocal --workdir=/tmp/w

Running the same command again resumes from the latest checkpoint; finished stages are skipped.
"""

from absl import app, flags
from ml_collections import config_flags

from mu_jax import parallel, runner

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
_STAGES = flags.DEFINE_list("stages", ["original", "retrained"], "Which models to train.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Start a workdir made with another config again.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize (one process per host).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if _DISTRIBUTED.value:
    parallel.init_distributed()
  exp = runner.Experiment.create(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
  for stage in _STAGES.value:
    rec = exp.train_stage(stage)
    print(f"{stage}: {rec['examples']} examples in {rec['wall_s']:.1f} s -> {exp.stage_dir(stage)}")


if __name__ == "__main__":
  app.run(main)
