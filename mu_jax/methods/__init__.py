"""Unlearning methods as pure functional transforms, and the one driver that runs them.

  import mu_jax.methods as methods
  state = methods.run(methods.scrub(), original_state, dataset, methods.RunConfig())

Each factory returns an :class:`Unlearner` (see :mod:`mu_jax.methods.base`).
"""

from mu_jax.methods.base import MethodNotApplicable, Phase, Spec, Unlearner
from mu_jax.methods.driver import RunConfig, RunResult, run, run_detailed
from mu_jax.methods.registry import create, names, parse_methods


def __getattr__(name):
  # mu_jax.methods.scrub(...), mu_jax.methods.salun(...), ...: resolved through the registry.
  from mu_jax.methods import registry
  if name in registry.names():
    return registry.factory(name)
  raise AttributeError(f"module 'mu_jax.methods' has no attribute {name!r}")
