"""The main job: the whole unlearning benchmark of one config, as a table.

  python -m experiments.benchmark --config=experiments/configs/synthetic.py --workdir=/tmp/mu_synth

Trains (or resumes) the original and retrained models, runs every method (``--methods=all`` or a
comma-separated list), evaluates them and writes WORKDIR/results/{results.json, results.csv,
table.md, *.png}; prints the table. Running it again resumes and skips what has finished.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from mu_jax import benchmark
from mu_jax.methods import registry

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where models, outputs and results go.")
_METHODS = flags.DEFINE_string("methods", "all", "'all' or a comma-separated list of methods.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Repeat with seeds config.seed .. config.seed+N-1.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Start a workdir made with another config again.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  methods = registry.parse_methods(_METHODS.value)
  out = benchmark.run_benchmark(_CONFIG.value, _WORKDIR.value, methods, seeds=_SEEDS.value,
                                overwrite=_OVERWRITE.value)
  print()
  print(out["table"])
  print(f"\nwrote {', '.join(v for k, v in out['paths'].items() if k != 'plots')} and "
        f"{len(out['paths']['plots'])} plots")


if __name__ == "__main__":
  app.run(main)
