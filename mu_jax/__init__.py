"""mu_jax: machine unlearning for face recognition in JAX/Flax.

Importing mu_jax changes nothing in the process. For mu_jax's CPU speed-ups (an XLA flag, the
allocator, its convolution kernels) call :func:`mu_jax.runtime.configure_cpu` before anything
starts XLA; the experiment scripts do.
"""

__version__ = "0.2.0"
