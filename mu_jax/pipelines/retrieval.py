"""Face-retrieval identity unlearning on the engine: original, retrained, methods, table, plot.

The retrieval task keeps its stages under ``WORKDIR/retrieval`` (its own config.json and
manifest.json, so it can share a workdir with the classification benchmark)::

  WORKDIR/retrieval/original-<hash>/  retrained-<hash>/   checkpoints, metrics.jsonl, outputs/, done.json
  WORKDIR/retrieval/unlearned/<method>-<hash>/            the driver's checkpoints, final/, outputs/, done.json
  WORKDIR/results/retrieval.{json,csv,md}                 the table (original, retrained and unretrievable
                                                          as reference rows)
  WORKDIR/results/retrieval_pca.png                       forget and retain embeddings in 2-D, per model

Stages follow the engine's identity rule (:mod:`mu_jax.experiment`): the same command resumes or
skips; a method run with other hyperparameters makes a new stage beside the old one. Under
``jax.distributed`` every process computes and process 0 writes the files.
``outputs/train.npz``, ``outputs/heldout.npz`` and ``outputs/probe.npz`` hold every image's embedding.

The table has two references for the probe columns: the retrained model (exact unlearning) and the
``unretrievable`` row, the expected value of each probe metric for embeddings that carry no identity,
computed from this run's gallery (:func:`mu_jax.retrieval.metrics.unretrievable_probe_row`). On a
model that generalises to people it never saw, the retrained model can still find a forgotten
person from a new photo; the distance between those two rows says how much.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from mu_jax import checkpoints, parallel
from mu_jax import experiment as engine
from mu_jax.retrieval import evaluate as reval
from mu_jax.retrieval import metrics as rmetrics

UNRETRIEVABLE = "unretrievable"


def run_retrieval(config: Any, workdir: str, methods: str | Sequence[str] | None = None, *,
                  overwrite: bool = False, progress: bool = True,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
  """Trains both embedding models, runs the methods, writes and returns the retrieval table.

  Args:
    config: a retrieval config (``experiments/configs/retrieval.py``).
    workdir: the run's directory (the stages go to ``WORKDIR/retrieval``).
    methods: 'all', a comma-separated list or names (default: ``config.unlearn.methods``).
    overwrite: start a workdir made with another config again.
    progress: show training progress.
    log: where the per-stage lines go.

  Returns:
    {"rows", "paths", "table"}.
  """
  cfg = engine.to_dict(config)
  exp = engine.Experiment.create(cfg, workdir, task="retrieval", overwrite=overwrite,
                                 methods=methods or cfg["unlearn"]["methods"])
  chosen = exp.selected
  data = exp.data
  probes = exp.dataset.manifest.meta.get("probes", {})
  log(f"{exp.dataset.manifest.dataset}: {len(data.train)} enrolled train images of "
      f"{data.num_classes} persons ({len(data.forget_identities)} forgotten, {len(data.forget)} "
      f"images), {len(data.probe)} probe images held out ({probes.get('forget_images', 0)} of "
      f"forgotten persons; {probes.get('persons_with_too_few_images', 0)} persons with under "
      f"{probes.get('min_images', 3)} images keep all), {len(data.heldout)} held-out images")
  rows, stages = [], []
  for name in engine.TRAINED:
    rec = exp.train_stage(name, progress=progress)
    st = exp.trained_stage(name)
    row = exp.task.evaluate(exp, st, exp.load_state(st))
    rows.append({"model": name, "stage": st.rel, **row, "wall_s": rec["wall_s"],
                 "examples": rec["examples"]})
    stages.append(st)
  if len(data.probe):
    rows.append({"model": UNRETRIEVABLE, "stage": "",
                 **rmetrics.unretrievable_probe_row(data.probe.identities, data.train.identities,
                                                    data.forget_identities)})
  for method in chosen:
    rec = exp.unlearn_stage(method, progress=progress)
    st = exp.method_stage(method)
    rows.append({"model": method.name, "stage": st.rel, "hparams": method.hparams,
                 **rec["evaluation"], "wall_s": rec["wall_s"], "examples": rec["examples"],
                 "halted": rec["halted"]})
    stages.append(st)
    probe_note = (f", forget probe R@1 {rows[-1]['forget_probe_rank1']:.3f}, retain probe R@1 "
                  f"{rows[-1]['retain_probe_rank1']:.3f}" if "forget_probe_rank1" in rows[-1] else "")
    log(f"{method.name}: forget R@1 {rows[-1]['forget_rank1']:.3f}, "
        f"retain mAP {rows[-1]['retain_map']:.3f}{probe_note}")
  # Two costs against retraining: wall time (machine-dependent) and examples fed to training steps
  # (forward + backward passes; machine-independent).
  retrain = rows[1]
  for r in rows:
    if "wall_s" not in r:  # the unretrievable reference trains nothing
      continue
    r["cost_vs_retrain"] = r["wall_s"] / retrain["wall_s"] if retrain["wall_s"] else float("nan")
    r["examples_vs_retrain"] = (r["examples"] / retrain["examples"] if retrain["examples"]
                                else float("nan"))
  table = reval.markdown_table(rows)
  if not parallel.is_primary():  # every process computed the rows; process 0 writes them
    return {"rows": rows, "paths": {}, "table": table}
  results = os.path.join(workdir, "results")
  paths = reval.write_results(results, rows, cfg, exp.workdir.manifest.content_hash)
  if cfg["eval"]["plot"]:
    panels = []
    for r, st in zip([r for r in rows if r["stage"]], stages):  # the reference row has no model
      out = checkpoints.load_outputs(st.outputs_dir, "train")
      panels.append((r["model"], out["embedding"], out["identity"]))
    paths["png"] = reval.pca_plot(os.path.join(results, "retrieval_pca.png"), panels,
                                  data.forget_identities, seed=cfg["eval"]["seed"])
  return {"rows": rows, "paths": paths, "table": table}
