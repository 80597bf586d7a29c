"""Runs unlearning methods from the original model of a workdir made by experiments.train.

  python -m experiments.unlearn --config=experiments/configs/synthetic.py:runlocal --workdir=W --method=all

Writes WORKDIR/unlearned/<method>/ (checkpoints, metrics.jsonl, final/, outputs/) and prints one
line per method: forget / retain / test accuracy, attack accuracy and wall seconds.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from mu_jax import runner
from mu_jax.methods import registry

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The workdir holding the original model.")
_METHOD = flags.DEFINE_string("method", "all", "'all', a method name or a comma-separated list.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  names = registry.parse_methods(_METHOD.value)  # before the workdir is touched
  exp = runner.Experiment.create(_CONFIG.value, _WORKDIR.value)
  for name in names:
    rec = exp.unlearn_stage(name)
    s = runner.quick_summary(exp.outputs(f"unlearned/{name}"), exp.task)
    print(f"{name}: forget {s['forget_acc']:.4f} retain {s['retain_acc']:.4f} test {s['test_acc']:.4f} "
          f"attack {s['mia_attack_acc']:.4f} wall {rec['wall_s']:.1f} s"
          + (f"  ({rec['message']})" if rec.get("halted") else ""))


if __name__ == "__main__":
  app.run(main)
