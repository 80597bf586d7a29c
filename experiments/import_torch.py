"""Imports a PyTorch ResNet-18 checkpoint as the original model of a workdir.

  python -m experiments.import_torch --config=experiments/configs/mufac.py \
      --config.data.data_dir=DIR --config.model.checkpoint=original.pth --workdir=W

The checkpoint is a torchvision ``resnet18(num_classes=N)`` state_dict (``.pth``/``.pt`` with the
``torch`` extra, ``.safetensors`` or ``.npz``); the config must name torchvision's ResNet-18
(``model.width=64``, ``model.stem=imagenet``, the MUFAC/MUCAC configs' default). The original stage
is named by the file's sha256 and the preprocessing the model expects (the data's resolution,
[0, 1] scaling, no mean/std). Give the same ``--config.model.checkpoint`` to experiments.benchmark,
experiments.train or experiments.unlearn on this workdir: they use the imported model instead of
training one. Prints the stage directory and the checkpoint's sha256.
"""

from absl import flags
from ml_collections import config_flags

from mu_jax import cli
from mu_jax.experiment import Experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the original stage goes.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if not _CONFIG.value.model.get("checkpoint"):
    raise flags.IllegalFlagValueError("give --config.model.checkpoint=PATH (the PyTorch checkpoint)")
  exp = Experiment.create(_CONFIG.value, _WORKDIR.value)
  rec = exp.train_stage("original")
  print(f"original: imported {rec['imported_from']} (sha256 {rec['checkpoint_sha256']}) -> "
        f"{exp.trained_stage('original').dir}")


if __name__ == "__main__":
  cli.run(main)
