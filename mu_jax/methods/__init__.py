"""Unlearning methods as pure functional transforms, and the one driver that runs them.

  import mu_jax.methods as methods
  state = methods.run(methods.scrub(), original_state, dataset, methods.RunConfig())

Each factory returns an :class:`Unlearner` (see :mod:`mu_jax.methods.base`).
"""

from mu_jax.methods.bad_teacher import bad_teacher
from mu_jax.methods.base import MethodNotApplicable, Phase, Spec, Unlearner
from mu_jax.methods.boundary import boundary_expand, boundary_shrink
from mu_jax.methods.driver import RunConfig, RunResult, run, run_detailed
from mu_jax.methods.finetune import cf_k, eu_k, finetune
from mu_jax.methods.l1_sparse import l1_sparse
from mu_jax.methods.neggrad import neggrad, neggrad_plus
from mu_jax.methods.random_labels import random_labels
from mu_jax.methods.registry import Method, create, names, parse_methods, register, resolve
from mu_jax.methods.salun import salun
from mu_jax.methods.scrub import scrub, scrub_official
from mu_jax.methods.ssd import ssd
from mu_jax.methods.unsir import unsir, unsir_class
