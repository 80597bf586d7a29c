"""Test setup: 4 virtual CPU devices (the multi-device path always runs) and fast compiles."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (must follow the XLA flags)

jax.config.update("jax_disable_most_optimizations", True)
