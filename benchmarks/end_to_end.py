"""Times the main job (experiments.benchmark) cold and warm, optionally beside another revision.

  python benchmarks/end_to_end.py --config=experiments/configs/synthetic.py:runlocal \
      --compare=733140e --out=/tmp/e2e.json

Each run is a subprocess in a new workdir. "Cold" runs with an empty ``$XDG_CACHE_HOME`` (no
compiled programs, no native kernels: they are built first where used), "warm" runs the same
command again with the cache the cold run left. With ``--compare=REV`` the same command runs from a
git worktree of REV (made under the scratch directory) and the four runs interleave (REV cold, this
tree cold, REV warm, this tree warm), so the ratios compare one machine at one time;
``--nocompare_warm`` leaves out REV's warm run. The current tree's stage
breakdown (compile, training, evaluation and other seconds, ``results/costs.json``) is printed
from its cold and warm runs. Prints a table and writes JSON.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from mu_jax import costs

_CONFIG = flags.DEFINE_string("config", "experiments/configs/synthetic.py",
                              "The config argument of experiments.benchmark.")
_METHODS = flags.DEFINE_string("methods", "all", "The methods argument of experiments.benchmark.")
_COMPARE = flags.DEFINE_string("compare", None, "A git revision to time side by side.")
_SCRATCH = flags.DEFINE_string("scratch", None, "Where workdirs, caches and the worktree go "
                               "(default: a new temporary directory, removed at the end).")
_OUT = flags.DEFINE_string("out", None, "Where to write the JSON.")
_COMPARE_WARM = flags.DEFINE_bool("compare_warm", True, "Also run REV warm (--nocompare_warm: "
                                  "REV cold only, for configs whose runs take long).")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tree: str, label: str, cache: str, scratch: str) -> dict:
  """One ``experiments.benchmark`` call from ``tree`` with ``XDG_CACHE_HOME=cache``."""
  workdir = os.path.join(scratch, f"work_{label}")
  env = dict(os.environ, XDG_CACHE_HOME=cache, PYTHONPATH=tree)
  cmd = [sys.executable, "-m", "experiments.benchmark", f"--config={_CONFIG.value}",
         f"--workdir={workdir}", f"--methods={_METHODS.value}"]
  t = time.perf_counter()
  proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t
  if proc.returncode:
    raise RuntimeError(f"{label} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  out = {"run": label, "wall_s": round(wall, 1), "loadavg": os.getloadavg()[0]}
  path = os.path.join(workdir, "results", "costs.json")
  if os.path.exists(path):
    with open(path) as f:
      out["stages"] = json.load(f)
  return out


def main(argv):
  del argv
  scratch = _SCRATCH.value or tempfile.mkdtemp(prefix="mu_jax_e2e_")
  os.makedirs(scratch, exist_ok=True)
  trees = {"this tree": _ROOT}
  if _COMPARE.value:
    other = os.path.join(scratch, "compare_tree")
    subprocess.run(["git", "-C", _ROOT, "worktree", "add", "--detach", other, _COMPARE.value],
                   check=True, capture_output=True)
    trees = {_COMPARE.value: other, **trees}
  try:
    runs = []
    for phase in ("cold", "warm"):
      for name, tree in trees.items():
        if phase == "warm" and name != "this tree" and not _COMPARE_WARM.value:
          continue
        label = f"{name.replace(' ', '_')}_{phase}"
        runs.append(dict(_run(tree, label, os.path.join(scratch, f"cache_{name}".replace(" ", "_")),
                              scratch), tree=name, phase=phase))
        print(f"{name:>12} {phase}: {runs[-1]['wall_s']:7.1f} s", flush=True)
  finally:
    if _COMPARE.value:
      subprocess.run(["git", "-C", _ROOT, "worktree", "remove", "--force", other],
                     capture_output=True)
  wall = {(r["tree"], r["phase"]): r["wall_s"] for r in runs}
  print(f"\n{'revision':>12} {'cold s':>8} {'warm s':>8} {'warm/cold':>9}")
  for name in trees:
    c, w = wall[(name, "cold")], wall.get((name, "warm"), float("nan"))
    print(f"{name:>12} {c:8.1f} {w:8.1f} {w / c:9.2f}")
  if _COMPARE.value:
    for phase in ("cold", "warm") if _COMPARE_WARM.value else ("cold",):
      print(f"{phase}: {_COMPARE.value} / this tree = "
            f"{wall[(_COMPARE.value, phase)] / wall[('this tree', phase)]:.2f}x")
  for r in runs:
    if r["tree"] == "this tree" and "stages" in r:
      print(f"\nthis tree, {r['phase']}:\n{costs.format_table(r['stages'])}")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"config": _CONFIG.value, "methods": _METHODS.value, "runs": runs}, f, indent=1)
  if not _SCRATCH.value:
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
