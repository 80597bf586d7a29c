"""Layers initialised and padded as torchvision does, on top of :mod:`mu_jax.ops.conv`."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mu_jax.ops import conv as conv_ops
from mu_jax.parallel import AXIS

# torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out), untruncated.
kaiming_fan_out = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.Linear's default: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_kernel = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_linear_bias(fan_in: int):
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class Conv(nn.Module):
  """Bias-free 2-D convolution with explicit symmetric padding (torchvision's ``padding=k//2``)."""

  features: int
  kernel_size: int
  stride: int = 1
  padding: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", kaiming_fan_out, (k, k, x.shape[-1], self.features), jnp.float32)
    pad = k // 2 if self.padding is None else self.padding
    return conv_ops.conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride,
                           ((pad, pad), (pad, pad)))


def batch_norm(train: bool, name: str | None = None, axis_name: str | None = AXIS,
               dtype: Any = jnp.float32) -> nn.BatchNorm:
  """torch.nn.BatchNorm2d defaults: momentum 0.1 (flax 0.9), eps 1e-5, weight 1, bias 0.

  Statistics are averaged over the data-parallel axis (synchronised BN), so a step on several
  devices equals the same step on one device.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                      axis_name=axis_name if train else None, name=name)


class Linear(nn.Module):
  """torch.nn.Linear with its default initialisation."""

  features: int

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    return nn.Dense(self.features, kernel_init=torch_linear_kernel,
                    bias_init=torch_linear_bias(fan_in), dtype=jnp.float32)(x.astype(jnp.float32))
