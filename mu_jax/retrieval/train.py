"""Training the embedding models (original and retrained) with a margin head: deterministic, resumable.

A margin head needs the labels inside the forward pass, so this module has its own train step; the
loop is the classification one (:func:`mu_jax.training.fit.fit`) with that step and a retrieval
evaluation after every epoch. Everything else is shared too: :class:`~mu_jax.training.fit.TrainConfig` recipes, the
optimizer and schedule of :func:`~mu_jax.training.fit.new_state`, seeded epochs and augmentation from
:mod:`mu_jax.data.pipeline`, orbax checkpoints, ``metrics.jsonl`` and ``done.json``. As in
``fit``, epoch ``e``'s order depends only on (seed, e) and step ``t``'s augmentation only on
(seed, t), so a resumed run ends with the parameters of an uninterrupted one.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import optax
from jax import lax

from mu_jax import parallel
from mu_jax.data.splits import Examples
from mu_jax.retrieval import evaluate as retrieval_eval
from mu_jax.retrieval import model as model_lib
from mu_jax.training import fit as fitlib
from mu_jax.training import steps
from mu_jax.training.state import TrainState


def margin_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy of margin logits (:func:`model.margin_logits`)."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype("float32"),
                                                         labels.astype("int32"))


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *, augment: bool
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on the margin loss (per device; gradients averaged over the data axis).

  ``accuracy`` is top-1 of the plain cosine logits (no margin), the identity accuracy of the head.
  """
  images = steps.prepare_images(batch, rng, augment)
  labels = batch["label"]

  def loss_fn(params):
    logits, emb, stats = model_lib.embed(state, params, state.batch_stats, images, train=True,
                                         labels=labels)
    return margin_loss(logits, labels).mean(), (emb, stats)

  (loss, (emb, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = lax.pmean(grads, parallel.AXIS)
  state_new = state.apply_gradients(grads=grads, batch_stats=stats)
  # Identity accuracy from the embeddings already computed (centres of the pre-update head).
  centres = model_lib.l2_normalize(state.params["fc"]["Dense_0"]["kernel"], axis=0)
  correct = (jax.numpy.argmax(emb @ centres, -1) == labels).astype("float32")
  return state_new, lax.pmean({"loss": loss, "accuracy": correct.mean()}, parallel.AXIS)


@functools.lru_cache(maxsize=None)
def compiled_train_step(augment: bool) -> Callable[..., Any]:
  """The data-parallel margin step (state donated), its images prepared by their own program."""
  step = parallel.data_parallel(
      functools.partial(train_step, augment=False),
      in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED),
      out_specs=(parallel.REPLICATED, parallel.REPLICATED), donate_argnums=(0,))
  return steps.prepared(step, augment)


def fit(model: model_lib.EmbeddingNet, train: Examples, cfg: fitlib.TrainConfig, *, seed: int,
        stage_dir: str, eval_sets: Mapping[str, Examples] | None = None,
        init_rng: jax.Array | None = None, progress: bool = True,
        on_epoch_end: Callable[[int], None] | None = None) -> fitlib.FitResult:
  """Trains an embedding model on identity labels from scratch, or resumes from ``stage_dir``.

  Args:
    model: an :class:`~mu_jax.retrieval.model.EmbeddingNet`.
    train: training examples; labels are identity indices in 0..num_classes-1.
    cfg: the recipe.
    seed: seeds the initialisation, the data order and the augmentation.
    stage_dir: checkpoints, ``metrics.jsonl`` go there.
    eval_sets: sets whose retrieval mAP and Rank-1 (one query per identity, cosine similarity)
      are logged after every epoch as ``<name>_map`` and ``<name>_rank1``.
    init_rng: initialisation key (default: derived from ``seed``, as ``fit`` does).
    progress: show a progress bar.
    on_epoch_end: called with the finished epoch after its checkpoint (tests interrupt with it).

  Returns:
    A :class:`~mu_jax.training.fit.FitResult`.
  """
  def evaluate_epoch(state: TrainState) -> dict[str, float]:
    row = {}
    for name, ex in (eval_sets or {}).items():
      r = retrieval_eval.retrieval_summary(retrieval_eval.embed(state, ex, cfg.eval_batch_size),
                                           ex.identities)
      row[f"{name}_map"], row[f"{name}_rank1"] = r["map"], r["rank1"]
    return row

  return fitlib.fit(model, train, cfg, task="multiclass", seed=seed, stage_dir=stage_dir,
                    init_rng=init_rng, progress=progress, on_epoch_end=on_epoch_end,
                    train_step=compiled_train_step(cfg.augment), evaluate_epoch=evaluate_epoch)
