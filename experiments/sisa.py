"""SISA end to end: train S shards × R slices, serve one forget request exactly, evaluate, report.

  python -m experiments.sisa --config=experiments/configs/synthetic.py:runlocal --workdir=W \
      --shards=5 --slices=4

Prints which shards were retrained and from which slice, the cost against a full retrain, whether
the unlearned models equal a from-scratch retrain bit for bit, and the aggregate's accuracy and
attack numbers before and after; writes W/sisa/sisa-<hash>/results.json (see
:mod:`mu_jax.pipelines.sisa`). Running it again resumes or reprints a served request. On the
runlocal config the whole run takes about two minutes on 2 CPU cores.
"""

from absl import flags
from ml_collections import config_flags

from mu_jax import cli
from mu_jax.pipelines import sisa

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
_SHARDS = flags.DEFINE_integer("shards", 5, "S: number of shards (constituent models).")
_SLICES = flags.DEFINE_integer("slices", 4, "R: slices per shard (checkpoints per shard).")
_FORGET = flags.DEFINE_enum("forget", "from-manifest", sisa.FORGET, "What the request forgets.")
_IDENTITIES = flags.DEFINE_list("identities", None, "--forget=identities: the persons to forget.")
_IDS = flags.DEFINE_list("ids", None, "--forget=ids: the example ids to forget.")
_PARTITION = flags.DEFINE_enum("partition", None, ["identity", "index"], "Shard by identity or "
                               "index (default: config.sisa.partition, else identity).")
_AGGREGATION = flags.DEFINE_enum("aggregation", None, ["vote", "mean"], "Majority vote (official) "
                                 "or mean softmax (default: config.sisa.aggregation, else vote).")
_MODE = flags.DEFINE_enum("mode", None, ["auto", "stacked", "sequential"], "Train shards stacked "
                          "with vmap or one by one (default: config.sisa.mode, else auto).")
_BATCH = flags.DEFINE_integer("batch_size", None, "Constituent models' batch size (default: "
                              "config.sisa.batch_size, else 16, the official SISA default).")
_FULL_RETRAIN = flags.DEFINE_bool("full_retrain", True, "Also retrain all shards from scratch "
                                  "without the request: measured baseline and bit-exactness check.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Start a workdir made with another config again.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  sisa.run_sisa(_CONFIG.value, _WORKDIR.value, shards=_SHARDS.value, slices=_SLICES.value,
                forget=_FORGET.value, identities=_IDENTITIES.value, ids=_IDS.value,
                partition=_PARTITION.value, aggregation=_AGGREGATION.value, mode=_MODE.value,
                batch_size=_BATCH.value, full_retrain=_FULL_RETRAIN.value,
                overwrite=_OVERWRITE.value)


if __name__ == "__main__":
  cli.run(main)
