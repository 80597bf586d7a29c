"""The train state (with BN statistics), optimizers and learning-rate schedules."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """``flax.training.train_state.TrainState`` plus BatchNorm running statistics."""

  batch_stats: Any = None


def init_variables(model: nn.Module, rng: jax.Array, image_shape: Sequence[int]) -> dict[str, Any]:
  """Initialises parameters and BN statistics for inputs of shape [H, W, C]."""
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((1, *image_shape), jnp.float32), train=False))(rng)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def step_schedule(lr: float, steps_per_epoch: int, boundaries_epochs: Sequence[int] = (),
                  decay: float = 0.1) -> optax.Schedule:
  """Constant ``lr``, multiplied by ``decay`` at each epoch boundary (MUFAC: ÷10 at 10 and 20)."""
  return optax.piecewise_constant_schedule(
      lr, {int(e) * steps_per_epoch: decay for e in boundaries_epochs})


def sgd(learning_rate: float | optax.Schedule, momentum: float = 0.0, weight_decay: float = 0.0,
        nesterov: bool = False) -> optax.GradientTransformation:
  """torch.optim.SGD: weight decay added to the gradient before momentum (as torch does)."""
  parts = []
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  parts.append(optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov))
  return optax.chain(*parts)


def create_state(model: nn.Module, variables: dict[str, Any], tx: optax.GradientTransformation
                 ) -> TrainState:
  return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                           batch_stats=variables["batch_stats"])
