"""What the experiment scripts share: a config and a workdir in, data, model and trained stages out.

``Experiment.create(config, workdir)`` reads the data set, saves ``config.json`` and
``manifest.json`` (refusing a workdir made with another config), and builds the model;
``train_stage`` trains the original (on D_train) or retrained (on D_retain) model, resuming from
the last checkpoint and skipping a stage that finished.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Mapping

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
  def create(cls, config: Any, workdir: str, overwrite: bool = False,
             check: Callable[[FaceDataset], None] | None = None) -> "Experiment":
    """Loads the data and prepares the workdir (see the module docstring).

    Everything that can be checked without training (the config's values, the data, the model,
    and whatever ``check`` raises about the loaded data) is checked before the workdir is
    touched, so a refused run writes nothing.

    Raises:
      ValueError: a config value is out of range (see :func:`check_config`) or names an unknown
        model.
      DataError: the data cannot be read or the split leaks identities.
      WorkdirError: the workdir holds another config's run and ``overwrite`` is false.
    """
    cfg = to_dict(config)
    check_config(cfg)
    dataset = loader.load_dataset(cfg["data"])
    dataset.manifest.check()
    m = cfg["model"]
    model = create_model(m["name"], dataset.num_classes, width=m.get("width"),
                         stem=m.get("stem", "imagenet"), dtype=m.get("dtype", "float32"))
    if check is not None:
      check(dataset)
    # Under jax.distributed every process checks, process 0 writes (an overwrite removes the old
    # manifest there, so the others do not check it).
    primary = parallel.is_primary()
    checkpoints.prepare_workdir(workdir, cfg, overwrite=overwrite, write=primary)
    path = os.path.join(workdir, "manifest.json")
    if os.path.exists(path) and (primary or not overwrite):
      old = SplitManifest.load(path)
      if old.content_hash != dataset.manifest.content_hash:
        raise DataError(f"{path} holds split {old.content_hash} but the data now gives "
                        f"{dataset.manifest.content_hash}: the files changed; use a new --workdir")
    elif primary:
      dataset.manifest.save(path)
    parallel.barrier("mu_jax.runner:workdir")
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
    record = {"stage": stage, **stage_cost(self.stage_dir(stage)),
              "resumed_from_epoch": result.resumed_from_epoch, "train_size": len(data),
              "epochs": self.train_config(stage).epochs}
    if parallel.is_primary():
      checkpoints.write_json(done, record)
    parallel.barrier(f"mu_jax.runner:done:{stage}")
    return record

  def unlearn_stage(self, name: str, hparams: Mapping[str, Any] | None = None,
                    progress: bool = False) -> dict[str, Any]:
    """Runs method ``name`` from the original model (or resumes, or skips a finished run).

    Writes ``unlearned/<name>/``: the driver's checkpoints and metrics.jsonl, ``final/`` (the
    unlearned parameters and BN statistics), the per-example outputs and ``done.json``; every
    request is recorded in ``requests.jsonl`` (see :mod:`mu_jax.audit`).

    Raises:
      RuntimeError: under ``jax.distributed`` with several processes (unlearning, its audit log and
        its outputs run in one process, over all of that process's devices).
    """
    from mu_jax import audit, methods
    if jax.process_count() > 1:
      raise RuntimeError(f"unlearning ({name}) runs in one process (over all its devices), not "
                         f"under jax.distributed with {jax.process_count()} processes; of the "
                         "scripts only experiments.train runs on several hosts")
    stage = f"unlearned/{name}"
    sdir = self.stage_dir(stage)
    done = os.path.join(sdir, "done.json")
    resume_key = f"method:{name}"
    if os.path.exists(done):
      record = checkpoints.read_json(done)
      # done.json is written before the audit's complete line: a crash between the two leaves the
      # request open, and this run closes it.
      for pending in audit.incomplete_requests(self.workdir):
        if pending.get("resume_key") == resume_key:
          audit.complete_request(self.workdir, pending["request_id"],
                                 {**record, "evaluation": quick_summary(self.outputs(stage), self.task)})
      return record
    hparams = dict(hparams if hparams is not None else self.method_hparams(name))
    unlearner = methods.create(name, **hparams)
    unlearner.check_task(self.task)
    original = self.load_state("original")
    request = audit.start_request(self.workdir, {
        "kind": "method", "method": name, "hparams": hparams, **self.audit_context(),
        "checkpoint_before": os.path.join(self.stage_dir("original"), "checkpoints"),
        "checkpoint_after": os.path.join(sdir, "final")}, resume_key=resume_key)
    ucfg = self.config.get("unlearn", {})
    result = methods.run_detailed(unlearner, original, self.dataset, methods.RunConfig(
        batch_size=int(ucfg.get("batch_size", 64)), seed=int(ucfg.get("seed", 42)),
        eval_batch_size=int(self.config["train"].get("eval_batch_size", 256)),
        checkpoint_dir=sdir, progress=progress))
    final = checkpoints.Checkpointer(os.path.join(sdir, "final"), max_to_keep=1)
    final.save(0, {"params": result.state.params, "batch_stats": result.state.batch_stats})
    final.close()
    outputs = self.save_outputs(stage, result.state)
    record = {"stage": stage, "method": name, "hparams": hparams, **stage_cost(sdir),
              "halted": result.halted, "message": result.message}
    checkpoints.write_json(done, record)
    audit.complete_request(self.workdir, request, {**record, "evaluation": quick_summary(outputs, self.task)})
    return record

  def method_hparams(self, name: str) -> dict[str, Any]:
    """Hyperparameter overrides of method ``name`` from ``config.unlearn.hparams.<name>``."""
    hp = (self.config.get("unlearn", {}).get("hparams") or {}).get(name) or {}
    return dict(hp)

  def audit_context(self) -> dict[str, Any]:
    """Config and manifest hashes and the forget request's identities and counts (no images)."""
    m = self.dataset.manifest
    return {"config_hash": checkpoints.config_hash(self.config), "manifest_hash": m.content_hash,
            "forget_identities": sorted(m.identities("forget")), "forget_examples": len(m.ids("forget")),
            "retain_examples": len(m.ids("retain"))}

  def load_params(self, stage: str) -> TrainState:
    """A finished stage's model as a state (optimizer state of the template, unused)."""
    if stage in STAGES:
      return self.load_state(stage)
    template = self.template_state()
    path = os.path.join(self.stage_dir(stage), "final")
    ckpt = checkpoints.Checkpointer(path, max_to_keep=1)
    restored = ckpt.restore({"params": template.params, "batch_stats": template.batch_stats})
    ckpt.close()
    return template.replace(params=restored["params"], batch_stats=restored["batch_stats"])

  def outputs(self, stage: str, state: TrainState | None = None) -> dict[str, dict[str, Any]]:
    """The stage's per-example outputs, from ``outputs/*.npz`` or computed (and saved) now."""
    odir = os.path.join(self.stage_dir(stage), "outputs")
    splits = ("train", "retain", "forget", "test", "unseen")
    if all(os.path.exists(os.path.join(odir, f"{s}.npz")) for s in splits):
      return {s: checkpoints.load_outputs(odir, s) for s in splits}
    return self.save_outputs(stage, state if state is not None else self.load_params(stage))


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


def check_config(cfg: Mapping[str, Any]) -> None:
  """Refuses config values that would fail (or silently mean something else) once work started.

  Checks the ``train`` and ``retrain`` recipes (:class:`~mu_jax.training.fit.TrainConfig`: known
  fields, positive epochs, batch size and learning rate, ...), the seed, the model width and the
  unlearning batch size; batch sizes must split evenly over the devices, as every step needs.

  Raises:
    ValueError: naming the config field and the value.
  """
  seed = cfg.get("seed", 0)
  if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
  n_dev = parallel.num_devices()
  for section in ("train", "retrain"):
    merged = dict(cfg["train"], **(cfg.get("retrain") or {}) if section == "retrain" else {})
    try:
      tc = fitlib.TrainConfig.from_config(merged)
    except (TypeError, ValueError) as e:
      raise ValueError(f"config.{section}: {e}") from e
    if tc.batch_size % n_dev:
      raise ValueError(f"config.{section}.batch_size={tc.batch_size} is not divisible by the "
                       f"{n_dev} devices")
    if tc.eval_batch_size <= 0:
      raise ValueError(f"config.{section}.eval_batch_size must be positive, got "
                       f"{tc.eval_batch_size}")
  width = cfg["model"].get("width")
  # create_model reads width 0 as "the default width", which is not what a 0 asks for.
  if width is not None and (not isinstance(width, int) or width <= 0):
    raise ValueError(f"model.width must be a positive integer, got {width!r}")
  ubs = (cfg.get("unlearn") or {}).get("batch_size", 64)
  if not isinstance(ubs, int) or ubs <= 0 or ubs % n_dev:
    raise ValueError(f"unlearn.batch_size must be a positive multiple of the {n_dev} devices, "
                     f"got {ubs!r}")


def stage_cost(stage_dir: str) -> dict[str, Any]:
  """Wall seconds (compilation excluded), compile seconds and examples of a stage, summed over its
  metrics.jsonl rows (resumed runs included)."""
  path = os.path.join(stage_dir, "metrics.jsonl")
  rows = []
  if os.path.exists(path):
    with open(path) as f:
      rows = [json.loads(line) for line in f if line.strip()]
  return {"wall_s": float(sum(r.get("epoch_s", 0.0) for r in rows)),
          "compile_s": float(sum(r.get("compile_s", 0.0) for r in rows)),
          "examples": int(sum(r.get("examples", 0) for r in rows))}


def quick_summary(outputs: Mapping[str, Mapping[str, Any]], task: str) -> dict[str, float]:
  """Forget/retain/test accuracy, reference attack accuracy and NoMUS (for logs and the audit)."""
  from mu_jax.evaluation import mia
  acc = {s: evaluate.summarize(outputs[s], task)["accuracy"] for s in ("forget", "retain", "test")}
  attack = mia.reference_mia(outputs["forget"]["loss"], outputs["unseen"]["loss"])["mia_attack_acc"]
  return {**{f"{s}_acc": v for s, v in acc.items()}, "mia_attack_acc": attack,
          "nomus": mia.nomus(acc["test"], attack)}
