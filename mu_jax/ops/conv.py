"""Convolution and pooling primitives used by every mu_jax model.

Models call :func:`conv2d` and :func:`max_pool` instead of ``lax`` directly so that the lowering is
chosen by shape in one place.

Why there is more than one lowering: XLA's CPU backend (JAX 0.10) is far from the matmul speed of
the same machine on some shapes a ResNet-18 sees on small images:

* tiny feature maps (1×1, 2×2: a 3×3 convolution on a 2×2 map runs ~100× slower than the same
  arithmetic as a matmul), and the input gradient of stride-2 convolutions;
* the weight gradient, which XLA computes as a convolution over transposed copies of the
  activations; inside a training step XLA fuses the batch norm and ReLU that produce those
  activations into the transposes and recomputes them there, with strided reads;
* the max-pool backward (``select_and_scatter``: 7-10× slower than a gather-form backward).

On the CPU, :func:`conv2d` therefore picks a lowering for each pass of each convolution (forward,
input gradient, weight gradient; :func:`plan_for`) through a ``custom_vjp``: mu_jax's direct
convolution kernels (:mod:`mu_jax.ops.native`, XLA FFI custom calls compiled for the host CPU;
the default for float32 wherever they apply and were faster, when they could be built), XLA's own
convolution (run by Eigen, see :mod:`mu_jax.runtime`), Winograd's F(2×2, 3×3) for the forward of
some 3×3 convolutions (:func:`conv2d_winograd`), or matrix products over im2col patches
(:func:`conv2d_im2col`):

* kernel taps that only ever read padding are dropped first (a 3×3 convolution on a 1×1 map is a
  plain matmul with the centre tap);
* patches are built for a few images at a time inside ``lax.map``/``lax.scan`` (chunks of about
  :data:`_PATCH_CHUNK_BYTES`), so the patch buffer (k·k times the activations) stays in the cache
  instead of being written to, and page-faulted into, fresh memory;
* forward: ``patches @ kernel``;
* weight gradient: ``patches^T @ dy``, summed over the chunks, with the transposed patches built
  from a channel-major copy of the activations (the matmul then reads no transposed operand);
* input gradient: ``dy @ kernel^T`` (the kernel in its stored layout, no flipped copy) followed by
  col2im, written per stride phase as a sum of shifted slices, so stride 2 needs no interior
  padding (XLA's scatter-like lowering of strided-slice transposes divides per element).

:func:`max_pool` takes the maximum over the window's taps viewed as shifted stride phases of the
input (no padded copy), records the first arg-max, and scatters the gradient back per phase.
Every lowering agrees with ``lax`` to float32 rounding (``tests/test_ops_conv.py``). On GPU and
TPU plain ``lax.conv_general_dilated`` and ``reduce_window`` are used: cuDNN and the TPU emitters
are the fast path there.

``MU_JAX_CONV=xla`` in the environment (read at import) or :func:`set_impl` forces a lowering;
the choice happens at trace time, so set it before a function is jitted.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from mu_jax.ops import native

Padding = Sequence[tuple[int, int]]

IMPLS = ("auto", "xla", "matmul")
_DN = ("NHWC", "HWIO", "NHWC")
# Bytes of im2col patches built per chunk: small enough to stay in the last-level cache, large
# enough for an efficient matmul per chunk; whole-batch patches (up to 150 MB at 128×128 input)
# leave the cache and page-fault fresh memory (BUILD_NOTES.md, "CPU convolution plan").
_PATCH_CHUNK_BYTES = 8 << 20

_impl = os.environ.get("MU_JAX_CONV", "auto")
if _impl not in IMPLS:
  raise ValueError(f"MU_JAX_CONV must be one of {IMPLS}, got {_impl!r}")


def set_impl(name: str) -> None:
  """Chooses the lowering of :func:`conv2d` and :func:`max_pool` for functions traced from now on.

  Args:
    name: "auto" (the matmul lowering on CPU, ``lax`` elsewhere), "xla" (always ``lax``) or
      "matmul" (always the matmul lowering, on any backend; for tests and measurements).
  """
  global _impl
  if name not in IMPLS:
    raise ValueError(f"conv impl must be one of {IMPLS}, got {name!r}")
  _impl = name


def get_impl() -> str:
  """The lowering set by :func:`set_impl` or ``MU_JAX_CONV``."""
  return _impl


def _use_matmul() -> bool:
  if _impl == "auto":
    return jax.default_backend() == "cpu"
  return _impl == "matmul"


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: Padding = ((0, 0), (0, 0))
           ) -> jax.Array:
  """2-D convolution, NHWC input and HWIO kernel, explicit padding (torchvision's convention).

  Args:
    x: input [N, H, W, C_in].
    kernel: [KH, KW, C_in, C_out], same dtype as ``x``.
    stride: the same stride along H and W.
    padding: ((top, bottom), (left, right)) zero padding.

  Returns:
    [N, H_out, W_out, C_out] in the dtype of ``x``; equal to ``lax.conv_general_dilated`` to
    float32 rounding whichever lowering runs.
  """
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if _use_matmul():
    return conv2d_matmul(x, kernel, int(stride), padding)
  return conv2d_xla(x, kernel, int(stride), padding)


def conv2d_xla(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
  """The plain lowering: ``lax.conv_general_dilated``."""
  return lax.conv_general_dilated(x, kernel, (stride, stride), tuple(padding), dimension_numbers=_DN)


def _out_size(size: int, k: int, stride: int, lo: int, hi: int) -> int:
  return (size + lo + hi - k) // stride + 1


def _used_taps(size: int, k: int, stride: int, lo: int, hi: int) -> tuple[int, int]:
  """First and last kernel tap along one axis that reads a real input sample for some output."""
  used = [d for d in range(k)
          if any(0 <= o * stride + d - lo < size for o in range(_out_size(size, k, stride, lo, hi)))]
  if not used:  # every window lies in the padding: keep one tap, its product is zero anyway
    return 0, 0
  return used[0], used[-1]


# Which lowering runs each pass of a convolution: (forward, input gradient, weight gradient).
Plan = tuple[str, str, str]
ALL_XLA: Plan = ("xla", "xla", "xla")
ALL_MATMUL: Plan = ("matmul", "matmul", "matmul")


def plan_for(x_shape: Sequence[int], kernel_shape: Sequence[int], stride: int,
             eigen_convolutions: bool | None = None, direct: bool | None = None) -> Plan:
  """The lowering of each pass of a CPU convolution, chosen by shape.

  Chosen from whole training steps of ResNet-18 at batch 64 (``benchmarks/train_step.py``;
  single-layer timings mislead here, because inside a step XLA fuses the producers of a
  convolution's operands into the transposes its weight gradient needs and recomputes them there).
  The measurements behind each rule: BUILD_NOTES.md, "CPU convolution plan".

  * Maps of 2×2 or 1×1 under a kernel larger than 1×1: matmul everywhere. XLA's convolution
    is pathological there (two orders of magnitude slower than the matmul).
  * Thin inputs (< 16 channels: the RGB stem): XLA everywhere; im2col of 49 three-channel taps
    costs more than the multiply.
  * Otherwise, with XLA's convolutions on Eigen (:data:`mu_jax.runtime.EIGEN_CONVOLUTIONS`, the
    default): XLA's forward; at stride 1 XLA's input gradient, and XLA's weight gradient on maps
    of at most 16×16 and ``patches^T @ dy`` on larger ones, whose transposed (and, inside a step,
    recomputed) activations cost more than the patches; at stride 2 col2im for the input
    gradient (XLA's strided transpose is slower) and
    ``patches^T @ dy`` for the weight gradient. The stride-2 rule matters for a stage's first
    block: its 3×3 and 1×1 downsample convolutions read the same input, and XLA's two weight
    gradients shared one transposed copy that recomputed the previous stage's batch norms,
    residual adds and ReLUs. The 16×16 bound on XLA's weight gradient trades the patches that
    im2col must build (dearer on small maps) against XLA's transposed, recomputed activations
    (dearer on large maps).
  * With XLA's convolutions on YNNPACK (tuning switched off): the matmul lowering for all passes
    (YNNPACK's convolutions were slower in every pass but the forward of a few shapes).
  * With the direct kernels (``direct``; by default where :mod:`mu_jax.ops.native` built them
    with AVX-512, where they were measured): each pass they can run (:func:`direct_passes`) goes
    to them on maps of at least 8×8, and the forward and weight gradient also on smaller maps
    over fewer than 256 and 512 input channels. Everything else keeps the rules above (tiny
    maps; on 4×4×512 XLA's Eigen convolutions and Winograd's forward already run near the
    machine's multiply rate, and the direct weight gradient was slower). BUILD_NOTES.md, "Direct
    convolution kernels" and "Measured: CPU training speed of ResNet-18".

  Args:
    x_shape: input shape [N, H, W, C_in].
    kernel_shape: [KH, KW, C_in, C_out].
    stride: the stride along H and W.
    eigen_convolutions: which library runs XLA's convolutions; by default what
      :mod:`mu_jax.runtime` set up for this process.
    direct: whether to use the direct kernels (float32 only: :func:`conv2d_matmul` passes
      False for other dtypes); by default whether this process built them with AVX-512.

  Returns:
    "direct", "xla" or "matmul" for each of the forward, the input gradient and the weight
    gradient, or "winograd" (:func:`conv2d_winograd`) for the forward.
  """
  if eigen_convolutions is None:
    from mu_jax import runtime  # pylint: disable=import-outside-toplevel
    eigen_convolutions = runtime.EIGEN_CONVOLUTIONS
  if direct is None:
    direct = not native.lacks_wide_vectors() and native.available() and native.wide_vectors()
  plan = _plan_without_direct(x_shape, kernel_shape, stride, eigen_convolutions)
  h, w, ci = x_shape[1], x_shape[2], x_shape[3]
  if not direct or _tiny(x_shape, kernel_shape):
    return plan
  can = direct_passes(x_shape, kernel_shape, stride, jnp.float32)
  # Small maps over many channels: XLA and Winograd already run near the multiply rate there and
  # the direct weight gradient is slower (BUILD_NOTES.md, "CPU convolution plan").
  use = (can[0] and (h * w >= 64 or ci < 256), can[1] and h * w >= 64,
         can[2] and (h * w >= 64 or ci < 512))
  return tuple("direct" if u else p for u, p in zip(use, plan))


def _tiny(x_shape, kernel_shape) -> bool:
  return x_shape[1] * x_shape[2] <= 4 and kernel_shape[0] * kernel_shape[1] > 1


def _plan_without_direct(x_shape, kernel_shape, stride, eigen_convolutions) -> Plan:
  h, w, ci = x_shape[1], x_shape[2], x_shape[3]
  kh, kw = kernel_shape[0], kernel_shape[1]
  if _tiny(x_shape, kernel_shape):
    return ALL_MATMUL
  if ci < 16:
    return ALL_XLA
  if not eigen_convolutions:
    return ALL_MATMUL
  if stride > 1:
    return ("xla", "matmul", "matmul")
  # Winograd's forward where its tile transforms cost less than the multiplies it saves (4 per
  # output instead of 9): 3×3 kernels over 128+ channels. Its input gradient does not pay off
  # (BUILD_NOTES.md, "CPU convolution plan").
  forward = "winograd" if (kh, kw) == (3, 3) and ci >= 128 and h >= 4 and w >= 4 else "xla"
  return (forward, "xla", "xla" if h * w <= 256 else "matmul")


def conv2d_matmul(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
  """The CPU lowering (see the module docstring); same contract as :func:`conv2d`.

  Each pass runs the lowering :func:`plan_for` picks for this shape.
  """
  direct = None if x.dtype == jnp.float32 else False
  return conv2d_im2col(x, kernel, stride, padding,
                       plan_for(x.shape, kernel.shape, stride, direct=direct))


def conv2d_im2col(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding,
                  plan: Plan = ALL_MATMUL) -> jax.Array:
  """The matmul lowering (no fallback to XLA unless ``plan`` names it for a pass).

  Same contract as :func:`conv2d`; ``plan`` gives the lowering of the forward, the input gradient
  and the weight gradient (by default the matmul lowering for all three; "winograd" only for the
  forward of a 3×3 convolution at stride 1).
  """
  (lo_h, hi_h), (lo_w, hi_w) = padding
  kh, kw = kernel.shape[:2]
  h, w = x.shape[1:3]
  ho, wo = _out_size(h, kh, stride, lo_h, hi_h), _out_size(w, kw, stride, lo_w, hi_w)
  # Drop taps that only see padding: their products are exact zeros, so the result is unchanged,
  # and a 3×3 convolution on a 1×1 map becomes a single matmul with the centre tap.
  h0, h1 = _used_taps(h, kh, stride, lo_h, hi_h)
  w0, w1 = _used_taps(w, kw, stride, lo_w, hi_w)
  kernel = kernel[h0:h1 + 1, w0:w1 + 1]
  kh, kw = kernel.shape[:2]
  if "winograd" in plan[1:] or (plan[0] == "winograd" and (stride, kh, kw) != (1, 3, 3)):
    raise ValueError(f"plan {plan}: Winograd runs only the forward of a 3×3 stride-1 convolution "
                     f"(here {kh}×{kw} taps reach the input, stride {stride})")
  _check_direct(plan, x, kernel, stride)
  lo_h, lo_w = lo_h - h0, lo_w - w0
  # High padding that makes the output size unchanged; negative values crop input rows that no
  # remaining tap reads (lax.pad and XLA's convolution accept negative padding).
  hi_h = (ho - 1) * stride + kh - h - lo_h
  hi_w = (wo - 1) * stride + kw - w - lo_w
  return _conv_mm(x, kernel, stride, ((lo_h, hi_h), (lo_w, hi_w)), tuple(plan))


def direct_passes(x_shape: Sequence[int], kernel_shape: Sequence[int], stride: int, dtype
                  ) -> tuple[bool, bool, bool]:
  """Which passes the direct kernels (:mod:`mu_jax.ops.native`) can run for this convolution.

  The forward and weight gradient need float32 and C_out a multiple of 16; the input gradient
  also stride 1 and C_in a multiple of 16 (it is a forward with C_in output channels).
  """
  ok = jnp.dtype(dtype) == jnp.float32 and kernel_shape[3] % native.CHANNEL_MULTIPLE == 0
  dx = ok and stride == 1 and x_shape[3] % native.CHANNEL_MULTIPLE == 0
  return ok, dx, ok


def _check_direct(plan: Plan, x: jax.Array, kernel: jax.Array, stride: int) -> None:
  if "direct" not in plan:
    return
  can = direct_passes(x.shape, kernel.shape, stride, x.dtype)
  bad = [part for part, name, ok in zip(("forward", "input gradient", "weight gradient"), plan, can)
         if name == "direct" and not ok]
  if bad:
    raise ValueError(f"plan {plan}: the direct kernels cannot run the {', '.join(bad)} of a "
                     f"{x.dtype} convolution {tuple(x.shape)} * {tuple(kernel.shape)} at stride "
                     f"{stride} (float32, output channels a multiple of "
                     f"{native.CHANNEL_MULTIPLE}; input gradient at stride 1 only)")
  if not native.available():
    raise native.NativeUnavailable(f"plan {plan}: {native.why_unavailable()}")


def _stack_taps(tap, kh: int, kw: int, axis: int) -> jax.Array:
  """``tap(ky, kx)`` for every kernel tap, stacked as two new axes (KH, KW) at ``axis``.

  Stacked per kernel row and then the rows, never along the minor axis: XLA's CPU fusion keeps a
  concatenation of more than 8 operands, or along the minor axis, out of fusions, which
  materialises every tap separately before copying them together.
  """
  return jnp.stack([jnp.stack([tap(ky, kx) for kx in range(kw)], axis) for ky in range(kh)], axis)


def _tap_slice(xp: jax.Array, ky: int, kx: int, stride: int, out_hw: tuple[int, int],
               hw_axes: tuple[int, int]) -> jax.Array:
  """What tap (ky, kx) reads of the padded input ``xp`` for every output, along ``hw_axes``."""
  start, limit, strides = [0] * xp.ndim, list(xp.shape), [1] * xp.ndim
  for axis, d, o in zip(hw_axes, (ky, kx), out_hw):
    start[axis], limit[axis], strides[axis] = d, d + (o - 1) * stride + 1, stride
  return lax.slice(xp, start, limit, strides)


def _patches(x: jax.Array, kh: int, kw: int, stride: int, padding: Padding) -> jax.Array:
  """im2col: [N, H, W, C] → [N, H_out, W_out, KH·KW·C], taps in (ky, kx, c) order (HWIO)."""
  n, h, w, c = x.shape
  (lo_h, hi_h), (lo_w, hi_w) = padding
  ho, wo = _out_size(h, kh, stride, lo_h, hi_h), _out_size(w, kw, stride, lo_w, hi_w)
  zero = jnp.zeros((), x.dtype)
  xp = lax.pad(x, zero, ((0, 0, 0), (lo_h, hi_h, 0), (lo_w, hi_w, 0), (0, 0, 0)))
  taps = _stack_taps(lambda ky, kx: _tap_slice(xp, ky, kx, stride, (ho, wo), (1, 2)), kh, kw, 3)
  return taps.reshape(n, ho, wo, kh * kw * c)


def _chunk(n: int, bytes_per_example: int) -> int:
  """The largest divisor of ``n`` whose patches fit in :data:`_PATCH_CHUNK_BYTES` (at least 1)."""
  target = max(1, _PATCH_CHUNK_BYTES // max(1, bytes_per_example))
  return max(d for d in range(1, n + 1) if n % d == 0 and d <= target)


def _map_chunks(fn, n: int, bytes_per_example: int, *arrays: jax.Array) -> jax.Array:
  """Applies ``fn`` to consecutive chunks of the leading axis and concatenates the results."""
  b = _chunk(n, bytes_per_example)
  if b == n:
    return fn(*arrays)
  split = [a.reshape(n // b, b, *a.shape[1:]) for a in arrays]
  out = lax.map(lambda parts: fn(*parts), tuple(split))
  return out.reshape(n, *out.shape[2:])


def _acc_type(dtype) -> jnp.dtype:
  # Accumulate low-precision products in float32, as XLA's convolutions do.
  return jnp.float32 if jnp.dtype(dtype).itemsize < 4 else dtype


def _patch_bytes(x: jax.Array, kh: int, kw: int, ho: int, wo: int) -> int:
  return ho * wo * kh * kw * x.shape[-1] * jnp.dtype(x.dtype).itemsize


def _forward(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
  """Chunked patches @ kernel, no custom gradient (used by the forward and the s=1 input grad)."""
  kh, kw, ci, co = kernel.shape
  (lo_h, hi_h), (lo_w, hi_w) = padding
  ho = _out_size(x.shape[1], kh, stride, lo_h, hi_h)
  wo = _out_size(x.shape[2], kw, stride, lo_w, hi_w)
  wm = kernel.reshape(kh * kw * ci, co)

  def body(xc):
    y = lax.dot_general(_patches(xc, kh, kw, stride, padding), wm, (((3,), (0,)), ((), ())),
                        preferred_element_type=_acc_type(x.dtype))
    return y.astype(x.dtype)

  return _map_chunks(body, x.shape[0], _patch_bytes(x, kh, kw, ho, wo), x)


# Winograd F(2×2, 3×3) (Lavin & Gray, 2016): a 4×4 input tile d gives the 2×2 output tile
# A^T [(G k G^T) ⊙ (B^T d B)] A. Each transform is a few sums and differences along one axis.
def _winograd_input_1d(d0, d1, d2, d3):  # B^T d
  return [d0 - d2, d1 + d2, d2 - d1, d1 - d3]


def _winograd_kernel_1d(k0, k1, k2):  # G k
  return [k0, 0.5 * (k0 + k1 + k2), 0.5 * (k0 - k1 + k2), k2]


def _winograd_output_1d(m0, m1, m2, m3):  # A^T m
  return [m0 + m1 + m2, m1 - m2 - m3]


def conv2d_winograd(x: jax.Array, kernel: jax.Array, padding: Padding = ((1, 1), (1, 1))
                    ) -> jax.Array:
  """A 3×3 convolution at stride 1 by Winograd F(2×2, 3×3); otherwise the contract of
  :func:`conv2d`.

  The padded input is cut into 4×4 tiles overlapping by 2, each transformed (B^T d B); the 16
  transformed positions are 16 matmuls over the input channels, which is 4 multiply-adds per
  output pixel and channel pair instead of 9; the 2×2 output tiles are transformed back and
  interleaved. Kept as 16 separate matmuls: stacking them into one batched product needs a
  16-operand concatenation, which XLA's CPU fusion materialises piece by piece. Chunked over
  examples like the patches (the transformed tiles are 4× the input). Results differ from
  ``lax`` by a few float32 roundings (sums of at most 4 terms, scaling by 1/2).

  Args:
    x: input [N, H, W, C_in].
    kernel: [3, 3, C_in, C_out].
    padding: ((top, bottom), (left, right)).

  Returns:
    [N, H_out, W_out, C_out] in the dtype of ``x``.
  """
  if kernel.shape[:2] != (3, 3):
    raise ValueError(f"conv2d_winograd needs a 3×3 kernel, got {kernel.shape[:2]}")
  n, h, w, ci = x.shape
  co = kernel.shape[-1]
  (lo_h, hi_h), (lo_w, hi_w) = padding
  ho, wo = _out_size(h, 3, 1, lo_h, hi_h), _out_size(w, 3, 1, lo_w, hi_w)
  th, tw = -(-ho // 2), -(-wo // 2)
  acc = _acc_type(x.dtype)
  k = kernel.astype(acc)
  u = [t for r in _winograd_kernel_1d(k[0], k[1], k[2])
       for t in _winograd_kernel_1d(r[0], r[1], r[2])]  # 16 × [C_in, C_out]
  # Padded (or cropped: negative high padding) to exactly the 2·t + 2 rows the tiles read.
  xp = lax.pad(x.astype(acc), jnp.zeros((), acc),
               ((0, 0, 0), (lo_h, 2 * th + 2 - h - lo_h, 0), (lo_w, 2 * tw + 2 - w - lo_w, 0),
                (0, 0, 0)))

  def tiles(a, axis, count):  # element i of every tile along ``axis``, for i = 0..3
    return [lax.slice_in_dim(a, i, i + 2 * count - 1, 2, axis) for i in range(4)]

  def body(xc):
    b = xc.shape[0]
    v = [t for r in _winograd_input_1d(*tiles(xc, 1, th))
         for t in _winograd_input_1d(*tiles(r, 2, tw))]
    m = [lax.dot_general(vi.reshape(b * th * tw, ci), ui, (((1,), (0,)), ((), ())))
         .reshape(b, th, tw, co) for vi, ui in zip(v, u)]
    # m[4·i + j]: the output transform along the tile rows (i), then the columns (j).
    cols = [_winograd_output_1d(*[m[4 * i + j] for i in range(4)]) for j in range(4)]
    y = jnp.stack([jnp.stack(_winograd_output_1d(*[cols[j][a] for j in range(4)]), axis=3)
                   for a in range(2)], axis=2)  # [b, th, 2, tw, 2, C_out]
    return y.reshape(b, 2 * th, 2 * tw, co)[:, :ho, :wo].astype(x.dtype)

  return _map_chunks(body, n, 16 * th * tw * ci * jnp.dtype(acc).itemsize, xp)


def _pad(x: jax.Array, padding: Padding) -> jax.Array:
  """Zero padding of H and W (negative values crop, as in ``lax.pad``)."""
  (lo_h, hi_h), (lo_w, hi_w) = padding
  return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (lo_h, hi_h, 0), (lo_w, hi_w, 0), (0, 0, 0)))


def _direct_dx(kernel: jax.Array, g: jax.Array, padding: Padding) -> jax.Array:
  """Input gradient of a stride-1 convolution: the direct forward of the padded output gradient
  with the kernel rotated by 180° and its channel axes swapped."""
  kh, kw = kernel.shape[:2]
  (lo_h, hi_h), (lo_w, hi_w) = padding
  rotated = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  gp = _pad(g, ((kh - 1 - lo_h, kh - 1 - hi_h), (kw - 1 - lo_w, kw - 1 - hi_w)))
  return native.conv_forward(gp, rotated, 1)


def _forward_planned(x, kernel, stride, padding, plan):
  if plan[0] == "direct":
    return native.conv_forward(_pad(x, padding), kernel, stride)
  if plan[0] == "xla":
    return conv2d_xla(x, kernel, stride, padding)
  if plan[0] == "winograd":
    return conv2d_winograd(x, kernel, padding)
  return _forward(x, kernel, stride, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_mm(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding, plan: Plan
             ) -> jax.Array:
  return _forward_planned(x, kernel, stride, padding, plan)


def _conv_mm_fwd(x, kernel, stride, padding, plan):
  return _forward_planned(x, kernel, stride, padding, plan), (x, kernel)


def _conv_mm_bwd(stride, padding, plan, res, g):
  x, kernel = res
  if plan[1] == "direct":
    dx = _direct_dx(kernel, g, padding)
  elif plan[1] == "xla":
    dx = jax.vjp(lambda v: conv2d_xla(v, kernel, stride, padding), x)[1](g)[0]
  else:
    dx = _col2im_dx(x, kernel, g, stride, padding)
  if plan[2] == "direct":
    dw = native.conv_weight_grad(_pad(x, padding), g, kernel.shape[:2], stride)
  elif plan[2] == "xla":
    dw = jax.vjp(lambda k: conv2d_xla(x, k, stride, padding), kernel)[1](g)[0]
  else:
    dw = _im2col_dw(x, kernel, g, stride, padding)
  return dx, dw


def _patches_t(x: jax.Array, kh: int, kw: int, stride: int, padding: Padding) -> jax.Array:
  """Transposed im2col: [N, H, W, C] → [KH·KW·C, N·H_out·W_out], rows in (ky, kx, c) order.

  Built from a channel-major copy of ``x`` (one transpose of the activations, not of the k·k
  times larger patches), so ``patches_t @ dy`` is a plain row-major matmul with no transposed
  operand for the matmul library to copy.
  """
  n, h, w, c = x.shape
  (lo_h, hi_h), (lo_w, hi_w) = padding
  ho, wo = _out_size(h, kh, stride, lo_h, hi_h), _out_size(w, kw, stride, lo_w, hi_w)
  xt = lax.pad(jnp.transpose(x, (3, 0, 1, 2)), jnp.zeros((), x.dtype),
               ((0, 0, 0), (0, 0, 0), (lo_h, hi_h, 0), (lo_w, hi_w, 0)))
  taps = _stack_taps(lambda ky, kx: _tap_slice(xt, ky, kx, stride, (ho, wo), (2, 3)), kh, kw, 0)
  return taps.reshape(kh * kw * c, n * ho * wo)


def _im2col_dw(x, kernel, g, stride, padding):
  """Weight gradient as ``patches^T @ dy``, summed over chunks of examples."""
  kh, kw, ci, co = kernel.shape
  n = x.shape[0]
  ho, wo = g.shape[1:3]
  acc = _acc_type(x.dtype)

  # The contraction runs over every output position: one long matmul per chunk instead of a
  # convolution over transposed copies of the activations.
  def dw_part(xc, gc):
    return lax.dot_general(_patches_t(xc, kh, kw, stride, padding), gc.reshape(-1, co),
                           (((1,), (0,)), ((), ())), preferred_element_type=acc)

  b = _chunk(n, _patch_bytes(x, kh, kw, ho, wo))
  if b == n:
    dw = dw_part(x, g)
  else:
    xs = x.reshape(n // b, b, *x.shape[1:])
    gs = g.reshape(n // b, b, *g.shape[1:])
    # Scanned over all chunks from a zero sum: starting from the first chunk's product would
    # make XLA copy the remaining chunks (xs[1:]) out of the activations first.
    dw, _ = lax.scan(lambda total, parts: (total + dw_part(*parts), None),
                     jnp.zeros((kh * kw * ci, co), acc), (xs, gs))
  return dw.reshape(kernel.shape).astype(kernel.dtype)


def _col2im_dx(x, kernel, g, stride, padding):
  """Input gradient as ``dy @ kernel^T`` followed by col2im, chunked over examples."""
  kh, kw, ci, co = kernel.shape
  ho, wo = g.shape[1:3]
  acc = _acc_type(x.dtype)
  wm = kernel.reshape(kh * kw * ci, co)

  # dy @ kernel^T is the gradient of every patch entry (a matmul with the kernel in its stored
  # layout: no flipped or transposed copy), and col2im adds the entries back onto the input pixels
  # they were read from.
  def dx_body(gc):
    dp = lax.dot_general(gc, wm, (((3,), (1,)), ((), ())), preferred_element_type=acc)
    return _col2im(dp, x.shape[1:3], kh, kw, stride, padding).astype(x.dtype)

  return _map_chunks(dx_body, x.shape[0], _patch_bytes(x, kh, kw, ho, wo), g)


def _col2im(dp: jax.Array, hw: tuple[int, int], kh: int, kw: int, stride: int, padding: Padding
            ) -> jax.Array:
  """The transpose of :func:`_patches`: [N, H_out, W_out, KH·KW·C] → [N, H, W, C].

  Input pixel ``s*i + a`` (phase ``a``) is read by tap ``d`` of output ``i - delta`` for the taps
  whose phase is ``a`` (see :func:`_tap_phase`), so each phase is a sum of shifted slices of the
  patch gradient and the phases interleave by a reshape. Unlike the autodiff transpose of strided
  slices (pads with interior zeros), this needs no per-element index division.
  """
  n, ho, wo, _ = dp.shape
  h, w = hw
  (lo_h, _), (lo_w, _) = padding
  c = dp.shape[-1] // (kh * kw)
  dp = dp.reshape(n, ho, wo, kh * kw, c)
  hs, ws = -(-h // stride), -(-w // stride)
  rows = []
  for ay in range(stride):
    cols = []
    for ax in range(stride):
      total = None
      for t in range(kh * kw):
        ty, sy = _tap_phase(t // kw, stride, lo_h)
        tx, sx = _tap_phase(t % kw, stride, lo_w)
        if (ty, tx) != (ay, ax):
          continue
        part = _shift(_shift(dp[:, :, :, t, :], 1, -sy, hs, 0), 2, -sx, ws, 0)
        total = part if total is None else total + part
      cols.append(jnp.zeros((n, hs, ws, c), dp.dtype) if total is None else total)
    rows.append(cols)
  if stride == 1:
    return rows[0][0][:, :h, :w]
  dx = jnp.stack([jnp.stack(cols, axis=3) for cols in rows], axis=2)
  return dx.reshape(n, hs * stride, ws * stride, c)[:, :h, :w]


_conv_mm.defvjp(_conv_mm_fwd, _conv_mm_bwd)


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
  """Max-pool with -inf padding on every side (torch.nn.MaxPool2d semantics), NHWC.

  The gradient goes to the first maximum of each window in row-major order (top row first, then
  left to right), as torch's CPU kernel and XLA's ``select_and_scatter`` both do; with ties only
  that element receives it.

  Args:
    x: input [N, H, W, C].
    window: square window size.
    stride: the same stride along H and W.
    padding: -inf rows/columns added on every side.

  Returns:
    [N, H_out, W_out, C].
  """
  if _use_matmul():
    return _max_pool_slices(x, int(window), int(stride), int(padding))
  return max_pool_xla(x, window, stride, padding)


def max_pool_xla(x: jax.Array, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
  """The plain lowering: ``lax.reduce_window`` (backward: ``select_and_scatter``)."""
  pads = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), pads)


def _shift(a: jax.Array, axis: int, delta: int, length: int, fill) -> jax.Array:
  """``out[i] = a[i + delta]`` along ``axis`` for ``i < length``, ``fill`` outside ``a``.

  A pad with (possibly negative) edges, which XLA fuses into its consumer without the index
  division that interior padding or strided scatters need.
  """
  config = [(0, 0, 0)] * a.ndim
  config[axis] = (-delta, length - a.shape[axis] + delta, 0)
  return lax.pad(a, jnp.asarray(fill, a.dtype), config)


def _phase_split(x: jax.Array, stride: int, fill) -> jax.Array:
  """[N, H, W, C] → [N, ⌈H/s⌉, s, ⌈W/s⌉, s, C]: ``x[n, s*i + a, s*j + b]`` at [n, i, a, j, b]."""
  n, h, w, c = x.shape
  hs, ws = -(-h // stride), -(-w // stride)
  if (hs * stride, ws * stride) != (h, w):
    x = lax.pad(x, jnp.asarray(fill, x.dtype),
                ((0, 0, 0), (0, hs * stride - h, 0), (0, ws * stride - w, 0), (0, 0, 0)))
  return x.reshape(n, hs, stride, ws, stride, c)


def _tap_phase(d: int, stride: int, padding: int) -> tuple[int, int]:
  """Tap ``d`` of output ``o`` reads input ``s*o + d - p`` = phase ``a`` row ``o + delta``."""
  a = (d - padding) % stride
  return a, (d - padding - a) // stride


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_slices(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
  return _max_pool_argmax(x, window, stride, padding)[0]


def _max_pool_argmax(x: jax.Array, window: int, stride: int, padding: int
                     ) -> tuple[jax.Array, jax.Array]:
  """The pooled maximum and the row-major index of the first tap that attains it.

  The input is viewed as its stride phases (a free reshape for even sizes), so every tap is a
  shifted view of one phase: no padded copy of the input and no generic reduce-window loop. The
  taps are stacked on an axis of their own and reduced (max and arg-max, which returns the first
  maximum). Being reductions, XLA's CPU fusion materialises their results instead of recomputing
  them inside the backward scatter, which reads each arg-max several times: an elementwise
  ``where`` chain was fused there and re-evaluated for every read (BUILD_NOTES.md, "Max-pool
  forward and backward").
  """
  n, h, w, c = x.shape
  ho = _out_size(h, window, stride, padding, padding)
  wo = _out_size(w, window, stride, padding, padding)
  ninf = -jnp.inf
  phases = _phase_split(x, stride, ninf)

  def tap(ky, kx):
    ay, sy = _tap_phase(ky, stride, padding)
    ax, sx = _tap_phase(kx, stride, padding)
    return _shift(_shift(phases[:, :, ay, :, ax, :], 1, sy, ho, ninf), 2, sx, wo, ninf)

  taps = _stack_taps(tap, window, window, 3).reshape(n, ho, wo, window * window, c)
  return jnp.max(taps, axis=3), jnp.argmax(taps, axis=3).astype(jnp.int8)


def _max_pool_fwd(x, window, stride, padding):
  # Whole batch at once: a chunked loop writes its results through dynamic-update-slice
  # fusions, which XLA's CPU backend runs on one thread.
  y, idx = _max_pool_argmax(x, window, stride, padding)
  return y, (idx, x.shape)


def _max_pool_bwd(window, stride, padding, res, g):
  idx, shape = res
  # One pass over the whole batch, a single elementwise fusion writing dx once (a chunked loop
  # would first zero-fill its output).
  return (_max_pool_scatter(idx, g, window, stride, padding, shape),)


def _max_pool_scatter(idx, g, window, stride, padding, shape):
  n = g.shape[0]
  _, h, w, c = shape
  hs, ws = -(-h // stride), -(-w // stride)
  zero = jnp.zeros((), g.dtype)
  # Gather form of the scatter: input phase (a, b) row i receives from output i - delta of every
  # tap in that phase, so each phase is a sum of shifted, masked copies of dy (no interior pads).
  rows = []
  for ay in range(stride):
    cols = []
    for ax in range(stride):
      acc = jnp.zeros((n, hs, ws, c), g.dtype)
      for t in range(window * window):
        ty, sy = _tap_phase(t // window, stride, padding)
        tx, sx = _tap_phase(t % window, stride, padding)
        if (ty, tx) != (ay, ax):
          continue
        contrib = jnp.where(idx == t, g, zero)
        acc = acc + _shift(_shift(contrib, 1, -sy, hs, 0), 2, -sx, ws, 0)
      cols.append(acc)
    rows.append(jnp.stack(cols, axis=3))
  dx = jnp.stack(rows, axis=2).reshape(n, hs * stride, ws * stride, c)
  return dx[:, :h, :w]


_max_pool_slices.defvjp(_max_pool_fwd, _max_pool_bwd)
