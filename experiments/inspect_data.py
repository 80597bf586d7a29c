"""Prints one JSON object describing a config's data: per split images, identities, labels, leaks.

  python -m experiments.inspect_data --config=experiments/configs/mufac.py --config.data.data_dir=DIR
"""

import json

from ml_collections import config_flags

from mu_jax import cli
from mu_jax.data import loader, splits
from mu_jax.experiment import to_dict

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)


def main(argv):
  del argv
  dataset = loader.load_dataset(to_dict(_CONFIG.value)["data"])
  print(json.dumps(splits.summarize(dataset), indent=1, default=str))


if __name__ == "__main__":
  cli.run(main)
