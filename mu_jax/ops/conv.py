"""Convolution and pooling primitives used by every mu_jax model.

Models call these functions instead of ``lax`` directly so that the lowering can be chosen by
shape in one place.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Padding = Sequence[tuple[int, int]]


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: Padding = ((0, 0), (0, 0))
           ) -> jax.Array:
  """2-D convolution, NHWC input and HWIO kernel, explicit padding (torchvision's convention)."""
  return lax.conv_general_dilated(x, kernel, (stride, stride), tuple(padding),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
  """Max-pool with -inf padding on every side (torch.nn.MaxPool2d semantics), NHWC."""
  pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), pads)
