"""Evaluates every finished model of a workdir (or one stage) and writes WORKDIR/results.

  python -m experiments.evaluate --config=experiments/configs/synthetic.py --workdir=W
  python -m experiments.evaluate --config=... --workdir=W --stage=unlearned/scrub

Per-example outputs are recomputed only when missing; results go to WORKDIR/results (or, for one
stage, are printed as JSON).
"""

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from mu_jax import benchmark, runner
from mu_jax.evaluation import plots, report
from mu_jax.methods import registry

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The workdir to evaluate.")
_STAGE = flags.DEFINE_string("stage", None, "Only this stage (original, retrained, unlearned/<m>).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  exp = runner.Experiment.create(_CONFIG.value, _WORKDIR.value)
  done = [m for m in registry.names()
          if os.path.exists(os.path.join(exp.stage_dir(f"unlearned/{m}"), "done.json"))]
  rows, outputs = benchmark.evaluate_workdir(exp, done)
  if _STAGE.value:
    name = _STAGE.value.split("/")[-1]
    print(json.dumps(next(r for r in rows if r["model"] == name), indent=1))
    return
  results = os.path.join(exp.workdir, "results")
  report.write_results(results, rows, config=exp.config, manifest_hash=exp.dataset.manifest.content_hash)
  plots.write_plots(results, outputs, rows)
  print(report.markdown_table(rows))


if __name__ == "__main__":
  app.run(main)
