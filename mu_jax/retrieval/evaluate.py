"""Embeddings through a data-parallel eval step, retrieval rows, result files and the PCA plot.

Device code computes embeddings (eval mode, no augmentation); the metrics run on the host with
:mod:`mu_jax.retrieval.metrics`. A row has the retrieval keys of docs/metrics.md (``forget_map``,
``forget_rank1``, ``retain_map``, ``retain_rank1``, ``forget_compactness``, ``retain_compactness``,
``identifiability``) plus ``retain_tar_at_far_1e-3``, the held-out persons' ``heldout_map`` and
``heldout_rank1`` (how well the model retrieves people it never trained on: the level a model that
never saw the forgotten persons reaches on them) and the probe photos' twelve columns
(``forget_probe_rank1`` ... ``retain_probe_tar_at_far_1e-2``,
:func:`mu_jax.retrieval.metrics.evaluate_probes`: new photos of each train person matched against
the enrolled images).
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from mu_jax import checkpoints, parallel
from mu_jax.evaluation import report
from mu_jax.data import pipeline
from mu_jax.data.splits import Examples
from mu_jax.retrieval import metrics
from mu_jax.training import evaluate as train_eval
from mu_jax.training.state import TrainState

def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Per-example eval-mode embeddings and plain cosine logits (sharded like the batch)."""
  logits, emb = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                               pipeline.to_float(batch["image"]), train=False, features=True)
  return {"embedding": emb.astype(jnp.float32), "logits": logits.astype(jnp.float32)}


@functools.lru_cache(maxsize=None)
def _compiled_eval_step():
  return parallel.data_parallel(eval_step, in_specs=(parallel.REPLICATED, parallel.SHARDED),
                                out_specs=parallel.SHARDED)


def outputs(state: TrainState, examples: Examples, batch_size: int = 256) -> dict[str, np.ndarray]:
  """Embeddings, logits and per-example losses of every example, in order.

  Returns:
    ``{"embedding" [N, d], "logits" [N, C], "loss" [N], "label", "identity", "example_id"}``:
    the per-example output contract plus the embeddings. ``loss`` is the cross-entropy of the plain
    cosine logits for labels inside the head, nan for held-out persons (no class of theirs).
  """
  state = parallel.replicate(state)
  dim, n_cls = state.params["fc"]["Dense_0"]["kernel"].shape
  out = train_eval.run_batched(_compiled_eval_step(), state, examples, batch_size,
                               {"embedding": (dim,), "logits": (n_cls,)})
  emb, lg = out["embedding"], out["logits"]
  labels = np.asarray(examples.labels)
  inside = (labels >= 0) & (labels < n_cls)
  loss = np.zeros((len(lg),), np.float32)
  if len(lg):
    true = np.take_along_axis(lg, np.clip(labels, 0, n_cls - 1)[:, None].astype(np.int64), -1)[:, 0]
    loss = np.where(inside, special.logsumexp(lg, axis=-1) - true, np.nan).astype(np.float32)
  return {"embedding": emb, "logits": lg, "loss": loss,
          "label": labels, "identity": examples.identities, "example_id": examples.example_ids}


def embed(state: TrainState, examples: Examples, batch_size: int = 256) -> np.ndarray:
  """Eval-mode unit embeddings [N, d] of every example, in order."""
  return outputs(state, examples, batch_size)["embedding"]


def retrieval_summary(emb: np.ndarray, ids: np.ndarray, seed: int = 0) -> dict[str, float]:
  """mAP and Rank-1 over every identity of a set (one query per identity, the rest as gallery)."""
  q, g = metrics.gallery_query_split(ids, 1, seed)
  if len(q) == 0 or len(g) == 0:
    return {"map": float("nan"), "rank1": float("nan")}
  return metrics.retrieval_metrics(emb[q], ids[q], emb[g], ids[g])


def evaluate_embeddings(train_emb: np.ndarray, train_ids: np.ndarray,
                        forget_identities: Sequence[str], heldout_emb: np.ndarray | None = None,
                        heldout_ids: np.ndarray | None = None, seed: int = 0,
                        probe_emb: np.ndarray | None = None,
                        probe_ids: np.ndarray | None = None) -> dict[str, float]:
  """A retrieval row from embeddings of the train persons (and optionally the held-out persons and
  the probes).

  Args:
    train_emb: [N, d] embeddings of every enrolled train image (forget and retain persons).
    train_ids: [N] their persons.
    forget_identities: the forgotten persons.
    heldout_emb: [M, d] embeddings of held-out persons, or None.
    heldout_ids: [M] their persons.
    seed: the query choice.
    probe_emb: [P, d] embeddings of the probe photos, or None.
    probe_ids: [P] their persons.

  Returns:
    :func:`mu_jax.retrieval.metrics.evaluate_retrieval`'s keys plus ``heldout_map`` and
    ``heldout_rank1`` (nan without held-out persons) and, with probes,
    :func:`mu_jax.retrieval.metrics.evaluate_probes`' keys (the enrolled images as the gallery).
  """
  row = metrics.evaluate_retrieval(train_emb, train_ids, forget_identities, seed=seed)
  held = {"map": float("nan"), "rank1": float("nan")}
  if heldout_emb is not None and len(heldout_emb):
    held = retrieval_summary(heldout_emb, heldout_ids, seed)
  row["heldout_map"], row["heldout_rank1"] = held["map"], held["rank1"]
  if probe_emb is not None and len(probe_emb):
    row.update(metrics.evaluate_probes(probe_emb, probe_ids, train_emb, train_ids,
                                       forget_identities))
  return row


def evaluate_state(state: TrainState, train: Examples, forget_identities: Sequence[str],
                   heldout: Examples | None = None, seed: int = 0, batch_size: int = 256,
                   outputs_dir: str | None = None,
                   probe: Examples | None = None) -> dict[str, float]:
  """Embeds the sets with ``state`` and returns the retrieval row.

  Args:
    state: the model.
    train: the train persons' images.
    forget_identities: the forgotten persons.
    heldout: held-out persons' images, or None.
    seed: the query choice.
    batch_size: eval batch.
    outputs_dir: if given, ``train.npz``, ``heldout.npz`` and ``probe.npz`` per-example outputs
      (with embeddings) are written there (``WORKDIR/retrieval/<stage>/outputs``).
    probe: the probe photos, or None.
  """
  out_t = outputs(state, train, batch_size)
  out_h = outputs(state, heldout, batch_size) if heldout is not None and len(heldout) else None
  out_p = outputs(state, probe, batch_size) if probe is not None and len(probe) else None
  if outputs_dir:
    checkpoints.save_outputs(outputs_dir, "train", out_t)
    if out_h is not None:
      checkpoints.save_outputs(outputs_dir, "heldout", out_h)
    if out_p is not None:
      checkpoints.save_outputs(outputs_dir, "probe", out_p)
  return evaluate_embeddings(out_t["embedding"], np.asarray(train.identities), forget_identities,
                             None if out_h is None else out_h["embedding"],
                             None if out_h is None else np.asarray(heldout.identities), seed,
                             None if out_p is None else out_p["embedding"],
                             None if out_p is None else np.asarray(probe.identities))


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """The retrieval table (:mod:`mu_jax.evaluation.columns`, arrows say which way is better)."""
  return report.markdown_table(rows, "retrieval")


def write_results(results_dir: str, rows: Sequence[Mapping[str, Any]], config: Mapping[str, Any],
                  manifest_hash: str, name: str = "retrieval") -> dict[str, str]:
  """Writes ``<name>.json`` ({config, manifest_hash, rows}), ``<name>.csv`` and ``<name>.md``.

  Returns:
    {"json", "csv", "md"}: the paths written.
  """
  paths = report.write_results(results_dir, rows, config=dict(config), manifest_hash=manifest_hash,
                               name=name, table="retrieval")
  return dict(zip(("json", "csv", "md"), paths.values()))


def pca_2d(emb: np.ndarray) -> np.ndarray:
  """Projects embeddings on their first two principal components (host numpy SVD)."""
  x = np.asarray(emb, np.float64)
  x = x - x.mean(0)
  _, _, vt = np.linalg.svd(x, full_matrices=False)
  return x @ vt[:2].T


def pca_plot(path: str, panels: Sequence[tuple[str, np.ndarray, np.ndarray]],
             forget_identities: Sequence[str], max_retain: int = 400, seed: int = 0) -> str:
  """Saves a grid of 2-D PCA scatter plots, one panel per model.

  Each panel fits its own PCA on that model's embeddings, so it shows the model's own geometry:
  forgotten persons in colour (one colour each), retained persons in grey (at most ``max_retain``
  points, drawn with ``seed``).

  Args:
    path: the PNG to write.
    panels: (title, embeddings [N, d], identities [N]) per model, the same images in each.
    forget_identities: the forgotten persons.
    max_retain: retain points drawn per panel.
    seed: the subsample.

  Returns:
    ``path``.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  forget = list(forget_identities)
  cols = min(4, max(1, len(panels)))
  rows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
  cmap = plt.get_cmap("tab10" if len(forget) <= 10 else "tab20")
  for ax, (title, emb, ids) in zip(axes.flat, panels):
    ids = np.asarray(ids)
    is_f = np.isin(ids, forget)
    r_idx = np.nonzero(~is_f)[0]
    if len(r_idx) > max_retain:
      r_idx = np.sort(np.random.default_rng(seed).choice(r_idx, max_retain, replace=False))
    keep = np.concatenate([r_idx, np.nonzero(is_f)[0]])
    xy = pca_2d(emb[keep])
    n_r = len(r_idx)
    ax.scatter(xy[:n_r, 0], xy[:n_r, 1], s=5, c="0.75", label="retain")
    f_ids = ids[keep][n_r:]
    for j, person in enumerate(forget):
      sel = f_ids == person
      ax.scatter(xy[n_r:][sel, 0], xy[n_r:][sel, 1], s=14, color=cmap(j % cmap.N), marker="o",
                 edgecolors="k", linewidths=0.3)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  fig.suptitle("Embeddings (PCA): forgotten persons in colour, retained in grey", fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
