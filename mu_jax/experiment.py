"""The experiment engine: a workdir of stages, each identified by everything that fixes its result.

Every pipeline (the classification benchmark, face retrieval, SISA) runs on this engine:

* :class:`Workdir` is the record of a run: ``config.json`` and ``manifest.json`` written once (by
  process 0 under ``jax.distributed``), a workdir made with another config or data refused, and
  ``workdir.json`` naming the layout, so that a workdir of an earlier layout is refused instead of
  misread.
* :class:`Stage` is one unit of work with a result: the original or retrained model, one method's
  run, a SISA deployment. Its **identity** holds everything that determines the result (kind,
  name as given on the command line, hyperparameters as given, batch size, seed, the data
  manifest's hash, the model and training recipe, the parent stage's identity and mu_jax's
  version). The stage lives in ``<group>/<name>-<hash>``, where ``hash`` is a short sha256 of the
  identity, and ``done.json`` spells the identity out. Running again with the same identity
  resumes an interrupted stage or skips a finished one; a different identity never reuses or
  overwrites an old result, it makes a new stage beside it. A hyperparameter sweep is just a set
  of stages.
* :class:`Task` is what differs between classification and retrieval: how the data is read, the
  model built and trained, which methods exist, and how a model is evaluated into a result row.
  :class:`Experiment` binds a config, a workdir, the data, the model and a task, and runs stages.

Layout (``docs/workdir.md`` has the full contract)::

  WORKDIR/config.json  manifest.json  workdir.json  requests.jsonl
  WORKDIR/original-<hash>/   WORKDIR/retrained-<hash>/     checkpoints/ metrics.jsonl outputs/ done.json
  WORKDIR/unlearned/<name>-<hash>/                         checkpoints/ final/ metrics.jsonl outputs/ done.json
  WORKDIR/results/                                         results.json results.csv table.md *.png
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import ml_collections

import mu_jax
from mu_jax import audit, checkpoints, costs, parallel
from mu_jax.data.splits import DataError, Examples, FaceDataset, SplitManifest
from mu_jax.methods import registry as method_registry
from mu_jax.training import fit as fitlib
from mu_jax.training.state import TrainState

LAYOUT = 2
LAYOUT_FILE = "workdir.json"
HASH_CHARS = 10
TRAINED = ("original", "retrained")
SPLITS = ("train", "retain", "forget", "test", "unseen")


def to_dict(config: Any) -> dict[str, Any]:
  """A config (ConfigDict or mapping) as a plain dict."""
  return config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)


def plain(value: Any) -> Any:
  """``value`` as JSON would store it (tuples as lists, numpy scalars as numbers)."""
  return json.loads(json.dumps(value, default=checkpoints.json_default))


def identity_hash(identity: Mapping[str, Any]) -> str:
  """A short sha256 of an identity's canonical JSON (sorted keys, no spaces)."""
  text = json.dumps(plain(identity), sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


# ------------------------------------------------------------------------------------ workdir

class Workdir:
  """A run's directory: its config and manifest, checked once, and the stages inside it."""

  def __init__(self, path: str, config: Mapping[str, Any], manifest: SplitManifest):
    self.path = path
    self.config = dict(config)
    self.manifest = manifest

  @classmethod
  def open(cls, path: str, config: Mapping[str, Any], manifest: SplitManifest, *,
           overwrite: bool = False) -> "Workdir":
    """Creates the workdir or checks that it belongs to this config and data.

    Raises:
      WorkdirError: the workdir was made by another config (unless ``overwrite``) or by an earlier
        layout of mu_jax's stages.
      DataError: the data's split differs from the manifest saved there.
    """
    primary = parallel.is_primary()
    layout_path = os.path.join(path, LAYOUT_FILE)
    if (not overwrite and os.path.exists(os.path.join(path, "config.json"))
        and not os.path.exists(layout_path)):
      raise checkpoints.WorkdirError(
          f"{path} was written by an earlier mu_jax whose stages had no identities (no "
          f"{LAYOUT_FILE}); its results cannot be told apart by their settings. Use a new "
          "--workdir, or --overwrite to start this one again")
    if not overwrite and os.path.exists(layout_path):
      layout = checkpoints.read_json(layout_path).get("layout")
      if layout != LAYOUT:
        raise checkpoints.WorkdirError(
            f"{path} has workdir layout {layout}; this mu_jax ({mu_jax.__version__}) writes layout "
            f"{LAYOUT}. Use a new --workdir, or --overwrite to start this one again")
    # A new workdir gets its layout file first, so that no process ever sees config.json alone.
    if primary and not overwrite and not os.path.exists(os.path.join(path, "config.json")):
      checkpoints.write_json(layout_path, {"layout": LAYOUT, "mu_jax": mu_jax.__version__})
    checkpoints.prepare_workdir(path, config, overwrite=overwrite, write=primary)
    manifest_path = os.path.join(path, "manifest.json")
    if os.path.exists(manifest_path) and (primary or not overwrite):
      old = SplitManifest.load(manifest_path)
      if old.content_hash != manifest.content_hash:
        raise DataError(f"{manifest_path} holds split {old.content_hash} but the data now gives "
                        f"{manifest.content_hash}: the files changed; use a new --workdir")
    elif primary:
      manifest.save(manifest_path)
    if primary and not os.path.exists(layout_path):
      checkpoints.write_json(layout_path, {"layout": LAYOUT, "mu_jax": mu_jax.__version__})
    parallel.barrier(f"mu_jax.experiment:workdir:{path}")
    return cls(path, config, manifest)

  def stage(self, kind: str, name: str, identity: Mapping[str, Any], group: str = "") -> "Stage":
    """The stage of this identity (existing or not); see :class:`Stage`."""
    full = plain({"kind": kind, "name": name, **identity, "mu_jax": mu_jax.__version__})
    rel = os.path.join(group, f"{name}-{identity_hash(full)}") if group else \
        f"{name}-{identity_hash(full)}"
    return Stage(self, kind, name, full, rel)

  def finished_stages(self, group: str = "") -> list["Stage"]:
    """Every finished stage directly under ``group``, in name order, read from its done.json."""
    root = os.path.join(self.path, group)
    out = []
    if os.path.isdir(root):
      for entry in sorted(os.listdir(root)):
        done = os.path.join(root, entry, "done.json")
        if os.path.exists(done):
          rec = checkpoints.read_json(done)
          out.append(Stage(self, rec["identity"]["kind"], rec["identity"]["name"],
                           rec["identity"], os.path.join(group, entry) if group else entry))
    return out


@dataclasses.dataclass
class Stage:
  """One result in a workdir, named by its identity (module docstring).

  Attributes:
    workdir: the workdir it belongs to.
    kind: "original", "retrained", "unlearn", "sisa", ...
    name: the name given on the command line (a method's name, "original", ...).
    identity: everything that determines the result, as JSON values.
    rel: the directory relative to the workdir (``unlearned/scrub-1a2b3c4d5e``): the ``stage``
      key of result rows.
  """

  workdir: Workdir
  kind: str
  name: str
  identity: dict[str, Any]
  rel: str

  @property
  def dir(self) -> str:
    return os.path.join(self.workdir.path, self.rel)

  @property
  def hash(self) -> str:
    return identity_hash(self.identity)

  @property
  def done_path(self) -> str:
    return os.path.join(self.dir, "done.json")

  @property
  def done(self) -> bool:
    return os.path.exists(self.done_path)

  @property
  def outputs_dir(self) -> str:
    return os.path.join(self.dir, "outputs")

  def record(self) -> dict[str, Any]:
    """The stage's done.json."""
    return checkpoints.read_json(self.done_path)

  def begin(self) -> None:
    """Marks the directory as this identity's (``identity.json``) before any work is written.

    Raises:
      WorkdirError: the directory holds another identity (a hash collision or a hand-edited
        directory): nothing is reused.
    """
    path = os.path.join(self.dir, "identity.json")
    if os.path.exists(path):
      old = checkpoints.read_json(path)
      if old != self.identity:
        raise checkpoints.WorkdirError(f"{self.dir} holds a stage of another identity; remove it "
                                       "or use a new --workdir")
    elif parallel.is_primary():
      checkpoints.write_json(path, self.identity)
    parallel.barrier(f"mu_jax.experiment:begin:{self.rel}")

  def finish(self, record: Mapping[str, Any]) -> dict[str, Any]:
    """Writes done.json (process 0) with the identity spelled out; returns what it wrote."""
    full = {"stage": self.rel, "name": self.name, "kind": self.kind, "identity": self.identity,
            **dict(record)}
    if parallel.is_primary():
      checkpoints.write_json(self.done_path, full)
    parallel.barrier(f"mu_jax.experiment:done:{self.rel}")
    return full


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


# ------------------------------------------------------------------------------------ config

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
    try:
      tc = train_config(cfg, "retrained" if section == "retrain" else "original")
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
  ucfg = cfg.get("unlearn") or {}
  for key, default in (("batch_size", 64), ("seed", 42)):
    v = ucfg.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or (key == "batch_size" and (
        v <= 0 or v % n_dev)):
      what = f"a positive multiple of the {n_dev} devices" if key == "batch_size" else \
          "a non-negative integer"
      raise ValueError(f"unlearn.{key} must be {what}, got {v!r}")


def train_config(cfg: Mapping[str, Any], stage: str) -> fitlib.TrainConfig:
  """The recipe of ``original`` (config.train) or ``retrained`` (config.train + config.retrain)."""
  t = dict(cfg["train"])
  if stage == "retrained":
    t.update(cfg.get("retrain") or {})
  return fitlib.TrainConfig.from_config(t)


# ------------------------------------------------------------------------------------ tasks

class Task(abc.ABC):
  """What differs between the classification and the retrieval pipelines.

  A task reads the data, builds the model, trains it, names its methods and evaluates a model into
  the flat result row of its table (:mod:`mu_jax.evaluation.columns`).
  """

  name = "task"
  registry: method_registry.Registry
  group = ""

  @abc.abstractmethod
  def load(self, cfg: Mapping[str, Any]) -> Any:
    """Reads the data a config's ``data`` section names."""

  @abc.abstractmethod
  def dataset(self, data: Any) -> FaceDataset:
    """The FaceDataset behind ``data`` (its manifest is the workdir's)."""

  @abc.abstractmethod
  def build_model(self, cfg: Mapping[str, Any], data: Any) -> Any:
    """The flax module of a config's ``model`` section."""

  @abc.abstractmethod
  def train_examples(self, data: Any, stage: str) -> Examples:
    """The examples the ``original`` or ``retrained`` model trains on."""

  @abc.abstractmethod
  def fit(self, exp: "Experiment", stage: str, stage_dir: str, progress: bool,
          **fit_kwargs) -> fitlib.FitResult:
    """Trains (or resumes) ``original`` or ``retrained`` in ``stage_dir``."""

  @abc.abstractmethod
  def unlearning_data(self, data: Any) -> Any:
    """What :func:`mu_jax.methods.run_detailed` is given (its ``retain``/``forget``/... splits)."""

  def run_config(self, exp: "Experiment") -> dict[str, Any]:
    """Task-specific :class:`~mu_jax.methods.RunConfig` fields."""
    return {}

  @abc.abstractmethod
  def evaluate(self, exp: "Experiment", stage: Stage, state: TrainState) -> dict[str, Any]:
    """The row of metrics of a model; writes its per-example outputs into the stage."""


class ClassificationTask(Task):
  """Face attribute classification (MUFAC, MUCAC, synthetic, identity folders)."""

  name = "classification"
  registry = method_registry.METHODS

  def load(self, cfg):
    from mu_jax.data import loader  # pylint: disable=import-outside-toplevel
    dataset = loader.load_dataset(cfg["data"])
    dataset.manifest.check()
    return dataset

  def dataset(self, data):
    return data

  def build_model(self, cfg, data):
    from mu_jax.models import create_model  # pylint: disable=import-outside-toplevel
    m = cfg["model"]
    return create_model(m["name"], data.num_classes, width=m.get("width"),
                        stem=m.get("stem", "imagenet"), dtype=m.get("dtype", "float32"))

  def train_examples(self, data, stage):
    return data.split("train" if stage == "original" else "retain")

  def fit(self, exp, stage, stage_dir, progress, **fit_kwargs):
    return fitlib.fit(exp.model, self.train_examples(exp.data, stage), exp.train_config(stage),
                      task=exp.data.task, seed=exp.seed, stage_dir=stage_dir,
                      eval_sets={"test": exp.data.split("test")}, progress=progress, **fit_kwargs)

  def unlearning_data(self, data):
    return data

  def outputs(self, exp: "Experiment", stage: Stage, state: TrainState | None = None
              ) -> dict[str, dict[str, Any]]:
    """Per-example outputs of every split, read from the stage or computed and saved now."""
    from mu_jax.training import evaluate  # pylint: disable=import-outside-toplevel
    # Every process must take the same branch (the prediction is collective): the barrier makes
    # process 0's earlier writes visible to all before they look.
    parallel.barrier(f"mu_jax.experiment:outputs:{stage.rel}")
    if all(os.path.exists(os.path.join(stage.outputs_dir, f"{s}.npz")) for s in SPLITS):
      return {s: checkpoints.load_outputs(stage.outputs_dir, s) for s in SPLITS}
    state = parallel.replicate(state if state is not None else exp.load_state(stage))
    out = evaluate.predict_splits(state, {s: exp.data.split(s) for s in SPLITS},
                                  task=exp.data.task, batch_size=exp.eval_batch_size)
    if parallel.is_primary():
      for s, o in out.items():
        checkpoints.save_outputs(stage.outputs_dir, s, o)
    parallel.barrier(f"mu_jax.experiment:outputs-written:{stage.rel}")
    return out

  def evaluate(self, exp, stage, state):
    with costs.measure("evaluation"):
      return quick_summary(self.outputs(exp, stage, state), exp.data.task)


class RetrievalTask(Task):
  """Face retrieval: embedding models with a margin head, forgetting persons."""

  name = "retrieval"
  group = "retrieval"

  @property
  def registry(self):  # imported lazily: the retrieval methods pull in their own modules
    from mu_jax.retrieval import methods  # pylint: disable=import-outside-toplevel
    return methods.METHODS

  def load(self, cfg):
    from mu_jax.retrieval import data as rdata  # pylint: disable=import-outside-toplevel
    return rdata.load(cfg["data"])

  def dataset(self, data):
    return data.dataset

  def build_model(self, cfg, data):
    from mu_jax.retrieval import model as rmodel  # pylint: disable=import-outside-toplevel
    m = cfg["model"]
    return rmodel.create_embedding_model(m["trunk"], data.num_classes, embed_dim=m["embed_dim"],
                                         head=m["head"], scale=m["scale"], margin=m["margin"],
                                         width=m["width"], stem=m["stem"], dtype=m["dtype"])

  def train_examples(self, data, stage):
    return data.train if stage == "original" else data.retain

  def fit(self, exp, stage, stage_dir, progress, **fit_kwargs):
    from mu_jax.retrieval import train as rtrain  # pylint: disable=import-outside-toplevel
    return rtrain.fit(exp.model, self.train_examples(exp.data, stage), exp.train_config(stage),
                      seed=exp.seed, stage_dir=stage_dir, eval_sets={"heldout": exp.data.heldout},
                      progress=progress, **fit_kwargs)

  def unlearning_data(self, data):
    return data.unlearning_splits()

  def run_config(self, exp):
    return {"task": "multiclass", "log_splits": ("forget", "retain")}

  def evaluate(self, exp, stage, state):
    from mu_jax.retrieval import evaluate as reval  # pylint: disable=import-outside-toplevel
    row = reval.evaluate_state(state, exp.data.train, exp.data.forget_identities, exp.data.heldout,
                               seed=exp.config["eval"]["seed"], batch_size=exp.eval_batch_size,
                               outputs_dir=stage.outputs_dir if parallel.is_primary() else None,
                               probe=exp.data.probe)
    return row


TASKS = {"classification": ClassificationTask, "retrieval": RetrievalTask}


# ------------------------------------------------------------------------------------ experiment

@dataclasses.dataclass
class Experiment:
  """A config, its workdir, its data, its model and its task; runs and finds stages.

  Attributes:
    config: the config as a plain dict.
    workdir: the :class:`Workdir`.
    data: what the task read (a FaceDataset, or RetrievalData).
    model: the flax module.
    task: the :class:`Task`.
  """

  config: dict[str, Any]
  workdir: Workdir
  data: Any
  model: Any
  task: Task
  selected: list[method_registry.Method] = dataclasses.field(default_factory=list)

  @classmethod
  def create(cls, config: Any, workdir: str, *, task: str | Task = "classification",
             methods: str | Sequence[str] | None = None, overwrite: bool = False,
             check: Callable[[Any], None] | None = None) -> "Experiment":
    """Reads the data, builds the model and opens the workdir.

    Everything that can be checked without training (the config's values, the methods asked for
    and their hyperparameters, the data, the model, and whatever ``check`` raises about the loaded
    data) is checked before the workdir is touched, so a refused run writes nothing.

    Args:
      config: the config (ConfigDict or dict).
      workdir: the run's directory (the retrieval task uses ``workdir/retrieval``).
      task: "classification", "retrieval" or a :class:`Task`.
      methods: a ``--methods`` value to resolve now (see :meth:`methods`); the result is
        :attr:`selected`.
      overwrite: start a workdir made with another config again.
      check: called with the loaded data; raises to refuse it.

    Raises:
      ValueError: a config value is out of range or names an unknown model.
      MethodError: an unknown method or a bad hyperparameter.
      DataError: the data cannot be read or the split leaks identities.
      WorkdirError: the workdir holds another config's run (and not ``overwrite``) or an earlier
        layout.
    """
    cfg = to_dict(config)
    task = TASKS[task]() if isinstance(task, str) else task
    check_config(cfg)
    selected = [] if methods is None else task.registry.resolve(
        methods, (cfg.get("unlearn") or {}).get("hparams"))
    data = task.load(cfg)
    model = task.build_model(cfg, data)
    if check is not None:
      check(data)
    root = os.path.join(workdir, task.group) if task.group else workdir
    wd = Workdir.open(root, cfg, task.dataset(data).manifest, overwrite=overwrite)
    return cls(cfg, wd, data, model, task, selected)

  # -- plain properties
  @property
  def dataset(self) -> FaceDataset:
    return self.task.dataset(self.data)

  @property
  def path(self) -> str:
    return self.workdir.path

  @property
  def seed(self) -> int:
    return int(self.config.get("seed", 0))

  @property
  def eval_batch_size(self) -> int:
    return int(self.config["train"].get("eval_batch_size", 256))

  @property
  def unlearn_config(self) -> dict[str, Any]:
    return dict(self.config.get("unlearn") or {})

  def split(self, name: str) -> Examples:
    return self.dataset.split(name)

  def train_config(self, stage: str) -> fitlib.TrainConfig:
    return train_config(self.config, stage)

  # -- stages
  @property
  def model_identity(self) -> dict[str, Any]:
    """The model config without the path of an imported checkpoint (its content hash counts)."""
    return {k: v for k, v in self.config["model"].items() if k != "checkpoint"}

  @property
  def imported_checkpoint(self) -> str:
    """``config.model.checkpoint``: a PyTorch checkpoint the original model is imported from."""
    return str(self.config["model"].get("checkpoint") or "")

  @property
  def data_identity(self) -> dict[str, Any]:
    """What every model stage of this workdir shares: task, data manifest hash, data config and
    model config (the identities of trained, population, seed and validation stages add to it)."""
    return {"task": self.task.name, "manifest": self.workdir.manifest.content_hash,
            "data": self.config["data"], "model": self.model_identity}

  def trained_stage(self, stage: str) -> Stage:
    """The ``original`` or ``retrained`` stage of this config.

    An original imported from ``config.model.checkpoint`` is identified by the checkpoint's sha256
    and the preprocessing the model expects instead of a training recipe.
    """
    if stage not in TRAINED:
      raise ValueError(f"stage must be one of {TRAINED}, got {stage!r}")
    identity = self.data_identity
    if stage == "original" and self.imported_checkpoint:
      return self.workdir.stage(stage, stage, {**identity, "imported": self.import_record()})
    return self.workdir.stage(stage, stage, {
        **identity, "seed": self.seed, "train": dataclasses.asdict(self.train_config(stage))})

  def import_record(self) -> dict[str, Any]:
    """What identifies an imported original: the file's sha256 and the preprocessing it expects.

    Raises:
      CheckpointError: the file is missing.
    """
    path = self.imported_checkpoint
    if not os.path.isfile(path):
      raise checkpoints.CheckpointError(f"config.model.checkpoint: {path}: no such file")
    if getattr(self, "_import_record", None) is None or self._import_record[0] != path:
      sha = hashlib.sha256()
      with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          sha.update(block)
      # mu_jax feeds images as float32 in [0, 1] at the data's resolution, without mean/std
      # normalisation: what the MUFAC/MUCAC reference models were trained on.
      self._import_record = (path, {
          "format": "torchvision state_dict", "sha256": sha.hexdigest(),
          "preprocessing": {"resolution": int(self.config["data"]["image_size"]),
                            "scaling": "[0, 1]", "normalization": None}})
    return self._import_record[1]

  def _import_original(self, st: Stage) -> dict[str, Any]:
    """Writes the original stage from ``config.model.checkpoint`` (no training)."""
    from mu_jax import models  # pylint: disable=import-outside-toplevel
    m = self.config["model"]
    want = {"name": "resnet18", "width": 64, "stem": "imagenet"}
    wrong = {k: m.get(k) for k, v in want.items() if m.get(k) != v}
    if wrong:
      raise checkpoints.CheckpointError(
          f"config.model.checkpoint needs torchvision's ResNet-18 (model.name='resnet18', "
          f"model.width=64, model.stem='imagenet'); the config has {wrong}")
    path = self.imported_checkpoint
    record = self.import_record()
    variables = models.from_torch(models.load_torch_checkpoint(path), "resnet18",
                                  self.dataset.num_classes, where=f"{path}: ")
    template = self.template_state("original")
    state = template.replace(params=jax.tree.map(lambda t, v: jax.numpy.asarray(v, t.dtype),
                                                 template.params, variables["params"]),
                             batch_stats=variables["batch_stats"])
    st.begin()
    ckpt = checkpoints.Checkpointer(os.path.join(st.dir, "checkpoints"))
    ckpt.save(0, parallel.to_host(state))
    ckpt.close()
    return st.finish({"wall_s": 0.0, "compile_s": 0.0, "examples": 0, "imported_from": path,
                      "checkpoint_sha256": record["sha256"],
                      "preprocessing": record["preprocessing"],
                      "train_size": len(self.task.train_examples(self.data, "original"))})

  def method_stage(self, method: method_registry.Method) -> Stage:
    """The stage of one method's run from the original model, with its hyperparameters."""
    ucfg = self.unlearn_config
    return self.workdir.stage("unlearn", method.name, {
        "task": self.task.name, "factory": method.factory_path, "hparams": method.hparams,
        "batch_size": int(ucfg.get("batch_size", 64)), "seed": int(ucfg.get("seed", 42)),
        "manifest": self.workdir.manifest.content_hash, "model": self.model_identity,
        "parent": self.trained_stage("original").identity}, group="unlearned")

  def stage_named(self, rel: str) -> Stage:
    """A finished stage by its directory (``unlearned/scrub-1a2b3c4d5e``)."""
    done = os.path.join(self.path, rel, "done.json")
    if not os.path.exists(done):
      raise checkpoints.CheckpointError(f"{os.path.join(self.path, rel)} has not finished")
    rec = checkpoints.read_json(done)
    return Stage(self.workdir, rec["kind"], rec["name"], rec["identity"], rel)

  def method_stages(self) -> list[Stage]:
    """Every finished method stage run from this config's original model."""
    parent = self.trained_stage("original").identity
    return [s for s in self.workdir.finished_stages("unlearned")
            if s.kind == "unlearn" and s.identity.get("parent") == parent]

  def train_stage(self, stage: str, progress: bool = True, **fit_kwargs) -> dict[str, Any]:
    """Trains (or resumes, or skips) ``original`` or ``retrained``; returns its done.json."""
    st = self.trained_stage(stage)
    if st.done:
      return st.record()
    if stage == "original" and self.imported_checkpoint:
      return self._import_original(st)
    st.begin()
    # Both models start from the same initialisation, as the reference does with one seed.
    result = self.task.fit(self, stage, st.dir, progress, **fit_kwargs)
    return st.finish({**stage_cost(st.dir), "resumed_from_epoch": result.resumed_from_epoch,
                      "train_size": len(self.task.train_examples(self.data, stage)),
                      "epochs": self.train_config(stage).epochs})

  def template_state(self, stage: str = "original") -> TrainState:
    from mu_jax.data import pipeline  # pylint: disable=import-outside-toplevel
    data = self.task.train_examples(self.data, stage)
    cfg = self.train_config(stage)
    batch = pipeline.effective_batch_size(len(data), cfg.batch_size, parallel.num_devices())
    return fitlib.new_state(self.model, jax.random.key(0), data.images.shape[1:], cfg,
                            max(1, len(data) // max(batch, 1)))

  def load_state(self, stage: str | Stage) -> TrainState:
    """A finished stage's model as a host state (for method stages, the optimizer state is the
    original recipe's template, unused)."""
    st = self.trained_stage(stage) if isinstance(stage, str) else stage
    if not st.done:
      raise checkpoints.CheckpointError(f"{st.dir} has not finished; run experiments.train first"
                                        if st.kind in TRAINED else f"{st.dir} has not finished")
    template = self.template_state(st.kind if st.kind in TRAINED else "original")
    if st.kind in TRAINED:
      ckpt = checkpoints.Checkpointer(os.path.join(st.dir, "checkpoints"))
      state = ckpt.restore(template)
      ckpt.close()
      return state
    ckpt = checkpoints.Checkpointer(os.path.join(st.dir, "final"), max_to_keep=1)
    restored = ckpt.restore({"params": template.params, "batch_stats": template.batch_stats})
    ckpt.close()
    return template.replace(params=restored["params"], batch_stats=restored["batch_stats"])

  def unlearn_stage(self, method: str | method_registry.Method, progress: bool = False
                    ) -> dict[str, Any]:
    """Runs one method from the original model (or resumes it, or skips a finished run).

    Writes the stage (:meth:`method_stage`): the driver's checkpoints and metrics.jsonl, ``final/``
    (the unlearned parameters and BN statistics), the per-example outputs and ``done.json``; every
    request is recorded in ``requests.jsonl`` (see :mod:`mu_jax.audit`).

    Args:
      method: a :class:`~mu_jax.methods.registry.Method` (from :meth:`methods`) or a name, whose
        hyperparameters are then the config's (``config.unlearn.hparams.<name>``).
      progress: log every epoch.

    Under ``jax.distributed`` every process computes (each feeds its slice of every batch) and
    process 0 alone writes the stage's files and the audit lines; orbax writes the checkpoints
    from all processes together.
    """
    from mu_jax import methods  # pylint: disable=import-outside-toplevel
    if isinstance(method, str):
      method = self.methods(method)[0]
    st = self.method_stage(method)
    primary = parallel.is_primary()
    resume_key = f"stage:{st.rel}"
    if st.done:
      record = st.record()
      # done.json is written before the audit's complete line: a crash between the two leaves the
      # request open, and this run closes it.
      for pending in audit.incomplete_requests(self.path) if primary else ():
        if pending.get("resume_key") == resume_key:
          audit.complete_request(self.path, pending["request_id"], record)
      parallel.barrier(f"mu_jax.experiment:skip:{st.rel}")
      return record
    unlearner = method.create()
    unlearner.check_task(self.dataset.task)
    original = self.load_state("original")
    st.begin()
    request = audit.start_request(self.path, {
        "kind": "method", "method": method.name, "stage": st.rel, "hparams": method.hparams,
        **self.audit_context(),
        "checkpoint_before": os.path.join(self.trained_stage("original").dir, "checkpoints"),
        "checkpoint_after": os.path.join(st.dir, "final")}, resume_key=resume_key) if primary else ""
    ucfg = self.unlearn_config
    result = methods.run_detailed(unlearner, original, self.task.unlearning_data(self.data),
                                  methods.RunConfig(
        batch_size=int(ucfg.get("batch_size", 64)), seed=int(ucfg.get("seed", 42)),
        eval_batch_size=self.eval_batch_size, checkpoint_dir=st.dir, progress=progress,
        **self.task.run_config(self)))
    final = checkpoints.Checkpointer(os.path.join(st.dir, "final"), max_to_keep=1)
    final.save(0, {"params": result.state.params, "batch_stats": result.state.batch_stats})
    final.close()
    summary = self.task.evaluate(self, st, result.state)
    record = st.finish({"method": method.name, "hparams": method.hparams, **stage_cost(st.dir),
                        "halted": result.halted, "message": result.message,
                        "evaluation": summary})
    if primary:
      audit.complete_request(self.path, request, record)
    parallel.barrier(f"mu_jax.experiment:audit:{st.rel}")
    return record

  def methods(self, spec: str | Sequence[str]) -> list[method_registry.Method]:
    """Resolves a ``--methods`` value into methods with this config's hyperparameters.

    Every name is checked (known, or an importable ``module:factory``) and every hyperparameter
    validated before anything runs.
    """
    hp = (self.unlearn_config.get("hparams") or {})
    return self.task.registry.resolve(spec, hp)

  def audit_context(self) -> dict[str, Any]:
    """Config and manifest hashes and the forget request's identities and counts (no images)."""
    m = self.workdir.manifest
    imported = ({"original_checkpoint_sha256": self.import_record()["sha256"]}
                if self.imported_checkpoint else {})
    return {**imported, "config_hash": checkpoints.config_hash(self.config),
            "manifest_hash": m.content_hash,
            "forget_identities": sorted(m.identities("forget")), "forget_examples": len(m.ids("forget")),
            "retain_examples": len(m.ids("retain"))}


def quick_summary(outputs: Mapping[str, Mapping[str, Any]], task: str) -> dict[str, float]:
  """Forget/retain/test accuracy, reference attack accuracy and NoMUS (for logs and the audit)."""
  from mu_jax.evaluation import mia  # pylint: disable=import-outside-toplevel
  from mu_jax.training import evaluate  # pylint: disable=import-outside-toplevel
  acc = {s: evaluate.summarize(outputs[s], task)["accuracy"] for s in ("forget", "retain", "test")}
  attack = mia.reference_mia(outputs["forget"]["loss"], outputs["unseen"]["loss"])["mia_attack_acc"]
  return {**{f"{s}_acc": v for s, v in acc.items()}, "mia_attack_acc": attack,
          "nomus": mia.nomus(acc["test"], attack)}
