"""Builds a model from its config and names its blocks for methods that address "the last k"."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from mu_jax.models.resnet import resnet18
from mu_jax.models.small import SmallCNN

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def create_model(name: str, num_classes: int, *, width: int | None = None, stem: str = "imagenet",
                 dtype: str = "float32") -> nn.Module:
  """Returns the model called ``name`` ("resnet18" or "small_cnn").

  Args:
    name: model name.
    num_classes: head size.
    width: first-stage channels (resnet18: 64 = torchvision; small_cnn: 16).
    stem: resnet18 only: "imagenet" (torchvision) or "cifar".
    dtype: compute dtype, "float32" or "bfloat16" (parameters stay float32).
  """
  if dtype not in _DTYPES:
    raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
  if name == "resnet18":
    return resnet18(num_classes, width=width or 64, stem=stem, dtype=_DTYPES[dtype])
  if name == "small_cnn":
    return SmallCNN(num_classes, width=width or 16, dtype=_DTYPES[dtype])
  raise ValueError(f"unknown model {name!r}; models are 'resnet18' and 'small_cnn'")


def block_names(model: nn.Module) -> tuple[tuple[str, ...], ...]:
  """Top-level parameter groups from input to output (stem, stages, head)."""
  return type(model).block_names


def last_blocks(model: nn.Module, k: int) -> tuple[str, ...]:
  """Top-level parameter names of the last ``k`` blocks (k=3 on ResNet-18: layer3, layer4, fc)."""
  blocks = block_names(model)
  if not 1 <= k <= len(blocks):
    raise ValueError(f"k must be in 1..{len(blocks)} for {type(model).__name__}, got {k}")
  return tuple(n for group in blocks[-k:] for n in group)
