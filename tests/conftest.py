"""Test setup: 4 virtual CPU devices (the multi-device path always runs) and fast compiles."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
