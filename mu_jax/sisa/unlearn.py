"""Exact SISA unlearning: forget requests, retraining from the last clean slice, cost accounting.

A request names identities or example ids. It touches the shards that hold them and, in each, the
first slice containing one of them; every later slice of that shard changes key too (its cumulative
data changed), every earlier slice keeps its key. :func:`unlearn_request` therefore restores the
checkpoint of the last untouched slice of each touched shard and retrains from there on the data
minus the request; shards the request does not touch are not trained at all. Because a slice's training
depends only on its retained data and the seeds (:mod:`mu_jax.sisa.train`), the result is the model
a from-scratch training of the shard without the request gives, bit for bit on the CPU.

The removal state lives in ``ROOT/removed.json`` (the requests applied so far, with their ids);
each served request also leaves ``ROOT/requests/<request id>.json`` (its cost report). A request is
checked completely before anything is trained: unknown identities or ids, data already removed by an
earlier request, or a request that would leave a shard without data raise :class:`RequestError`
and change nothing.

Cost is counted in examples processed (exact, from the plan) and wall seconds (measured), against a
full retrain of all S shards on the data minus the request. :func:`expected_cost` averages the
example cost over every possible single-identity (or single-example) request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import AbstractSet, Any, Iterable, Sequence

import numpy as np

from mu_jax import checkpoints
from mu_jax.audit import utc_now
from mu_jax.data.splits import DataError
from mu_jax.sisa.train import ShardTrainer, write_json

KINDS = ("identities", "ids")


class RequestError(DataError):
  """A forget request that cannot be served; nothing was retrained and nothing changed."""


@dataclasses.dataclass(frozen=True)
class Request:
  """A validated forget request.

  Attributes:
    kind: "identities" (whole persons) or "ids" (single examples).
    example_ids: the training examples to forget, in partition order.
    identities: the persons they show (sorted).
  """

  kind: str
  example_ids: tuple[str, ...]
  identities: tuple[str, ...]

  @property
  def fingerprint(self) -> str:
    """sha256 of the kind and the sorted ids: the same request always has the same fingerprint."""
    payload = self.kind + "|" + ":".join(sorted(self.example_ids))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------- removal state

def _removal_path(root: str) -> str:
  return os.path.join(root, "removed.json")


def applied_requests(root: str) -> list[dict[str, Any]]:
  """The requests applied to the SISA models under ``root``, oldest first."""
  path = _removal_path(root)
  return checkpoints.read_json(path)["requests"] if os.path.exists(path) else []


def removed_ids(root: str) -> frozenset[str]:
  """Every example id removed so far."""
  return frozenset(e for r in applied_requests(root) for e in r["example_ids"])


def _removed_by(root: str) -> dict[str, str]:
  return {e: r["request_id"] for r in applied_requests(root) for e in r["example_ids"]}


def _record_applied(root: str, request_id: str, request: Request) -> None:
  rows = applied_requests(root)
  rows.append({"request_id": request_id, "kind": request.kind, "identities": list(request.identities),
               "example_ids": list(request.example_ids), "time": utc_now()})
  write_json(_removal_path(root), {"requests": rows})


# ------------------------------------------------------------------------------------ requests

def make_request(trainer: ShardTrainer, *, identities: Sequence[str] | None = None,
                 example_ids: Sequence[str] | None = None) -> Request:
  """Checks a forget request against the partition and the removals so far.

  Args:
    trainer: the SISA models.
    identities: persons to forget (all their remaining training images), or
    example_ids: training examples to forget. Exactly one of the two.

  Returns:
    The request.

  Raises:
    RequestError: both or neither given, an empty request, unknown identities or ids, data that an
      earlier request already removed, or a request that would leave a shard with fewer examples
      than devices.
  """
  if (identities is None) == (example_ids is None):
    raise RequestError("a forget request names identities or example ids (exactly one of the two)")
  part = trainer.partition
  removed_by = _removed_by(trainer.root)
  person = {e: trainer.identity(e) for ids in part.shards for e in ids}
  if identities is not None:
    names = list(dict.fromkeys(str(i) for i in identities))
    if not names:
      raise RequestError("the forget request names no identity")
    members: dict[str, list[str]] = {}
    for ids in part.shards:
      for e in ids:
        members.setdefault(person[e], []).append(e)
    unknown = [i for i in names if i not in members]
    if unknown:
      raise RequestError(f"the forget request names identities that are not in the SISA training "
                         f"data: {unknown[:5]}{' ...' if len(unknown) > 5 else ''} "
                         f"({len(unknown)} unknown); nothing was retrained")
    gone = [i for i in names if all(e in removed_by for e in members[i])]
    if gone:
      by = sorted({removed_by[members[i][0]] for i in gone})
      raise RequestError(f"identities {gone[:5]} were already removed by request(s) {by}; "
                         "nothing was retrained")
    ids = [e for i in names for e in members[i] if e not in removed_by]
    kind = "identities"
  else:
    ids = list(dict.fromkeys(str(e) for e in example_ids))
    if not ids:
      raise RequestError("the forget request names no example id")
    unknown = [e for e in ids if e not in part]
    if unknown:
      raise RequestError(f"the forget request names example ids that are not in the SISA training "
                         f"data: {unknown[:5]}{' ...' if len(unknown) > 5 else ''} "
                         f"({len(unknown)} unknown); nothing was retrained")
    again = [e for e in ids if e in removed_by]
    if again:
      by = sorted({removed_by[e] for e in again})
      raise RequestError(f"examples {again[:5]} ({len(again)} in all) were already removed by "
                         f"request(s) {by}; nothing was retrained")
    kind = "ids"
  ids.sort(key=part.position)
  after = frozenset(removed_by) | frozenset(ids)
  for s in part.locate(ids):
    left = part.retained_counts(s, after)[-1]
    if left < trainer.num_devices:
      raise RequestError(f"the request would leave shard {s} with {left} examples, fewer than the "
                         f"{trainer.num_devices} devices that train it; nothing was retrained")
  return Request(kind, tuple(ids), tuple(sorted({person[e] for e in ids})))


# ----------------------------------------------------------------------------------- unlearning

@dataclasses.dataclass
class UnlearnReport:
  """What serving one request did and cost.

  Attributes:
    request_id: the audit id.
    kind: "identities" or "ids".
    identities: the persons forgotten.
    num_examples: examples forgotten.
    touched: {shard: first slice the request touches}.
    retrained: {shard: slices trained by this call} (fewer than planned when a resumed call found
      some already on disk).
    restored_from: {shard: checkpoint directory of the last clean slice, or None for a shard
      retrained from its initialisation}.
    untouched_shards: shards not retrained (their models are the ones before the request).
    examples: examples processed by the retraining.
    wall_s: wall seconds of the retraining.
    full_retrain_examples: examples a full retrain of all shards without the request processes.
    full_retrain_wall_s: seconds of that full retrain: measured when ``full_retrain_measured``,
      else the sum of the recorded training seconds of every slice of the models before the request
      scaled by the example ratio.
    full_retrain_measured: whether the full retrain was run and timed.
    checkpoints_before: {shard: final slice directory before the request}.
    checkpoints_after: {shard: final slice directory after}.
  """

  request_id: str
  kind: str
  identities: list[str]
  num_examples: int
  touched: dict[int, int]
  retrained: dict[int, list[int]]
  restored_from: dict[int, str | None]
  untouched_shards: list[int]
  examples: int
  wall_s: float
  full_retrain_examples: int
  full_retrain_wall_s: float
  full_retrain_measured: bool
  checkpoints_before: dict[int, str]
  checkpoints_after: dict[int, str]

  @property
  def speedup_examples(self) -> float | None:
    """Full-retrain examples over SISA examples (None when nothing was retrained)."""
    return self.full_retrain_examples / self.examples if self.examples else None

  @property
  def speedup_wall(self) -> float | None:
    return self.full_retrain_wall_s / self.wall_s if self.wall_s > 0 else None

  @property
  def cost_vs_retrain(self) -> float | None:
    """SISA wall seconds as a fraction of the full retrain's (the benchmark's cost column)."""
    return self.wall_s / self.full_retrain_wall_s if self.full_retrain_wall_s > 0 else None

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    for k in ("touched", "retrained", "restored_from", "checkpoints_before", "checkpoints_after"):
      d[k] = {str(s): v for s, v in d[k].items()}
    d.update(speedup_examples=self.speedup_examples, speedup_wall=self.speedup_wall,
             cost_vs_retrain=self.cost_vs_retrain)
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "UnlearnReport":
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {k: v for k, v in d.items() if k in fields}
    for k in ("touched", "retrained", "restored_from", "checkpoints_before", "checkpoints_after"):
      kw[k] = {int(s): v for s, v in kw[k].items()}
    return cls(**kw)


def recorded_wall_s(trainer: ShardTrainer, removed: AbstractSet[str]) -> float:
  """Sum of the training seconds recorded in every slice of the models for ``removed``."""
  total = 0.0
  for s in range(trainer.partition.num_shards):
    for sl in range(trainer.partition.num_slices):
      key = trainer.plan(s, sl, removed).key
      if trainer.has_slice(s, sl, key):
        total += float(trainer.slice_record(s, sl, key).get("wall_s") or 0.0)
  return total


def ensure_trained(trainer: ShardTrainer) -> dict[str, Any]:
  """Trains (or finishes, or finds) every shard for the removals applied so far.

  Returns:
    The training report of this call, plus the recorded seconds and total examples of the models.
  """
  removed = removed_ids(trainer.root)
  rep = trainer.train(removed=removed)
  return {**rep.to_dict(), "models_wall_s": recorded_wall_s(trainer, removed),
          "models_examples": trainer.cost(removed)}


def _missing_models(trainer: ShardTrainer, removed: AbstractSet[str]) -> list[int]:
  last = trainer.partition.num_slices - 1
  return [s for s, k in enumerate(trainer.final_keys(removed)) if not trainer.has_slice(s, last, k)]


def unlearn_request(trainer: ShardTrainer, request: Request, request_id: str) -> UnlearnReport:
  """Serves a request: retrains the touched shards from their last clean slice.

  Args:
    trainer: the SISA models (all shards trained for the current removals).
    request: from :func:`make_request`.
    request_id: the audit id under which the request is recorded.

  Returns:
    The report (also written to ``ROOT/requests/<request_id>.json``).

  Raises:
    RequestError: the request overlaps earlier removals, or ``request_id`` was already applied.
    CheckpointError: some shard is not trained for the current removals (run
      :func:`ensure_trained` first).
  """
  applied = applied_requests(trainer.root)
  if any(r["request_id"] == request_id for r in applied):
    raise RequestError(f"request {request_id} was already applied to {trainer.root}")
  before = removed_ids(trainer.root)
  again = sorted(set(request.example_ids) & before)
  if again:
    raise RequestError(f"examples {again[:5]} were already removed; nothing was retrained")
  missing = _missing_models(trainer, before)
  if missing:
    raise checkpoints.CheckpointError(f"shards {missing} have no trained model under {trainer.root} "
                                      "for the current removals; train them first")
  after = before | frozenset(request.example_ids)
  touched = trainer.partition.locate(request.example_ids)
  paths_before = trainer.final_paths(before)
  t0 = time.time()
  rep = trainer.train(shards=touched, removed=after)
  wall = time.time() - t0
  full_examples = trainer.cost(after)
  models_examples = trainer.cost(before)
  full_wall = recorded_wall_s(trainer, before) * full_examples / max(models_examples, 1)
  report = UnlearnReport(
      request_id=request_id, kind=request.kind, identities=list(request.identities),
      num_examples=len(request.example_ids), touched=touched,
      retrained={s: rep.shards[s].trained_slices for s in touched},
      restored_from={s: (trainer.slice_dir(s, sl - 1, trainer.plan(s, sl - 1, after).key)
                         if sl > 0 else None) for s, sl in touched.items()},
      untouched_shards=[s for s in range(trainer.partition.num_shards) if s not in touched],
      examples=rep.examples, wall_s=wall, full_retrain_examples=full_examples,
      full_retrain_wall_s=full_wall, full_retrain_measured=False,
      checkpoints_before=paths_before, checkpoints_after=trainer.final_paths(after))
  write_json(os.path.join(trainer.root, "requests", f"{request_id}.json"), report.to_dict())
  _record_applied(trainer.root, request_id, request)
  return report


def load_report(trainer: ShardTrainer, request_id: str) -> UnlearnReport:
  """The report :func:`unlearn` saved for an applied request."""
  return UnlearnReport.from_dict(
      checkpoints.read_json(os.path.join(trainer.root, "requests", f"{request_id}.json")))


def expected_cost(trainer: ShardTrainer, removed: AbstractSet[str] = frozenset(),
                  unit: str = "identity") -> dict[str, Any]:
  """The example cost of a random single request, averaged over every possible one.

  Args:
    trainer: the SISA models (only their plan is used; nothing is trained).
    removed: removals already applied.
    unit: "identity" (forget one person, all remaining images) or "example" (one image).

  Returns:
    ``requests`` (how many were averaged), ``expected_examples`` (SISA retraining),
    ``expected_full_examples`` (full retrain of all shards), ``expected_speedup`` (their ratio),
    ``mean_cost_fraction`` (the mean of the per-request ratio SISA / full), ``mean_shards_touched``
    and ``first_slice_histogram`` (how often each slice is the first one touched).
  """
  if unit not in ("identity", "example"):
    raise ValueError(f"unit must be 'identity' or 'example', got {unit!r}")
  part = trainer.partition
  removed = frozenset(removed)
  groups: dict[str, list[str]] = {}
  for ids in part.shards:
    for e in ids:
      if e not in removed:
        key = trainer.identity(e) if unit == "identity" else e
        groups.setdefault(key, []).append(e)
  base = {s: trainer.cost(removed, {s: 0}) for s in range(part.num_shards)}
  base_total = sum(base.values())
  sisa, full, touched_n = [], [], []
  hist = np.zeros(part.num_slices, np.int64)
  for ids in groups.values():
    touched = part.locate(ids)
    after = removed | frozenset(ids)
    retrain = trainer.cost(after, touched)
    scratch = {s: trainer.cost(after, {s: 0}) for s in touched}
    sisa.append(retrain)
    full.append(base_total - sum(base[s] for s in touched) + sum(scratch.values()))
    touched_n.append(len(touched))
    for sl in touched.values():
      hist[sl] += 1
  sisa_a, full_a = np.asarray(sisa, np.float64), np.asarray(full, np.float64)
  return {"unit": unit, "requests": len(sisa), "expected_examples": float(sisa_a.mean()),
          "expected_full_examples": float(full_a.mean()),
          "expected_speedup": float(full_a.mean() / max(sisa_a.mean(), 1e-12)),
          "mean_cost_fraction": float(np.mean(sisa_a / full_a)),
          "mean_shards_touched": float(np.mean(touched_n)),
          "first_slice_histogram": hist.tolist()}


def retrain_from_scratch(trainer: ShardTrainer, root: str, removed: AbstractSet[str],
                         shards: Iterable[int] | None = None) -> tuple[ShardTrainer, float, int]:
  """Trains shards from scratch without ``removed`` under a fresh ``root`` (the retrain baseline).

  The new trainer has the same partition, recipe, seed, mode and lanes, so its models are the
  ones exact unlearning must reproduce.

  Returns:
    (the new trainer, wall seconds, examples processed).
  """
  fresh = ShardTrainer(trainer.model, trainer.examples, trainer.partition, trainer.cfg,
                       task=trainer.task, seed=trainer.seed, root=root, mode=trainer.mode,
                       lanes=trainer.lanes)
  t0 = time.time()
  rep = fresh.train(shards=shards, removed=removed)
  return fresh, time.time() - t0, rep.examples
