"""Builds a model from its config (built-in, registered or ``module:builder``) and names its blocks
for methods that address "the last k"."""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from mu_jax.models.resnet import resnet18
from mu_jax.models.small import SmallCNN

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


Builder = Callable[..., nn.Module]
_BUILDERS: dict[str, Builder] = {}


def register_model(name: str, builder: Builder) -> None:
  """Makes ``config.model.name == name`` build ``builder(num_classes, width=, stem=, dtype=)``.

  The module must meet mu_jax's model contract (docs/models.md): ``__call__(x, train=False,
  features=False, mask=None)``, BatchNorm statistics in ``batch_stats``, ``block_names`` and
  ``num_classes``. :func:`check_contract` checks it.

  Raises:
    ValueError: ``name`` is taken by another builder.
  """
  if name in _BUILDERS and _BUILDERS[name] is not builder:
    raise ValueError(f"model {name!r} is already registered")
  _BUILDERS[name] = builder


def _builder(name: str) -> Builder:
  if name in _BUILDERS:
    return _BUILDERS[name]
  if ":" in name:  # a user's builder given on the command line: --config.model.name=pkg.mod:fn
    module, _, attr = name.partition(":")
    try:
      return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
      raise ValueError(f"model {name!r}: cannot import {attr!r} from {module!r} ({e})") from e
  raise ValueError(f"unknown model {name!r}; models are {', '.join(map(repr, _BUILDERS))}, or "
                   "module:builder for your own")


def create_model(name: str, num_classes: int, *, width: int | None = None, stem: str = "imagenet",
                 dtype: str = "float32") -> nn.Module:
  """Returns the model called ``name`` ("resnet18", "small_cnn", a registered or ``module:builder``).

  Args:
    name: model name.
    num_classes: head size.
    width: first-stage channels (resnet18: 64 = torchvision; small_cnn: 16).
    stem: resnet18 only: "imagenet" (torchvision) or "cifar".
    dtype: compute dtype, "float32" or "bfloat16" (parameters stay float32).
  """
  if dtype not in _DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
  model = _builder(name)(num_classes, width=width, stem=stem, dtype=_DTYPES[dtype])
  if name not in ("resnet18", "small_cnn"):
    check_contract(model, name)
  return model


def check_contract(model: nn.Module, name: str = "") -> None:
  """Refuses a module that lacks what mu_jax's methods and evaluation use (docs/models.md).

  Raises:
    ValueError: naming the model and what is missing.
  """
  where = f"model {name or type(model).__name__!r}"
  params = inspect.signature(type(model).__call__).parameters
  missing = [k for k in ("train", "features", "mask") if k not in params]
  if missing:
    raise ValueError(f"{where}: __call__ must take the keyword arguments train, features and mask "
                     f"(docs/models.md); it lacks {missing}")
  blocks = getattr(type(model), "block_names", None)
  if not blocks or not all(isinstance(g, tuple) and g for g in blocks):
    raise ValueError(f"{where}: needs a class attribute block_names, top-level parameter groups "
                     "from input to output, e.g. (('conv1', 'bn1'), ('layer1',), ('fc',))")
  if not isinstance(getattr(model, "num_classes", None), int):
    raise ValueError(f"{where}: needs an integer num_classes attribute (the head size)")


def _resnet18(num_classes, *, width, stem, dtype):
  return resnet18(num_classes, width=width or 64, stem=stem, dtype=dtype)


def _small_cnn(num_classes, *, width, stem, dtype):
  del stem
  return SmallCNN(num_classes, width=width or 16, dtype=dtype)


register_model("resnet18", _resnet18)
register_model("small_cnn", _small_cnn)


def block_names(model: nn.Module) -> tuple[tuple[str, ...], ...]:
  """Top-level parameter groups from input to output (stem, stages, head)."""
  return type(model).block_names


def last_blocks(model: nn.Module, k: int) -> tuple[str, ...]:
  """Top-level parameter names of the last ``k`` blocks (k=3 on ResNet-18: layer3, layer4, fc)."""
  blocks = block_names(model)
  if not 1 <= k <= len(blocks):
    raise ValueError(f"k must be in 1..{len(blocks)} for {type(model).__name__}, got {k}")
  return tuple(n for group in blocks[-k:] for n in group)
