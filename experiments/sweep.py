"""Tunes methods against the retrained model on validation persons, then runs the chosen values.

  python -m experiments.sweep --config=experiments/configs/synthetic.py:runlocal --workdir=W \
      --methods=finetune,scrub,neggrad_plus,salun

For each method, the candidates of ``config.sweep.grid.<method>`` (by default its learning rate
from 0.3 to 30 times its default) unlearn validation persons drawn from retain, never the
forget set, as one stacked run, and are scored against a model retrained without those persons
(``config.sweep.criterion``: the mean gap over forget accuracy, attack accuracy and test accuracy,
or tug of war). The chosen values then run on the forget set as an ordinary method stage, beside
the default one. Prints the plan, one line per method (candidates, chosen values and score), and
each candidate's numbers; ``W/sweep/<method>-<hash>/done.json`` keeps them. Trains the original and
retrained models first if the workdir lacks them.
"""

from absl import flags
from ml_collections import config_flags

from mu_jax import cli
from mu_jax.experiment import Experiment
from mu_jax.pipelines import sweep

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's directory.")
_METHODS = flags.DEFINE_string("methods", None, "Methods to tune: names, comma-separated, or "
                               "module:factory.")
flags.mark_flags_as_required(["config", "workdir", "methods"])


def main(argv):
  del argv
  # A bad sweep section or validation request fails before the workdir is written.
  settings = sweep.Settings.from_config(_CONFIG.value)
  exp = Experiment.create(_CONFIG.value, _WORKDIR.value, methods=_METHODS.value,
                          check=lambda data: sweep.validation_persons(data, settings))
  for m in sweep.run(exp, exp.selected, progress=True):
    print(f"{m['method']} (tuned) -> {m['stage']}")
    for c in m["candidates"]:
      print(f"  {c['hparams']}: distance {c['distance']:.4f} tow {c['tow']:.4f} forget "
            f"{c['forget_acc']:.3f} retain {c['retain_acc']:.3f} test {c['test_acc']:.3f} attack "
            f"{c['mia_attack_acc']:.3f}" + ("  [halted]" if c["halted"] else "")
            + ("  <- chosen" if c["hparams"] == m["chosen"] else ""))


if __name__ == "__main__":
  cli.run(main)
