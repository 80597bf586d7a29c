"""The main job: original, retrained and every method on one config, evaluated and tabulated.

For each seed: train (or resume) the original and retrained models, run each method from the
original (skipping finished ones), save per-example outputs, and compute one result row per model
against the retrained model. With one seed everything lives in ``WORKDIR``; with ``seeds=N`` seed
``k`` lives in ``WORKDIR/seed_k`` (config seed + k) and ``WORKDIR/results`` holds mean ± std.
A SISA run found in the workdir (``WORKDIR/sisa/results.json``) joins the table as a row.
"""

from __future__ import annotations

import copy
import os
import time
from typing import Any, Callable, Sequence

from absl import logging

from mu_jax import checkpoints, runner
from mu_jax.evaluation import plots, report


def evaluate_workdir(exp: runner.Experiment, method_names: Sequence[str], *, n_bootstrap: int = 200
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Rows (and outputs) of original, retrained and each finished method of an experiment."""
  lam = float(exp.config.get("eval", {}).get("nomus_lambda", 0.5))
  retrained_state = exp.load_state("retrained")
  retrained_out = exp.outputs("retrained", retrained_state)
  retrain_cost = checkpoints.read_json(os.path.join(exp.stage_dir("retrained"), "done.json"))
  rows, outputs = [], {}
  for name in ("original", "retrained", *method_names):
    stage = name if name in runner.STAGES else f"unlearned/{name}"
    done = os.path.join(exp.stage_dir(stage), "done.json")
    if not os.path.exists(done):
      logging.warning("%s has not finished; left out of the table", stage)
      continue
    record = checkpoints.read_json(done)
    state = retrained_state if name == "retrained" else exp.load_params(stage)
    out = retrained_out if name == "retrained" else exp.outputs(stage, state)
    row = report.model_row(name, out, exp.task, retrained=retrained_out, params=state.params,
                           retrained_params=retrained_state.params, nomus_lambda=lam,
                           n_bootstrap=n_bootstrap, wall_s=record["wall_s"],
                           examples=record["examples"], retrain_wall_s=retrain_cost["wall_s"])
    if "compile_s" in record:
      row["compile_s"] = record["compile_s"]
    if record.get("halted"):
      row["halted"] = True
    rows.append(row)
    outputs[name] = out
  sisa = os.path.join(exp.workdir, "sisa", "results.json")
  if os.path.exists(sisa):
    rows.append(dict(checkpoints.read_json(sisa)["row"], model="sisa"))
  return rows, outputs


def run_seed(config: dict[str, Any], workdir: str, method_names: Sequence[str], *,
             overwrite: bool = False, progress: bool = True,
             log: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], dict[str, Any], runner.Experiment]:
  """Trains, unlearns and evaluates one seed in ``workdir``."""
  exp = runner.Experiment.create(config, workdir, overwrite=overwrite)
  for stage in runner.STAGES:
    t = time.time()
    rec = exp.train_stage(stage, progress=progress)
    log(f"{stage:>16}: {rec['examples']:>8,} examples, {rec['wall_s']:7.1f} s training "
        f"({time.time() - t:.1f} s this call)")
  for name in method_names:
    t = time.time()
    rec = exp.unlearn_stage(name, progress=False)
    summary = runner.quick_summary(exp.outputs(f"unlearned/{name}"), exp.task)
    log(f"{name:>16}: forget {summary['forget_acc']:.3f} retain {summary['retain_acc']:.3f} "
        f"test {summary['test_acc']:.3f} attack {summary['mia_attack_acc']:.3f} "
        f"{rec['wall_s']:6.1f} s ({time.time() - t:.1f} s this call)"
        + ("  [stopped: non-finite loss]" if rec.get("halted") else ""))
  n_boot = int(exp.config.get("eval", {}).get("bootstrap", 200))
  rows, outputs = evaluate_workdir(exp, method_names, n_bootstrap=n_boot)
  return rows, outputs, exp


def run_benchmark(config: Any, workdir: str, methods: Sequence[str], *, seeds: int = 1,
                  overwrite: bool = False, progress: bool = True,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
  """Runs the whole benchmark and writes ``WORKDIR/results`` (table, CSV, JSON, plots).

  Returns:
    {"rows": [...], "paths": {...}, "table": markdown}.
  """
  if seeds < 1:
    raise ValueError(f"--seeds must be >= 1, got {seeds}")
  cfg = runner.to_dict(config)
  per_seed, first = [], None
  for k in range(seeds):
    cfg_k = copy.deepcopy(cfg)
    cfg_k["seed"] = int(cfg.get("seed", 0)) + k
    wd = workdir if seeds == 1 else os.path.join(workdir, f"seed_{k}")
    if seeds > 1:
      log(f"--- seed {cfg_k['seed']} ({wd})")
    rows, outputs, exp = run_seed(cfg_k, wd, methods, overwrite=overwrite, progress=progress, log=log)
    per_seed.append(rows)
    first = first or (outputs, exp)
  rows = per_seed[0] if seeds == 1 else report.aggregate_seeds(per_seed)
  results_dir = os.path.join(workdir, "results")
  outputs, exp = first
  paths = report.write_results(results_dir, rows, config=cfg, manifest_hash=exp.dataset.manifest.content_hash,
                               notes=f"seeds: {seeds}" + (" (mean ± std)" if seeds > 1 else ""))
  paths["plots"] = plots.write_plots(results_dir, outputs, rows)
  table = report.markdown_table(rows)
  return {"rows": rows, "paths": paths, "table": table}
