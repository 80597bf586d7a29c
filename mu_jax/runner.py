"""What the experiment scripts share: a config and a workdir in, data, model and trained stages out.

``Experiment.create(config, workdir)`` reads the data set, saves ``config.json`` and
``manifest.json`` (refusing a workdir made with another config), and builds the model;
``train_stage`` trains the original (on D_train) or retrained (on D_retain) model, resuming from
the last checkpoint and skipping a stage that finished.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax
import ml_collections

from mu_jax import checkpoints, parallel
from mu_jax.data import loader
from mu_jax.data.splits import DataError, Examples, FaceDataset, SplitManifest
from mu_jax.models import create_model
from mu_jax.training import evaluate, fit as fitlib
from mu_jax.training.state import TrainState

STAGES = ("original", "retrained")


def to_dict(config: Any) -> dict[str, Any]:
  return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)


@dataclasses.dataclass
class Experiment:
  """A config, its workdir, its data set and its model."""

  config: dict[str, Any]
  workdir: str
  dataset: FaceDataset
  model: Any

  @classmethod
  def create(cls, config: Any, workdir: str, overwrite: bool = False) -> "Experiment":
    """Loads the data and prepares the workdir (see the module docstring).

    Raises:
      DataError: the data cannot be read or the split leaks identities.
      WorkdirError: the workdir holds another config's run and ``overwrite`` is false.
    """
    cfg = to_dict(config)
    dataset = loader.load_dataset(cfg["data"])
    dataset.manifest.check()
    checkpoints.prepare_workdir(workdir, cfg, overwrite=overwrite)
    path = os.path.join(workdir, "manifest.json")
    if os.path.exists(path):
      old = SplitManifest.load(path)
      if old.content_hash != dataset.manifest.content_hash:
        raise DataError(f"{path} holds split {old.content_hash} but the data now gives "
                        f"{dataset.manifest.content_hash}: the files changed; use a new --workdir")
    else:
      dataset.manifest.save(path)
    m = cfg["model"]
    model = create_model(m["name"], dataset.num_classes, width=m.get("width"),
                         stem=m.get("stem", "imagenet"), dtype=m.get("dtype", "float32"))
    return cls(cfg, workdir, dataset, model)

  @property
  def task(self) -> str:
    return self.dataset.task

  @property
  def seed(self) -> int:
    return int(self.config.get("seed", 0))

  def split(self, name: str) -> Examples:
    return self.dataset.split(name)

  def train_config(self, stage: str) -> fitlib.TrainConfig:
    cfg = dict(self.config["train"])
    if stage == "retrained":
      cfg.update(self.config.get("retrain") or {})
    return fitlib.TrainConfig.from_config(cfg)

  def stage_dir(self, stage: str) -> str:
    return checkpoints.stage_dir(self.workdir, stage)

  def is_done(self, stage: str) -> bool:
    return os.path.exists(os.path.join(self.stage_dir(stage), "done.json"))

  def train_stage(self, stage: str, progress: bool = True, **fit_kwargs) -> dict[str, Any]:
    """Trains (or resumes, or skips) ``original`` or ``retrained``; returns its done.json record."""
    if stage not in STAGES:
      raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    done = os.path.join(self.stage_dir(stage), "done.json")
    if os.path.exists(done):
      return checkpoints.read_json(done)
    data = self.split("train" if stage == "original" else "retain")
    # Both models start from the same initialisation, as the reference does with one seed.
    result = fitlib.fit(self.model, data, self.train_config(stage), task=self.task, seed=self.seed,
                        stage_dir=self.stage_dir(stage), eval_sets={"test": self.split("test")},
                        progress=progress, **fit_kwargs)
    record = {"stage": stage, "wall_s": result.wall_s, "examples": result.examples,
              "resumed_from_epoch": result.resumed_from_epoch, "train_size": len(data),
              "epochs": self.train_config(stage).epochs}
    # Wall time over all runs of this stage: add what earlier (interrupted) runs logged.
    checkpoints.write_json(done, record)
    return record

  def template_state(self, stage: str = "original") -> TrainState:
    data = self.split("train" if stage == "original" else "retain")
    cfg = self.train_config(stage)
    batch = min(cfg.batch_size, len(data))
    return fitlib.new_state(self.model, jax.random.key(0), data.images.shape[1:], cfg,
                            max(1, len(data) // max(batch, 1)))

  def load_state(self, stage: str) -> TrainState:
    """The final checkpoint of a finished stage (host arrays)."""
    if not self.is_done(stage):
      raise checkpoints.CheckpointError(f"{self.stage_dir(stage)} has not finished training; run "
                                        "experiments.train first")
    ckpt = checkpoints.Checkpointer(os.path.join(self.stage_dir(stage), "checkpoints"))
    state = ckpt.restore(self.template_state(stage))
    ckpt.close()
    return state

  def save_outputs(self, stage: str, state: TrainState, splits: tuple[str, ...] = (
      "train", "retain", "forget", "test", "unseen")) -> dict[str, dict[str, Any]]:
    """Per-example outputs of every split, saved as ``<stage>/outputs/<split>.npz``."""
    out = {}
    eval_bs = int(self.config["train"].get("eval_batch_size", 256))
    state = parallel.replicate(state)
    for s in splits:
      o = evaluate.predict(state, self.split(s), task=self.task, batch_size=eval_bs)
      checkpoints.save_outputs(os.path.join(self.stage_dir(stage), "outputs"), s, o)
      out[s] = o
    return out
