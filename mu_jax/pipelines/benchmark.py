"""The main job: original, retrained and every method on one config, evaluated and tabulated.

Train (or resume) the original and retrained models, run each method from the original (its
stage named by its hyperparameters, :mod:`mu_jax.experiment`), save per-example outputs, and
compute one result row per model against the retrained model. With ``seeds=N`` the N seeds' models
train and unlearn as populations and ``WORKDIR/results`` holds mean ± std
(:mod:`mu_jax.pipelines.seeds`). SISA deployments found in the workdir
(``WORKDIR/sisa/*/results.json``) join the table as ``sisa`` rows. A config with a ``population``
section adds the population columns (U-LiRA, the NeurIPS 2023 forget score;
:mod:`mu_jax.pipelines.population`) to the original, retrained and method rows.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from mu_jax import checkpoints, costs, parallel
from mu_jax import experiment as engine
from mu_jax.evaluation import columns, plots, report
from mu_jax.methods.registry import Method
from mu_jax.pipelines import population, seeds as seeds_lib, sweep


def evaluate_stages(exp: engine.Experiment, stages: Sequence[engine.Stage], *,
                    n_bootstrap: int = 200) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Rows (and outputs, by row label) of original, retrained and the given finished stages.

  Every row carries ``model`` (the command-line name), ``stage`` (its directory) and, for methods,
  ``hparams``.
  """
  lam = float(exp.config.get("eval", {}).get("nomus_lambda", 0.5))
  task = exp.task
  retrained = exp.trained_stage("retrained")
  retrained_state = exp.load_state(retrained)
  retrained_out = task.outputs(exp, retrained, retrained_state)
  retrain_cost = retrained.record()
  rows, outputs = [], {}
  for st in (exp.trained_stage("original"), retrained, *stages):
    record = st.record()
    state = retrained_state if st is retrained else exp.load_state(st)
    with costs.measure("evaluation"):
      out = retrained_out if st is retrained else task.outputs(exp, st, state)
      row = report.model_row(st.name, out, exp.dataset.task, retrained=retrained_out,
                             params=state.params, retrained_params=retrained_state.params,
                             nomus_lambda=lam, n_bootstrap=n_bootstrap, wall_s=record["wall_s"],
                             examples=record["examples"], retrain_wall_s=retrain_cost["wall_s"])
    row["stage"] = st.rel
    if "hparams" in record:
      row["hparams"] = record["hparams"]
    if "compile_s" in record:
      row["compile_s"] = record["compile_s"]
    if record.get("halted"):
      row["halted"] = True
    rows.append(row)
    outputs[st.rel] = out
  rows.extend(sisa_rows(exp.path))
  return rows, outputs


def sisa_rows(workdir: str) -> list[dict[str, Any]]:
  """The ``sisa`` rows of the SISA deployments served in a workdir."""
  root = os.path.join(workdir, "sisa")
  rows = []
  if os.path.isdir(root):
    for entry in sorted(os.listdir(root)):
      path = os.path.join(root, entry, "results.json")
      if os.path.exists(path):
        rows.append(dict(checkpoints.read_json(path)["row"], model="sisa",
                         stage=os.path.join("sisa", entry)))
  return rows


def run_seed(config: dict[str, Any], workdir: str, methods: str | Sequence[str], *,
             overwrite: bool = False, progress: bool = True, log: Callable[[str], None] = print,
             ledger: costs.Ledger | None = None
             ) -> tuple[list[dict[str, Any]], dict[str, Any], engine.Experiment]:
  """Trains, unlearns and evaluates one seed in ``workdir``; ``ledger`` records each stage's
  compile, training, evaluation and other seconds (a stage found finished trains 0 s)."""
  ledger = ledger or costs.Ledger()
  # A bad population section, or data it cannot use, fails before any work.
  check = population.check_data if population.Settings.from_config(config) else None
  with ledger.stage("data + workdir"):
    exp = engine.Experiment.create(config, workdir, methods=methods, overwrite=overwrite,
                                   check=check)
  for stage in engine.TRAINED:
    rec, call_s = ledger.run(stage, exp.trained_stage(stage).done,
                             lambda s=stage: exp.train_stage(s, progress=progress))
    log(f"{stage:>16}: {rec['examples']:>8,} examples, {rec['wall_s']:7.1f} s training "
        f"({call_s:.1f} s this call)")
  stages = []
  for method in exp.selected:
    rec, call_s = ledger.run(method.name, exp.method_stage(method).done,
                             lambda m=method: exp.unlearn_stage(m))
    stages.append(exp.method_stage(method))
    s = rec["evaluation"]
    log(f"{method.name:>16}: forget {s['forget_acc']:.3f} retain {s['retain_acc']:.3f} "
        f"test {s['test_acc']:.3f} attack {s['mia_attack_acc']:.3f} "
        f"{rec['wall_s']:6.1f} s ({call_s:.1f} s this call)"
        + ("  [stopped: non-finite loss]" if rec.get("halted") else ""))
  tuned = sweep.tuned_stages(exp, exp.selected)
  n_boot = int(exp.config.get("eval", {}).get("bootstrap", 200))
  with ledger.stage("evaluation"):
    rows, outputs = evaluate_stages(exp, stages + tuned, n_bootstrap=n_boot)
  # A method's tuned values run as its own stage (experiments.sweep), or as the default one when
  # the sweep chose the defaults: its row appears twice, the second named "<name> (tuned)".
  first = len(engine.TRAINED) + len(stages)  # rows: original, retrained, stages, tuned, sisa
  for r in rows[first:first + len(tuned)]:
    r["model"] = f"{r['model']} (tuned)"
  if population.Settings.from_config(exp.config) is not None:
    with ledger.stage("populations") as cost:
      cost["train"] = population.add_columns(exp, rows, exp.selected, progress=progress, log=log)
  return rows, outputs, exp


def write_tables(exp: engine.Experiment, results_dir: str, rows: Sequence[dict[str, Any]],
                 outputs: dict[str, Any], stage_rows: Sequence[dict[str, Any]] | None = None,
                 notes: str = "") -> dict[str, Any]:
  """Writes results.json/csv, table.md and the plots; returns {"rows", "paths", "table"}.

  Args:
    exp: the experiment (config and manifest hash).
    results_dir: where the files go.
    rows: the table's rows.
    outputs: per-example outputs by stage directory, for the plots.
    stage_rows: rows naming those stages (default ``rows``; the first seed's rows when ``rows``
      are means over seeds).
    notes: a line under the table.
  """
  table = report.markdown_table(rows)
  if not parallel.is_primary():  # every process computed the rows; process 0 writes them
    return {"rows": list(rows), "paths": {"plots": []}, "table": table}
  paths = report.write_results(results_dir, rows, config=exp.config,
                               manifest_hash=exp.workdir.manifest.content_hash, notes=notes)
  stage_rows = list(stage_rows if stage_rows is not None else rows)
  by_label = {label: outputs[r["stage"]] for r, label in zip(stage_rows, columns.labels(stage_rows))
              if r.get("stage") in outputs}
  bars = [dict(r, model=label) for r, label in zip(rows, columns.labels(rows))]
  paths["plots"] = plots.write_plots(results_dir, by_label, bars)
  return {"rows": list(rows), "paths": paths, "table": table}


def run_benchmark(config: Any, workdir: str, methods: str | Sequence[str] | Sequence[Method], *,
                  seeds: int = 1, overwrite: bool = False, progress: bool = True,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs the whole benchmark and writes ``WORKDIR/results`` (table, CSV, JSON, plots).

  Args:
    config: the config (ConfigDict or dict).
    workdir: the run's directory.
    methods: 'all', a comma-separated list or a sequence of names; ``module:factory`` entries
      bring a user's own method.
    seeds: N > 1 runs seeds config.seed .. config.seed + N - 1 as populations and reports
      mean ± std (:mod:`mu_jax.pipelines.seeds`).
    overwrite: start a workdir made with another config again.
    progress: show training progress.
    log: where the per-stage lines go.

  Returns:
    {"rows": [...], "paths": {...}, "table": markdown, "costs": per-stage seconds (also in
    ``results/costs.json``)}.
  """
  cfg = engine.to_dict(config)
  seeds_lib.check(cfg, seeds)
  ledger = costs.Ledger()
  if seeds == 1:
    rows, outputs, exp = run_seed(cfg, workdir, methods, overwrite=overwrite, progress=progress,
                                  log=log, ledger=ledger)
    stage_rows = rows
  else:
    with ledger.stage("data + workdir"):
      exp = engine.Experiment.create(cfg, workdir, methods=methods, overwrite=overwrite)
    per_seed, outputs = seeds_lib.run(exp, seeds, ledger=ledger, progress=progress, log=log)
    rows = report.aggregate_seeds(per_seed) + sisa_rows(exp.path)
    # The plots show the first seed's models; the rows are means over seeds.
    stage_rows = per_seed[0]
  with ledger.stage("tables and plots"):
    out = write_tables(exp, os.path.join(workdir, "results"), rows, outputs,
                       stage_rows=stage_rows,
                       notes=f"seeds: {seeds}" + (" (mean ± std)" if seeds > 1 else ""))
  if parallel.is_primary():
    checkpoints.write_json(os.path.join(workdir, "results", "costs.json"), ledger.as_json())
  return {**out, "costs": ledger.as_json()}


def evaluate_workdir(config: Any, workdir: str) -> dict[str, Any]:
  """Evaluates every finished stage of a workdir run from this config's original model.

  Every method stage is listed, so several hyperparameter settings of one method appear side by
  side (rows told apart by ``stage`` and ``hparams``).
  """
  exp = engine.Experiment.create(config, workdir)
  stages = exp.method_stages()
  n_boot = int(exp.config.get("eval", {}).get("bootstrap", 200))
  rows, outputs = evaluate_stages(exp, stages, n_bootstrap=n_boot)
  return write_tables(exp, os.path.join(workdir, "results"), rows, outputs)
