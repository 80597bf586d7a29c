"""Face-retrieval identity unlearning: original and retrained embedding models, methods, table, plot.

  python -m experiments.retrieval --config=experiments/configs/retrieval.py:runlocal --workdir=/tmp/w

Layout (``WORKDIR/retrieval`` holds this experiment's own config.json and manifest.json, so it can
share a workdir with the classification benchmark)::

  WORKDIR/retrieval/{original,retrained}/      checkpoints, metrics.jsonl, done.json, outputs/*.npz
  WORKDIR/retrieval/unlearned/<method>/        the driver's checkpoints and metrics, done.json
  WORKDIR/results/retrieval.{json,csv,md}      the table (original and retrained as reference rows)
  WORKDIR/results/retrieval_pca.png            forget and retain embeddings in 2-D, per model

Running the same command again resumes: finished models and methods are skipped (a method whose
hyperparameters changed runs again from the original), an interrupted one continues from its last
checkpoint. ``outputs/train.npz`` and ``outputs/heldout.npz`` hold every image's embedding.
"""

import os
import shutil

from absl import app, flags, logging
from ml_collections import config_flags

from mu_jax import checkpoints
from mu_jax import methods as driver
from mu_jax.data.splits import DataError, SplitManifest
from mu_jax.retrieval import data as rdata
from mu_jax.retrieval import evaluate as reval
from mu_jax.retrieval import methods as rmethods
from mu_jax.retrieval import model as rmodel
from mu_jax.retrieval import train as rtrain
from mu_jax.runner import to_dict
from mu_jax.training.fit import TrainConfig

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
_METHODS = flags.DEFINE_string("methods", None, "Comma-separated methods or 'all' (default: the "
                               "config's unlearn.methods).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Start a workdir made with another config again.")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show progress bars while training.")
flags.mark_flags_as_required(["config", "workdir"])

STAGES = ("original", "retrained")


def _prepare(cfg, root: str, overwrite: bool) -> rdata.RetrievalData:
  """Reads the data, writes or checks ``root``'s config.json and manifest.json."""
  data = rdata.load(cfg["data"])
  checkpoints.prepare_workdir(root, cfg, overwrite=overwrite)
  path = os.path.join(root, "manifest.json")
  manifest = data.dataset.manifest
  if os.path.exists(path):
    old = SplitManifest.load(path)
    if old.content_hash != manifest.content_hash:
      raise DataError(f"{path} holds split {old.content_hash} but the data now gives "
                      f"{manifest.content_hash}: the files changed; use a new --workdir")
  else:
    manifest.save(path)
  return data


def _model(cfg, num_classes: int) -> rmodel.EmbeddingNet:
  m = cfg["model"]
  return rmodel.create_embedding_model(m["trunk"], num_classes, embed_dim=m["embed_dim"],
                                       head=m["head"], scale=m["scale"], margin=m["margin"],
                                       width=m["width"], stem=m["stem"], dtype=m["dtype"])


def _train_config(cfg, stage: str) -> TrainConfig:
  t = dict(cfg["train"])
  if stage == "retrained":
    t.update(cfg.get("retrain") or {})
  return TrainConfig.from_config(t)


def _row(name: str, state, data: rdata.RetrievalData, cfg, stage_dir: str) -> dict:
  return {"model": name, **reval.evaluate_state(
      state, data.train, data.forget_identities, data.heldout, seed=cfg["eval"]["seed"],
      batch_size=cfg["train"]["eval_batch_size"], outputs_dir=os.path.join(stage_dir, "outputs"))}


def _run_method(name: str, hparams: dict, original, data, cfg, stage_dir: str) -> dict:
  """Runs (or resumes, or skips) one method; returns its table row."""
  done = os.path.join(stage_dir, "done.json")
  hp_path = os.path.join(stage_dir, "hparams.json")
  if os.path.exists(hp_path) and checkpoints.read_json(hp_path) != hparams:
    # Checkpoints of other hyperparameters cannot be resumed: this method starts again.
    logging.info("%s: hyperparameters changed; running it again", name)
    shutil.rmtree(stage_dir)
  if os.path.exists(done):
    return checkpoints.read_json(done)["row"]
  checkpoints.write_json(hp_path, hparams)
  unlearner = rmethods.create(name, **hparams)
  result = driver.run_detailed(unlearner, original, data.unlearning_splits(), driver.RunConfig(
      batch_size=cfg["unlearn"]["batch_size"], seed=cfg["seed"], task="multiclass",
      log_splits=("forget", "retain"), eval_batch_size=cfg["train"]["eval_batch_size"],
      checkpoint_dir=stage_dir, progress=True))
  row = {**_row(name, result.state, data, cfg, stage_dir), "wall_s": result.wall_s,
         "examples": result.examples, "halted": result.halted}
  checkpoints.write_json(done, {"row": row, "message": result.message, "hparams": hparams})
  return row


def main(argv):
  del argv
  cfg = to_dict(_CONFIG.value)
  root = os.path.join(_WORKDIR.value, "retrieval")
  data = _prepare(cfg, root, _OVERWRITE.value)
  model = _model(cfg, data.num_classes)
  print(f"{data.dataset.manifest.dataset}: {len(data.train)} train images of "
        f"{data.num_classes} persons ({len(data.forget_identities)} forgotten, "
        f"{len(data.forget)} images), {len(data.heldout)} held-out images")
  rows, records = [], {}
  for stage in STAGES:
    sdir = os.path.join(root, stage)
    ex = data.train if stage == "original" else data.retain
    records[stage] = rtrain.train_stage(model, ex, _train_config(cfg, stage), seed=cfg["seed"],
                                        stage_dir=sdir, eval_sets={"heldout": data.heldout},
                                        progress=_PROGRESS.value)
  states = {s: rtrain.load_stage(model, data.train if s == "original" else data.retain,
                                 _train_config(cfg, s), os.path.join(root, s)) for s in STAGES}
  for stage in STAGES:
    rows.append({**_row(stage, states[stage], data, cfg, os.path.join(root, stage)),
                 "wall_s": records[stage]["wall_s"], "examples": records[stage]["examples"]})
  names = rmethods.parse_methods(_METHODS.value or cfg["unlearn"]["methods"])
  for name in names:
    hp = dict(cfg["unlearn"]["hparams"].get(name, {}))
    rows.append(_run_method(name, hp, states["original"], data, cfg,
                            os.path.join(root, "unlearned", name)))
    print(f"{name}: forget R@1 {rows[-1]['forget_rank1']:.3f}, retain mAP {rows[-1]['retain_map']:.3f}")
  # Two costs against retraining: wall time (machine-dependent, includes compiling) and examples
  # fed to training steps (forward + backward passes; machine-independent).
  retrain = rows[1]
  for r in rows:
    r["cost_vs_retrain"] = r["wall_s"] / retrain["wall_s"] if retrain["wall_s"] else float("nan")
    r["examples_vs_retrain"] = (r["examples"] / retrain["examples"] if retrain["examples"]
                                else float("nan"))
  results = os.path.join(_WORKDIR.value, "results")
  paths = reval.write_results(results, rows, cfg, data.dataset.manifest.content_hash)
  if cfg["eval"]["plot"]:
    panels = []
    for r in rows:
      stage = r["model"] if r["model"] in STAGES else os.path.join("unlearned", r["model"])
      sdir = os.path.join(root, stage)
      out = checkpoints.load_outputs(os.path.join(sdir, "outputs"), "train")
      panels.append((r["model"], out["embedding"], out["identity"]))
    paths["png"] = reval.pca_plot(os.path.join(results, "retrieval_pca.png"), panels,
                                  data.forget_identities, seed=cfg["eval"]["seed"])
  print(reval.markdown_table(rows))
  print("wrote " + ", ".join(paths.values()))


if __name__ == "__main__":
  app.run(main)
