"""A user's own flax model, outside mu_jax, meeting the model contract (docs/models.md)."""

import flax.linen as nn
import jax.numpy as jnp

from mu_jax.models import layers


class TinyNet(nn.Module):
  """conv-BN-ReLU, global average pool, linear head: two blocks for CF-k and EU-k."""

  num_classes: int
  width: int = 8

  block_names = (("conv1", "bn1"), ("fc",))

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False, mask=None):
    x = layers.Conv(self.width, 3, 2, name="conv1")(x)
    x = nn.relu(layers.batch_norm(train, "bn1")(x, mask))
    pooled = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, name="fc")(pooled)
    return (logits, pooled) if features else logits


def build(num_classes, *, width, stem, dtype):
  del stem, dtype
  return TinyNet(num_classes, width or 8)


class NoMask(nn.Module):
  num_classes: int
  block_names = (("fc",),)

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    return nn.Dense(self.num_classes, name="fc")(jnp.mean(x, axis=(1, 2)))


def build_without_mask(num_classes, **_):
  return NoMask(num_classes)
