"""``--seeds=N``: the benchmark's rows as mean ± std over N training seeds, run as populations.

Seed k is ``config.seed + k``. The N original models train as one stacked program, and so do the N
retrained ones (:mod:`mu_jax.training.population`: member k trains as ``fit`` with seed k would,
to float rounding); every method then unlearns the N originals as one vmapped program (member
after member where it cannot: :func:`mu_jax.pipelines.population.unlearn_members`). Each seed's
rows are those of the one-seed benchmark (:func:`mu_jax.evaluation.report.model_row`, against the
retrained model of the same seed), and ``results/`` holds their mean and ``<key>_std``
(:func:`mu_jax.evaluation.report.aggregate_seeds`).

Stages, under ``WORKDIR/seeds/`` (:mod:`mu_jax.experiment`): ``original-<hash>`` and
``retrained-<hash>`` hold the N trained models (a checkpoint per epoch: a killed run resumes at its
last epoch) and their per-example outputs (``outputs/<split>.npz``, a leading member axis);
``unlearned/<method>-<hash>`` holds the N unlearned models (``final/``) and their outputs, written
after the method's run, which a killed run repeats. A row's ``wall_s`` is its stage's seconds
(compilation excluded) divided by N: the cost of one model when N run together.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from mu_jax import checkpoints, costs, parallel
from mu_jax import experiment as engine
from mu_jax.evaluation import report
from mu_jax.methods import driver
from mu_jax.methods.registry import Method
from mu_jax.pipelines import population
from mu_jax.training import population as trainer

GROUP = "seeds"


def check(config: dict[str, Any], seeds: int) -> None:
  """Refuses what ``--seeds`` cannot run, before any work.

  Raises:
    ValueError: N < 1; N > 1 with an imported original (one model, no seeds to train) or with a
      ``population`` section (its columns already come from many models: run them apart).
  """
  if not isinstance(seeds, int) or seeds < 1:
    raise ValueError(f"--seeds must be a positive integer, got {seeds!r}")
  if seeds > 1 and (config.get("model") or {}).get("checkpoint"):
    raise ValueError("--seeds > 1 trains the original model with N seeds, but config.model."
                     "checkpoint imports one: run it with --seeds=1")
  if seeds > 1 and config.get("population"):
    raise ValueError("--seeds > 1 with a population section: the population columns already come "
                     "from many models; run the two apart (--seeds=1 for the population config)")


class Runner:
  """The N-seed models of one experiment and the method runs over them."""

  def __init__(self, exp: engine.Experiment, seeds: int, *, progress: bool = True,
               log: Callable[[str], None] = print):
    self.exp, self.progress, self.log = exp, progress, log
    self.seeds = [exp.seed + k for k in range(seeds)]
    self.splits = {s: exp.split(s) for s in engine.SPLITS}
    self._states: dict[str, Any] = {}

  @property
  def n(self) -> int:
    return len(self.seeds)

  def trained_stage(self, recipe: str) -> engine.Stage:
    exp = self.exp
    return exp.workdir.stage("seeds", recipe, {
        **exp.data_identity, "seeds": self.seeds,
        "train": dataclasses.asdict(exp.train_config(recipe))}, group=GROUP)

  def method_stage(self, method: Method) -> engine.Stage:
    ucfg = self.exp.unlearn_config
    return self.exp.workdir.stage("seeds_unlearn", method.name, {
        "factory": method.factory_path, "hparams": method.hparams,
        "batch_size": int(ucfg.get("batch_size", 64)), "seed": int(ucfg.get("seed", 42)),
        "original": self.trained_stage("original").identity}, group=os.path.join(GROUP, "unlearned"))

  def _evaluate(self, stage: engine.Stage, states: Any) -> None:
    """Saves every split's stacked outputs of ``states`` in the stage (process 0)."""
    for split, examples in self.splits.items():
      out = trainer.evaluate_population(self.exp.model, states, examples, task=self.exp.data.task,
                                        batch_size=self.exp.eval_batch_size)
      if parallel.is_primary():
        checkpoints.save_outputs(stage.outputs_dir, split, out)

  def trained(self, recipe: str) -> dict[str, Any]:
    """Trains (or resumes, or reads) the N models of ``recipe``; returns its done.json."""
    st = self.trained_stage(recipe)
    if recipe not in self._states:
      st.begin()
      fresh = not st.done
      result = trainer.train_population(
          self.exp.model, self.exp.task.train_examples(self.exp.data, recipe),
          self.exp.train_config(recipe), task=self.exp.data.task, seeds=self.seeds,
          stage_dir=st.dir, progress=self.progress)
      self._states[recipe] = result.states
      if fresh:
        self._evaluate(st, result.states)
        with open(os.path.join(st.dir, "metrics.jsonl")) as f:
          epochs = [json.loads(line) for line in f]
        st.finish({**engine.stage_cost(st.dir), "seeds": self.seeds,
                   "examples_per_model": np.sum([r["member_examples"] for r in epochs],
                                                axis=0).tolist()})
    return st.record()

  def unlearn(self, method: Method) -> dict[str, Any]:
    """Unlearns the N originals with ``method`` (or reads the finished stage); its done.json."""
    st = self.method_stage(method)
    if st.done:
      return st.record()
    originals = self._states.get("original")
    if originals is None:
      self.trained("original")
      originals = self._states["original"]
    st.begin()
    ucfg = self.exp.unlearn_config
    run_cfg = driver.RunConfig(batch_size=int(ucfg.get("batch_size", 64)),
                               seed=int(ucfg.get("seed", 42)), task=self.exp.data.task,
                               log_splits=(), eval_batch_size=self.exp.eval_batch_size)
    data = self.exp.task.unlearning_data(self.exp.data)
    data = [{"retain": data.split("retain"), "forget": data.split("forget")}] * self.n
    result = population.unlearn_members(method, originals, data, run_cfg, label=method.name,
                                        progress=self.progress, log=self.log)
    if parallel.is_primary():
      final = checkpoints.Checkpointer(os.path.join(st.dir, "final"), max_to_keep=1)
      final.save(0, {"params": result.states.params, "batch_stats": result.states.batch_stats})
      final.close()
    self._evaluate(st, result.states)
    return st.finish({"method": method.name, "hparams": method.hparams, "seeds": self.seeds,
                      "wall_s": result.wall_s, "compile_s": result.compile_s,
                      "examples_per_model": result.examples.tolist(),
                      "halted": result.halted.tolist()})

  def _params(self, stage: engine.Stage, recipe: str | None) -> Any:
    if recipe is not None:
      return self._states[recipe].params
    tree = {"params": self._states["original"].params,
            "batch_stats": self._states["original"].batch_stats}
    return checkpoints.Checkpointer(os.path.join(stage.dir, "final")).restore(tree)["params"]

  def rows(self, methods: Sequence[Method], *, nomus_lambda: float, n_bootstrap: int
           ) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
    """Each seed's rows (original, retrained, methods) and the first seed's outputs by stage."""
    stages = [(self.trained_stage(r), r) for r in engine.TRAINED] + \
        [(self.method_stage(m), None) for m in methods]
    ret_stage = stages[1][0]
    outs = {st.rel: {s: checkpoints.load_outputs(st.outputs_dir, s) for s in engine.SPLITS}
            for st, _ in stages}
    member = lambda st, k: {s: {**o, "logits": o["logits"][k], "loss": o["loss"][k]}
                            for s, o in outs[st.rel].items()}
    params = {st.rel: self._params(st, r) for st, r in stages}
    records = {st.rel: st.record() for st, _ in stages}
    retrain_s = records[ret_stage.rel]["wall_s"] / self.n
    per_seed = []
    for k in range(self.n):
      retrained = member(ret_stage, k)
      rows = []
      for st, recipe in stages:
        rec = records[st.rel]
        with costs.measure("evaluation"):
          row = report.model_row(
              recipe or rec["method"], member(st, k), self.exp.dataset.task, retrained=retrained,
              params=jax.tree.map(lambda x: x[k], params[st.rel]),
              retrained_params=jax.tree.map(lambda x: x[k], params[ret_stage.rel]),
              nomus_lambda=nomus_lambda, n_bootstrap=n_bootstrap, wall_s=rec["wall_s"] / self.n,
              examples=rec["examples_per_model"][k], retrain_wall_s=retrain_s)
        row["stage"] = st.rel
        if recipe is None:
          row["hparams"] = rec["hparams"]
          if rec["halted"][k]:
            row["halted"] = True
        rows.append(row)
      per_seed.append(rows)
    return per_seed, {st.rel: member(st, 0) for st, _ in stages}


def run(exp: engine.Experiment, seeds: int, *, ledger: costs.Ledger, progress: bool = True,
        log: Callable[[str], None] = print
        ) -> tuple[list[list[dict[str, Any]]], dict[str, Any]]:
  """Trains, unlearns and evaluates the N seeds of ``exp``.

  Returns:
    Each seed's rows and the first seed's outputs by stage directory (for the plots).
  """
  runner = Runner(exp, seeds, progress=progress, log=log)
  for recipe in engine.TRAINED:
    rec, call_s = ledger.run(f"{recipe} ({seeds} seeds)", runner.trained_stage(recipe).done,
                             lambda r=recipe: runner.trained(r))
    log(f"{recipe:>16}: {seeds} models, {rec['wall_s']:7.1f} s training ({call_s:.1f} s this call)")
  for method in exp.selected:
    rec, call_s = ledger.run(method.name, runner.method_stage(method).done,
                             lambda m=method: runner.unlearn(m))
    log(f"{method.name:>16}: {seeds} models, {rec['wall_s']:6.1f} s unlearning "
        f"({call_s:.1f} s this call)" +
        (f"  [{sum(rec['halted'])} stopped: non-finite loss]" if any(rec["halted"]) else ""))
  ecfg = exp.config.get("eval", {})
  with ledger.stage("evaluation"):
    return runner.rows(exp.selected, nomus_lambda=float(ecfg.get("nomus_lambda", 0.5)),
                       n_bootstrap=int(ecfg.get("bootstrap", 200)))
