"""Times SISA shard training stacked with vmap against one shard at a time.

  python benchmarks/sisa_vmap.py --config=experiments/configs/synthetic.py:runlocal \
      --shards=5 --slices=4 --out=/tmp/sisa_vmap.json

For each mode it compiles every step shape first (reported as ``compile_s``), then trains all S
shards through every slice from scratch ``--repeats`` times in fresh directories (``train_s`` is the
fastest), and serves one single-identity request whose first touched slice is the last one
(``retrain_one_s``: stacked mode runs its idle lanes too, see mu_jax/sisa/train.py). It prints a
table and writes the numbers, plus the largest parameter difference between the two modes' models
(they agree to float32 rounding), as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from flax import serialization  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from mu_jax import runtime, sisa  # noqa: E402
from mu_jax.data import loader  # noqa: E402
from mu_jax.models import create_model  # noqa: E402
from mu_jax.training import fit  # noqa: E402

runtime.configure_cpu()  # the settings the experiment scripts make, before XLA starts

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "..", "experiments", "configs",
                           "synthetic.py:runlocal"), "ml_collections config file.")
_SHARDS = flags.DEFINE_integer("shards", 5, "S.")
_SLICES = flags.DEFINE_integer("slices", 4, "R.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Constituent batch size (official SISA: 16).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Timed trainings per mode (the fastest is kept).")
_OUT = flags.DEFINE_string("out", os.path.join(tempfile.gettempdir(), "sisa_vmap.json"),
                           "Where the JSON goes.")


def _late_identity(trainer: sisa.ShardTrainer) -> str:
  """A person whose first image lies in the last slice of shard 0."""
  part = trainer.partition
  start = part.slice_end(0, part.num_slices - 2) if part.num_slices > 1 else 0
  first = {}
  for pos, e in enumerate(part.shards[0]):
    first.setdefault(trainer.identity(e), pos)
  return next(p for p, pos in first.items() if pos >= start)


def _time_mode(mode, model, train, part, recipe, task, seed, repeats):
  roots = []
  try:
    root = tempfile.mkdtemp(prefix=f"sisa_{mode}_")
    roots.append(root)
    trainer = sisa.ShardTrainer(model, train, part, recipe, task=task, seed=seed, root=root, mode=mode)
    t = time.time()
    trainer.warmup()
    compile_s = time.time() - t
    walls, examples = [], 0
    for k in range(repeats):
      if k:
        root = tempfile.mkdtemp(prefix=f"sisa_{mode}_")
        roots.append(root)
        trainer = sisa.ShardTrainer(model, train, part, recipe, task=task, seed=seed, root=root,
                                    mode=mode)
      rep = trainer.train()
      walls.append(rep.wall_s)
      examples = rep.examples
    request = sisa.make_request(trainer, identities=[_late_identity(trainer)])
    trainer.warmup(frozenset(request.example_ids), shards=part.locate(request.example_ids))
    report = sisa.unlearn_request(trainer, request, f"bench-{mode}")
    states = [serialization.to_state_dict(s) for s in trainer.final_states()]
    return {"mode": trainer.mode, "lanes": trainer.lanes, "compile_s": compile_s,
            "train_s": min(walls), "train_s_all": walls, "examples": examples,
            "examples_per_s": examples / min(walls), "retrain_one_s": report.wall_s,
            "retrain_one_examples": report.examples, "retrain_one_touched": report.touched}, states
  finally:
    for r in roots:
      shutil.rmtree(r, ignore_errors=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  cfg = _CONFIG.value
  dataset = loader.load_dataset(cfg.data)
  train = dataset.split("train")
  model = create_model(cfg.model.name, dataset.num_classes, width=cfg.model.width,
                       stem=cfg.model.get("stem", "imagenet"))
  recipe = dataclasses.replace(fit.TrainConfig.from_config(cfg.train.to_dict()),
                               batch_size=_BATCH.value)
  part = sisa.make_partition(train.example_ids, train.identities, _SHARDS.value, _SLICES.value,
                             "identity", int(cfg.seed))
  results, states = {}, {}
  for mode in ("sequential", "stacked"):
    results[mode], states[mode] = _time_mode(mode, model, train, part, recipe, dataset.task,
                                             int(cfg.seed), _REPEATS.value)
  diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for sa, sb in zip(states["sequential"], states["stacked"])
             for a, b in zip(jax.tree.leaves(sa["params"]), jax.tree.leaves(sb["params"])))
  out = {"device": str(jax.devices()[0].device_kind), "devices": jax.device_count(),
         "shards": _SHARDS.value, "slices": _SLICES.value, "batch_size": _BATCH.value,
         "train_examples": len(train), "model": f"{cfg.model.name} width {cfg.model.width}",
         "image_size": int(train.images.shape[1]), "epochs": recipe.epochs,
         "max_param_diff_stacked_vs_sequential": diff, "modes": results,
         "speedup_stacked_train": results["sequential"]["train_s"] / results["stacked"]["train_s"]}
  print(f"SISA training, {_SHARDS.value} shards x {_SLICES.value} slices, {len(train)} examples, "
        f"{out['model']}, {out['image_size']}px, batch {_BATCH.value}, {out['devices']} "
        f"{out['device']} device(s)")
  print(f"{'mode':<11}{'lanes':>6}{'compile s':>11}{'train s':>9}{'ex/s':>9}{'retrain 1 shard s':>19}")
  for mode, r in results.items():
    print(f"{mode:<11}{r['lanes']:>6}{r['compile_s']:>11.2f}{r['train_s']:>9.2f}"
          f"{r['examples_per_s']:>9.0f}{r['retrain_one_s']:>19.2f}")
  print(f"stacked training speed-up: {out['speedup_stacked_train']:.2f}x; largest parameter "
        f"difference between the modes: {diff:.2e}")
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(out, f, indent=1)
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
