"""Per-example outputs of a model on a split, through the data-parallel eval step."""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import numpy as np

from mu_jax import costs, parallel
from mu_jax.data import pipeline
from mu_jax.data.splits import Examples
from mu_jax.training import steps
from mu_jax.training.state import TrainState


def predict(state: TrainState, examples: Examples, *, task: str, batch_size: int = 256
            ) -> dict[str, np.ndarray]:
  """Eval-mode logits and per-example losses of every example, in order.

  Returns:
    {"logits": [N, C], "loss": [N], "label", "identity", "example_id"}, the per-example output
    contract of docs/metrics.md#per-example-outputs.
  """
  # Only the model enters the eval step: without the optimizer state every method's state has the
  # same structure, so the step compiles once per process instead of once per method.
  state = state.replace(tx=None, opt_state=None, step=0)
  n_cls = getattr(getattr(state.apply_fn, "__self__", None), "num_classes", 0)
  out = run_batched(steps.compiled_eval_step(task), state, examples, batch_size,
                    {"logits": (n_cls,), "loss": ()})
  return {**out, "label": examples.labels, "identity": examples.identities,
          "example_id": examples.example_ids}


def predict_splits(state: TrainState, splits: Mapping[str, Examples], *, task: str,
                   batch_size: int = 256) -> dict[str, dict[str, np.ndarray]]:
  """:func:`predict` of several splits in one pass: their examples run back to back in shared
  batches, so only the very last batch is padded and one program serves every split.

  Returns:
    {split: the :func:`predict` outputs of that split}.
  """
  names = list(splits)
  sizes = [len(splits[n]) for n in names]
  starts = np.cumsum([0] + sizes)
  state = state.replace(tx=None, opt_state=None, step=0)
  n_cls = getattr(getattr(state.apply_fn, "__self__", None), "num_classes", 0)
  out = run_batched(steps.compiled_eval_step(task), state, _Chained(splits, starts), batch_size,
                    {"logits": (n_cls,), "loss": ()})
  return {n: {"logits": out["logits"][a:b], "loss": out["loss"][a:b],
              "label": splits[n].labels, "identity": splits[n].identities,
              "example_id": splits[n].example_ids}
          for n, a, b in zip(names, starts[:-1], starts[1:])}


class _Chained:
  """Several splits' examples seen as one sequence, gathered per batch without copying them all."""

  def __init__(self, splits: Mapping[str, Examples], starts: np.ndarray):
    self.parts = list(splits.values())
    self.starts = starts

  def __len__(self) -> int:
    return int(self.starts[-1])

  def batch(self, index: np.ndarray) -> dict[str, np.ndarray]:
    which = np.searchsorted(self.starts, index, side="right") - 1
    rows = [np.flatnonzero(which == k) for k in range(len(self.parts))]
    pieces = [(r, pipeline.host_batch(ex, index[r] - self.starts[k]))
              for k, (ex, r) in enumerate(zip(self.parts, rows)) if len(r)]
    order = np.argsort(np.concatenate([r for r, _ in pieces]))  # back to the batch's row order
    return {key: np.concatenate([b[key] for _, b in pieces])[order] for key in pieces[0][1]}


def run_batched(step: Callable, state: Any, examples: Examples, batch_size: int,
                empty: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
  """Runs a data-parallel eval ``step`` over every example in padded batches, in order.

  Args:
    step: ``step(state, sharded_batch) -> {name: per-example array}``.
    state: the state the step takes.
    examples: the examples (or several splits chained), all of them evaluated once.
    batch_size: rounded down to a multiple of the device count (at least one per device).
    empty: the outputs to keep, each with its per-example shape (used when there are no examples).

  Returns:
    {name: [N, *shape] float32 array} with the padding rows dropped.
  """
  n_dev = parallel.num_devices()
  batch_size = max(n_dev, (batch_size // n_dev) * n_dev)
  parts = {name: [] for name in empty}
  gather = examples.batch if isinstance(examples, _Chained) else functools.partial(
      pipeline.host_batch, examples)
  with costs.measure("evaluation"):
    for idx, mask in pipeline.eval_batches(len(examples), batch_size):
      out = parallel.to_host(step(state, parallel.shard(gather(idx))))
      keep = mask > 0
      for name in parts:
        parts[name].append(out[name][keep])
  return {name: np.concatenate(v) if v else np.zeros((0, *empty[name]), np.float32)
          for name, v in parts.items()}


def summarize(outputs: dict[str, np.ndarray], task: str) -> dict[str, float]:
  """Mean loss and accuracy of :func:`predict` outputs."""
  logits, labels = outputs["logits"], outputs["label"]
  if len(labels) == 0:
    return {"loss": float("nan"), "accuracy": float("nan")}
  if task == "multiclass":
    acc = float(np.mean(np.argmax(logits, -1) == labels))
  else:
    acc = float(np.mean((logits > 0) == (labels > 0.5)))
  return {"loss": float(np.mean(outputs["loss"])), "accuracy": acc}
