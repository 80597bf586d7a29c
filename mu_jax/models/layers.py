"""Layers initialised and padded as torchvision does, with their convolution behind one hook.

Every convolution and max-pool of mu_jax's models goes through :func:`conv2d` and
:func:`max_pool`, which call what :func:`set_convolution` installed: plain ``lax`` by default,
mu_jax's CPU lowerings once :func:`mu_jax.runtime.configure_cpu` ran. The choice is read when a
function is traced, so install before jitting.
"""

from __future__ import annotations

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
