"""Populations in the benchmark: identity-level U-LiRA and the NeurIPS 2023 forget score per row.

With a ``population`` section in the config (``experiments/configs/synthetic.py:population``), the
benchmark trains three populations of ``members`` models each, as stacked programs
(:mod:`mu_jax.training.population`), and adds population columns (``docs/metrics.md``) to the
original, retrained and every method row:

* ``ulira``: member k trains on the retain persons plus a random half of the *pool* (the forget
  persons and the never-trained ``unseen`` persons); every pool person is in exactly half of the
  members. Each method unlearns, from member k, the pool persons member k trained on. The original
  row reads the members before unlearning; identity-level U-LiRA
  (:func:`mu_jax.evaluation.population.ulira`) then asks, per member and pool person, "unlearned or
  never trained?".
* ``original``: members trained on the whole training split (retain + forget), each unlearned by
  every method with the real forget set: the forget score's unlearned population.
* ``retrained``: members trained on the retain persons alone, with the retrained recipe. They are
  the forget score's retrained population and, read with the ``ulira`` inclusion masks, the
  retrained row's U-LiRA population (retraining without the pool half is training on retain
  alone); the retrained row's forget score compares two disjoint halves of them
  (:func:`mu_jax.evaluation.population.retrained_ceiling`).

Seeds: member k of the three populations has seed ``seed + k``, ``seed + members + k`` and
``seed + 2·members + k``. Every population and every (method, populations) pair is a stage with an
identity (:mod:`mu_jax.experiment`): a trained population resumes from its per-epoch checkpoints,
and a method's population run keeps its members' outputs as each population finishes, so a killed
run resumes at the population it had not finished. Training is stacked; a method unlearns all
members of a population as one vmapped program (:func:`mu_jax.methods.driver.run_stacked`), and
member after member only where their batch shapes differ or JAX cannot vmap a step.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from mu_jax import checkpoints, parallel
from mu_jax import experiment as engine
from mu_jax.data.splits import Examples
from mu_jax.evaluation import population as stats
from mu_jax.methods import driver
from mu_jax.methods.registry import Method
from mu_jax.training import population as trainer

POPULATIONS = ("ulira", "original", "retrained")
GROUP = "populations"
# What each population's members are evaluated on (and what their outputs files hold).
EVAL_SPLITS = {"ulira": ("pool",), "original": ("forget", "retain", "test"),
               "retrained": ("pool", "forget", "retain", "test")}


@dataclasses.dataclass(frozen=True)
class Settings:
  """``config.population``.

  Attributes:
    members: models per population (K; at least 6, the retrained row's ceiling needs 3 per half).
    seed: the first member's seed (module docstring).
    variance: U-LiRA's Gaussian variance, "global" (advised below 64 shadow models) or "per_image".
    example_level: U-LiRA per image instead of per person.
    convolution: the stacked trainer's convolution plan ("auto", "installed", "batched").
    member_shards: groups of devices the members are split over.
  """

  members: int = 16
  seed: int = 1000
  variance: str = "global"
  example_level: bool = False
  convolution: str = "auto"
  member_shards: int = 1

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any]) -> "Settings | None":
    """The config's population settings, or None when it has no ``population`` section.

    Raises:
      ValueError: an unknown key or a value out of range, naming it.
    """
    section = cfg.get("population")
    if not section:
      return None
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - fields)
    if unknown:
      raise ValueError(f"config.population: unknown keys {unknown}; it has {sorted(fields)}")
    s = cls(**dict(section))
    if not isinstance(s.members, int) or s.members < 6:
      raise ValueError(f"config.population.members must be an integer >= 6, got {s.members!r}")
    if s.variance not in ("global", "per_image"):
      raise ValueError(f"config.population.variance must be 'global' or 'per_image', got "
                       f"{s.variance!r}")
    trainer.resolve_convolution(s.convolution)
    return s

  def seeds(self, population: str) -> list[int]:
    offset = POPULATIONS.index(population) * self.members
    return [self.seed + offset + k for k in range(self.members)]


@dataclasses.dataclass
class Pool:
  """The U-LiRA pool: forget and unseen persons, and which members trained on each.

  Attributes:
    examples: the pool's images (forget split, then unseen split).
    persons: [I] the pool person (column of ``included``) of each image.
    names: the persons' identities, in column order.
    included: [K, P] 0/1: member k trained on person p (each column sums to ⌊K/2⌋).
  """

  examples: Examples
  persons: np.ndarray
  names: list[str]
  included: np.ndarray

  def member_rows(self, k: int) -> np.ndarray:
    """Rows of ``examples`` member k trained on."""
    return np.flatnonzero(self.included[k][self.persons])


def make_pool(forget: Examples, unseen: Examples, members: int, seed: int) -> Pool:
  """The pool and its balanced random halves (every person in exactly ⌊K/2⌋ members).

  Raises:
    ValueError: the forget or unseen split is empty.
  """
  for name, split in (("forget", forget), ("unseen", unseen)):
    if len(split) == 0:
      raise ValueError(f"population U-LiRA needs {name} persons, and the {name} split is empty")
  examples = Examples.concatenate([forget, unseen])
  names, persons = np.unique(examples.identities.astype(str), return_inverse=True)
  rng = np.random.default_rng(seed)
  included = np.zeros((members, len(names)), np.int8)
  for p in range(len(names)):
    included[rng.permutation(members)[:members // 2], p] = 1
  return Pool(examples, persons.astype(np.int64), [str(n) for n in names], included)


def check_data(dataset: Any) -> None:
  """Refuses data whose pool persons also have retain images (before any work).

  U-LiRA's "never trained" members must never have seen a pool person, but every member trains on
  all of retain: a person cut between forget and retain (MUFAC's ``protocol=paper``) would be half
  trained by all of them.

  Raises:
    ValueError: naming the shared persons.
  """
  retain = set(dataset.split("retain").identities.astype(str).tolist())
  pool = {str(i) for s in ("forget", "unseen") for i in dataset.split(s).identities}
  shared = sorted(retain & pool)
  if shared:
    raise ValueError(
        f"population U-LiRA needs forget and unseen persons with no retain images, but "
        f"{len(shared)} have some ({', '.join(shared[:5])}{', ...' if len(shared) > 5 else ''}): "
        f"forget whole persons (data.forget.mode='identity')")


class Runner:
  """The populations of one experiment and the method runs over them."""

  def __init__(self, exp: engine.Experiment, settings: Settings, *, progress: bool = True,
               log: Callable[[str], None] = print):
    self.exp, self.settings, self.progress, self.log = exp, settings, progress, log
    self.task = exp.dataset.task
    self.splits = {s: exp.split(s) for s in ("retain", "forget", "test", "unseen")}
    self.pool = make_pool(self.splits["forget"], self.splits["unseen"], settings.members,
                          settings.seed)
    self.splits["pool"] = self.pool.examples
    self._states: dict[str, Any] = {}
    # Seconds this call spent training and unlearning members (compilation excluded).
    self.train_s = 0.0

  # -- stages
  def population_stage(self, population: str) -> engine.Stage:
    exp, s = self.exp, self.settings
    recipe = "retrained" if population == "retrained" else "original"
    identity = {**exp.data_identity, "train": dataclasses.asdict(exp.train_config(recipe)),
                "seeds": s.seeds(population), "convolution": s.convolution}
    if population == "ulira":
      identity["pool"] = {"persons": self.pool.names, "included": self.pool.included.tolist()}
    return exp.workdir.stage("population", population, identity, group=GROUP)

  def method_stage(self, method: Method) -> engine.Stage:
    ucfg = self.exp.unlearn_config
    return self.exp.workdir.stage("population_unlearn", method.name, {
        "factory": method.factory_path, "hparams": method.hparams,
        "batch_size": int(ucfg.get("batch_size", 64)), "seed": int(ucfg.get("seed", 42)),
        "variance": self.settings.variance, "example_level": self.settings.example_level,
        "parents": {p: self.population_stage(p).identity for p in POPULATIONS}},
        group=os.path.join(GROUP, "unlearned"))

  # -- training
  def _training_data(self, population: str) -> tuple[Examples, np.ndarray | None]:
    if population == "retrained":
      return self.splits["retain"], None
    if population == "original":
      return Examples.concatenate([self.splits["retain"], self.splits["forget"]]), None
    retain, pool = self.splits["retain"], self.pool
    masks = np.concatenate([np.ones((self.settings.members, len(retain)), np.int8),
                            pool.included[:, pool.persons]], axis=1)
    return Examples.concatenate([retain, pool.examples]), masks

  def states(self, population: str) -> Any:
    """The population's stacked host states: trained, resumed, or read back from its checkpoints."""
    if population not in self._states:
      st = self.population_stage(population)
      st.begin()
      train, masks = self._training_data(population)
      recipe = "retrained" if population == "retrained" else "original"
      fresh = not st.done
      result = trainer.train_population(
          self.exp.model, train, self.exp.train_config(recipe), task=self.task,
          seeds=self.settings.seeds(population), masks=masks, stage_dir=st.dir,
          member_shards=self.settings.member_shards, convolution=self.settings.convolution,
          progress=self.progress)
      self._states[population] = result.states
      self.train_s += result.wall_s - result.compile_s
      if fresh:
        outputs = self._evaluate_stacked(population, result.states)
        for split, out in outputs.items():
          if parallel.is_primary():
            checkpoints.save_outputs(st.outputs_dir, split, out)
        st.finish({**engine.stage_cost(st.dir), "members": self.settings.members})
        self.log(f"{'population ' + population:>24}: {self.settings.members} models, "
                 f"{result.wall_s:7.1f} s ({result.compile_s:.1f} s compiling)")
    return self._states[population]

  def _evaluate_stacked(self, population: str, states: Any) -> dict[str, dict[str, np.ndarray]]:
    return {split: trainer.evaluate_population(
        self.exp.model, states, self.splits[split], task=self.task,
        batch_size=self.exp.eval_batch_size, member_shards=self.settings.member_shards,
        convolution=self.settings.convolution) for split in EVAL_SPLITS[population]}

  def outputs(self, population: str) -> dict[str, dict[str, np.ndarray]]:
    """Per split, the members' stacked outputs ({"logits": [K, N, C], "loss", "label", ...})."""
    self.states(population)
    st = self.population_stage(population)
    return {split: checkpoints.load_outputs(st.outputs_dir, split)
            for split in EVAL_SPLITS[population]}

  # -- methods
  def unlearn(self, method: Method) -> dict[str, Any]:
    """The method's population columns: it unlearns every member of ``ulira`` and ``original``.

    The members of a population are unlearned as one stacked program
    (:func:`mu_jax.methods.driver.run_stacked`) and evaluated as one; where their batches cannot
    share a shape (a member's forget set smaller than the batch) or JAX cannot vmap a step, they
    run one after another. Each member's outputs are saved as soon as its population is done
    (``<stage>/outputs/<population>_<k>.npz``), so a killed run resumes with the population it
    had not finished; ``done.json`` holds the columns.
    """
    st = self.method_stage(method)
    if st.done:
      return st.record()["columns"]
    states = {p: self.states(p) for p in ("ulira", "original")}
    st.begin()
    ucfg = self.exp.unlearn_config
    run_cfg = driver.RunConfig(batch_size=int(ucfg.get("batch_size", 64)),
                               seed=int(ucfg.get("seed", 42)), task=self.task, log_splits=(),
                               eval_batch_size=self.exp.eval_batch_size)
    k_all = self.settings.members
    t0 = time.time()
    per: dict[str, list[dict[str, np.ndarray]]] = {}
    for population in ("ulira", "original"):
      names = [f"{population}_{k}" for k in range(k_all)]
      todo = [k for k, n in enumerate(names)
              if not os.path.exists(os.path.join(st.outputs_dir, f"{n}.npz"))]
      if todo:
        self._unlearn_members(method, population, states[population], todo, run_cfg,
                              st.outputs_dir)
        parallel.barrier(f"mu_jax.population:{st.rel}:{population}")
      per[population] = [checkpoints.load_outputs(st.outputs_dir, n) for n in names]
    stack = {p: {key: np.stack([m[key] for m in per[p]]) for key in per[p][0]} for p in per}
    columns = self.columns(ulira_logits=stack["ulira"]["pool_logits"],
                           forget_logits=stack["original"]["forget_logits"],
                           retain_logits=stack["original"]["retain_logits"],
                           test_logits=stack["original"]["test_logits"])
    columns["population_halted"] = int(sum(stack[p]["halted"].sum() for p in stack))
    st.finish({"method": method.name, "hparams": method.hparams, "columns": columns,
               "wall_s": time.time() - t0})
    return columns

  def _unlearn_members(self, method: Method, population: str, states: Any, members: list[int],
                       run_cfg: driver.RunConfig, outputs_dir: str) -> None:
    """Unlearns ``members`` of a population, evaluates them and saves their outputs."""
    retain = self.splits["retain"]
    if population == "ulira":
      data = [{"retain": retain, "forget": self.pool.examples.subset(self.pool.member_rows(k))}
              for k in members]
      evals = ("pool",)
    else:
      data = [{"retain": retain, "forget": self.splits["forget"]} for _ in members]
      evals = ("forget", "retain", "test")
    chosen = jax.tree.map(lambda x: x[np.asarray(members)], states)
    self.log(f"{method.name:>24}: unlearning {len(members)} {population} models")
    result = unlearn_members(method, chosen, data, run_cfg, label=f"{method.name} {population}",
                             member_shards=self.settings.member_shards, progress=self.progress,
                             log=self.log)
    unlearned, halted = result.states, result.halted
    self.train_s += result.wall_s
    outs = {split: trainer.evaluate_population(
        self.exp.model, unlearned, self.splits[split], task=self.task,
        batch_size=self.exp.eval_batch_size, member_shards=self.settings.member_shards,
        convolution=self.settings.convolution) for split in evals}
    if parallel.is_primary():
      for i, k in enumerate(members):
        checkpoints.save_outputs(outputs_dir, f"{population}_{k}", {
            **{f"{split}_{key}": outs[split][key][i] for split in evals
               for key in ("logits", "loss")}, "halted": np.bool_(halted[i])})

  # -- columns
  def _accuracy(self, logits: np.ndarray, split: str) -> np.ndarray:
    return trainer._accuracy(logits, self.splits[split].labels, self.task)  # pylint: disable=protected-access

  def _confidences(self, logits: np.ndarray, split: str) -> np.ndarray:
    phi = stats.logit_scaled_confidence(logits, self.splits[split].labels, self.task)
    # A multi-label head gives one φ per attribute: the example's φ is their mean.
    return phi.mean(axis=-1) if phi.ndim == 3 else phi

  def _ulira(self, pool_logits: np.ndarray) -> dict[str, Any]:
    out = stats.ulira(self._confidences(pool_logits, "pool"),
                      self.pool.included[:, self.pool.persons] if self.settings.example_level
                      else self.pool.included, self.pool.persons,
                      example_level=self.settings.example_level, variance=self.settings.variance,
                      seed=self.settings.seed)
    return {k: v for k, v in out.items() if not isinstance(v, np.ndarray)}

  def _retrained(self) -> dict[str, Any]:
    out = self.outputs("retrained")
    return {"forget": self._confidences(out["forget"]["logits"], "forget"),
            "retain_acc": self._accuracy(out["retain"]["logits"], "retain"),
            "test_acc": self._accuracy(out["test"]["logits"], "test"),
            "pool_logits": out["pool"]["logits"],
            # The final score divides by the retrained models' accuracies: undefined (nan) where a
            # tiny run leaves one of them at 0.
            "defined": bool(np.all(self._accuracy(out["retain"]["logits"], "retain") > 0) and
                            np.all(self._accuracy(out["test"]["logits"], "test") > 0))}

  def columns(self, *, ulira_logits: np.ndarray, forget_logits: np.ndarray,
              retain_logits: np.ndarray, test_logits: np.ndarray) -> dict[str, Any]:
    """U-LiRA and forget-score columns of a row whose population outputs are given.

    Args:
      ulira_logits: [K, I] pool logits of the row's U-LiRA population (after unlearning).
      forget_logits, retain_logits, test_logits: the row's forget-score population's logits.
    """
    r = self._retrained()
    f = stats.forget_score(self._confidences(forget_logits, "forget"), r["forget"])
    retain_acc, test_acc = self._accuracy(retain_logits, "retain"), self._accuracy(test_logits,
                                                                                   "test")
    defined = r["defined"]
    return {**self._ulira(ulira_logits), "forget_score": f["forget_score"],
            "neurips_score": stats.neurips_score(f["forget_score"], retain_acc, r["retain_acc"],
                                                 test_acc, r["test_acc"]) if defined
            else float("nan"),
            "population_members": self.settings.members}

  def original_columns(self) -> dict[str, Any]:
    u, o = self.outputs("ulira"), self.outputs("original")
    return self.columns(ulira_logits=u["pool"]["logits"], forget_logits=o["forget"]["logits"],
                        retain_logits=o["retain"]["logits"], test_logits=o["test"]["logits"])

  def retrained_columns(self) -> dict[str, Any]:
    r = self._retrained()
    accs = {"retain_acc": r["retain_acc"], "test_acc": r["test_acc"]} if r["defined"] else {}
    ceiling = stats.retrained_ceiling(r["forget"], seed=self.settings.seed, **accs)
    return {**self._ulira(r["pool_logits"]), "forget_score": ceiling["forget_score"],
            "neurips_score": ceiling.get("neurips_score", float("nan")),
            "population_members": self.settings.members}

  def plan(self, methods: Sequence[Method]) -> str:
    """What the populations will cost, said before anything runs.

    The estimate reads this workdir's single-model stages: training the three populations costs at
    most 3·K times the original's training (stacking makes it less), and each method's population
    run about 2·K times the method's single run plus their evaluation.
    """
    k = self.settings.members
    exp = self.exp
    train_s = exp.trained_stage("original").record()["wall_s"] if exp.trained_stage(
        "original").done else float("nan")
    pending = [p for p in POPULATIONS if not self.population_stage(p).done]
    unlearn_s = 0.0
    todo = [m for m in methods if not self.method_stage(m).done]
    for m in todo:
      ms = exp.method_stage(m)
      unlearn_s += 2 * k * (ms.record()["wall_s"] if ms.done else float("nan"))
    return (f"populations: {len(pending)} of {len(POPULATIONS)} to train ({len(pending) * k} "
            f"models, at most ~{len(pending) * k * train_s / 60:.1f} min unstacked), "
            f"{len(todo)} methods × {2 * k} unlearning runs (~{unlearn_s / 60:.1f} min of "
            f"unlearning steps, from each method's single run)")


def unlearn_members(method: Method | Sequence[Method], states: Any,
                    data: Sequence[Mapping[str, Examples]],
                    run_cfg: driver.RunConfig, *, label: str, member_shards: int = 1,
                    progress: bool = True, log: Callable[[str], None] = print
                    ) -> driver.StackedResult:
  """Unlearns stacked ``states`` with ``method`` (or ``method[k]``), member k on ``data[k]``.

  One vmapped program (:func:`mu_jax.methods.driver.run_stacked`); member after member
  (:func:`mu_jax.methods.driver.run_detailed`) where the members' batches cannot share a shape or
  JAX cannot vmap a step. ``member_shards`` splits the stacked members over groups of devices.

  Returns:
    The stacked result; after the member-by-member fallback its states hold the unlearned
    parameters and BatchNorm statistics (what evaluation reads), its ``wall_s`` the runs' epoch
    seconds (compilation excluded) and its ``compile_s`` the rest of their wall time.
  """
  unlearners = ([method.create()] * len(data) if isinstance(method, Method)
                else [m.create() for m in method])
  try:
    return driver.run_stacked(unlearners, states, data, run_cfg, member_shards=member_shards,
                              progress=label if progress else None)
  except driver.NotStackable as e:
    log(f"{unlearners[0].name:>24}: {e}")
  runs = [driver.run_detailed(unlearners[k], trainer.member(states, k), d, run_cfg)
          for k, d in tqdm(list(enumerate(data)), desc=label, leave=False,
                           disable=None if progress else True)]
  stack = lambda trees: jax.tree.map(lambda *x: np.stack(x), *trees)
  # The epochs' seconds: a call's wall time also counts its compilation.
  train_s = sum(row.get("epoch_s", 0.0) for r in runs for row in r.history)
  return driver.StackedResult(
      states.replace(params=stack([r.state.params for r in runs]),
                     batch_stats=stack([r.state.batch_stats for r in runs])),
      aux=None, halted=np.asarray([r.halted for r in runs]),
      steps=np.asarray([sum(row.get("steps", 0) for row in r.history) for r in runs]),
      examples=np.asarray([r.examples for r in runs]), wall_s=train_s,
      compile_s=sum(r.wall_s for r in runs) - train_s)


def add_columns(exp: engine.Experiment, rows: list[dict[str, Any]], methods: Sequence[Method], *,
                progress: bool = True, log: Callable[[str], None] = print) -> float:
  """Adds the population columns to the original, retrained and method rows (in place).

  Returns:
    The seconds this call spent training and unlearning members (0 without a ``population``
    section in the config, when it does nothing).
  """
  settings = Settings.from_config(exp.config)
  if settings is None:
    return 0.0
  runner = Runner(exp, settings, progress=progress, log=log)
  log(runner.plan(methods))
  def update(stage: engine.Stage, cols: Mapping[str, Any]) -> None:
    for r in rows:  # a stage may have two rows (a method and its tuned values, when equal)
      if r.get("stage") == stage.rel:
        r.update(cols)

  update(exp.trained_stage("original"), runner.original_columns())
  update(exp.trained_stage("retrained"), runner.retrained_columns())
  for m in methods:
    cols = runner.unlearn(m)
    update(exp.method_stage(m), cols)
    log(f"{m.name:>24}: U-LiRA AUC {cols['ulira_auc']:.3f} acc {cols['ulira_acc']:.3f}, "
        f"forget score {cols['forget_score']:.3f}")
  return runner.train_s
