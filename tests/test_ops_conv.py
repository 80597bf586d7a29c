"""The CPU lowerings of mu_jax.ops.conv against plain lax, forward and backward.

Tolerance ("float32 rounding"): the matmul lowering sums the same products as
``lax.conv_general_dilated`` in another order, so results agree to a few ulps of the largest
output: |actual - reference| <= 1e-5 * max|reference| + rtol 1e-5 (float32 eps is 1.2e-7; the
longest sum here has 7·7·3 = 147 terms of N(0, 1) products, whose reordering error stays below
~sqrt(147)·eps relative to the largest output). The measured worst case is ~5e-7.
Max-pooling does no arithmetic in the forward, so its values must be equal exactly; an input pixel
in up to four overlapping windows sums up to four gradients, in another order than XLA's scatter,
so gradients agree to 1e-6 of the largest (a couple of ulps).

The gradient of the max-pool goes to the first maximum of each window in row-major order (top
row first, left to right within a row): torch.nn.MaxPool2d's CPU kernel keeps the first index that
attains the maximum, and XLA's select_and_scatter (the gradient of lax.reduce_window) selects with
``>=`` from the window's first element on, which is the same rule. With ties only that element
receives the gradient.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from mu_jax import parallel
from mu_jax.ops import conv

TOL = 1e-5


def _close(actual, reference, tol=TOL):
  actual, reference = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
  assert actual.shape == reference.shape
  scale = max(float(np.max(np.abs(reference))), 1e-30)
  np.testing.assert_allclose(actual, reference, rtol=tol, atol=tol * scale)


def _lax_conv(x, w, stride, padding):
  return lax.conv_general_dilated(x, w, (stride, stride), padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _value_and_grads(conv_fn, x, w, r, stride, padding):
  """Forward values and d<y, r>/dx, d<y, r>/dw (a random projection of the output)."""

  def loss(x_, w_):
    return jnp.sum(conv_fn(x_, w_, stride, padding) * r)

  y = conv_fn(x, w, stride, padding)
  dx, dw = jax.grad(loss, (0, 1))(x, w)
  return y, dx, dw


# (name, H, W, C_in, C_out, kernel, stride, pad): every shape class of ResNet-18 at 128/64/32
# input, with small channel counts. C_in 3 takes the thin-input forward (lax.conv) and C_in 16 the
# patches forward; both take the matmul backward.
CASES = [
    ("stem 16x16", 16, 16, 3, 8, 7, 2, 3),
    ("stem odd 15x13", 15, 13, 3, 8, 7, 2, 3),
    ("stem tiny 4x4", 4, 4, 3, 8, 7, 2, 3),
    ("3x3/1 8x8", 8, 8, 16, 8, 3, 1, 1),
    ("3x3/1 odd 5x7", 5, 7, 16, 8, 3, 1, 1),
    ("3x3/1 4x4", 4, 4, 16, 8, 3, 1, 1),
    ("3x3/1 2x2", 2, 2, 16, 8, 3, 1, 1),
    ("3x3/1 1x1", 1, 1, 16, 8, 3, 1, 1),
    ("3x3/1 thin 6x6", 6, 6, 3, 5, 3, 1, 1),
    ("3x3/2 8x8", 8, 8, 16, 8, 3, 2, 1),
    ("3x3/2 odd 7x9", 7, 9, 16, 8, 3, 2, 1),
    ("3x3/2 4x4", 4, 4, 16, 8, 3, 2, 1),
    ("3x3/2 2x2", 2, 2, 16, 8, 3, 2, 1),
    ("3x3/2 1x1", 1, 1, 16, 8, 3, 2, 1),
    ("1x1/2 8x8", 8, 8, 16, 8, 1, 2, 0),
    ("1x1/2 odd 7x7", 7, 7, 16, 8, 1, 2, 0),
    ("1x1/2 2x2", 2, 2, 16, 8, 1, 2, 0),
    ("1x1/2 1x1", 1, 1, 16, 8, 1, 2, 0),
    ("3x3/2 no pad 7x7", 7, 7, 16, 8, 3, 2, 0),
]


def _data(seed, n, h, w, ci, co, k, stride, pad, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((n, h, w, ci)).astype(np.float32)
  kernel = rng.standard_normal((k, k, ci, co)).astype(np.float32)
  ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
  r = rng.standard_normal((n, ho, wo, co)).astype(np.float32)
  return jnp.asarray(x, dtype), jnp.asarray(kernel, dtype), jnp.asarray(r, dtype)


@pytest.fixture(params=["whole batch", "one example per chunk"])
def chunking(request, monkeypatch):
  """Runs a test with unchunked patches and with lax.map/scan over single examples."""
  if request.param == "one example per chunk":
    monkeypatch.setattr(conv, "_PATCH_CHUNK_BYTES", 1)
  else:
    monkeypatch.setattr(conv, "_PATCH_CHUNK_BYTES", 1 << 40)
  return request.param


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matmul_lowering_matches_lax(case, chunking):
  _, h, w, ci, co, k, stride, pad = case
  x, kernel, r = _data(0, 3, h, w, ci, co, k, stride, pad)
  padding = ((pad, pad), (pad, pad))
  ref = jax.jit(functools.partial(_value_and_grads, _lax_conv), static_argnums=(3, 4))(
      x, kernel, r, stride, padding)
  got = jax.jit(functools.partial(_value_and_grads, conv.conv2d_im2col), static_argnums=(3, 4))(
      x, kernel, r, stride, padding)
  for a, b in zip(got, ref):
    _close(a, b)


def test_asymmetric_padding_matches_lax():
  x, kernel, _ = _data(1, 2, 6, 5, 16, 4, 3, 1, 0)
  padding = ((0, 2), (1, 0))
  y_ref = _lax_conv(x, kernel, 2, padding)
  r = jnp.asarray(np.random.default_rng(2).standard_normal(y_ref.shape), jnp.float32)
  ref = _value_and_grads(_lax_conv, x, kernel, r, 2, padding)
  got = _value_and_grads(conv.conv2d_im2col, x, kernel, r, 2, padding)
  for a, b in zip(got, ref):
    _close(a, b)


def test_plan_follows_the_shape_rules():
  """Without the direct kernels (test_native.py has the plan with them): tiny maps: matmul; the
  RGB stem: XLA; else (Eigen) XLA forward, col2im input gradient and matmul weight gradient at
  stride 2, and at stride 1 the matmul weight gradient above 16×16 and Winograd's forward for
  3×3 kernels over 128+ channels."""
  xla, mm = "xla", "matmul"
  stem = ((2, 16, 16, 3), (7, 7, 3, 8), 2)
  for eigen in (True, False):
    assert conv.plan_for((2, 2, 2, 16), (3, 3, 16, 8), 1, eigen, False) == (mm, mm, mm)
    assert conv.plan_for((2, 1, 1, 16), (3, 3, 16, 8), 2, eigen, False) == (mm, mm, mm)
    assert conv.plan_for(*stem, eigen, False) == (xla, xla, xla)
  # A 1×1 kernel on a 2×2 map is an ordinary matmul-sized product, not a tiny-map case.
  assert conv.plan_for((2, 2, 2, 16), (1, 1, 16, 8), 2, True, False) == (xla, mm, mm)
  assert conv.plan_for((2, 16, 16, 16), (3, 3, 16, 8), 1, True, False) == (xla, xla, xla)
  assert conv.plan_for((2, 16, 16, 16), (3, 3, 16, 8), 2, True, False) == (xla, mm, mm)
  assert conv.plan_for((2, 32, 16, 16), (3, 3, 16, 8), 1, True, False) == (xla, xla, mm)
  assert conv.plan_for((2, 32, 32, 16), (1, 1, 16, 8), 2, True, False) == (xla, mm, mm)
  assert conv.plan_for((2, 8, 8, 16), (3, 3, 16, 8), 1, False, False) == (mm, mm, mm)
  # Winograd's forward for 3×3 at stride 1 over 128+ channels on maps of at least 4×4.
  wg = "winograd"
  assert conv.plan_for((2, 16, 16, 128), (3, 3, 128, 128), 1, True, False) == (wg, xla, xla)
  assert conv.plan_for((2, 32, 32, 128), (3, 3, 128, 128), 1, True, False) == (wg, xla, mm)
  assert conv.plan_for((2, 4, 4, 512), (3, 3, 512, 512), 1, True, False) == (wg, xla, xla)
  assert conv.plan_for((2, 2, 2, 512), (3, 3, 512, 512), 1, True, False) == (mm, mm, mm)
  assert conv.plan_for((2, 16, 16, 64), (3, 3, 64, 64), 1, True, False) == (xla, xla, xla)
  assert conv.plan_for((2, 16, 16, 128), (3, 3, 128, 256), 2, True, False) == (xla, mm, mm)


@pytest.mark.parametrize("plan", list(itertools.product(("xla", "matmul"), repeat=3)), ids="-".join)
@pytest.mark.parametrize("case", [CASES[3], CASES[9], CASES[14], CASES[6]], ids=lambda c: c[0])
def test_every_mix_of_lowerings_matches_lax(plan, case):
  """Each pass can take either lowering; any mix gives lax's values and gradients."""
  _, h, w, ci, co, k, stride, pad = case
  x, kernel, r = _data(4, 2, h, w, ci, co, k, stride, pad)
  _assert_plan_matches_lax(plan, x, kernel, r, stride, ((pad, pad), (pad, pad)))


def _assert_plan_matches_lax(plan, x, kernel, r, stride, padding):
  """conv2d_im2col under ``plan``: the values and both gradients of lax."""

  def planned(x_, w_, s, p):
    return conv.conv2d_im2col(x_, w_, s, p, plan)

  for a, b in zip(_value_and_grads(planned, x, kernel, r, stride, padding),
                  _value_and_grads(_lax_conv, x, kernel, r, stride, padding)):
    _close(a, b)


WINOGRAD_CASES = [
    # (name, h, w, padding)
    ("8x8", 8, 8, ((1, 1), (1, 1))),
    ("odd 5x7", 5, 7, ((1, 1), (1, 1))),
    ("4x4", 4, 4, ((1, 1), (1, 1))),
    ("2x3", 2, 3, ((1, 1), (1, 1))),
    ("no padding 7x6", 7, 6, ((0, 0), (0, 0))),
    ("asymmetric 6x5", 6, 5, ((0, 2), (2, 1))),
]


@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=[c[0] for c in WINOGRAD_CASES])
def test_winograd_forward_matches_lax(case, chunking):
  _, h, w, padding = case
  x, kernel, _ = _data(7, 3, h, w, 16, 8, 3, 1, 1)
  _close(jax.jit(conv.conv2d_winograd, static_argnums=2)(x, kernel, padding),
         _lax_conv(x, kernel, 1, padding))


@pytest.mark.parametrize("rest", list(itertools.product(("xla", "matmul"), repeat=2)),
                         ids="-".join)
def test_winograd_forward_with_either_backward_matches_lax(rest):
  x, kernel, r = _data(8, 2, 6, 6, 16, 8, 3, 1, 1)
  _assert_plan_matches_lax(("winograd",) + rest, x, kernel, r, 1, ((1, 1), (1, 1)))


def test_winograd_bfloat16_and_bad_plans():
  x, kernel, _ = _data(9, 2, 6, 6, 16, 8, 3, 1, 1, jnp.bfloat16)
  got = conv.conv2d_winograd(x, kernel)
  assert got.dtype == jnp.bfloat16
  _close(got, _lax_conv(x.astype(jnp.float32), kernel.astype(jnp.float32), 1, ((1, 1), (1, 1))),
         tol=1e-2)
  x, kernel, _ = _data(9, 2, 6, 6, 16, 8, 3, 2, 1)
  with pytest.raises(ValueError, match="Winograd runs only the forward"):
    conv.conv2d_im2col(x, kernel, 2, ((1, 1), (1, 1)), ("winograd", "xla", "xla"))
  with pytest.raises(ValueError, match="Winograd runs only the forward"):
    conv.conv2d_im2col(x, kernel, 1, ((1, 1), (1, 1)), ("xla", "winograd", "xla"))
  # On a 1×1 map only the centre tap reads data, so the kernel left is 1×1.
  x1, k1, _ = _data(9, 2, 1, 1, 16, 8, 3, 1, 1)
  with pytest.raises(ValueError, match="1×1 taps"):
    conv.conv2d_im2col(x1, k1, 1, ((1, 1), (1, 1)), ("winograd", "xla", "xla"))
  with pytest.raises(ValueError, match="3×3 kernel"):
    conv.conv2d_winograd(x, kernel[:2])


def test_conv2d_matmul_runs_the_plan_of_the_shape():
  padding = ((1, 1), (1, 1))
  x16, k16, r16 = _data(6, 2, 8, 8, 16, 8, 3, 1, 1)
  seen = []
  original = conv.plan_for

  def spy(*args, **kwargs):
    seen.append(original(*args, **kwargs))
    return seen[-1]

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(conv, "plan_for", spy)
    got = _value_and_grads(conv.conv2d_matmul, x16, k16, r16, 1, padding)
  assert seen and seen[0] == original(x16.shape, k16.shape, 1)
  for a, b in zip(got, _value_and_grads(_lax_conv, x16, k16, r16, 1, padding)):
    _close(a, b)


def test_set_impl_picks_the_lowering():
  x, kernel, _ = _data(0, 2, 4, 4, 16, 8, 3, 1, 1)
  previous = conv.get_impl()
  try:
    conv.set_impl("xla")
    plain = str(jax.make_jaxpr(lambda a, b: conv.conv2d(a, b, 1, ((1, 1), (1, 1))))(x, kernel))
    pool_plain = str(jax.make_jaxpr(lambda a: conv.max_pool(a))(x))
    conv.set_impl("matmul")
    fast = str(jax.make_jaxpr(lambda a, b: conv.conv2d(a, b, 1, ((1, 1), (1, 1))))(x, kernel))
    conv.set_impl("auto")
    auto = str(jax.make_jaxpr(lambda a, b: conv.conv2d(a, b, 1, ((1, 1), (1, 1))))(x, kernel))
  finally:
    conv.set_impl(previous)
  assert "conv_general_dilated" in plain and "custom_vjp" not in plain
  assert "reduce_window" in pool_plain
  assert "custom_vjp" in fast
  # The tests run on the CPU, where "auto" means the matmul lowering.
  assert ("custom_vjp" in auto) == (jax.default_backend() == "cpu")
  with pytest.raises(ValueError, match="conv impl"):
    conv.set_impl("cudnn")


def test_vmap_over_stacked_models():
  """SISA vmaps a train step over shards: a batch of kernels and of inputs."""
  rng = np.random.default_rng(3)
  xs = jnp.asarray(rng.standard_normal((3, 2, 6, 6, 16)), jnp.float32)
  ks = jnp.asarray(rng.standard_normal((3, 3, 3, 16, 8)), jnp.float32)
  rs = jnp.asarray(rng.standard_normal((3, 2, 3, 3, 8)), jnp.float32)
  padding = ((1, 1), (1, 1))

  def per_model(fn):
    return jax.jit(jax.vmap(lambda x, k, r: _value_and_grads(fn, x, k, r, 2, padding)))

  for a, b in zip(per_model(conv.conv2d_im2col)(xs, ks, rs), per_model(_lax_conv)(xs, ks, rs)):
    _close(a, b)
  # A shared kernel (in_axes None) batches only the data.
  shared = jax.jit(jax.vmap(lambda x: conv.conv2d_im2col(x, ks[0], 2, padding)))(xs)
  _close(shared, jax.vmap(lambda x: _lax_conv(x, ks[0], 2, padding))(xs))


def test_data_parallel_gradient_equals_one_device(chunking):
  """Inside shard_map (mu_jax.parallel): per-device gradients, pmean'd, equal the global ones."""
  n_dev = parallel.num_devices()
  x, kernel, r = _data(4, 2 * n_dev, 8, 8, 16, 8, 3, 2, 1)
  padding = ((1, 1), (1, 1))

  def step(kernel_, x_, r_):
    def loss(k_):
      y = conv.conv2d_im2col(x_, k_, 2, padding)
      y = conv._max_pool_slices(y, 3, 2, 1)  # pylint: disable=protected-access
      return jnp.sum(y * r_) / x.shape[0] * n_dev
    return lax.pmean(jax.grad(loss)(kernel_), parallel.AXIS)

  pool_r = r[:, :2, :2]
  fn = parallel.data_parallel(step, in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.SHARDED),
                              out_specs=parallel.REPLICATED)
  got = fn(parallel.replicate(kernel), parallel.shard(x), parallel.shard(pool_r))

  def ref_loss(k_):
    y = conv.max_pool_xla(_lax_conv(x, k_, 2, padding), 3, 2, 1)
    return jnp.sum(y * pool_r) / x.shape[0]

  _close(np.asarray(got), jax.grad(ref_loss)(kernel))


@pytest.mark.parametrize("k,stride,pad,size", [(3, 1, 1, 4), (3, 2, 1, 5), (7, 2, 3, 8)])
def test_bfloat16_matches_lax(k, stride, pad, size):
  """bf16 inputs: the same dtype out, values within bf16 rounding of lax's bf16 result."""
  ci = 3 if k == 7 else 16
  x, kernel, r = _data(5, 2, size, size, ci, 8, k, stride, pad, jnp.bfloat16)
  padding = ((pad, pad), (pad, pad))
  got = _value_and_grads(conv.conv2d_im2col, x, kernel, r, stride, padding)
  ref = _value_and_grads(_lax_conv, x.astype(jnp.float32), kernel.astype(jnp.float32),
                         r.astype(jnp.float32), stride, padding)
  for a, b in zip(got, ref):
    assert a.dtype == jnp.bfloat16
    # bf16 keeps 8 mantissa bits (eps 2^-8 = 3.9e-3): the result of an f32-accumulated sum is
    # rounded once on output, so 1e-2 of the largest entry bounds the difference.
    _close(a, b, tol=1e-2)


# -------------------------------------------------------------------------------------------------
# max_pool


def _torch_rule_max_pool_grad(x, g, window, stride, padding):
  """NumPy reference: each output's gradient goes to the first (row-major) max of its window."""
  n, h, w, c = x.shape
  dx = np.zeros_like(x)
  ho, wo = g.shape[1:3]
  for b in range(n):
    for ch in range(c):
      for oy in range(ho):
        for ox in range(wo):
          best, arg = -np.inf, None
          for dy in range(window):
            for dxx in range(window):
              iy, ix = oy * stride + dy - padding, ox * stride + dxx - padding
              if 0 <= iy < h and 0 <= ix < w and x[b, iy, ix, ch] > best:
                best, arg = x[b, iy, ix, ch], (iy, ix)
          dx[b, arg[0], arg[1], ch] += g[b, oy, ox, ch]
  return dx


POOLS = [(3, 2, 1, 8), (3, 2, 1, 7), (3, 2, 1, 2), (3, 2, 1, 1), (2, 2, 0, 6), (3, 1, 1, 5)]


@pytest.mark.parametrize("window,stride,padding,size", POOLS)
@pytest.mark.parametrize("values", ["random", "ties"])
def test_max_pool_matches_reduce_window(window, stride, padding, size, values):
  rng = np.random.default_rng(size)
  shape = (2, size, size + 1, 3)
  if values == "random":
    x = rng.standard_normal(shape).astype(np.float32)
  elif values == "ties":
    x = rng.integers(0, 3, shape).astype(np.float32)  # many equal maxima per window
  else:
    x = np.full(shape, 0.5, np.float32)
  x = jnp.asarray(x)
  y_ref = conv.max_pool_xla(x, window, stride, padding)
  g = jnp.asarray(rng.standard_normal(y_ref.shape).astype(np.float32))

  def grads(pool):
    return jax.jit(jax.value_and_grad(lambda v: jnp.sum(pool(v, window, stride, padding) * g)))

  fast = jax.jit(lambda v: conv._max_pool_slices(v, window, stride, padding))  # pylint: disable=protected-access
  np.testing.assert_array_equal(fast(x), y_ref)
  _, dx_fast = grads(conv._max_pool_slices)(x)  # pylint: disable=protected-access
  _, dx_xla = grads(conv.max_pool_xla)(x)
  _close(dx_fast, dx_xla, tol=1e-6)
  _close(dx_fast, _torch_rule_max_pool_grad(np.asarray(x), np.asarray(g), window, stride, padding),
         tol=1e-6)


def test_max_pool_constant_input_routes_to_each_windows_first_pixel():
  x = jnp.full((1, 4, 4, 1), 0.5, jnp.float32)
  g = jnp.asarray([[1.0, 2.0], [3.0, 4.0]], jnp.float32).reshape(1, 2, 2, 1)
  dx = jax.vjp(lambda v: conv._max_pool_slices(v, 3, 2, 1), x)[1](g)[0]  # pylint: disable=protected-access
  # Windows start at rows/cols -1 and 1 (padding 1): their first real pixels are 0 and 1.
  expected = np.zeros((1, 4, 4, 1), np.float32)
  expected[0, 0, 0, 0], expected[0, 0, 1, 0], expected[0, 1, 0, 0], expected[0, 1, 1, 0] = 1, 2, 3, 4
  np.testing.assert_array_equal(dx, expected)
  np.testing.assert_array_equal(dx, jax.vjp(lambda v: conv.max_pool_xla(v, 3, 2, 1), x)[1](g)[0])


def test_max_pool_ties_route_to_first_in_row_major_order():
  # One 3x3 window (stride 3, no padding) whose maximum 1.0 sits at (0, 2), (1, 0) and (2, 2).
  x = jnp.asarray([[0, 0, 1], [1, 0, 0], [0, 0, 1]], jnp.float32).reshape(1, 3, 3, 1)
  dx = jax.grad(lambda v: jnp.sum(conv._max_pool_slices(v, 3, 3, 0)))(x)  # pylint: disable=protected-access
  expected = np.zeros((1, 3, 3, 1), np.float32)
  expected[0, 0, 2, 0] = 1.0
  np.testing.assert_array_equal(dx, expected)


def test_max_pool_bfloat16_and_vmap():
  rng = np.random.default_rng(7)
  x = jnp.asarray(rng.standard_normal((3, 2, 6, 6, 4)), jnp.bfloat16)
  g = jnp.asarray(rng.standard_normal((3, 2, 3, 3, 4)), jnp.bfloat16)

  def vg(pool):
    return jax.vmap(lambda v, gg: jax.vjp(lambda u: pool(u, 3, 2, 1), v)[1](gg)[0])(x, g)

  y = jax.vmap(lambda v: conv._max_pool_slices(v, 3, 2, 1))(x)  # pylint: disable=protected-access
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(y, jax.vmap(lambda v: conv.max_pool_xla(v, 3, 2, 1))(x))
  # bf16 sums of up to four gradients: equal to within one bf16 rounding of the largest.
  _close(vg(conv._max_pool_slices), vg(conv.max_pool_xla), tol=1e-2)  # pylint: disable=protected-access
