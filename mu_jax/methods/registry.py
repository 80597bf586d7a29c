"""Method names → factories, and the methods a run asks for with their hyperparameters.

Every built-in method of the benchmark is listed in :data:`METHODS`. A user's method joins with
``mu_jax.methods.register("my_method", my_factory)`` or, on the command line, as
``--methods=finetune,my_pkg.my_methods:my_factory`` (imported and named by the factory's name for
that run). :meth:`Registry.resolve` turns a ``--methods`` value and ``config.unlearn.hparams`` into
:class:`Method` values, validated before any work starts.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
from typing import Any, Callable, Mapping, Sequence

from mu_jax.methods.base import Unlearner


class MethodError(KeyError, ValueError):
  """An unknown method, an unimportable ``module:factory`` or a bad hyperparameter."""

  def __str__(self) -> str:  # KeyError's own would quote the whole message
    return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True)
class Method:
  """One method as a run asks for it: its command-line name, its factory and hyperparameters.

  Attributes:
    name: the name given on the command line (``scrub``, or ``my_method`` for
      ``my_pkg.my_methods:my_method``); result rows and stage directories carry it.
    factory: the callable returning an :class:`~mu_jax.methods.base.Unlearner`.
    factory_path: ``module:qualname`` of the factory (part of a stage's identity).
    hparams: the hyperparameters as given (factory defaults overridden by the config), as JSON
      values: what a stage's identity and a result row record.
    kwargs: the same values as passed to the factory (tuples stay tuples).
  """

  name: str
  factory: Callable[..., Unlearner]
  factory_path: str
  hparams: dict[str, Any]
  kwargs: dict[str, Any]

  def create(self) -> Unlearner:
    try:
      return self.factory(**self.kwargs)
    except TypeError as e:
      raise TypeError(f"method {self.name!r}: {e}") from e


def _json_plain(value: Any) -> Any:
  return json.loads(json.dumps(value, default=lambda x: x.item() if hasattr(x, "item") else list(x)))


def _type_ok(default: Any, value: Any) -> bool:
  """Whether ``value`` may replace a hyperparameter whose default is ``default``."""
  if default is None or value is None:
    return True
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, int):
    return isinstance(value, int) and not isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, str):
    return isinstance(value, str)
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return True


def factory_defaults(factory: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
  """(name -> default of every keyword the factory names, whether it also takes ``**kwargs``).

  Parameters without a default are left out (the config must give them).
  """
  params = inspect.signature(factory).parameters
  defaults = {k: p.default for k, p in params.items()
              if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty}
  return defaults, any(p.kind == p.VAR_KEYWORD for p in params.values())


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

  def register(self, name: str, factory: Callable[..., Unlearner] | str) -> None:
    """Adds a method (a factory, or "module:factory") under ``name``.

    Raises:
      ValueError: ``name`` is taken by another factory, or is not a plain identifier.
    """
    if not name.isidentifier():
      raise MethodError(f"{self.kind} name {name!r} must be a Python identifier")
    if name in self._factories and self.factory(name) is not _load(factory):
      raise MethodError(f"{self.kind} {name!r} is already registered to another factory")
    self._factories[name] = factory

  def factory(self, name: str) -> Callable[..., Unlearner]:
    if name not in self._factories:
      raise MethodError(f"unknown {self.kind} {name!r}; methods are: {', '.join(self._factories)}")
    return _load(self._factories[name])

  def create(self, name: str, **hparams: Any) -> Unlearner:
    """Builds ``name`` with ``hparams`` (unknown hyperparameters raise a TypeError naming them)."""
    fn = self.factory(name)
    try:
      return fn(**hparams)
    except TypeError as e:
      raise TypeError(f"{self.kind} {name!r}: {e}") from e

  def defaults(self) -> dict[str, dict[str, Any]]:
    """Every registered method's keyword defaults (what the configs pre-fill)."""
    return {name: factory_defaults(self.factory(name))[0] for name in self.names()}

  def _entries(self, spec: str | Sequence[str]) -> list[tuple[str, Callable[..., Unlearner], str]]:
    """(name, factory, "module:qualname") of each entry of a ``--methods`` value."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [s.strip() for s in items if s.strip()]
    if not items:
      raise MethodError(f"no {self.kind} given; methods are: all, {', '.join(self._factories)}")
    if items == ["all"]:
      items = self.names()
    out = []
    for item in items:
      if ":" in item:
        module, _, attr = item.partition(":")
        try:
          fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
          raise MethodError(f"{self.kind} {item!r}: cannot import {attr!r} from {module!r} "
                            f"({e})") from e
        if not callable(fn):
          raise MethodError(f"{self.kind} {item!r} is not callable")
        if attr in self._factories and self.factory(attr) is not fn:
          raise MethodError(f"{self.kind} {item!r}: the name {attr!r} is a built-in method; "
                            "rename your factory")
        out.append((attr, fn, item))
      elif item in self._factories:
        fn = self.factory(item)
        path = self._factories[item]
        out.append((item, fn, path if isinstance(path, str) else f"{fn.__module__}:{fn.__qualname__}"))
      else:
        raise MethodError(f"unknown {self.kind} {item!r}; methods are: all, "
                          f"{', '.join(self._factories)}, or module:factory for your own")
    names = [n for n, _, _ in out]
    if len(set(names)) != len(names):
      raise MethodError(f"{self.kind}s listed twice: {names}")
    return out

  def parse_methods(self, spec: str | Sequence[str]) -> list[str]:
    """'all' or a comma-separated list → validated names (``module:factory`` entries are imported
    to check them and named by the factory)."""
    return [name for name, _, _ in self._entries(spec)]

  def resolve(self, spec: str | Sequence[str], hparams: Mapping[str, Mapping[str, Any]] | None = None
              ) -> list[Method]:
    """Names and their validated hyperparameters, before any work starts.

    Args:
      spec: 'all', a comma-separated list, or a sequence of names and ``module:factory`` entries
        (a user's factory, named by its attribute name; it is not added to the registry).
      hparams: ``config.unlearn.hparams``: name → overrides of the factory's defaults.

    Raises:
      MethodError: an unknown method, an unimportable ``module:factory``, a hyperparameter the
        factory does not take or one of the wrong type (naming the method and the key).
    """
    hparams = hparams or {}
    out = []
    for name, fn, path in self._entries(spec):
      defaults, takes_any = factory_defaults(fn)
      given = dict(hparams.get(name) or {})
      for key, value in given.items():
        if key not in defaults and not takes_any:
          raise MethodError(f"{self.kind} {name!r} has no hyperparameter {key!r}; it takes: "
                            f"{', '.join(sorted(defaults)) or 'none'}")
        if key in defaults and not _type_ok(defaults[key], value):
          raise MethodError(f"{self.kind} {name!r}: hyperparameter {key!r} must be like its "
                            f"default {defaults[key]!r} ({type(defaults[key]).__name__}), got "
                            f"{value!r}")
      kwargs = {**defaults, **given}
      kwargs = {k: tuple(v) if isinstance(defaults.get(k), tuple) and isinstance(v, list) else v
                for k, v in kwargs.items()}
      out.append(Method(name, fn, path, _json_plain(kwargs), kwargs))
    return out


def _load(fn: Callable[..., Unlearner] | str) -> Callable[..., Unlearner]:
  if isinstance(fn, str):
    module, attr = fn.split(":")
    fn = getattr(importlib.import_module(module), attr)
  return fn


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
names, factory, create, parse_methods, register, resolve = (
    METHODS.names, METHODS.factory, METHODS.create, METHODS.parse_methods, METHODS.register,
    METHODS.resolve)
