"""A small CNN with ResNet-style parameter names, for fast tests and laptop runs."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from mu_jax.models.layers import Conv, Linear, batch_norm


class _Stage(nn.Module):
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, mask=None):
    x = Conv(self.features, 3, 2, dtype=self.dtype, name="conv")(x)
    return nn.relu(batch_norm(train, "bn", dtype=self.dtype)(x, mask))


class SmallCNN(nn.Module):
  """conv(w)-BN-ReLU, two stride-2 stages (2w, 4w), global average pool, linear head."""

  num_classes: int
  width: int = 16
  dtype: Any = jnp.float32

  block_names = (("conv1", "bn1"), ("layer1",), ("layer2",), ("fc",))

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False, mask=None):
    """Logits (and pooled features); ``mask`` as in :class:`mu_jax.models.resnet.ResNet`."""
    x = Conv(self.width, 3, 1, dtype=self.dtype, name="conv1")(x)
    x = nn.relu(batch_norm(train, "bn1", dtype=self.dtype)(x, mask))
    x = _Stage(2 * self.width, self.dtype, name="layer1")(x, train, mask)
    x = _Stage(4 * self.width, self.dtype, name="layer2")(x, train, mask)
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    logits = Linear(self.num_classes, name="fc")(pooled)
    return (logits, pooled) if features else logits
