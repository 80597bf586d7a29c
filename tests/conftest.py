"""Test setup: 4 virtual CPU devices (the multi-device path always runs) and fast compiles."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole run: many tests build the same tiny models, and
# the xdist workers and the processes tests start inherit this environment, so each program
# compiles once per run. The process that starts the run makes it and removes it at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mu_jax_test_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402  (must follow the XLA flags)

from mu_jax import runtime  # noqa: E402

# The settings the experiment scripts make, so that in-process results equal the scripts'.
runtime.configure_cpu()

jax.config.update("jax_disable_most_optimizations", True)

import pytest  # noqa: E402

from tests import helpers  # noqa: E402


@pytest.fixture(scope="module")
def original():
  """A freshly initialised tiny 8-class model's train state (helpers.tiny_state), per module."""
  return helpers.tiny_state()


@pytest.fixture(scope="module")
def multilabel_state():
  """The same for a tiny model with 3 binary outputs (the multilabel task)."""
  return helpers.tiny_state(helpers.tiny_model(3))
