"""mu_jax.ops.native: the direct CPU convolution kernels, their build, and the plan that uses them.

The kernels sum the same products as ``lax.conv_general_dilated`` (the forward in the same
order, the weight gradient in per-thread parts), so results agree to float32 rounding with the
tolerance of ``test_ops_conv.py``. Building, loading and falling back run in fresh processes
where they depend on process state (the library is loaded once per process).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mu_jax.ops import conv, native
from tests.test_ops_conv import _close, _lax_conv, _value_and_grads

# Skipped only where the kernels cannot be built on purpose: no C++ compiler, or switched off.
# With a compiler present, a build or load failure is a failure of this module, not a skip.
_CXX = os.environ.get("CXX", "g++")
_HAS_COMPILER = shutil.which(_CXX) is not None
pytestmark = pytest.mark.skipif(
    not _HAS_COMPILER or not native.enabled(),
    reason=f"no C++ compiler ({_CXX!r} is not on PATH)" if not _HAS_COMPILER else f"{native.SWITCH}=0")

# Tests that exercise the build machinery itself, or a process without the kernels.
_WITHOUT_LOADED_KERNELS = ("test_a_failed_build_says_why_and_leaves_nothing",
                           "test_the_library_is_keyed_by_compiler_and_source",
                           "test_without_the_kernels_the_other_lowerings_run")


@pytest.fixture(autouse=True)
def _kernels_must_build(request):
  if request.node.originalname in _WITHOUT_LOADED_KERNELS:
    return
  if not native.available():
    pytest.fail(f"the C++ compiler {_CXX!r} is on PATH but the direct kernels could not be built "
                f"or loaded: {native.why_unavailable()}")

# (name, N, H, W, C_in, C_out, kernel, stride, padding): the register tiles are 6 pixels by 64
# channels, 12 by 32 or 14 by 16 (forward) and 6, 12 or 14 taps by the same channels (weight
# gradient), so the channel counts cover each block width and a mix of them (80 = 5 × 16), and
# the pixel and tap counts leave short last tiles.
CASES = [
    ("stem 7x7/2 3->16", 2, 15, 13, 3, 16, 7, 2, ((3, 3), (3, 3))),
    ("3x3/1 16->16 odd map", 3, 5, 7, 16, 16, 3, 1, ((1, 1), (1, 1))),
    ("3x3/1 32->32", 2, 6, 6, 32, 32, 3, 1, ((1, 1), (1, 1))),
    ("3x3/1 16->48", 1, 7, 5, 16, 48, 3, 1, ((1, 1), (1, 1))),
    ("3x3/1 64->64", 2, 8, 8, 64, 64, 3, 1, ((1, 1), (1, 1))),
    ("3x3/1 32->80 asymmetric padding", 2, 6, 5, 32, 80, 3, 1, ((0, 2), (2, 1))),
    ("3x3/1 on a 1-row map (taps dropped)", 2, 1, 9, 16, 32, 3, 1, ((1, 1), (1, 1))),
    ("3x3/2 16->32 odd map", 2, 7, 9, 16, 32, 3, 2, ((1, 1), (1, 1))),
    ("3x3/2 no padding", 2, 7, 7, 16, 16, 3, 2, ((0, 0), (0, 0))),
    ("1x1/2 16->64", 2, 7, 7, 16, 64, 1, 2, ((0, 0), (0, 0))),
    ("1x1/1 48->16", 3, 4, 4, 48, 16, 1, 1, ((0, 0), (0, 0))),
]


def _plan(x, kernel, stride):
  can = conv.direct_passes(x.shape, kernel.shape, stride, x.dtype)
  return tuple("direct" if ok else "xla" for ok in can)


def _case_data(case, seed=0, dtype=jnp.float32):
  _, n, h, w, ci, co, k, stride, padding = case
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((n, h, w, ci)), dtype)
  kernel = jnp.asarray(rng.standard_normal((k, k, ci, co)), dtype)
  r = _lax_conv(x, kernel, stride, padding)
  r = jnp.asarray(rng.standard_normal(r.shape), dtype)
  return x, kernel, r, stride, padding


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_direct_kernels_match_lax(case):
  x, kernel, r, stride, padding = _case_data(case)
  plan = _plan(x, kernel, stride)
  assert plan[0] == plan[2] == "direct"
  assert (plan[1] == "direct") == (stride == 1 and x.shape[3] % 16 == 0)

  def planned(x_, w_, s, p):
    return conv.conv2d_im2col(x_, w_, s, p, plan)

  fn = jax.jit(_value_and_grads, static_argnums=(0, 4, 5))
  got = fn(planned, x, kernel, r, stride, padding)
  for a, b in zip(got, _value_and_grads(_lax_conv, x, kernel, r, stride, padding)):
    _close(a, b)
  # Every element is summed in a fixed order, whichever thread computes it.
  again = fn(planned, x, kernel, r, stride, padding)
  for a, b in zip(got, again):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_plan_runs_the_direct_kernels_where_they_apply():
  d, xla, mm, wg = "direct", "xla", "matmul", "winograd"
  # ResNet-18 at 128×128 input, batch 64: the stem, layer1, stride-2 layers and larger maps.
  assert conv.plan_for((64, 128, 128, 3), (7, 7, 3, 64), 2, True, True) == (d, xla, d)
  assert conv.plan_for((64, 32, 32, 64), (3, 3, 64, 64), 1, True, True) == (d, d, d)
  assert conv.plan_for((64, 32, 32, 64), (3, 3, 64, 128), 2, True, True) == (d, mm, d)
  assert conv.plan_for((64, 16, 16, 128), (3, 3, 128, 128), 1, True, True) == (d, d, d)
  assert conv.plan_for((64, 8, 8, 256), (3, 3, 256, 256), 1, True, True) == (d, d, d)
  assert conv.plan_for((64, 4, 4, 256), (3, 3, 256, 256), 1, True, True) == (wg, xla, d)
  # 4×4×512: XLA and Winograd run near the multiply rate; the direct weight gradient is slower.
  assert conv.plan_for((64, 4, 4, 512), (3, 3, 512, 512), 1, True, True) == (wg, xla, xla)
  assert conv.plan_for((64, 2, 2, 512), (3, 3, 512, 512), 1, True, True) == (mm, mm, mm)
  # Output channels that are not a multiple of 16 keep the other lowerings.
  assert conv.plan_for((2, 16, 16, 16), (3, 3, 16, 8), 1, True, True) == (xla, xla, xla)
  # Without the kernels the plan is the one of test_ops_conv.
  assert conv.plan_for((64, 32, 32, 64), (3, 3, 64, 64), 1, True, False) == (xla, xla, mm)


def test_conv2d_picks_direct_only_for_float32():
  x, kernel, _, _, padding = _case_data(CASES[4])
  seen = []
  original = conv.plan_for

  def spy(*args, **kwargs):
    seen.append(original(*args, **kwargs))
    return seen[-1]

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(conv, "plan_for", spy)
    conv.conv2d_matmul(x, kernel, 1, padding)
    y16 = conv.conv2d_matmul(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), 1, padding)
  assert ("direct" in seen[0]) == native.wide_vectors()
  assert "direct" not in seen[1]
  assert y16.dtype == jnp.bfloat16


def test_bad_plans_name_what_the_kernels_cannot_run():
  x, kernel, _, _, padding = _case_data(CASES[7])  # stride 2
  with pytest.raises(ValueError, match="cannot run the input gradient"):
    conv.conv2d_im2col(x, kernel, 2, padding, ("direct", "direct", "direct"))
  with pytest.raises(ValueError, match="output channels a multiple of 16"):
    conv.conv2d_im2col(x, kernel[..., :8], 1, padding, ("direct", "xla", "xla"))
  with pytest.raises(ValueError, match="bfloat16 convolution"):
    conv.conv2d_im2col(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), 1, padding,
                       ("xla", "xla", "direct"))
  with pytest.raises(TypeError, match="float32"):
    native.conv_forward(x.astype(jnp.bfloat16), kernel, 1)


def test_the_kernels_refuse_shapes_that_do_not_fit():
  """The library checks its operands itself: a wrong output shape is an error, not a bad write."""
  x = jnp.zeros((2, 6, 6, 16), jnp.float32)
  kernel = jnp.zeros((3, 3, 16, 16), jnp.float32)
  wrong = jax.ShapeDtypeStruct((2, 5, 4, 16), jnp.float32)  # a valid output is 4×4
  with pytest.raises(Exception, match="conv_fwd: shapes do not match"):
    jax.block_until_ready(jax.ffi.ffi_call(native.FORWARD_TARGET, wrong)(
        x, kernel, stride=np.int64(1)))
  with pytest.raises(Exception, match="conv_dw: shapes do not match"):
    jax.block_until_ready(jax.ffi.ffi_call(
        native.WEIGHT_GRAD_TARGET, jax.ShapeDtypeStruct((3, 3, 16, 16), jnp.float32))(
            x, jnp.zeros((2, 5, 4, 16), jnp.float32), stride=np.int64(1)))


def test_vmap_over_stacked_models_runs_each_member():
  """SISA vmaps a train step over shards, each with its own kernel."""
  rng = np.random.default_rng(3)
  xs = jnp.asarray(rng.standard_normal((3, 2, 6, 6, 16)), jnp.float32)
  ks = jnp.asarray(rng.standard_normal((3, 3, 3, 16, 32)), jnp.float32)
  rs = jnp.asarray(rng.standard_normal((3, 2, 6, 6, 32)), jnp.float32)
  padding = ((1, 1), (1, 1))
  plan = ("direct", "direct", "direct")

  def per_model(fn):
    return jax.jit(jax.vmap(lambda x, k, r: _value_and_grads(fn, x, k, r, 1, padding)))

  planned = lambda x, k, s, p: conv.conv2d_im2col(x, k, s, p, plan)
  for a, b in zip(per_model(planned)(xs, ks, rs), per_model(_lax_conv)(xs, ks, rs)):
    _close(a, b)


def test_a_small_resnet_step_matches_plain_xla():
  """A whole ResNet-18 (width 16) gradient: the default CPU plan against plain lax."""
  from mu_jax.models import create_model  # pylint: disable=import-outside-toplevel
  model = create_model("resnet18", 5, width=16)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, 32, 32, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), x, train=False)

  def loss(params):  # eval-mode batch norm: training mode needs the data-parallel axis
    return jnp.sum(jnp.sin(model.apply({**variables, "params": params}, x, train=False)))

  grads = {}
  previous = conv.get_impl()
  try:
    for impl in ("matmul", "xla"):
      conv.set_impl(impl)
      grads[impl] = jax.jit(jax.grad(loss))(variables["params"])
      if impl == "matmul":
        text = jax.jit(jax.grad(loss)).lower(variables["params"]).as_text()
        assert (native.FORWARD_TARGET in text) == native.wide_vectors()
        assert (native.WEIGHT_GRAD_TARGET in text) == native.wide_vectors()
  finally:
    conv.set_impl(previous)
  for a, b in zip(jax.tree.leaves(grads["matmul"]), jax.tree.leaves(grads["xla"])):
    _close(a, b, tol=1e-4)


# ---------------------------------------------------------------------------------------------
# Building and loading.


def test_build_writes_the_library_whole_even_when_two_processes_build_at_once(tmp_path):
  cxx = native._compiler()  # pylint: disable=protected-access
  out = tmp_path / "cache" / "direct_conv-test.so"
  errors = []

  def build():
    try:
      native.build(cxx, out)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=build) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors
  assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporaries left
  import ctypes  # pylint: disable=import-outside-toplevel
  assert ctypes.cdll.LoadLibrary(str(out)).MuJaxVectorBits() in (0, 256, 512)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 targets only")
def test_an_avx2_build_computes_the_same_convolutions(tmp_path):
  """The 8-lane build (16 registers: other tiles and channel blocks), as on CPUs without AVX-512."""
  out = tmp_path / "direct_conv-avx2.so"
  native.build(native._compiler(), out,  # pylint: disable=protected-access
               tuple("-march=x86-64-v3" if f == "-march=native" else f for f in native.FLAGS))
  import ctypes  # pylint: disable=import-outside-toplevel
  lib = ctypes.cdll.LoadLibrary(str(out))
  assert lib.MuJaxVectorBits() == 256
  jax.ffi.register_ffi_target("mu_jax_test_avx2_fwd", jax.ffi.pycapsule(lib.MuJaxConvFwd),
                              platform="cpu")
  jax.ffi.register_ffi_target("mu_jax_test_avx2_dw", jax.ffi.pycapsule(lib.MuJaxConvDw),
                              platform="cpu")
  for case in (CASES[0], CASES[3], CASES[5], CASES[7]):
    x, kernel, _, stride, padding = _case_data(case, seed=5)
    xp = conv._pad(x, padding)  # pylint: disable=protected-access
    y = _lax_conv(x, kernel, stride, padding)
    g = jnp.asarray(np.random.default_rng(6).standard_normal(y.shape), jnp.float32)
    got = jax.ffi.ffi_call("mu_jax_test_avx2_fwd", jax.ShapeDtypeStruct(y.shape, jnp.float32))(
        xp, kernel, stride=np.int64(stride))
    _close(got, y)
    got_dw = jax.ffi.ffi_call("mu_jax_test_avx2_dw",
                              jax.ShapeDtypeStruct(kernel.shape, jnp.float32))(
        xp, g, stride=np.int64(stride))
    _close(got_dw, jax.vjp(lambda k: _lax_conv(x, k, stride, padding), kernel)[1](g)[0])


def test_a_failed_build_says_why_and_leaves_nothing(tmp_path):
  fake = tmp_path / "cxx"
  fake.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo fake 1.0; exit 0; fi\n"
                  "echo 'direct_conv.cc:1: error: no such thing' >&2\nexit 1\n")
  fake.chmod(0o755)
  out = tmp_path / "cache" / "direct_conv-x.so"
  with pytest.raises(native.NativeUnavailable, match="no such thing"):
    native.build(str(fake), out)
  assert list(out.parent.iterdir()) == []


def test_the_library_is_keyed_by_compiler_and_source(tmp_path, monkeypatch):
  cxx = native._compiler()  # pylint: disable=protected-access
  monkeypatch.setenv(native.CACHE_ENV, str(tmp_path))
  path = native.library_path(cxx)
  assert path.parent == tmp_path and path.suffix == ".so"
  fake = tmp_path / "cxx"
  fake.write_text("#!/bin/sh\necho another compiler 2.0\n")
  fake.chmod(0o755)
  assert native.library_path(str(fake)) != path


# Prints whether the kernels loaded, why not, the plan of layer1 and a conv's error against lax.
_REPORT = """
import json
import numpy as np, jax, jax.numpy as jnp
from jax import lax
import mu_jax
from mu_jax.ops import conv, native
x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 16)), jnp.float32)
k = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 16, 16)), jnp.float32)
y = jax.jit(lambda a, b: conv.conv2d(a, b, 1, ((1, 1), (1, 1))))(x, k)
ref = lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)),
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
print(json.dumps({"available": native.available(), "why": native.why_unavailable(),
                  "plan": conv.plan_for((64, 32, 32, 64), (3, 3, 64, 64), 1),
                  "error": float(jnp.max(jnp.abs(y - ref)))}))
"""


def _report(tmp_path, **env_changes):
  env = dict(os.environ, **env_changes)
  proc = subprocess.run([sys.executable, "-c", _REPORT], env=env, capture_output=True, text=True,
                        check=True, cwd=tmp_path, timeout=300)
  return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.parametrize("setting", ["no compiler", "switched off"])
def test_without_the_kernels_the_other_lowerings_run(tmp_path, setting):
  changes = {native.CACHE_ENV: str(tmp_path / "cache")}
  if setting == "no compiler":
    changes["CXX"] = str(tmp_path / "no-such-compiler")
  else:
    changes[native.SWITCH] = "0"
  report, stderr = _report(tmp_path, **changes)
  assert not report["available"]
  assert "direct" not in report["plan"]
  assert report["error"] < 1e-4
  if setting == "no compiler":
    assert "no-such-compiler" in report["why"] and "no-such-compiler" in stderr
    assert "XLA's are used" in stderr
  else:
    assert report["why"] == f"{native.SWITCH}=0"
  assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
