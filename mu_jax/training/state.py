"""The train state (with BN statistics), optimizers and learning-rate schedules."""

from __future__ import annotations

import functools
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
  variables = _compiled_init(model, tuple(image_shape))(rng)
  return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


@functools.lru_cache(maxsize=64)
def _compiled_init(model: nn.Module, image_shape: tuple[int, ...]):
  # Flax modules compare and hash by their fields: every stage of one model (and every state
  # template for a restore) reuses one compiled initialisation.
  return jax.jit(lambda r: model.init(r, jnp.zeros((1, *image_shape), jnp.float32), train=False))


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


def _torch_sgd(learning_rate, momentum, weight_decay):
  # momentum 0 and weight decay 0 are exact: the trace is then g + 0·t = g, the gradient g + 0·θ.
  return optax.chain(optax.add_decayed_weights(weight_decay), optax.trace(decay=momentum),
                     optax.scale_by_learning_rate(learning_rate))


def _torch_adam(learning_rate, b1, b2, eps, weight_decay):
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                     optax.scale_by_learning_rate(learning_rate))


# Each kind's hyperparameters with their defaults (torch's for Adam).
TRACED_OPTIMIZERS = {
    "sgd": (_torch_sgd, {"learning_rate": 1e-3, "momentum": 0.0, "weight_decay": 0.0}),
    "adam": (_torch_adam, {"learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
                           "weight_decay": 0.0}),
}


class TracedOptimizer(optax.GradientTransformationExtraArgs):
  """An optimizer whose hyperparameters are arrays in its state, not constants in its update.

  Every ``traced_optimizer(kind, ...)`` shares one ``update`` function; the values are written
  into the state by ``init`` (``optax.inject_hyperparams``). Two such optimizers of one kind
  compare equal, so a train state's structure (its ``tx`` is a static field) does not change with
  the learning rate, and one compiled step serves every value (and a ``vmap`` over values).
  """

  __slots__ = ()

  def __eq__(self, other):
    return isinstance(other, TracedOptimizer) and self.update is other.update

  def __ne__(self, other):  # tuple's own __ne__ would otherwise compare the init closures
    return not self == other

  def __hash__(self):
    return hash(self.update)


@functools.cache
def _shared(kind: str) -> optax.GradientTransformationExtraArgs:
  factory, defaults = TRACED_OPTIMIZERS[kind]
  return optax.inject_hyperparams(factory)(**defaults)


def traced_optimizer(kind: str, **values: float) -> TracedOptimizer:
  """torch's SGD (``kind="sgd"``) or Adam (``"adam"``) with hyperparameters in the state.

  SGD: ``learning_rate``, ``momentum``, ``weight_decay`` (added to the gradient before momentum,
  as torch does; dampening 0, no Nesterov). Adam: ``learning_rate``, ``b1``, ``b2``, ``eps``,
  ``weight_decay`` (coupled, as ``torch.optim.Adam``). Unset values take the defaults of
  :data:`TRACED_OPTIMIZERS`. The state is ``optax.InjectHyperparamsState``: its ``hyperparams``
  can be read and set between steps (see :func:`with_hyperparams`).

  Raises:
    ValueError: an unknown kind or hyperparameter name.
  """
  if kind not in TRACED_OPTIMIZERS:
    raise ValueError(f"optimizer kind must be one of {sorted(TRACED_OPTIMIZERS)}, got {kind!r}")
  defaults = TRACED_OPTIMIZERS[kind][1]
  unknown = sorted(set(values) - set(defaults))
  if unknown:
    raise ValueError(f"{kind}: unknown hyperparameters {unknown}; it has {sorted(defaults)}")
  shared = _shared(kind)
  hparams = {**defaults, **values}

  def init(params):
    return with_hyperparams(shared.init(params), **hparams)

  return TracedOptimizer(init, shared.update)


def with_hyperparams(opt_state: Any, **values: Any) -> Any:
  """``opt_state`` (an ``InjectHyperparamsState``) with the given hyperparameters replaced."""
  hp = dict(opt_state.hyperparams)
  for k, v in values.items():
    hp[k] = jnp.asarray(v, jnp.asarray(hp[k]).dtype)
  return opt_state._replace(hyperparams=hp)
