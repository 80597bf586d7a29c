"""Runs unlearning methods from the original model of a workdir made by experiments.train.

  python -m experiments.unlearn --config=experiments/configs/synthetic.py:runlocal --workdir=W \
      --method=scrub --config.unlearn.hparams.scrub.lr=0.01

Each method's run is a stage named by its hyperparameters, ``W/unlearned/<method>-<hash>/``
(checkpoints, metrics.jsonl, final/, outputs/, done.json with the hyperparameters): the same
command again skips it, other hyperparameters make a new stage beside it. ``--method`` takes 'all',
names, or ``module:factory`` for your own method. Prints one line per method: forget / retain /
test accuracy, attack accuracy, wall seconds and the stage.
"""

from absl import flags
from ml_collections import config_flags

from mu_jax import cli
from mu_jax.experiment import Experiment

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The workdir holding the original model.")
_METHOD = flags.DEFINE_string("method", "all", "'all', a method name, a comma-separated list or "
                              "module:factory.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  # Every name and hyperparameter is checked before the workdir is touched.
  exp = Experiment.create(_CONFIG.value, _WORKDIR.value, methods=_METHOD.value)
  for method in exp.selected:
    rec = exp.unlearn_stage(method)
    s = rec["evaluation"]  # computed when the stage finished, kept in its done.json
    print(f"{method.name}: forget {s['forget_acc']:.4f} retain {s['retain_acc']:.4f} "
          f"test {s['test_acc']:.4f} attack {s['mia_attack_acc']:.4f} wall {rec['wall_s']:.1f} s "
          f"-> {rec['stage']}" + (f"  ({rec['message']})" if rec.get("halted") else ""))


if __name__ == "__main__":
  cli.run(main)
