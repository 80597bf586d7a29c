"""Per-example outputs of a model on a split, through the data-parallel eval step."""

from __future__ import annotations

import numpy as np

from mu_jax import parallel
from mu_jax.data import pipeline
from mu_jax.data.splits import Examples
from mu_jax.training import steps
from mu_jax.training.state import TrainState


def predict(state: TrainState, examples: Examples, *, task: str, batch_size: int = 256
            ) -> dict[str, np.ndarray]:
  """Eval-mode logits and per-example losses of every example, in order.

  Returns:
    {"logits": [N, C], "loss": [N], "label", "identity", "example_id"}, the per-example output
    contract of DESIGN.md.
  """
  n_dev = parallel.num_devices()
  batch_size = max(n_dev, (batch_size // n_dev) * n_dev)
  step = steps.compiled_eval_step(task)
  # Only the model enters the eval step: without the optimizer state every method's state has the
  # same structure, so the step compiles once per process instead of once per method.
  state = state.replace(tx=None, opt_state=None, step=0)
  logits, loss = [], []
  for idx, mask in pipeline.eval_batches(len(examples), batch_size):
    out = parallel.to_host(step(state, parallel.shard(pipeline.host_batch(examples, idx))))
    keep = mask > 0
    logits.append(out["logits"][keep])
    loss.append(out["loss"][keep])
  n_cls = getattr(getattr(state.apply_fn, "__self__", None), "num_classes", 0)
  return {
      "logits": np.concatenate(logits) if logits else np.zeros((0, n_cls), np.float32),
      "loss": np.concatenate(loss) if loss else np.zeros((0,), np.float32),
      "label": examples.labels,
      "identity": examples.identities,
      "example_id": examples.example_ids,
  }


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
