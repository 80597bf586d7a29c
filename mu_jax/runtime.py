"""Process-wide CPU settings, switched on by one explicit call: :func:`configure_cpu`.

``import mu_jax`` changes nothing in the process: importing a library must not change how the
user's other JAX code runs. The experiment scripts call :func:`configure_cpu` first thing; a
library user who wants the same speed on the CPU calls it before anything starts XLA (before the
first array is made). It does four things, the first three of which only take effect if made
before XLA starts (its flags are read once, its threads take malloc arenas from their first
allocation):

* **Convolutions through Eigen, matmuls through YNNPACK** (on by default). JAX 0.10's CPU backend
  hands convolutions to YNNPACK, which runs the weight gradient of a convolution (a convolution
  whose "kernel" is the whole feature map) much slower than XLA's Eigen convolution, while Eigen's
  forward and input gradient are as fast or faster. mu_jax appends :data:`EIGEN_CONV_FLAG` to
  ``XLA_FLAGS`` where the installed jaxlib defines that experimental flag (XLA aborts on one it
  does not know); matrix products (the im2col lowering of :mod:`mu_jax.ops.conv`, dense layers)
  still go to YNNPACK, which multiplies well.
* **XLA's generated CPU code optimised at LLVM's -O1** (on by default, CPU only):
  :data:`QUICK_COMPILE_FLAG` sets ``xla_backend_optimization_level`` to 1 (XLA's default is 3).
  Most of a cold run is XLA compiling step programs, and a large share of that is LLVM
  optimising the kernels XLA generates for fusions (the convolutions and matrix products run in
  Eigen and YNNPACK, which are compiled already): step programs compile in 30-40% less time, the
  random initialisation of a ResNet-18 (60 threefry fusions) in a third. The kernels compute the
  same operations, but LLVM may order or contract floating-point operations differently, so
  trained weights can differ by float rounding from those of the default level. Not appended where
  an accelerator plugin is installed (the same option sets the GPU compiler's LLVM level).
* **Freed host memory kept for reuse** (opt-in: ``MU_JAX_KEEP_FREED_MEMORY=1``). XLA allocates a
  step's temporaries afresh on every execution; glibc serves large blocks with ``mmap`` and returns
  them with ``munmap``, so every step page-faults its whole working set again (~200k faults per
  ResNet-18 step at 128×128, batch 64). With one malloc arena, ``mmap`` disabled for malloc and
  trimming of the heap off (:func:`keep_freed_memory`), later steps reuse the same pages and the
  process keeps its peak heap until it exits. It trades page faults for lock contention: large
  steps gain, but with one arena every thread, XLA's compiler included, shares one malloc lock,
  which costs more than it saves on small, fast steps. Hence opt-in, for training on 64×64 images
  and larger.

* **mu_jax's convolution lowerings** (:mod:`mu_jax.ops.conv`: per-pass plans and the native
  direct kernels on the CPU) are installed behind the model layers' one convolution hook
  (:func:`mu_jax.models.layers.set_convolution`). Without this call the layers run plain
  ``lax.conv_general_dilated`` and ``lax.reduce_window``.

``MU_JAX_CPU_TUNING=0`` in the environment turns the first three off. Whether the Eigen flag
could still be applied is recorded in :data:`EIGEN_CONVOLUTIONS`, which :mod:`mu_jax.ops.conv`
reads to choose its lowering (the choice depends on which library runs XLA's convolutions).
Measurements: ``benchmarks/train_step.py`` and BUILD_NOTES.md, "CPU settings".
"""

from __future__ import annotations

import ctypes
import glob
import mmap
import os
import pathlib
import platform

ENV_SWITCH = "MU_JAX_CPU_TUNING"
MEMORY_SWITCH = "MU_JAX_KEEP_FREED_MEMORY"
EIGEN_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
QUICK_COMPILE_FLAG = "--xla_backend_optimization_level=1"
# Distributions whose presence makes JAX pick an accelerator by default.
_ACCELERATOR_PLUGINS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

EIGEN_CONVOLUTIONS = False
QUICK_COMPILE = False
FREED_MEMORY_KEPT = False


def _switch(name: str, default: bool) -> bool:
  """An on/off environment variable: 1/0, true/false, yes/no or on/off (any case)."""
  value = os.environ.get(name)
  if value is None or not value.strip():
    return default
  v = value.strip().lower()
  if v in ("1", "true", "yes", "on"):
    return True
  if v in ("0", "false", "no", "off"):
    return False
  raise ValueError(f"environment variable {name} must be 1 or 0 (true/false, yes/no, on/off), "
                   f"got {value!r}")


def enabled() -> bool:
  """False if ``MU_JAX_CPU_TUNING`` is set to 0 (or false, no, off)."""
  return _switch(ENV_SWITCH, True)


def _backends_initialized() -> bool:
  try:  # a private JAX function; if it moves, assume XLA has not started (the usual case)
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def xla_knows_flag(name: str) -> bool:
  """Whether the installed jaxlib defines the XLA flag ``name``, found without starting XLA.

  XLA aborts the process when ``XLA_FLAGS`` holds a flag it does not define, and experimental
  flags come and go between jaxlib versions; a flag's name is in the libraries that define it.
  """
  try:
    import jaxlib  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  needle = name.encode()
  folder = os.path.dirname(jaxlib.__file__)
  for pattern in ("*.so", "*.dylib", "*.pyd", "*.dll"):
    for path in glob.glob(os.path.join(folder, pattern)):
      try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
          if m.find(needle) >= 0:
            return True
      except (OSError, ValueError):  # unreadable, or empty (cannot be mapped)
        continue
  return False


def append_xla_flag(flag: str) -> bool:
  """Appends ``flag`` (``--name=value``) to ``XLA_FLAGS`` if XLA has not started yet.

  Returns:
    Whether the flag will be in effect: true if it was appended now or was already given; false if
    XLA was already initialised without it, the user set the same flag to another value (which is
    left alone), or the installed jaxlib does not define it.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if flag in flags.split():
    return True
  name = flag[2:].split("=")[0]
  if name in flags or _backends_initialized() or not xla_knows_flag(name):
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()
  return True


def route_convolutions_to_eigen() -> bool:
  """:func:`append_xla_flag` of :data:`EIGEN_CONV_FLAG`; false means :mod:`mu_jax.ops.conv` plans
  for YNNPACK's convolutions."""
  return append_xla_flag(EIGEN_CONV_FLAG)


def accelerator_plugin_installed() -> bool:
  """Whether a JAX GPU or TPU plugin is installed (JAX then runs on the accelerator by default)."""
  from importlib import metadata  # pylint: disable=import-outside-toplevel
  names = (d.metadata["Name"] or "" for d in metadata.distributions())
  return any(n.lower().startswith(_ACCELERATOR_PLUGINS) for n in names)


def compile_quickly() -> bool:
  """:func:`append_xla_flag` of :data:`QUICK_COMPILE_FLAG`, unless JAX may run on an accelerator
  (a GPU or TPU plugin installed and ``JAX_PLATFORMS`` not ``cpu``)."""
  forced_cpu = os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu"
  if not forced_cpu and accelerator_plugin_installed():
    return False
  return append_xla_flag(QUICK_COMPILE_FLAG)


def keep_freed_memory() -> bool:
  """Makes glibc's malloc keep freed memory mapped for reuse (one arena, no mmap, no trimming).

  Call it before XLA starts (``MU_JAX_KEEP_FREED_MEMORY=1`` does so on ``import mu_jax``): threads
  that already hold an arena of their own keep it.

  Returns:
    True if applied; false on a C library other than glibc.
  """
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  # One arena: the heaps of per-thread arenas are trimmed on their own terms, so XLA's worker
  # threads would still fault fresh pages in on every step (BUILD_NOTES.md, "CPU settings").
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX))
  return all([libc.mallopt(param, value) == 1 for param, value in settings])


CONFIGURED = False
CACHE_ENV = "MU_JAX_CACHE_DIR"


def cache_dir() -> pathlib.Path:
  """mu_jax's cache: ``$MU_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/mu_jax`` (``~/.cache/mu_jax``).

  It holds the native kernels' builds and, for the experiment scripts, JAX's persistent
  compilation cache (``jax/``); deleting the folder clears both.
  """
  if os.environ.get(CACHE_ENV):
    return pathlib.Path(os.environ[CACHE_ENV])
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "mu_jax"


def enable_compilation_cache(directory: str | os.PathLike[str] | None = None) -> str:
  """Keeps compiled XLA programs on disk, so a later process loads them instead of compiling.

  Short CPU compiles are cached too (JAX's default skips those under a second). A cache directory
  already chosen in this process (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is kept.

  Args:
    directory: where; default ``cache_dir() / "jax"``.

  Returns:
    The directory in use.
  """
  import jax  # pylint: disable=import-outside-toplevel
  current = jax.config.jax_compilation_cache_dir
  if current:
    return str(current)
  path = str(directory or cache_dir() / "jax")
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def configure_cpu() -> dict[str, bool]:
  """Applies mu_jax's CPU settings (see the module docstring); later calls change nothing.

  Call it before anything starts XLA. Called later, the XLA flag and the allocator settings can no
  longer take effect (they are then reported as not applied) and only the convolution hook is
  installed.

  Returns:
    {"eigen_convolutions", "quick_compile", "freed_memory_kept", "convolution_hook"}: what is in
    effect.
  """
  global CONFIGURED, EIGEN_CONVOLUTIONS, QUICK_COMPILE, FREED_MEMORY_KEPT
  if not CONFIGURED:
    if enabled():
      EIGEN_CONVOLUTIONS = route_convolutions_to_eigen()
      QUICK_COMPILE = compile_quickly()
      if _switch(MEMORY_SWITCH, False):
        FREED_MEMORY_KEPT = keep_freed_memory()
    else:
      flags = os.environ.get("XLA_FLAGS", "").split()
      EIGEN_CONVOLUTIONS = EIGEN_CONV_FLAG in flags
      QUICK_COMPILE = QUICK_COMPILE_FLAG in flags
    # Imported here: the hook's implementation pulls in the native kernels' builder, which a
    # process that never configures the CPU does not need.
    from mu_jax.models import layers  # pylint: disable=import-outside-toplevel
    from mu_jax.ops import conv  # pylint: disable=import-outside-toplevel
    layers.set_convolution(conv.conv2d, conv.max_pool)
    CONFIGURED = True
  return {"eigen_convolutions": EIGEN_CONVOLUTIONS, "quick_compile": QUICK_COMPILE,
          "freed_memory_kept": FREED_MEMORY_KEPT, "convolution_hook": CONFIGURED}
