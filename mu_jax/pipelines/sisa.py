"""SISA end to end on the engine: train S shards × R slices, serve a forget request exactly, report.

:func:`run_sisa` trains every shard (reusing slices already in the deployment), serves the request
(``forget``: ``from-manifest`` forgets the config's forget split, as whole identities when it holds
whole persons; ``identities`` forgets the given persons (default: the manifest's forget
identities); ``ids`` the given example ids (default: the manifest's forget examples)), retrains
only the shards it touches from their last clean slice and, with ``full_retrain``, also retrains
all shards from scratch without the request to time the baseline and check that the unlearned
models equal it bit for bit. A deployment is a stage of the engine (:mod:`mu_jax.experiment`),
``WORKDIR/sisa/sisa-<hash>/``, named by its settings (shards, slices, partition, aggregation,
mode, recipe, seed, data, model); it holds::

  results.json          the report, and a ``row`` that the benchmark table picks up
  outputs/<split>.npz   per-example outputs of the aggregate after the request
  shard_*/              slice checkpoints; requests/ the served requests

and the workdir's ``requests.jsonl`` the audit log. Running the same call again resumes an
interrupted request or, for a served one, returns its results again. A request for unknown
identities or ids, or for data an earlier request removed, fails with a clear message before
anything is retrained.

Under ``jax.distributed`` every process runs the same call on one shared workdir: all of them
train, evaluate and save the slice checkpoints (through orbax) together; process 0 alone writes the
JSON files, the outputs and the audit lines, and shares the request id with the others.

The constituent models use the config's original-model recipe (epochs, lr, momentum, weight
decay, augmentation) at a constant learning rate and with SISA's own batch size (default 16, the
official code's). Defaults come from an optional ``config.sisa`` section (``partition``,
``aggregation``, ``mode``, ``batch_size``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import serialization

from mu_jax import audit, checkpoints, parallel, sisa
from mu_jax import experiment as engine
from mu_jax.evaluation import columns, mia, report
from mu_jax.sisa import aggregate as agg

FORGET = ("identities", "ids", "from-manifest")
SPLITS = ("train", "retain", "forget", "test", "unseen")


def _intended(exp: engine.Experiment, forget: str, identities: Sequence[str] | None,
              ids: Sequence[str] | None) -> tuple[str, list[str]]:
  """(kind, names) of the request the flags ask for, before any check against the models."""
  manifest = exp.dataset.manifest
  if forget == "from-manifest":
    forget_ids = manifest.ids("forget")
    persons = manifest.identities("forget")
    whole = {e for e, i in manifest.splits["train"] if i in persons} == set(forget_ids)
    return ("identities", sorted(persons)) if whole else ("ids", sorted(forget_ids))
  if forget == "identities":
    return "identities", sorted(identities or manifest.identities("forget"))
  return "ids", sorted(ids or manifest.ids("forget"))


def _outputs(trainer: sisa.ShardTrainer, removed: frozenset[str], forget_ids: Sequence[str],
             splits: dict[str, Any], method: str, cache: dict[tuple[str, str], np.ndarray],
             batch_size: int) -> dict[str, dict[str, np.ndarray]]:
  """Aggregate outputs on every split for a removal set; shard logits are cached by model path."""
  paths = trainer.final_paths(removed)
  logits = {}
  for name in ("train", "test", "unseen"):
    per_shard = []
    for s, path in paths.items():
      if (path, name) not in cache:
        cache[(path, name)] = agg.shard_logits([trainer.final_state(s, removed)], splits[name],
                                               task=trainer.task, batch_size=batch_size)[0]
      per_shard.append(cache[(path, name)])
    logits[name] = np.stack(per_shard)
  train = splits["train"]
  row_of = {e: i for i, e in enumerate(train.example_ids.tolist())}
  forget_rows = np.asarray([row_of[e] for e in forget_ids], np.int64)
  retain_rows = np.asarray([i for i, e in enumerate(train.example_ids.tolist()) if e not in removed],
                           np.int64)
  views = {"train": (train, logits["train"]),
           "retain": (train.subset(retain_rows), logits["train"][:, retain_rows]),
           "forget": (train.subset(forget_rows), logits["train"][:, forget_rows]),
           "test": (splits["test"], logits["test"]), "unseen": (splits["unseen"], logits["unseen"])}
  return {name: agg.predict([], ex, task=trainer.task, method=method, logits=z)
          for name, (ex, z) in views.items()}


def _summary(outputs: dict[str, dict[str, np.ndarray]], task: str, lam: float) -> dict[str, float]:
  acc = {f"{s}_acc": agg.accuracy(outputs[s], task) for s in ("test", "forget", "retain", "unseen")}
  attack = mia.reference_mia(outputs["forget"]["loss"], outputs["unseen"]["loss"])["mia_attack_acc"]
  return {**acc, "mia_attack_acc": attack, "mia_forgetting_score": abs(attack - 0.5),
          "nomus": mia.nomus(acc["test_acc"], attack, lam)}


def _start_request(workdir: str, record: dict[str, Any], resume_key: str) -> str:
  """Process 0 writes the request's started audit line; every process returns its id."""
  rid = audit.start_request(workdir, record, resume_key=resume_key) if parallel.is_primary() else ""
  return parallel.share(rid)


def _remove_tree(path: str) -> None:
  """Removes a directory (process 0) once no process reads it any more."""
  parallel.barrier(f"mu_jax.sisa:remove:{path}")
  if parallel.is_primary():
    shutil.rmtree(path, ignore_errors=True)
  parallel.barrier(f"mu_jax.sisa:removed:{path}")


def _states_equal(a: sisa.ShardTrainer, b: sisa.ShardTrainer, removed: frozenset[str]) -> bool:
  for s in range(a.partition.num_shards):
    x = serialization.to_state_dict(a.final_state(s, removed))
    y = serialization.to_state_dict(b.final_state(s, removed))
    lx, ly = jax.tree.leaves(x), jax.tree.leaves(y)
    if len(lx) != len(ly) or not all(np.array_equal(u, v) for u, v in zip(lx, ly)):
      return False
  return True


def run_sisa(config: Any, workdir: str, *, shards: int = 5, slices: int = 4,
             forget: str = "from-manifest", identities: Sequence[str] | None = None,
             ids: Sequence[str] | None = None, partition: str | None = None,
             aggregation: str | None = None, mode: str | None = None, batch_size: int | None = None,
             full_retrain: bool = True, overwrite: bool = False,
             log: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains, serves one request, evaluates and writes the deployment's ``results.json``.

  Returns:
    The results (also written to ``WORKDIR/sisa/sisa-<hash>/results.json``); under
    ``jax.distributed`` every process returns them, with its own wall times.

  Raises:
    RequestError: the request names unknown identities or ids, or data already removed.
    WorkdirError: the workdir holds another config's run or SISA slices of other settings.
  """
  if forget not in FORGET:
    raise ValueError(f"--forget must be one of {FORGET}, got {forget!r}")
  cfg = engine.to_dict(config)
  scfg = dict(cfg.get("sisa") or {})
  by = partition or scfg.get("partition", "identity")
  seed = int(cfg.get("seed", 0))

  def partition_of(train):
    return sisa.make_partition(train.example_ids, train.identities, shards, slices, by, seed)

  # A partition the data cannot fill (more shards than persons, ...) is refused before the
  # workdir is written.
  exp = engine.Experiment.create(config, workdir, overwrite=overwrite,
                                 check=lambda dataset: partition_of(dataset.split("train")))
  method = aggregation or scfg.get("aggregation", "vote")
  mode = mode or scfg.get("mode", "auto")
  lam = float(exp.config.get("eval", {}).get("nomus_lambda", 0.5))
  eval_bs = exp.eval_batch_size
  splits = {s: exp.split(s) for s in ("train", "test", "unseen")}
  train = splits["train"]
  part = partition_of(train)
  # The recipe of the original model, with SISA's own batch size: a shard holds 1/S of the data, and
  # the official code trains its constituents with batch 16
  # (cleverhans-lab/machine-unlearning@b8e3d31:sisa.py).
  recipe = dataclasses.replace(exp.train_config("original"),
                               batch_size=int(batch_size or scfg.get("batch_size", 16)))
  # The deployment is a stage: its identity holds every setting that fixes the shard models, so
  # other settings make a new deployment beside this one. Requests served are part of its state.
  stage = exp.workdir.stage("sisa", "sisa", {
      "manifest": exp.workdir.manifest.content_hash, "model": exp.config["model"], "seed": exp.seed,
      "shards": shards, "slices": slices, "partition": by, "aggregation": method, "mode": mode,
      "train": dataclasses.asdict(recipe)}, group="sisa")
  stage.begin()
  root = stage.dir
  trainer = sisa.ShardTrainer(exp.model, train, part, recipe, task=exp.dataset.task,
                              seed=exp.seed, root=root, mode=mode)
  sizes = [len(x) for x in part.shards]
  log(f"SISA: {shards} shards x {slices} slices by {by} (shard sizes {min(sizes)}-{max(sizes)}), "
      f"{trainer.mode} training" + (f" ({trainer.lanes} lanes)" if trainer.mode == "stacked" else "")
      + f", epochs per slice {sisa.epoch_schedule(slices, trainer.cfg.epochs)}, {method} aggregation")
  trained = sisa.ensure_trained(trainer)
  log(f"trained: {trained['examples']} examples in {trained['wall_s']:.1f} s this call "
      f"({trained['models_examples']} examples, {trained['models_wall_s']:.1f} s recorded for the "
      "current models)")

  kind, names = _intended(exp, forget, identities, ids)
  settings = {"shards": shards, "slices": slices, "partition": by, "mode": trainer.mode,
              "lanes": trainer.lanes, "aggregation": method, "batch_size": recipe.batch_size,
              "lr": recipe.lr,
              "epochs_per_slice": sisa.epoch_schedule(slices, trainer.cfg.epochs)}
  resume_key = f"sisa:{stage.rel}:" + hashlib.sha256(
      f"{kind}|{':'.join(names)}|{shards}|{slices}|{by}".encode()).hexdigest()[:16]
  results_path = os.path.join(root, "results.json")
  done = [r for r in audit.completed_requests(workdir) if r.get("resume_key") == resume_key]
  if done:
    rid = done[-1]["request_id"]
    results = checkpoints.read_json(results_path) if os.path.exists(results_path) else {}
    if results.get("request", {}).get("request_id") == rid:
      log(f"request {rid} was already served; its results:")
      _print_results(results, log)
      return results
    log(f"request {rid} was already served (a later request wrote {results_path}); its audit "
        f"record is in {audit.log_path(workdir)}")
    return {"request": done[-1]}
  pending = [r for r in audit.incomplete_requests(workdir) if r.get("resume_key") == resume_key]
  applied = {r["request_id"]: r for r in sisa.applied_requests(root)}
  resumed_applied = pending and pending[-1]["request_id"] in applied
  if resumed_applied:
    rec = applied[pending[-1]["request_id"]]
    request = sisa.Request(rec["kind"], tuple(rec["example_ids"]), tuple(rec["identities"]))
  else:
    request = sisa.make_request(trainer, **({"identities": names} if kind == "identities"
                                            else {"example_ids": names}))
  removed_now = sisa.removed_ids(root)
  before = removed_now - set(request.example_ids) if resumed_applied else removed_now
  after = before | frozenset(request.example_ids)
  manifest = exp.dataset.manifest
  # Every process has read the audit log and the removals; from here on process 0 writes.
  parallel.barrier(f"mu_jax.sisa:request:{resume_key}")
  rid = _start_request(workdir, {
      "method": "sisa", "kind": request.kind, "settings": settings,
      "identities": list(request.identities), "num_identities": len(request.identities),
      "num_examples": len(request.example_ids),
      "example_ids_sha256": hashlib.sha256(":".join(sorted(request.example_ids)).encode()).hexdigest(),
      "config_hash": checkpoints.config_hash(exp.config), "manifest_hash": manifest.content_hash,
      "partition_hash": part.content_hash,
      "checkpoints_before": {str(s): p for s, p in trainer.final_paths(before).items()}},
      resume_key)
  n_id = len(request.identities)
  log(f"request {rid}: forget {n_id} identit{'y' if n_id == 1 else 'ies'} "
      f"({len(request.example_ids)} examples): {', '.join(request.identities[:8])}"
      f"{' ...' if n_id > 8 else ''}")

  cache: dict[tuple[str, str], np.ndarray] = {}
  out_before = _outputs(trainer, before, request.example_ids, splits, method, cache, eval_bs)
  if resumed_applied:
    rep = sisa.load_report(trainer, rid)
  else:
    trainer.warmup(after)  # so that the timings below measure training, not compilation
    rep = sisa.unlearn_request(trainer, request, rid)
  exact = None
  if full_retrain:
    scratch_root = os.path.join(root, "full_retrain")
    _remove_tree(scratch_root)
    fresh, wall, examples = sisa.retrain_from_scratch(trainer, scratch_root, after)
    exact = _states_equal(trainer, fresh, after)
    _remove_tree(scratch_root)
    rep.full_retrain_wall_s, rep.full_retrain_measured = wall, True
    if examples != rep.full_retrain_examples:
      raise AssertionError(f"full retrain processed {examples} examples, the plan says "
                           f"{rep.full_retrain_examples}")
  out_after = _outputs(trainer, after, request.example_ids, splits, method, cache, eval_bs)
  other = "mean" if method == "vote" else "vote"
  other_acc = {}
  for name, removed in (("before", before), ("after", after)):
    o = _outputs(trainer, removed, request.example_ids, splits, other, cache, eval_bs)
    other_acc[name] = agg.accuracy(o["test"], exp.dataset.task)
  s_before = _summary(out_before, exp.dataset.task, lam)
  s_after = _summary(out_after, exp.dataset.task, lam)
  n_boot = int(exp.config.get("eval", {}).get("bootstrap", 200))
  retrained = None
  retrained_stage = exp.trained_stage("retrained")
  if retrained_stage.done and set(request.example_ids) == set(manifest.ids("forget")):
    retrained = exp.task.outputs(exp, retrained_stage)
  row = report.model_row("sisa", out_after, exp.dataset.task, retrained=retrained, nomus_lambda=lam,
                         n_bootstrap=n_boot, wall_s=rep.wall_s, examples=rep.examples,
                         retrain_wall_s=rep.full_retrain_wall_s)
  expected = sisa.expected_cost(trainer, before, unit="identity")
  row.update({
      "stage": stage.rel,
      "cost_vs_retrain_baseline": "full retrain of all SISA shards" +
                                  (" (measured)" if rep.full_retrain_measured else " (estimated)"),
      "sisa_shards": shards, "sisa_slices": slices, "sisa_partition": by, "sisa_mode": trainer.mode,
      "sisa_aggregation": method, "sisa_retrained_shards": sorted(rep.touched),
      "sisa_first_slices": {str(s): sl for s, sl in rep.touched.items()},
      "sisa_speedup_examples": rep.speedup_examples, "sisa_speedup_wall": rep.speedup_wall,
      "sisa_expected_speedup_identity": expected["expected_speedup"],
      "sisa_exact_match": exact, **{f"{k}_before": v for k, v in s_before.items()},
      f"test_acc_{other}": other_acc["after"], f"test_acc_{other}_before": other_acc["before"]})
  results = {"config_hash": checkpoints.config_hash(exp.config), "manifest_hash": manifest.content_hash,
             "settings": settings, "request": rep.to_dict(), "exact_match": exact,
             "expected_cost": {"identity": expected,
                               "example": sisa.expected_cost(trainer, before, unit="example")},
             "before": {**s_before, f"test_acc_{other}": other_acc["before"]},
             "after": {**s_after, f"test_acc_{other}": other_acc["after"]},
             "training": trained, "row": row}
  if parallel.is_primary():
    for s in SPLITS:
      checkpoints.save_outputs(os.path.join(root, "outputs"), s, out_after[s])
    checkpoints.write_json(results_path, results)
    checkpoints.write_json(os.path.join(root, "requests", f"{rid}.json"), rep.to_dict())
    audit.complete_request(workdir, rid, {
        "method": "sisa", "kind": request.kind, "settings": settings,
        "identities": list(request.identities), "num_examples": len(request.example_ids),
        "checkpoints_before": {str(s): p for s, p in rep.checkpoints_before.items()},
        "checkpoints_after": {str(s): p for s, p in rep.checkpoints_after.items()},
        "retrained_shards": sorted(rep.touched),
        "first_slices": {str(s): sl for s, sl in rep.touched.items()},
        "examples": rep.examples, "wall_s": rep.wall_s, "speedup_examples": rep.speedup_examples,
        "exact_match": exact, "evaluation": {"before": s_before, "after": s_after}})
  parallel.barrier(f"mu_jax.sisa:served:{resume_key}")
  _print_results(results, log)
  return results


def _print_results(results: dict[str, Any], log: Callable[[str], None]) -> None:
  """Which shards the request retrained and from where, then the aggregate before and after it as
  a table of the column registry's SISA columns."""
  rep = results["request"]
  slices = results["settings"]["slices"]
  for s, sl in sorted(rep["touched"].items(), key=lambda kv: int(kv[0])):
    src = (f"restored slice {sl - 1} ({os.path.basename(rep['restored_from'][s])[:14]})" if sl > 0
           else "from initialisation")
    log(f"  shard {s}: first touched slice {sl} -> retrained slices {rep['retrained'][s]} of "
        f"0..{slices - 1}, {src}")
  log(f"  untouched shards (not retrained): {rep['untouched_shards']}; cost baseline: "
      f"{results['row']['cost_vs_retrain_baseline']}")
  rows = [{"model": "before", **results["before"]}, dict(results["row"], model="after")]
  log(columns.markdown_table(rows, "sisa"))
  log(columns.legend("sisa"))
