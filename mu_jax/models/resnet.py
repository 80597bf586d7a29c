"""ResNet-18 equal to ``torchvision.models.resnet18`` (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016, arXiv 1512.03385; pytorch/vision@054e54c:torchvision/models/resnet.py).

7×7/2 stem with padding 3, BN, ReLU, 3×3/2 max-pool with padding 1, four stages of two
:class:`BasicBlock` (widths 64/128/256/512, stride 2 from stage 2 on, 1×1/2 projection shortcuts),
global average pooling and a linear head. Convolutions use kaiming-normal fan-out initialisation,
BN weight 1 and bias 0, ``zero_init_residual=False``, as torchvision does. Top-level parameter names
follow torchvision (``conv1``, ``bn1``, ``layer1``..``layer4``, ``fc``) so methods that freeze or
re-initialise "the last k blocks" can address them by name.

BatchNorm follows torch's, including its running-variance update with the unbiased batch variance
(``unbiased_bn``, on by default).

``width`` scales every stage (64 is torchvision's); ``stem="cifar"`` swaps in a 3×3/1 stem without
max-pool for tiny inputs. Neither changes the block structure.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mu_jax.models.layers import Conv, Linear, batch_norm, max_pool


class BasicBlock(nn.Module):
  features: int
  stride: int = 1
  dtype: Any = jnp.float32
  unbiased_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool, mask=None):
    bn = lambda name: batch_norm(train, name, dtype=self.dtype, unbiased_running_var=self.unbiased_bn)
    y = Conv(self.features, 3, self.stride, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(bn("bn1")(y, mask))
    y = Conv(self.features, 3, 1, dtype=self.dtype, name="conv2")(y)
    y = bn("bn2")(y, mask)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = Conv(self.features, 1, self.stride, padding=0, dtype=self.dtype, name="downsample_conv")(x)
      x = bn("downsample_bn")(x, mask)
    return nn.relu(y + x)


class ResLayer(nn.Module):
  features: int
  blocks: int
  stride: int
  dtype: Any = jnp.float32
  unbiased_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool, mask=None):
    for i in range(self.blocks):
      x = BasicBlock(self.features, self.stride if i == 0 else 1, self.dtype, self.unbiased_bn,
                     name=f"block{i}")(x, train, mask)
    return x


class ResNet(nn.Module):
  """ResNet with BasicBlocks; :func:`resnet18` gives torchvision's configuration.

  Attributes:
    num_classes: logits of the head (8 for MUFAC ages, 3 for MUCAC multi-label, 2 for binary).
    stage_sizes: blocks per stage.
    width: channels of the first stage.
    stem: "imagenet" (torchvision) or "cifar" (3×3/1, no max-pool).
    dtype: compute dtype (parameters and BN statistics stay float32).
    unbiased_bn: BatchNorm running variances follow torch's update (the unbiased batch
      variance), as torchvision's ResNet-18 trained in torch does.
  """

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  width: int = 64
  stem: str = "imagenet"
  dtype: Any = jnp.float32
  unbiased_bn: bool = True

  block_names = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",), ("fc",))

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False, mask=None):
    """Returns logits [N, num_classes], or (logits, pooled features) if ``features``.

    ``mask`` ([N], 0/1) restricts train-mode BatchNorm statistics to the real rows of a padded
    batch; the outputs of padded rows are computed but meaningless.
    """
    bn1 = batch_norm(train, "bn1", dtype=self.dtype, unbiased_running_var=self.unbiased_bn)
    if self.stem == "imagenet":
      x = Conv(self.width, 7, 2, padding=3, dtype=self.dtype, name="conv1")(x)
      x = nn.relu(bn1(x, mask))
      x = max_pool(x, 3, 2, 1)
    elif self.stem == "cifar":
      x = Conv(self.width, 3, 1, padding=1, dtype=self.dtype, name="conv1")(x)
      x = nn.relu(bn1(x, mask))
    else:
      raise ValueError(f"unknown stem {self.stem!r}; use 'imagenet' or 'cifar'")
    for i, blocks in enumerate(self.stage_sizes):
      x = ResLayer(self.width * 2**i, blocks, 1 if i == 0 else 2, self.dtype, self.unbiased_bn,
                   name=f"layer{i + 1}")(x, train, mask)
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    logits = Linear(self.num_classes, name="fc")(pooled)
    return (logits, pooled) if features else logits


def resnet18(num_classes: int, **kwargs) -> ResNet:
  return ResNet(num_classes=num_classes, stage_sizes=(2, 2, 2, 2), **kwargs)
