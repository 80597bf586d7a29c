"""Exports a finished stage's ResNet-18 as a torchvision state_dict (the unlearned model, say).

  python -m experiments.export_torch --config=experiments/configs/synthetic.py:torchvision \
      --workdir=W --stage=unlearned/scrub-1a2b3c4d5e --out=/tmp/scrub.pth

``--stage`` is a stage directory of the workdir (``original-<hash>``, ``unlearned/<m>-<hash>``, as
results.json's ``stage`` column names them). ``--out`` ending in ``.pth``/``.pt`` is written with
``torch.save`` (needs the ``torch`` extra), ``.safetensors`` with safetensors, ``.npz`` with numpy. Load it in PyTorch with
``torchvision.models.resnet18(num_classes=N).load_state_dict(...)``. Prints the path.
"""

from absl import flags
from ml_collections import config_flags

from mu_jax import cli, models
from mu_jax.experiment import Experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The workdir holding the stage.")
_STAGE = flags.DEFINE_string("stage", None, "The stage directory, e.g. unlearned/scrub-1a2b3c4d5e.")
_OUT = flags.DEFINE_string("out", None, "The file to write (.pth, .pt or .npz).")
flags.mark_flags_as_required(["config", "workdir", "stage", "out"])


def main(argv):
  del argv
  exp = Experiment.create(_CONFIG.value, _WORKDIR.value)
  state = exp.load_state(exp.stage_named(_STAGE.value))
  models.save_torch_checkpoint(_OUT.value, {"params": state.params,
                                             "batch_stats": state.batch_stats})
  print(f"{_STAGE.value} -> {_OUT.value}")


if __name__ == "__main__":
  cli.run(main)
