"""Evaluates every finished stage of a workdir and writes WORKDIR/results.

  python -m experiments.evaluate --config=experiments/configs/synthetic.py --workdir=W

Rows: original, retrained and every method stage run from that original (several hyperparameter
settings of one method side by side, told apart by ``stage`` and ``hparams``), plus SISA
deployments. Per-example outputs are recomputed only when missing. Prints the table.
"""

from absl import flags
from ml_collections import config_flags

from mu_jax import cli
from mu_jax.pipelines import benchmark

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The workdir to evaluate.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  out = benchmark.evaluate_workdir(_CONFIG.value, _WORKDIR.value)
  print(out["table"])


if __name__ == "__main__":
  cli.run(main)
