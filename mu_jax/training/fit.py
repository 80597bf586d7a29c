"""The training loop for the original and retrained models: deterministic and resumable.

The data order of epoch ``e`` depends only on (seed, e) and the augmentation randomness of step
``t`` only on (seed, t), so restoring the checkpoint of the last finished epoch and running the
same command again gives the same parameters, bit for bit on the CPU, as a run that never stopped.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np
from absl import logging
from tqdm.auto import tqdm

from mu_jax import checkpoints, parallel
from mu_jax.data import pipeline
from mu_jax.data.splits import Examples
from mu_jax.training import evaluate, steps
from mu_jax.training.state import TrainState, create_state, init_variables, sgd, step_schedule


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A training recipe (defaults: the MUFAC original model, docs/datasets.md#training-recipes).

  Attributes:
    epochs: number of epochs.
    batch_size: global batch size (split over all devices).
    lr: initial learning rate.
    momentum: SGD momentum (0 = plain SGD).
    weight_decay: L2 added to the gradient, as torch.optim.SGD does.
    lr_boundaries: epochs at which the learning rate is multiplied by ``lr_decay``.
    lr_decay: the factor at each boundary.
    augment: apply the reference training augmentation.
    eval_batch_size: batch size of evaluation passes.
  """

  epochs: int = 30
  batch_size: int = 64
  lr: float = 0.01
  momentum: float = 0.9
  weight_decay: float = 0.0
  lr_boundaries: tuple[int, ...] = (10, 20)
  lr_decay: float = 0.1
  augment: bool = True
  eval_batch_size: int = 256

  def __post_init__(self):
    if self.epochs <= 0:
      raise ValueError(f"train.epochs must be positive, got {self.epochs}")
    if self.batch_size <= 0:
      raise ValueError(f"train.batch_size must be positive, got {self.batch_size}")
    if not self.lr > 0:
      raise ValueError(f"train.lr must be positive, got {self.lr}")
    if not 0 <= self.momentum < 1:
      raise ValueError(f"train.momentum must be in [0, 1), got {self.momentum}")
    if self.weight_decay < 0:
      raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")

  @classmethod
  def from_config(cls, cfg: Mapping[str, Any]) -> "TrainConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(cfg) - fields)
    if unknown:
      raise ValueError(f"unknown train config fields {unknown}; known: {sorted(fields)}")
    kw = dict(cfg)
    if "lr_boundaries" in kw:
      kw["lr_boundaries"] = tuple(int(b) for b in kw["lr_boundaries"])
    return cls(**kw)


def new_state(model, rng: jax.Array, image_shape, cfg: TrainConfig, steps_per_epoch: int) -> TrainState:
  """A freshly initialised state with the recipe's optimizer and schedule."""
  variables = init_variables(model, rng, image_shape)
  schedule = step_schedule(cfg.lr, steps_per_epoch, cfg.lr_boundaries, cfg.lr_decay)
  return create_state(model, variables, sgd(schedule, cfg.momentum, cfg.weight_decay))


@dataclasses.dataclass
class FitResult:
  state: TrainState
  wall_s: float
  examples: int
  resumed_from_epoch: int


def fit(model, train: Examples, cfg: TrainConfig, *, task: str, seed: int, stage_dir: str,
        eval_sets: Mapping[str, Examples] | None = None, init_rng: jax.Array | None = None,
        progress: bool = True, on_epoch_end: Callable[[int], None] | None = None,
        train_step: Callable[..., Any] | None = None,
        evaluate_epoch: Callable[[TrainState], Mapping[str, float]] | None = None) -> FitResult:
  """Trains ``model`` on ``train`` from scratch, or resumes from ``stage_dir``'s checkpoints.

  Args:
    model: a flax module (see :func:`mu_jax.models.create_model`).
    train: the training examples.
    cfg: the recipe.
    task: "multiclass" or "multilabel".
    seed: seeds the initialisation, the data order and the augmentation.
    stage_dir: ``WORKDIR/<stage>``: checkpoints, ``metrics.jsonl`` and ``done.json`` go there.
    eval_sets: splits evaluated at the end of every epoch (e.g. {"test": ...}), logged as
      ``<name>_loss`` and ``<name>_accuracy``.
    init_rng: the initialisation key (default: derived from ``seed``).
    progress: show a progress bar.
    on_epoch_end: called with the finished epoch number after its checkpoint is written (tests use
      it to interrupt a run).
    train_step: the compiled data-parallel step ``(state, batch, rng) -> (state, metrics)`` with
      metrics ``loss`` and ``accuracy`` (default: the task-loss step; retrieval passes its margin
      step).
    evaluate_epoch: ``state -> {column: value}`` logged after every epoch in place of the
      ``eval_sets`` loss and accuracy.

  Returns:
    The final state (replicated over devices), the wall seconds and examples processed by this
    call, and the epoch it resumed from (0 for a fresh run). Each metrics.jsonl row carries its
    epoch's ``epoch_s`` (training only: evaluation and the one-time compilation, logged as
    ``compile_s`` in the first row of each run, excluded) and ``examples``, so the cost of a stage
    interrupted and resumed is the sum over its rows.
  """
  n_dev = parallel.num_devices()
  batch = pipeline.effective_batch_size(len(train), cfg.batch_size, n_dev)
  steps_per_epoch = len(train) // batch
  rng = jax.random.key(seed)
  state = new_state(model, init_rng if init_rng is not None else jax.random.fold_in(rng, 0),
                    train.images.shape[1:], cfg, steps_per_epoch)
  ckpt = checkpoints.Checkpointer(os.path.join(stage_dir, "checkpoints"))
  metrics_path = os.path.join(stage_dir, "metrics.jsonl")
  start_epoch = 0
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state)
    start_epoch = int(state.step) // steps_per_epoch
    logging.info("resuming %s from epoch %d", stage_dir, start_epoch)
  # Rows logged after the restored checkpoint belong to a run that did not finish its epoch.
  if parallel.is_primary():
    checkpoints.truncate_jsonl(metrics_path, lambda r: r.get("epoch", 0) <= start_epoch)
  state = parallel.replicate(state)
  step_fn = train_step or steps.compiled_train_step(task, cfg.augment)
  step_rng = jax.random.fold_in(rng, 1)
  t0, seen, compile_s = time.time(), 0, 0.0
  for epoch in range(start_epoch, cfg.epochs):
    batches = pipeline.train_batches(len(train), batch, seed, epoch)
    if epoch == start_epoch:
      step_fn, compile_s = parallel.compile_timed(
          step_fn, state, parallel.shard(pipeline.host_batch(train, batches[0])), step_rng)
    t_epoch, seen_epoch = time.time(), seen
    sums: dict[str, float] = {}
    bar = tqdm(batches, desc=f"{os.path.basename(stage_dir)} epoch {epoch + 1}/{cfg.epochs}",
               disable=None if progress else True, leave=False)  # None: off when not a terminal
    for i, idx in enumerate(bar):
      global_step = epoch * steps_per_epoch + i
      state, m = step_fn(state, parallel.shard(pipeline.host_batch(train, idx)),
                         jax.random.fold_in(step_rng, global_step))
      for k, v in m.items():
        sums[k] = sums.get(k, 0.0) + v
      seen += len(idx)
    row = {"epoch": epoch + 1, "step": (epoch + 1) * steps_per_epoch,
           "train_loss": float(sums["loss"]) / len(batches),
           "train_accuracy": float(sums["accuracy"]) / len(batches),
           "epoch_s": round(time.time() - t_epoch, 3), "examples": seen - seen_epoch}
    if epoch == start_epoch:
      row["compile_s"] = round(compile_s, 3)
    if evaluate_epoch is not None:
      row.update(evaluate_epoch(state))
    for name, ex in (eval_sets or {}).items():
      s = evaluate.summarize(evaluate.predict(state, ex, task=task, batch_size=cfg.eval_batch_size), task)
      row[f"{name}_loss"], row[f"{name}_accuracy"] = s["loss"], s["accuracy"]
    if not np.isfinite(row["train_loss"]):
      raise FloatingPointError(f"{stage_dir}: training loss is {row['train_loss']} at epoch "
                               f"{epoch + 1}; the last finite checkpoint is kept")
    if parallel.is_primary():
      checkpoints.append_jsonl(metrics_path, row)
    ckpt.save((epoch + 1) * steps_per_epoch, parallel.to_host(state))
    logging.info("%s %s", stage_dir, row)
    if on_epoch_end is not None:
      on_epoch_end(epoch + 1)
  ckpt.close()
  return FitResult(state, time.time() - t0, seen, start_epoch)
