"""mu_jax: machine unlearning for face recognition in JAX/Flax."""

from mu_jax import runtime as _runtime

__version__ = "0.1.0"

# Process-wide CPU settings (XLA flag, allocator) must precede XLA's start: see mu_jax/runtime.py.
_runtime.configure()
