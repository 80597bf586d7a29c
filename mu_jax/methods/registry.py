"""Method names → factories. Every method of the benchmark is listed here."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from mu_jax.methods.base import Unlearner


class Registry:
  """Names → factories of one family of methods (classification here, retrieval elsewhere).

  Args:
    kind: how errors name the family ("method", "retrieval method").
    factories: name → factory, or name → "module:factory" (imported when first used).
  """

  def __init__(self, kind: str, factories: Mapping[str, Callable[..., Unlearner] | str]):
    self.kind = kind
    self._factories = dict(factories)

  def names(self) -> list[str]:
    """Every registered method, in table order."""
    return list(self._factories)

  def factory(self, name: str) -> Callable[..., Unlearner]:
    if name not in self._factories:
      raise KeyError(f"unknown {self.kind} {name!r}; methods are: {', '.join(self._factories)}")
    fn = self._factories[name]
    if isinstance(fn, str):
      module, attr = fn.split(":")
      fn = getattr(importlib.import_module(module), attr)
    return fn

  def create(self, name: str, **hparams: Any) -> Unlearner:
    """Builds ``name`` with ``hparams`` (unknown hyperparameters raise a TypeError naming them)."""
    fn = self.factory(name)
    try:
      return fn(**hparams)
    except TypeError as e:
      raise TypeError(f"{self.kind} {name!r}: {e}") from e

  def parse_methods(self, spec: str | list[str]) -> list[str]:
    """'all' or a comma-separated list → validated names."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [s.strip() for s in items if s.strip()]
    if items == ["all"]:
      return self.names()
    unknown = [s for s in items if s not in self._factories]
    if unknown:
      raise KeyError(f"unknown {self.kind}s {unknown}; methods are: all, {', '.join(self._factories)}")
    return items


# name -> "module:factory", in benchmark order.
METHODS = Registry("method", {
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
})
names, factory, create, parse_methods = (METHODS.names, METHODS.factory, METHODS.create,
                                         METHODS.parse_methods)
