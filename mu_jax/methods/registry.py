"""Method names → factories. Every method of the benchmark is listed here."""

from __future__ import annotations

import importlib
from typing import Any, Callable

from mu_jax.methods.base import Unlearner

# name -> "module:factory", in benchmark order.
_FACTORIES = {
    "finetune": "mu_jax.methods.finetune:finetune",
    "cf_k": "mu_jax.methods.finetune:cf_k",
    "eu_k": "mu_jax.methods.finetune:eu_k",
    "neggrad": "mu_jax.methods.neggrad:neggrad",
    "neggrad_plus": "mu_jax.methods.neggrad:neggrad_plus",
    "random_labels": "mu_jax.methods.random_labels:random_labels",
    "boundary_shrink": "mu_jax.methods.boundary:boundary_shrink",
    "boundary_expand": "mu_jax.methods.boundary:boundary_expand",
    "unsir": "mu_jax.methods.unsir:unsir",
    "unsir_class": "mu_jax.methods.unsir:unsir_class",
    "scrub": "mu_jax.methods.scrub:scrub",
    "scrub_official": "mu_jax.methods.scrub:scrub_official",
    "salun": "mu_jax.methods.salun:salun",
    "l1_sparse": "mu_jax.methods.l1_sparse:l1_sparse",
    "bad_teacher": "mu_jax.methods.bad_teacher:bad_teacher",
    "ssd": "mu_jax.methods.ssd:ssd",
}


def names() -> list[str]:
  """Every registered method, in benchmark order."""
  return list(_FACTORIES)


def factory(name: str) -> Callable[..., Unlearner]:
  if name not in _FACTORIES:
    raise KeyError(f"unknown method {name!r}; methods are: {', '.join(_FACTORIES)}")
  module, attr = _FACTORIES[name].split(":")
  return getattr(importlib.import_module(module), attr)


def create(name: str, **hparams: Any) -> Unlearner:
  """Builds method ``name`` with ``hparams`` (unknown hyperparameters raise a TypeError naming them)."""
  fn = factory(name)
  try:
    return fn(**hparams)
  except TypeError as e:
    raise TypeError(f"method {name!r}: {e}") from e


def parse_methods(spec: str | list[str]) -> list[str]:
  """'all' or a comma-separated list → validated names."""
  items = spec.split(",") if isinstance(spec, str) else list(spec)
  items = [s.strip() for s in items if s.strip()]
  if items == ["all"]:
    return names()
  unknown = [s for s in items if s not in _FACTORIES]
  if unknown:
    raise KeyError(f"unknown methods {unknown}; methods are: all, {', '.join(_FACTORIES)}")
  return items
