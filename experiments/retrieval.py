"""Face-retrieval identity unlearning: original and retrained embedding models, methods, table, plot.

  python -m experiments.retrieval --config=experiments/configs/retrieval.py:runlocal --workdir=/tmp/w

Stages live in WORKDIR/retrieval (see :mod:`mu_jax.pipelines.retrieval`); the table goes to
WORKDIR/results/retrieval.{json,csv,md} and the embeddings' PCA plot to retrieval_pca.png. Prints
the data line (enrolled and probe images), one line per method and the table, whose reference rows
are the original, the retrained model and the unretrievable level of the probe-photo columns.
Running it again resumes and skips what has finished.
"""

from absl import flags
from ml_collections import config_flags

from mu_jax import cli
from mu_jax.pipelines import retrieval

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
_METHODS = flags.DEFINE_string("methods", None, "Comma-separated methods or 'all' (default: the "
                               "config's unlearn.methods).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Start a workdir made with another config again.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars while training.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  out = retrieval.run_retrieval(_CONFIG.value, _WORKDIR.value, _METHODS.value,
                                overwrite=_OVERWRITE.value, progress=_PROGRESS.value)
  print(out["table"])
  print("wrote " + ", ".join(out["paths"].values()))


if __name__ == "__main__":
  cli.run(main)
