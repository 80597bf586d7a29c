"""Direct CPU convolution kernels (``direct_conv.cc``), compiled on first use and called from XLA.

XLA's CPU backend runs convolutions through Eigen or YNNPACK, whose generic kernels ran at 50-75%
of the speed of PyTorch's oneDNN convolutions on ResNet-18's stem and first stage, and it computes
weight gradients from transposed copies of the activations (BUILD_NOTES.md, "Direct convolution
kernels"). ``direct_conv.cc``
holds two register-tiled kernels (forward and weight gradient; the stride-1 input gradient is the
forward with the rotated kernel) that XLA calls through its FFI as custom calls, running on XLA's
own intra-op thread pool.

The library is built from the source shipped with the package by the C++ compiler of the machine
(``$CXX``, else ``g++``, with ``-O3 -march=native``) the first time a process asks for it, and
cached under ``$MU_JAX_CACHE_DIR`` (default ``~/.cache/mu_jax``), keyed by the source, the
compiler, jaxlib and the host's CPU flags, so a copy built for another CPU is never loaded. The
build is written to a temporary name and renamed into place, so processes that build at once, or
one killed mid-build, never leave a partial library. Without a compiler, or with
``MU_JAX_NATIVE=0``, :func:`available` is False and :mod:`mu_jax.ops.conv` keeps XLA's lowerings
(a warning says why, once).

The kernels take float32 NHWC activations and HWIO kernels with a multiple of 16 output
channels; the caller pads the input (XLA fuses the pad into the producer).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from absl import logging

SWITCH = "MU_JAX_NATIVE"
CACHE_ENV = "MU_JAX_CACHE_DIR"
SOURCE = pathlib.Path(__file__).with_name("direct_conv.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=fast", "-DNDEBUG",
         "-w")
FORWARD_TARGET = "mu_jax_conv_forward"
WEIGHT_GRAD_TARGET = "mu_jax_conv_weight_grad"
# The kernels' vector: output channels come in blocks of this many floats.
CHANNEL_MULTIPLE = 16

_lock = threading.Lock()


class NativeUnavailable(RuntimeError):
  """The kernels could not be built or loaded; the message says why."""


def enabled() -> bool:
  """False if ``MU_JAX_NATIVE`` is 0 (or false, no, off)."""
  from mu_jax import runtime  # pylint: disable=import-outside-toplevel
  return runtime._switch(SWITCH, True)  # pylint: disable=protected-access


def cache_dir() -> pathlib.Path:
  """Where built libraries are kept: :func:`mu_jax.runtime.cache_dir`."""
  from mu_jax import runtime  # pylint: disable=import-outside-toplevel
  return runtime.cache_dir()


def _compiler() -> str:
  cxx = os.environ.get("CXX", "g++")
  path = shutil.which(cxx)
  if path is None:
    raise NativeUnavailable(f"no C++ compiler: {cxx!r} is not on PATH (set CXX to one)")
  return path


def _cpu_signature() -> str:
  """What -march=native compiles for: the CPU's model and feature flags where Linux lists them."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
      lines = [l for l in f if l.startswith(("flags", "model name", "Features", "CPU part"))]
    return "".join(sorted(set(lines)))
  except OSError:
    return platform.machine() + platform.processor()


@functools.cache
def lacks_wide_vectors() -> bool:
  """True when Linux lists the CPU's x86 flags and AVX-512F is not among them.

  The kernels are used only where they were built with AVX-512 (:func:`wide_vectors`), so on such
  a CPU the plans need not build them to find that out (a cold start saves the compiler's seconds).
  """
  flags = [l for l in _cpu_signature().splitlines() if l.startswith("flags")]
  return bool(flags) and not any("avx512f" in l.split() for l in flags)


def library_path(cxx: str) -> pathlib.Path:
  """The cache file for this source, compiler, jaxlib and CPU."""
  version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
  key = hashlib.sha256()
  for part in (SOURCE.read_bytes(), version.encode(), " ".join(FLAGS).encode(),
               jaxlib.__version__.encode(), _cpu_signature().encode()):
    key.update(part)
    key.update(b"\0")
  return cache_dir() / f"direct_conv-{key.hexdigest()[:20]}.so"


def build(cxx: str, out: pathlib.Path, flags: tuple[str, ...] = FLAGS) -> None:
  """Compiles ``direct_conv.cc`` into ``out`` (written under a temporary name, then renamed).

  Args:
    cxx: the C++ compiler.
    out: the library to write.
    flags: compiler flags (``-march=native`` by default; tests build other targets).
  """
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
  os.close(fd)
  try:
    cmd = [cxx, *flags, f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      raise NativeUnavailable(f"building {SOURCE.name} failed ({' '.join(cmd)}):\n"
                              f"{proc.stderr.strip()[-2000:]}")
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@functools.cache
def _load() -> tuple[bool, str, int]:
  """Builds (if needed), loads and registers the kernels once per process.

  Returns:
    (available, why not if not, vector bits the library was compiled for).
  """
  if not enabled():
    return False, f"{SWITCH}=0", 0
  try:
    cxx = _compiler()
    path = library_path(cxx)
    if not path.exists():
      build(cxx, path)
    lib = ctypes.cdll.LoadLibrary(str(path))
  except (NativeUnavailable, OSError) as e:
    logging.warning("mu_jax: direct convolution kernels unavailable, XLA's are used: %s", e)
    return False, str(e), 0
  for name, symbol in ((FORWARD_TARGET, lib.MuJaxConvFwd), (WEIGHT_GRAD_TARGET, lib.MuJaxConvDw)):
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")
  return True, "", int(lib.MuJaxVectorBits())


def available() -> bool:
  """Whether the kernels are built and registered in this process (builds them on first call)."""
  with _lock:
    return _load()[0]


def why_unavailable() -> str:
  """The reason :func:`available` is False ("" when it is True)."""
  with _lock:
    return _load()[1]


def wide_vectors() -> bool:
  """Whether the library uses AVX-512, where its speed was measured (BUILD_NOTES.md)."""
  with _lock:
    return _load()[2] >= 512


def _check(x: jax.Array, other: jax.Array, channels: int, what: str) -> None:
  if x.dtype != jnp.float32 or other.dtype != jnp.float32:
    raise TypeError(f"{what}: the direct kernels take float32, got {x.dtype} and {other.dtype}")
  if channels % CHANNEL_MULTIPLE:
    raise ValueError(f"{what}: output channels must be a multiple of {CHANNEL_MULTIPLE}, "
                     f"got {channels}")
  if not available():
    raise NativeUnavailable(f"{what}: {why_unavailable()}")


def conv_forward(xp: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Valid convolution of an already padded input.

  Args:
    xp: padded input [N, H_p, W_p, C_in], float32.
    kernel: [KH, KW, C_in, C_out], float32, C_out a multiple of 16.
    stride: the same stride along H and W.

  Returns:
    [N, (H_p - KH) // stride + 1, (W_p - KW) // stride + 1, C_out].
  """
  kh, kw, _, co = kernel.shape
  _check(xp, kernel, co, "conv_forward")
  n, hp, wp, _ = xp.shape
  out = jax.ShapeDtypeStruct((n, (hp - kh) // stride + 1, (wp - kw) // stride + 1, co), xp.dtype)
  # Under vmap (stacked SISA shards) every member has its own kernel: one call per member.
  return jax.ffi.ffi_call(FORWARD_TARGET, out, vmap_method="sequential")(
      xp, kernel, stride=np.int64(stride))


def conv_weight_grad(xp: jax.Array, dy: jax.Array, kernel_hw: tuple[int, int], stride: int
                     ) -> jax.Array:
  """Weight gradient of :func:`conv_forward`: sum over N, H_out, W_out of patches times dy.

  Args:
    xp: the padded input the forward read, [N, H_p, W_p, C_in], float32.
    dy: gradient of the output [N, H_out, W_out, C_out], float32, C_out a multiple of 16.
    kernel_hw: (KH, KW).
    stride: the forward's stride.

  Returns:
    [KH, KW, C_in, C_out].
  """
  _check(xp, dy, dy.shape[3], "conv_weight_grad")
  out = jax.ShapeDtypeStruct((*kernel_hw, xp.shape[3], dy.shape[3]), xp.dtype)
  return jax.ffi.ffi_call(WEIGHT_GRAD_TARGET, out, vmap_method="sequential")(
      xp, dy, stride=np.int64(stride))
