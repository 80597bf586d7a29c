"""The unlearning protocol: a method is data (phases of pure steps), not a loop.

A factory such as ``mu_jax.methods.scrub(temperature=4.0)`` returns an :class:`Unlearner`, the way
``optax.adam(1e-3)`` returns a gradient transformation. :func:`mu_jax.methods.run` is the only loop.

An Unlearner has
  * ``optimizer``: the optax transformation the unlearning state is rebuilt with (the reference
    runs every method with SGD lr 0.001, no momentum);
  * ``init(state, rng, spec) -> (state, aux)``: pure; builds what the steps need besides the
    model (a frozen teacher, a mask, a noise tensor, ...) and may change the starting state
    (EU-k re-initialises blocks);
  * ``phases(spec) -> [Phase]``: what to run, in order. A :class:`Phase` names its data
    :data:`STREAMS` entry, its number of epochs and its per-device step
    ``step(state, aux, batch, rng, info) -> (state, aux, metrics)``; an optional
    ``after(state, aux, info) -> (state, aux)`` runs once when the phase ends (turn accumulated
    gradients into a mask, dampen parameters, prune a head, ...);
  * ``traced``: the continuous hyperparameters its steps read, by name.

Compile once. A step's hyperparameters are arguments, not constants: the optimizer's (learning
rate, momentum, weight decay) live in its state (:func:`mu_jax.training.state.traced_optimizer`),
the others arrive as float32 arrays in ``info["hp"]`` (the Unlearner's ``traced``). Step builders
take only what changes shapes or control flow (task, BatchNorm mode, number of classes) and return
the same function object for the same arguments (``functools.cache``), so one compiled program
serves every value of a hyperparameter, every method with the same step computation, and a
``vmap`` over values.

Steps are written per device like the training step (``lax.pmean`` over
:data:`mu_jax.parallel.AXIS`); the driver compiles them data-parallel. ``batch`` is
``{"image", "label", "mask"}`` for single streams and ``{"forget": {...}, "retain": {...}}`` for the
paired ones; images arrive as float32 in [0, 1], already augmented when the phase asks for it.
``mask`` (float 0/1 per row) marks the real rows: all ones unless the phase keeps the last partial
batch (``Phase.partial="keep"``), which arrives padded to the full shape; steps pass it to the
helpers of :mod:`mu_jax.methods.common`. Steps called without a mask treat every row as real.
``info`` holds ``progress`` (fraction of the whole run's steps done, for schedules), ``epoch``
and ``hp``.
``metrics`` must include ``loss`` (the driver stops on a non-finite one).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import optax

from mu_jax.training.state import TrainState

# retain / forget / train (= retain + forget): one pass over that split per epoch.
# paired: forget and retain together; an epoch is one pass over the longer, the shorter cycled.
# zip: forget and retain together; an epoch stops at the end of the shorter (Python's zip).
STREAMS = ("retain", "forget", "train", "paired", "zip")
SINGLE_STREAMS = ("retain", "forget", "train")

# What happens to batches that are not full (the reference's loaders keep the last partial batch;
# its pair loops skip a pair unless both batches are full):
# drop: partial batches are dropped before pairing (mu_jax's default).
# keep: single streams keep the last partial batch, padded with a mask (torch's DataLoader).
# skip: pair streams pair the loaders' batches, partial ones included, and skip every pair with a
#   batch that is not full. For "paired" this is the reference's NegGrad loop: one pass over the
#   retain loader with a forget iterator that restarts (reshuffled) when exhausted and carries
#   over from one epoch to the next; for "zip" it equals "drop".
PARTIAL = ("drop", "keep", "skip")

Step = Callable[..., tuple[TrainState, Any, dict[str, jax.Array]]]


class MethodNotApplicable(ValueError):
  """The method's update rule does not apply to this task (named in the message)."""


@dataclasses.dataclass(frozen=True)
class Spec:
  """Static facts about the model and task that a method may need to build its steps.

  Attributes:
    model: the flax module (for re-initialising blocks or a random teacher).
    task: "multiclass" or "multilabel".
    num_classes: logits of the head.
    image_shape: [H, W, C] of the inputs.
  """

  model: nn.Module
  task: str
  num_classes: int
  image_shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Phase:
  """One stage of a method: ``epochs`` passes of ``step`` over ``stream``.

  Attributes:
    name: shown in logs and metrics.jsonl.
    stream: one of :data:`STREAMS`.
    step: the pure per-device step (see the module docstring).
    epochs: passes over the stream.
    augment: feed the reference training augmentation (as the reference's train loaders).
    after: optional pure ``(state, aux, info) -> (state, aux)`` run once at the end of the phase.
    max_steps: optional cap on steps per epoch (e.g. a fixed number of noise batches).
    partial: what happens to batches that are not full: one of :data:`PARTIAL`.
  """

  name: str
  stream: str
  step: Step
  epochs: int = 1
  augment: bool = True
  after: Callable[[TrainState, Any, Any], tuple[TrainState, Any]] | None = None
  max_steps: int | None = None
  partial: str = "drop"

  def __post_init__(self):
    if self.stream not in STREAMS:
      raise ValueError(f"phase {self.name!r}: stream must be one of {STREAMS}, got {self.stream!r}")
    if self.partial not in PARTIAL:
      raise ValueError(f"phase {self.name!r}: partial must be one of {PARTIAL}, got {self.partial!r}")
    if self.partial == "keep" and self.stream not in SINGLE_STREAMS:
      raise ValueError(f"phase {self.name!r}: partial='keep' needs a single stream "
                       f"{SINGLE_STREAMS}, got {self.stream!r}")
    if self.partial == "skip" and self.stream in SINGLE_STREAMS:
      raise ValueError(f"phase {self.name!r}: partial='skip' applies to the pair streams "
                       f"('paired', 'zip'); a single stream skips its partial batch with 'drop'")
    if self.epochs < 0:
      raise ValueError(f"phase {self.name!r}: epochs must be >= 0, got {self.epochs}")


def _no_aux(state: TrainState, rng: jax.Array, spec: Spec) -> tuple[TrainState, Any]:
  del rng, spec
  return state, {}


@dataclasses.dataclass(frozen=True)
class Unlearner:
  """An unlearning method (see the module docstring).

  Attributes:
    name: the registry name.
    hparams: the hyperparameters it was built with (recorded with every result).
    optimizer: the transformation the unlearning state uses.
    phases: ``spec -> [Phase]``.
    init: ``(state, rng, spec) -> (state, aux)``.
    tasks: the tasks the update rule applies to.
    traced: the hyperparameters the steps read from ``info["hp"]`` (float values by name).
  """

  name: str
  hparams: Mapping[str, Any]
  optimizer: optax.GradientTransformation
  phases: Callable[[Spec], Sequence[Phase]]
  init: Callable[[TrainState, jax.Array, Spec], tuple[TrainState, Any]] = _no_aux
  tasks: tuple[str, ...] = ("multiclass", "multilabel")
  traced: Mapping[str, float] = dataclasses.field(default_factory=dict)

  def check_task(self, task: str) -> None:
    if task not in self.tasks:
      raise MethodNotApplicable(f"method {self.name!r} does not apply to {task!r} tasks "
                                f"(it supports {', '.join(self.tasks)})")


def check_positive(name: str, **values: float) -> None:
  """Raises a ValueError naming the method and hyperparameter when a value is not > 0."""
  for k, v in values.items():
    if not v > 0:
      raise ValueError(f"{name}: {k} must be positive, got {v}")


def check_non_negative(name: str, **values: float) -> None:
  for k, v in values.items():
    if not v >= 0:
      raise ValueError(f"{name}: {k} must be >= 0, got {v}")
