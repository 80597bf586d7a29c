"""Times the main job (experiments.benchmark) stage by stage.

  python benchmarks/end_to_end.py --config=experiments/configs/synthetic.py --workdir=/tmp/e2e \
      --methods=all --out=/tmp/e2e.json

Each stage runs in a fresh workdir (nothing resumed) and is timed three ways: the whole call, the
training time without compilation (``wall_s`` of the stage's metrics.jsonl rows) and the XLA
compilation of its steps (``compile_s``); the evaluation (per-example outputs, every metric, the
files) is timed last. Prints a table and writes JSON.
"""

import json
import os
import time

from absl import app, flags
from ml_collections import config_flags

from mu_jax import cli
from mu_jax import experiment as engine
from mu_jax.pipelines import benchmark

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "A new directory for the run.")
_METHODS = flags.DEFINE_string("methods", "all", "'all' or a comma-separated list.")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if os.path.exists(os.path.join(_WORKDIR.value, "config.json")):
    raise app.UsageError(f"{_WORKDIR.value} already holds a run; give a new --workdir")
  stages = []
  t = time.perf_counter()
  exp = engine.Experiment.create(_CONFIG.value, _WORKDIR.value, methods=_METHODS.value)
  stages.append({"stage": "data + workdir", "call_s": time.perf_counter() - t})
  for stage in engine.TRAINED:
    t = time.perf_counter()
    rec = exp.train_stage(stage, progress=False)
    stages.append({"stage": stage, "call_s": time.perf_counter() - t, "train_s": rec["wall_s"],
                   "compile_s": rec["compile_s"], "examples": rec["examples"]})
  for method in exp.selected:
    t = time.perf_counter()
    rec = exp.unlearn_stage(method)
    stages.append({"stage": method.name, "call_s": time.perf_counter() - t, "train_s": rec["wall_s"],
                   "compile_s": rec["compile_s"], "examples": rec["examples"]})
  t = time.perf_counter()
  rows, outputs = benchmark.evaluate_stages(exp, [exp.method_stage(m) for m in exp.selected])
  benchmark.write_tables(exp, os.path.join(exp.path, "results"), rows, outputs)
  stages.append({"stage": "evaluation", "call_s": time.perf_counter() - t})
  total = sum(s["call_s"] for s in stages)
  print(f"{'stage':>18} {'call s':>8} {'train s':>8} {'compile s':>9} {'examples':>9}")
  for s in stages:
    print(f"{s['stage']:>18} {s['call_s']:8.1f} {s.get('train_s', float('nan')):8.1f} "
          f"{s.get('compile_s', float('nan')):9.1f} {s.get('examples', 0):9,}")
  print(f"{'total':>18} {total:8.1f}   (load average at the end: {os.getloadavg()[0]:.1f})")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"stages": stages, "total_s": total, "loadavg": os.getloadavg()}, f, indent=1)


if __name__ == "__main__":
  cli.run(main)
