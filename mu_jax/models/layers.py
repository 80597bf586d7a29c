"""Layers initialised and padded as torchvision does, with their convolution behind one hook.

Every convolution and max-pool of mu_jax's models goes through :func:`conv2d` and
:func:`max_pool`, which call what :func:`set_convolution` installed: plain ``lax`` by default,
mu_jax's CPU lowerings once :func:`mu_jax.runtime.configure_cpu` ran. The choice is read when a
function is traced, so install before jitting.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mu_jax.parallel import AXIS

Padding = Sequence[tuple[int, int]]


def lax_conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
  """NHWC × HWIO convolution with explicit padding: ``lax.conv_general_dilated``."""
  return lax.conv_general_dilated(x, kernel, (stride, stride), tuple(padding),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def lax_max_pool(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
  """Max-pool with -inf padding on every side (torch.nn.MaxPool2d semantics), NHWC."""
  pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1),
                           pads)


_hook: dict[str, Callable[..., jax.Array]] = {"conv2d": lax_conv2d, "max_pool": lax_max_pool}


def set_convolution(conv2d_fn: Callable[..., jax.Array], max_pool_fn: Callable[..., jax.Array]
                    ) -> None:
  """Installs the convolution and max-pool every layer calls from now on.

  Args:
    conv2d_fn: ``(x, kernel, stride, padding) -> y`` with ``lax_conv2d``'s meaning.
    max_pool_fn: ``(x, window, stride, padding) -> y`` with ``lax_max_pool``'s meaning.
  """
  _hook["conv2d"], _hook["max_pool"] = conv2d_fn, max_pool_fn


def get_convolution() -> tuple[Callable[..., jax.Array], Callable[..., jax.Array]]:
  """The installed (conv2d, max_pool)."""
  return _hook["conv2d"], _hook["max_pool"]


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
  return _hook["conv2d"](x, kernel, int(stride), tuple((int(a), int(b)) for a, b in padding))


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
  return _hook["max_pool"](x, int(window), int(stride), int(padding))

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
    return conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride,
                  ((pad, pad), (pad, pad)))


class BatchNorm(nn.Module):
  """torch.nn.BatchNorm2d over the last axis, synchronised over the data-parallel axis.

  Variables are flax's (params ``scale``/``bias``, batch_stats ``mean``/``var``), so checkpoints
  of ``flax.linen.BatchNorm`` load unchanged. Two differences from flax's layer:

  * ``mask`` ([N], 0/1): batch statistics over the real examples only. Sums and counts are added
    over the devices before dividing, so a device whose shard is all padding contributes nothing
    and the statistics equal those of the unpadded batch (flax averages per-device masked means,
    which weights devices equally whatever their count).
  * ``unbiased_running_var``: the running variance moves towards the unbiased batch variance
    (times n / (n - 1), n the real elements per channel over all devices), as torch's BatchNorm
    does; normalisation itself uses the biased variance, as both do.

  Attributes:
    use_running_average: eval mode (running statistics, nothing updated).
    momentum: weight of the old running statistics (torch's momentum 0.1 is 0.9 here).
    epsilon: added to the variance.
    dtype: output dtype; statistics are float32.
    axis_name: the data-parallel axis the batch statistics are reduced over (None: local).
    unbiased_running_var: torch's running-variance update.
  """

  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  axis_name: str | None = None
  unbiased_running_var: bool = False

  @nn.compact
  def __call__(self, x, mask: jax.Array | None = None):
    features = x.shape[-1]
    ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (features,))
    ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (features,))
    scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      xf = x.astype(jnp.float32)
      axes = tuple(range(x.ndim - 1))
      per_example = math.prod(x.shape[1:-1])
      if mask is None:
        s1, s2 = xf.sum(axes), jnp.square(xf).sum(axes)
        count = jnp.float32(x.shape[0] * per_example)
      else:
        w = mask.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
        s1, s2 = (xf * w).sum(axes), (jnp.square(xf) * w).sum(axes)
        count = mask.astype(jnp.float32).sum() * per_example
      if self.axis_name is not None and not self.is_initializing():
        s1, s2, count = jax.lax.psum((s1, s2, count), self.axis_name)
      mean = s1 / count
      # E[x^2] - E[x]^2 (flax's fast variance), clipped at 0 against round-off.
      var = jnp.maximum(0.0, s2 / count - jnp.square(mean))
      if not self.is_initializing():
        running = var * jnp.where(count > 1, count / jnp.maximum(count - 1, 1.0), 1.0) \
            if self.unbiased_running_var else var
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * running
    y = x - mean
    y = y * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
    return y.astype(self.dtype)


def batch_norm(train: bool, name: str | None = None, axis_name: str | None = AXIS,
               dtype: Any = jnp.float32, unbiased_running_var: bool = False) -> BatchNorm:
  """torch.nn.BatchNorm2d defaults: momentum 0.1 (0.9 here), eps 1e-5, weight 1, bias 0.

  Statistics are summed over the data-parallel axis (synchronised BN), so a step on several
  devices equals the same step on one device. ``unbiased_running_var`` selects torch's update of
  the running variance (see :class:`BatchNorm`).
  """
  return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                   axis_name=axis_name if train else None,
                   unbiased_running_var=unbiased_running_var, name=name)


class Linear(nn.Module):
  """torch.nn.Linear with its default initialisation."""

  features: int

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    return nn.Dense(self.features, kernel_init=torch_linear_kernel,
                    bias_init=torch_linear_bias(fan_in), dtype=jnp.float32)(x.astype(jnp.float32))
