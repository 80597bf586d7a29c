"""mu_jax: machine unlearning for face recognition in JAX/Flax."""

__version__ = "0.1.0"
