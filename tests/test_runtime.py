"""mu_jax.runtime: the process-wide CPU settings that ``configure_cpu`` makes (never ``import mu_jax``).

Each case that depends on process state (environment, whether XLA has started) runs in a fresh
Python process, since the settings can only be made once per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mu_jax import runtime

# Prints what the runtime module decided, after an optional prologue.
_REPORT = """
import json, os
import mu_jax
from mu_jax import runtime
runtime.configure_cpu()
print(json.dumps({"flags": os.environ.get("XLA_FLAGS", ""), "eigen": runtime.EIGEN_CONVOLUTIONS,
                  "quick": runtime.QUICK_COMPILE, "kept": runtime.FREED_MEMORY_KEPT}))
"""

# Minor page faults of the last of several calls of a jitted function with a 64 MB temporary (a
# matmul's output, which XLA must materialise; fresh memory on every call unless it is kept).
_FAULTS = """
import json, resource
from mu_jax import runtime
runtime.configure_cpu()
import jax, jax.numpy as jnp
f = jax.jit(lambda a: jnp.sum(jnp.tanh(a @ a.T) @ a))
x = jnp.ones((4096, 256), jnp.float32)
for _ in range(4):
  f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
f(x).block_until_ready()
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _run(code: str, **env_changes: str | None) -> dict:
  env = dict(os.environ)
  env.pop(runtime.ENV_SWITCH, None)
  env.pop(runtime.MEMORY_SWITCH, None)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
  env["JAX_PLATFORMS"] = "cpu"
  for key, value in env_changes.items():
    if value is None:
      env.pop(key, None)
    else:
      env[key] = value
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


# The libraries mu_jax imports set variables of their own on import (jax: TF_CPP_MIN_LOG_LEVEL,
# scikit-learn: KMP_*); they are imported first, so that the comparison sees mu_jax's own effect.
_IMPORT_ONLY = """
import json, os
import jax, sklearn, orbax.checkpoint, flax, optax  # noqa: F401
before = dict(os.environ)
import mu_jax, mu_jax.methods, mu_jax.models, mu_jax.experiment, mu_jax.retrieval.methods
from mu_jax.models import layers
from mu_jax import runtime
print(json.dumps({"same": dict(os.environ) == before, "xla": os.environ.get("XLA_FLAGS"),
                  "hook": layers.get_convolution()[0] is layers.lax_conv2d,
                  "configured": runtime.CONFIGURED}))
"""


def test_importing_mu_jax_changes_nothing_in_the_process():
  got = _run(_IMPORT_ONLY, XLA_FLAGS=None)
  assert got == {"same": True, "xla": None, "hook": True, "configured": False}


def test_configure_cpu_installs_mu_jax_convolutions_behind_the_layers_hook():
  code = ("from mu_jax import runtime\nfrom mu_jax.models import layers\nfrom mu_jax.ops import conv\n"
          "runtime.configure_cpu()\nimport json\n"
          "print(json.dumps({'hook': layers.get_convolution() == (conv.conv2d, conv.max_pool)}))")
  assert _run(code) == {"hook": True}


def test_configure_cpu_appends_its_flags_and_keeps_memory_only_when_asked():
  got = _run(_REPORT)
  assert got["flags"].split() == ["--xla_force_host_platform_device_count=2",
                                  runtime.EIGEN_CONV_FLAG, runtime.QUICK_COMPILE_FLAG]
  assert got["eigen"] is True and got["quick"] is True and got["kept"] is False
  got = _run(_REPORT, MU_JAX_KEEP_FREED_MEMORY="1")
  assert got["eigen"] is True and got["kept"] is (sys.platform == "linux")


def test_the_switch_turns_every_setting_off():
  got = _run(_REPORT, MU_JAX_CPU_TUNING="0", MU_JAX_KEEP_FREED_MEMORY="1")
  assert got == {"flags": "--xla_force_host_platform_device_count=2", "eigen": False,
                 "quick": False, "kept": False}


def test_a_users_own_setting_of_the_flag_is_left_alone():
  own = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
  got = _run(_REPORT, XLA_FLAGS=own)
  assert got["flags"].split() == [own, runtime.QUICK_COMPILE_FLAG] and got["eigen"] is False
  # The same flag given by the user, already routing convolutions to Eigen, is recognised.
  got = _run(_REPORT, XLA_FLAGS=runtime.EIGEN_CONV_FLAG, MU_JAX_CPU_TUNING="0")
  assert got["eigen"] is True
  got = _run(_REPORT, XLA_FLAGS="--xla_backend_optimization_level=2")
  assert got["flags"].split() == ["--xla_backend_optimization_level=2", runtime.EIGEN_CONV_FLAG]
  assert got["quick"] is False


def test_the_quick_compile_flag_is_left_out_where_jax_may_run_on_an_accelerator(monkeypatch):
  monkeypatch.setattr(runtime, "_backends_initialized", lambda: False)
  monkeypatch.setattr(runtime, "accelerator_plugin_installed", lambda: True)
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  assert runtime.compile_quickly() is False and os.environ["XLA_FLAGS"] == ""
  # Forced onto the CPU, the flag applies.
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert runtime.compile_quickly() is True
  assert os.environ["XLA_FLAGS"] == runtime.QUICK_COMPILE_FLAG
  monkeypatch.setattr(runtime, "accelerator_plugin_installed", lambda: False)
  monkeypatch.setenv("XLA_FLAGS", "")
  monkeypatch.delenv("JAX_PLATFORMS")
  assert runtime.compile_quickly() is True


def test_a_misspelt_switch_is_refused_naming_the_variable():
  with pytest.raises(subprocess.CalledProcessError) as err:
    _run(_REPORT, MU_JAX_KEEP_FREED_MEMORY="maybe")
  assert "MU_JAX_KEEP_FREED_MEMORY must be 1 or 0" in err.value.stderr
  assert "'maybe'" in err.value.stderr


def test_the_flag_is_appended_only_where_this_jaxlib_defines_it(monkeypatch):
  name = runtime.EIGEN_CONV_FLAG[2:].split("=")[0]
  assert runtime.xla_knows_flag(name)
  assert not runtime.xla_knows_flag("xla_cpu_no_such_flag_in_any_jaxlib")
  # XLA would abort on a flag it does not define: such a flag is not appended.
  monkeypatch.setattr(runtime, "_backends_initialized", lambda: False)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  monkeypatch.setattr(runtime, "xla_knows_flag", lambda flag: False)
  assert runtime.route_convolutions_to_eigen() is False
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
  monkeypatch.setattr(runtime, "xla_knows_flag", lambda flag: flag == name)
  assert runtime.route_convolutions_to_eigen() is True
  assert os.environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2",
                                             runtime.EIGEN_CONV_FLAG]


def test_too_late_when_xla_already_started():
  got = _run("import jax; jax.numpy.ones(2).block_until_ready()\n" + _REPORT)
  assert runtime.EIGEN_CONV_FLAG not in got["flags"] and got["eigen"] is False


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_kept_memory_removes_the_page_faults_of_repeated_steps():
  tuned = _run(_FAULTS, MU_JAX_KEEP_FREED_MEMORY="1")["faults"]
  plain = _run(_FAULTS)["faults"]
  # 64 MB of fresh memory is ~16k 4 KiB pages; reused memory faults (almost) nothing. Where the
  # kernel maps fresh memory in huge pages (2,560 faults, and 0, seen on one EPYC host with
  # transparent huge pages "always"), there are no per-page faults left to remove.
  if plain < 1_000:
    pytest.skip(f"the plain run faulted {plain} times: this kernel maps fresh memory in large pages")
  assert tuned < plain / 10, (tuned, plain)


def test_this_test_process_was_configured_as_the_scripts_are():
  """conftest calls configure_cpu before XLA starts, so the suite runs as the scripts do."""
  if not runtime.enabled():
    pytest.skip(f"{runtime.ENV_SWITCH} switches the tuning off in this environment")
  assert runtime.EIGEN_CONVOLUTIONS
  assert runtime.EIGEN_CONV_FLAG in os.environ["XLA_FLAGS"].split()
  # conftest runs the suite on the CPU (JAX_PLATFORMS=cpu unless set), where -O1 applies even
  # beside a GPU plugin.
  forced_cpu = os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu"
  assert runtime.QUICK_COMPILE is (forced_cpu or not runtime.accelerator_plugin_installed())


_CACHED = """
import json, os, sys
from mu_jax import runtime
path = runtime.enable_compilation_cache(sys.argv[1] if len(sys.argv) > 1 else None)
import jax, jax.numpy as jnp
jax.jit(lambda a: jnp.tanh(a @ a.T).sum())(jnp.ones((64, 32))).block_until_ready()
print(json.dumps({"path": path, "files": sorted(os.listdir(path))}))
"""


def test_the_compilation_cache_keeps_programs_for_the_next_process(tmp_path):
  first = _run(_CACHED, XDG_CACHE_HOME=str(tmp_path), MU_JAX_CACHE_DIR=None,
               JAX_COMPILATION_CACHE_DIR=None)
  assert first["path"] == str(tmp_path / "mu_jax" / "jax") and first["files"]
  # The next process finds the same program there and adds nothing.
  again = _run(_CACHED, XDG_CACHE_HOME=str(tmp_path), MU_JAX_CACHE_DIR=None,
               JAX_COMPILATION_CACHE_DIR=None)
  assert again["files"] == first["files"]
  # A cache the user chose is kept, with the user's settings (JAX's own thresholds).
  own = _run(_CACHED, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "own"))
  assert own["path"] == str(tmp_path / "own")
