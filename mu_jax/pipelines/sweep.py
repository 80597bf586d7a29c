"""Hyperparameter sweeps against the retrained model, scored on a validation forget set.

Tuning must never look at the forget set it reports. A sweep therefore solves a *validation*
problem that holds no reported-forget person at all: the retrained model (trained on retain, which
holds none) plays the original; ``validation_persons`` persons drawn from retain with a seed play
the forget set (their retain images), the other retain images the retain set; and a model trained
on retain without those persons, with the retrained recipe (the ``validation`` stage), is the
retrained reference. The test and unseen splits serve as usual.

A method's candidates (the grid of ``config.sweep.grid.<method>``, over its continuous
hyperparameters: learning rates and the values its steps read as traced arrays) unlearn that
problem as one stacked program (:func:`mu_jax.methods.driver.run_stacked`, one member per
candidate), are evaluated, and scored by the criterion:

* ``distance`` (default): the mean absolute gap to the validation reference over forget accuracy,
  the reference attack accuracy (forget vs unseen losses) and test accuracy; lower is better;
* ``tow``: tug of war over forget, retain and test accuracy
  (:func:`mu_jax.evaluation.population.tow`); higher is better.

Ties go to the candidate whose parameters moved least from the model it started from. The chosen
values then run on the reported forget set as an ordinary method stage
(:meth:`mu_jax.experiment.Experiment.unlearn_stage`). Stages live under ``WORKDIR/sweep/``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from mu_jax import checkpoints, parallel
from mu_jax import experiment as engine
from mu_jax.data.splits import Examples
from mu_jax.evaluation import distances, mia, plots, report
from mu_jax.evaluation import population as stats
from mu_jax.methods import driver
from mu_jax.methods.registry import Method
from mu_jax.pipelines import population
from mu_jax.training import evaluate
from mu_jax.training import fit as fitlib
from mu_jax.training import population as trainer

GROUP = "sweep"
CRITERIA = ("distance", "tow")
SCORED = ("val_forget", "val_retain", "test", "unseen")


@dataclasses.dataclass(frozen=True)
class Settings:
  """``config.sweep``.

  Attributes:
    grid: method name → {hyperparameter: candidate values}; the candidates are the product.
    validation_persons: persons drawn from retain as the validation forget set (None: as many as
      the reported forget set has).
    seed: draws the validation persons.
    criterion: "distance" or "tow" (module docstring).
  """

  grid: Mapping[str, Mapping[str, Sequence[Any]]]
  validation_persons: int | None = None
  seed: int = 0
  criterion: str = "distance"

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any]) -> "Settings":
    """The config's sweep settings.

    Raises:
      ValueError: no ``sweep`` section, an unknown key, criterion or an empty grid entry.
    """
    section = dict(cfg.get("sweep") or {})
    if not section:
      raise ValueError("the config has no sweep section (config.sweep.grid.<method>.<name>=[...])")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - fields)
    if unknown:
      raise ValueError(f"config.sweep: unknown keys {unknown}; it has {sorted(fields)}")
    s = cls(**section)
    if s.criterion not in CRITERIA:
      raise ValueError(f"config.sweep.criterion must be one of {CRITERIA}, got {s.criterion!r}")
    for method, axes in s.grid.items():
      for name, values in dict(axes).items():
        if not list(values):
          raise ValueError(f"config.sweep.grid.{method}.{name} is empty")
    return s

  def candidates(self, method: str) -> list[dict[str, Any]]:
    """The grid's points for ``method`` (hyperparameter overrides), in grid order.

    Raises:
      ValueError: the grid has no entry for ``method``.
    """
    axes = dict(self.grid.get(method) or {})
    if not axes:
      raise ValueError(f"config.sweep.grid has no entry for {method!r}: give "
                       f"--config.sweep.grid.{method}.lr='(0.001, 0.01)' or the like")
    names = sorted(axes)
    grid = itertools.product(*(list(axes[n]) for n in names))
    return [dict(zip(names, values)) for values in grid]


def validation_persons(data: Any, settings: Settings) -> list[str]:
  """The validation forget persons of ``data`` (a dataset or an experiment: its ``split``): drawn
  from the retain persons, never a forget person. Called on the loaded data as the experiment's
  ``check``, so a bad request fails before the workdir is written.

  Raises:
    ValueError: fewer than two retain persons would be left, or a person is in forget and retain
      (a protocol that cuts persons in two: retain persons would then not be unseen by design).
  """
  retain = sorted(set(data.split("retain").identities.astype(str).tolist()))
  forget = set(data.split("forget").identities.astype(str).tolist())
  shared = sorted(forget & set(retain))
  if shared:
    raise ValueError(f"a sweep needs whole forgotten persons, but {len(shared)} have retain images "
                     f"({', '.join(shared[:5])}): forget whole persons "
                     "(data.forget.mode='identity')")
  n = settings.validation_persons or len(forget)
  if not 0 < n <= len(retain) - 2:
    raise ValueError(f"config.sweep.validation_persons={n} must leave at least 2 of the "
                     f"{len(retain)} retain persons")
  rng = np.random.default_rng(settings.seed)
  return sorted(rng.choice(retain, size=n, replace=False).tolist())


class Runner:
  """The validation problem of one experiment and the sweeps over it."""

  def __init__(self, exp: engine.Experiment, settings: Settings, *,
               log: Callable[[str], None] = print):
    self.exp, self.settings, self.log = exp, settings, log
    self.persons = validation_persons(exp, settings)
    retain = exp.split("retain")
    held = np.isin(retain.identities.astype(str), self.persons)
    self.splits: dict[str, Examples] = {
        "val_forget": retain.subset(np.flatnonzero(held)),
        "val_retain": retain.subset(np.flatnonzero(~held)),
        "test": exp.split("test"), "unseen": exp.split("unseen")}

  def validation_stage(self) -> engine.Stage:
    exp = self.exp
    return exp.workdir.stage("sweep_validation", "validation", {
        **exp.data_identity, "seed": exp.seed,
        "train": dataclasses.asdict(exp.train_config("retrained")), "persons": self.persons},
        group=GROUP)

  def sweep_stage(self, method: Method) -> engine.Stage:
    ucfg = self.exp.unlearn_config
    return self.exp.workdir.stage("sweep", method.name, {
        "factory": method.factory_path, "hparams": method.hparams,
        "candidates": self.settings.candidates(method.name), "criterion": self.settings.criterion,
        "batch_size": int(ucfg.get("batch_size", 64)), "seed": int(ucfg.get("seed", 42)),
        "validation": self.validation_stage().identity,
        "start": self.exp.trained_stage("retrained").identity}, group=GROUP)

  def reference(self) -> dict[str, dict[str, np.ndarray]]:
    """The validation reference's outputs on the scored splits (trained now if missing)."""
    st = self.validation_stage()
    if not st.done:
      st.begin()
      result = fitlib.fit(self.exp.model, self.splits["val_retain"],
                          self.exp.train_config("retrained"), task=self.exp.data.task,
                          seed=self.exp.seed, stage_dir=st.dir, progress=False)
      outs = evaluate.predict_splits(parallel.replicate(result.state), self.splits,
                                     task=self.exp.data.task, batch_size=self.exp.eval_batch_size)
      if parallel.is_primary():
        for split, out in outs.items():
          checkpoints.save_outputs(st.outputs_dir, split, out)
      st.finish({**engine.stage_cost(st.dir), "persons": self.persons})
      self.log(f"{'validation':>16}: {len(self.persons)} persons held out of retain, reference "
               f"trained on {len(self.splits['val_retain'])} images")
    return {s: checkpoints.load_outputs(st.outputs_dir, s) for s in SCORED}

  def scores(self, outs: Mapping[str, Mapping[str, np.ndarray]],
             ref: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, float]:
    """One model's validation numbers and the criterion against the reference."""
    task = self.exp.data.task

    def numbers(o):
      acc = {s: report.accuracy(o[s], task) for s in ("val_forget", "val_retain", "test")}
      attack = mia.reference_mia(o["val_forget"]["loss"], o["unseen"]["loss"])["mia_attack_acc"]
      return {"forget_acc": acc["val_forget"], "retain_acc": acc["val_retain"],
              "test_acc": acc["test"], "mia_attack_acc": float(attack)}

    mine, want = numbers(outs), numbers(ref)
    row = dict(mine)
    row["distance"] = float(np.mean([abs(mine[k] - want[k])
                                     for k in ("forget_acc", "mia_attack_acc", "test_acc")]))
    row["tow"] = stats.tow(mine["forget_acc"], mine["retain_acc"], mine["test_acc"],
                           want["forget_acc"], want["retain_acc"], want["test_acc"])
    return row

  def sweep(self, method: Method, progress: bool = False) -> dict[str, Any]:
    """Runs (or reads) ``method``'s candidates on the validation problem; the stage's done.json.

    Raises:
      ValueError: a grid hyperparameter the method does not take, or one that changes the
        program (epochs, a layer count): only values one compiled step can read are swept.
    """
    st = self.sweep_stage(method)
    if st.done:
      return st.record()
    exp = self.exp
    ref = self.reference()
    cands = self.settings.candidates(method.name)
    methods = [tuned(exp, method, c) for c in cands]
    exp.train_stage("retrained")
    start = exp.load_state(exp.trained_stage("retrained"))
    states = jax.tree.map(lambda x: np.stack([np.asarray(x)] * len(cands)),
                          parallel.to_host(start))
    st.begin()
    ucfg = exp.unlearn_config
    run_cfg = driver.RunConfig(batch_size=int(ucfg.get("batch_size", 64)),
                               seed=int(ucfg.get("seed", 42)), task=exp.data.task, log_splits=(),
                               eval_batch_size=exp.eval_batch_size)
    data = [{"retain": self.splits["val_retain"], "forget": self.splits["val_forget"]}] * len(cands)
    try:
      result = population.unlearn_members(methods, states, data, run_cfg, label=method.name,
                                          progress=progress, log=self.log)
    except driver.NotStackable:  # a ValueError too, but not the grid's
      raise
    except ValueError as e:  # candidates that are not one program
      raise ValueError(f"config.sweep.grid.{method.name}: sweep only values one compiled step "
                       f"reads (learning rates, traced values): {e}") from e
    outs = {s: trainer.evaluate_population(exp.model, result.states, ex, task=exp.data.task,
                                           batch_size=exp.eval_batch_size)
            for s, ex in self.splits.items()}
    if parallel.is_primary():
      for s, out in outs.items():
        checkpoints.save_outputs(st.outputs_dir, s, out)
    rows = []
    for k, cand in enumerate(cands):
      member = {s: {**o, "logits": o["logits"][k], "loss": o["loss"][k]} for s, o in outs.items()}
      row = {"hparams": cand, **self.scores(member, ref), "halted": bool(result.halted[k]),
             "change": distances.param_l2_distance(
                 jax.tree.map(lambda x: x[k], result.states.params), start.params)}
      rows.append(row)
    best = choose(rows, self.settings.criterion)
    return st.finish({"method": method.name, "criterion": self.settings.criterion,
                      "candidates": rows, "chosen": rows[best]["hparams"],
                      "validation_persons": self.persons, "wall_s": result.wall_s,
                      "compile_s": result.compile_s})


def choose(rows: Sequence[Mapping[str, Any]], criterion: str) -> int:
  """The index of the best candidate by ``criterion`` (ties: the smallest ``change``); halted
  candidates only when every candidate halted."""
  sign = -1.0 if criterion == "tow" else 1.0
  order = sorted(range(len(rows)), key=lambda k: (rows[k]["halted"], sign * rows[k][criterion],
                                                  rows[k]["change"]))
  return order[0]


def tuned(exp: engine.Experiment, method: Method, values: Mapping[str, Any]) -> Method:
  """``method`` with ``values`` over its hyperparameters, checked as the config's are: the
  method of a candidate, or of the ``<name> (tuned)`` stage with the chosen values."""
  reg = exp.task.registry
  given = {**dict((exp.unlearn_config.get("hparams") or {}).get(method.name) or {}), **values}
  spec = method.name if method.name in reg.names() else method.factory_path
  (out,) = reg.resolve([spec], {method.name: given})
  return out


def run(exp: engine.Experiment, methods: Sequence[Method], *, progress: bool = False,
        log: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """Sweeps every method, then runs its chosen values on the reported forget set.

  Every grid and candidate is checked before anything trains; the original and retrained models
  are trained (or resumed) first.

  Returns:
    Per method {"method", "chosen", "candidates", "stage" (the tuned method stage),
    "sweep_stage"}.

  Raises:
    ValueError: a method without a grid, or a candidate value the method does not take.
  """
  settings = Settings.from_config(exp.config)
  grids = {m.name: [tuned(exp, m, c) for c in settings.candidates(m.name)] for m in methods}
  runner = Runner(exp, settings, log=log)
  # Each candidate unlearns fewer images than the method's run on the forget set (when one exists):
  # G candidates cost at most G such runs, stacked into one.
  known = [exp.method_stage(m) for m in methods if exp.method_stage(m).done]
  bound = sum(len(grids[st.name]) * st.record()["wall_s"] for st in known)
  log(f"sweep: {len(methods)} methods, {sum(map(len, grids.values()))} candidates on "
      f"{len(runner.persons)} validation persons (one stacked run per method), then one tuned "
      "run each on the forget set; " + (
          f"candidates' steps at most ~{bound:.0f} s unstacked" if len(known) == len(methods)
          else "no estimate until each method has run once here (experiments.unlearn)"))
  for stage in engine.TRAINED:
    exp.train_stage(stage, progress=progress)
  out = []
  for m in methods:
    rec = runner.sweep(m, progress=progress)
    best = next(r for r in rec["candidates"] if r["hparams"] == rec["chosen"])
    axes = dict(settings.grid.get(m.name) or {})
    edge = [k for k, v in rec["chosen"].items()
            if len(axes[k]) > 2 and v in (min(axes[k]), max(axes[k]))]
    log(f"{m.name:>16}: {len(rec['candidates'])} candidates, chosen {rec['chosen']} "
        f"({settings.criterion} {best[settings.criterion]:.4f})"
        + (f"; {', '.join(edge)} at the grid's edge: a wider grid may do better" if edge else ""))
    if parallel.is_primary():
      os.makedirs(os.path.join(exp.path, "results"), exist_ok=True)
      plots.sweep_candidates(os.path.join(exp.path, "results", f"sweep_{m.name}.png"), m.name,
                             rec["candidates"], settings.criterion, rec["chosen"])
    t = tuned(exp, m, rec["chosen"])
    exp.unlearn_stage(t, progress=progress)
    out.append({"method": m.name, "chosen": rec["chosen"], "candidates": rec["candidates"],
                "stage": exp.method_stage(t).rel, "sweep_stage": runner.sweep_stage(m).rel})
  return out


def tuned_stages(exp: engine.Experiment, methods: Sequence[Method]) -> list[engine.Stage]:
  """The finished ``<name> (tuned)`` stages of ``methods``: the sweep of this config finished and
  its chosen values' stage done; none where the config's sweep does not apply."""
  try:
    settings = Settings.from_config(exp.config)
    runner = Runner(exp, settings, log=lambda _: None)
  except ValueError:  # no sweep section, or data a sweep refuses
    return []
  out = []
  for m in methods:
    if m.name not in settings.grid:
      continue
    st = runner.sweep_stage(m)
    if st.done:
      ms = exp.method_stage(tuned(exp, m, st.record()["chosen"]))
      if ms.done:
        out.append(ms)
  return out
