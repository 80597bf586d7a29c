"""Times K models trained stacked as one program against the same K trained one after another.

  python benchmarks/population.py --out=/tmp/population.json
  python benchmarks/population.py --ks=4,16 --convolutions=batched,installed

For each K of ``--ks`` (default 4, 16, 32), K members of the config's model (default: the
synthetic runlocal config's small CNN) each train on a random half of the training examples with
their own seed, as the shadow models of a membership-inference attack do:

* ``stacked``: :func:`mu_jax.training.population.train_population`, once per convolution plan of
  ``--convolutions`` (``batched``: XLA's grouped convolution over the members; ``installed``:
  mu_jax's per-member CPU convolution plans, run one member after another under ``vmap``);
* ``sequential``: :func:`mu_jax.training.fit.fit` on each member's subset in turn.

The variants run interleaved for each K (their order alternates between Ks, so a slow spell of a
shared machine does not always hit the same one). Every wall time is the whole call: model
initialisation, compilation, training, the per-epoch checkpoints and metrics rows. ``compiles``
counts XLA backend compilations during a call (the stacked run compiles its step once for the
whole population, plus one initialisation program run once per member; ``fit`` compiles both again
for every member), ``step_compile_s`` the time compiling the train step(s), ``loop_s`` the
training loops alone (the metrics rows' ``epoch_s`` summed). The table prints members per second
of each variant and the ratio stacked / sequential, over the whole call and over the training
loops alone, and the JSON (``--out``) holds every number
and the largest parameter difference between a stacked member and its sequential twin (they agree
to float32 rounding).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mu_jax import runtime  # noqa: E402
from mu_jax.data import loader  # noqa: E402
from mu_jax.models import create_model  # noqa: E402
from mu_jax.training import fit  # noqa: E402
from mu_jax.training import population  # noqa: E402

runtime.configure_cpu()  # the settings the experiment scripts make, before XLA starts

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "..", "experiments", "configs",
                           "synthetic.py:runlocal"), "ml_collections config file.")
_KS = flags.DEFINE_list("ks", ["4", "16", "32"], "Population sizes.")
_CONVOLUTIONS = flags.DEFINE_list(
    "convolutions", ["auto"], "Convolution plans of the stacked runs (auto, batched, installed).")
_FRACTION = flags.DEFINE_float("fraction", 0.5, "Fraction of the training examples per member.")
_SEQUENTIAL = flags.DEFINE_bool("sequential", True,
                                "Also train the members one after another (the baseline).")
_OUT = flags.DEFINE_string("out", os.path.join(tempfile.gettempdir(), "population.json"),
                           "Where the JSON goes.")


class CompileCounter:
  """Counts XLA backend compilations (jax.monitoring's compile-duration events)."""

  def __init__(self):
    self.count = 0
    jax.monitoring.register_event_duration_secs_listener(self._on_event)

  def _on_event(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration":
      self.count += 1


def _cpu_model() -> str:
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return platform.processor()
  fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
  name = fields.get("Model name", "").strip()
  avx512 = "avx512f" in fields.get("Flags", "").split()
  return f"{name}, {fields.get('CPU(s)', '?').strip()} CPUs, AVX-512 {'yes' if avx512 else 'no'}"


def _loop_seconds(stage_dir: str) -> float:
  """The training loops' seconds of a stage: its metrics rows' ``epoch_s`` summed.

  Both trainers time an epoch from its first step to its last result, so this excludes model
  initialisation, compilation, checkpoints and metrics files.
  """
  with open(os.path.join(stage_dir, "metrics.jsonl")) as f:
    return sum(json.loads(line)["epoch_s"] for line in f if line.strip())


def _run_stacked(model, train, recipe, task, seeds, masks, convolution, counter):
  root = tempfile.mkdtemp(prefix="population_")
  try:
    before, t = counter.count, time.time()
    res = population.train_population(model, train, recipe, task=task, seeds=seeds, masks=masks,
                                      stage_dir=root, convolution=convolution, progress=False)
    wall = time.time() - t
    return {"wall_s": wall, "loop_s": _loop_seconds(root), "step_compile_s": res.compile_s,
            "compiles": counter.count - before, "examples": int(sum(res.examples))}, res.states
  finally:
    shutil.rmtree(root, ignore_errors=True)


def _run_sequential(model, train, recipe, task, seeds, masks, counter):
  root = tempfile.mkdtemp(prefix="sequential_")
  try:
    before, t = counter.count, time.time()
    params, compile_s, loop_s, examples = [], 0.0, 0.0, 0
    for k, seed in enumerate(seeds):
      stage = os.path.join(root, str(k))
      res = fit.fit(model, train.subset(np.flatnonzero(masks[k])), recipe, task=task, seed=seed,
                    stage_dir=stage, progress=False)
      with open(os.path.join(stage, "metrics.jsonl")) as f:
        compile_s += json.loads(f.readline()).get("compile_s", 0.0)
      loop_s += _loop_seconds(stage)
      examples += res.examples
      params.append(jax.tree.map(np.asarray, res.state.params))
    wall = time.time() - t
    return {"wall_s": wall, "loop_s": loop_s, "step_compile_s": compile_s,
            "compiles": counter.count - before, "examples": examples}, params
  finally:
    shutil.rmtree(root, ignore_errors=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  cfg = _CONFIG.value
  dataset = loader.load_dataset(cfg.data)
  train = dataset.split("train")
  task = dataset.task
  model = create_model(cfg.model.name, dataset.num_classes, width=cfg.model.width,
                       stem=cfg.model.get("stem", "imagenet"))
  recipe = fit.TrainConfig.from_config(cfg.train.to_dict())
  convolutions = [population.resolve_convolution(c) for c in _CONVOLUTIONS.value]
  counter = CompileCounter()
  rows = []
  t_all = time.time()
  for i, k in enumerate(int(v) for v in _KS.value):
    rng = np.random.default_rng([int(cfg.seed), k])
    masks = (rng.random((k, len(train))) < _FRACTION.value).astype(np.int8)
    seeds = [int(cfg.seed) * 1000 + j for j in range(k)]
    variants = [f"stacked_{c}" for c in convolutions] + ["sequential"] * _SEQUENTIAL.value
    if i % 2:
      variants.reverse()
    row, states = {"k": k}, {}
    for v in variants:
      if v == "sequential":
        row[v], states[v] = _run_sequential(model, train, recipe, task, seeds, masks, counter)
      else:
        row[v], states[v] = _run_stacked(model, train, recipe, task, seeds, masks,
                                         v[len("stacked_"):], counter)
      r = row[v]
      r["members_per_s"] = k / r["wall_s"]
      r["members_per_s_loop"] = k / r["loop_s"]
      logging.warning("K=%d %s: %s", k, v, r)
    for c in convolutions if _SEQUENTIAL.value else ():
      s = row[f"stacked_{c}"]
      s["ratio"] = s["members_per_s"] / row["sequential"]["members_per_s"]
      s["ratio_loop"] = s["members_per_s_loop"] / row["sequential"]["members_per_s_loop"]
      s["max_param_diff_vs_sequential"] = max(
          float(np.max(np.abs(np.asarray(a)[j] - np.asarray(b))))
          for j, p in enumerate(states["sequential"])
          for a, b in zip(jax.tree.leaves(states[f"stacked_{c}"].params), jax.tree.leaves(p)))
    rows.append(row)
  out = {"cpu": _cpu_model(), "device": str(jax.devices()[0].device_kind),
         "devices": jax.device_count(), "model": f"{cfg.model.name} width {cfg.model.width}",
         "image_size": int(train.images.shape[1]), "train_examples": len(train),
         "member_fraction": _FRACTION.value, "recipe": dataclasses.asdict(recipe),
         "auto_convolution": population.AUTO_CONVOLUTION, "rows": rows,
         "total_s": time.time() - t_all}
  print(f"{len(train)} train examples, each member on a random {_FRACTION.value:.0%}; "
        f"{out['model']}, {out['image_size']}px, {recipe.epochs} epochs, batch "
        f"{recipe.batch_size}; {out['devices']} {out['device']} device(s); {out['cpu']}")
  print("wall: the whole call; loop: the training loops only (no initialisation, compilation, "
        "checkpoints); ratio: stacked / sequential members per second")
  print(f"{'K':>4} {'variant':<18}{'wall s':>8}{'members/s':>11}{'ratio':>7}{'loop s':>8}"
        f"{'members/s':>11}{'ratio':>7}{'compile s':>11}{'compiles':>10}")
  for row in rows:
    for v in [f"stacked_{c}" for c in convolutions] + ["sequential"] * _SEQUENTIAL.value:
      r = row[v]
      ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
      ratio_loop = f"{r['ratio_loop']:.2f}" if "ratio_loop" in r else "-"
      print(f"{row['k']:>4} {v:<18}{r['wall_s']:>8.1f}{r['members_per_s']:>11.3f}{ratio:>7}"
            f"{r['loop_s']:>8.1f}{r['members_per_s_loop']:>11.3f}{ratio_loop:>7}"
            f"{r['step_compile_s']:>11.1f}{r['compiles']:>10}")
  print(f"total {out['total_s']:.0f} s")
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(out, f, indent=1)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
