"""The main job: the whole unlearning benchmark of one config, as a table.

  python -m experiments.benchmark --config=experiments/configs/synthetic.py --workdir=/tmp/mu_synth

Trains (or resumes) the original and retrained models, runs every method (``--methods=all``, a
comma-separated list, and ``module:factory`` entries for your own methods), evaluates them and
writes WORKDIR/results/{results.json, results.csv, table.md, costs.json, *.png}; prints the table
and where the time went (compile, training, evaluation and other seconds per stage). Running it
again resumes and skips what has finished; changed hyperparameters
(``--config.unlearn.hparams.<method>.<name>=...``) make new stages beside the old ones.
"""

from absl import flags
from ml_collections import config_flags

from mu_jax import cli, costs
from mu_jax.pipelines import benchmark

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where models, outputs and results go.")
_METHODS = flags.DEFINE_string("methods", "all", "'all', a comma-separated list, module:factory.")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Run seeds config.seed .. config.seed+N-1 as populations; "
                              "the table shows mean ± std.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Start a workdir made with another config again.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  out = benchmark.run_benchmark(_CONFIG.value, _WORKDIR.value, _METHODS.value, seeds=_SEEDS.value,
                                overwrite=_OVERWRITE.value)
  print()
  print(out["table"])
  print(f"\nwrote {', '.join(v for k, v in out['paths'].items() if k != 'plots')} and "
        f"{len(out['paths']['plots'])} plots")
  print("\nWhere the time went, in seconds (compile: every XLA compilation of this process; "
        "train: the\nmethods' and models' steps; eval: outputs and metrics; programs: "
        "compilations):")
  print(costs.format_table(out["costs"]))


if __name__ == "__main__":
  cli.run(main)
