"""SISA partitioning: S shards of R cumulative slices, the epoch schedule and the slice keys.

The mechanics follow the official SISA code (Bourtoule et al., IEEE S&P 2021, arXiv 1912.03817;
cleverhans-lab/machine-unlearning@b8e3d31:sisa.py, sharded.py):

* **Shards.** ``by="index"`` is the official uniform split: the training set, in its given order, cut
  at ``t·(N // S)`` for t = 1..S−1 (the last shard takes the remainder). ``by="identity"`` keeps all
  images of a person in one shard, so a request for one person touches one shard: identities are
  put in a seeded random order and each goes to the shard holding the fewest images so far; inside a
  shard a person's images are contiguous, so a request also touches few slices.
* **Slices.** With ``slice_size = len(shard) // R``, slice ``sl`` trains on the cumulative prefix
  ``shard[:(sl+1)·slice_size]``; the last slice runs to the end of the shard. The boundaries are
  positions in the *original* shard: a removed example leaves a hole, it does not shift later
  examples into earlier slices, so only the slice holding it and the later ones change.
* **Epochs.** ``avg = 2R/(R+1) · e/R`` and ``slice_epochs(sl) = int((sl+1)·avg) − int(sl·avg)``:
  slice sl sees (sl+1)/R of the shard, so the schedule costs about e epochs of the whole shard.
* **Keys.** A slice's checkpoint is keyed by ``sha256(":".join(sorted ids seen through the slice,
  minus removed ones))``. The seen set of slice sl determines the seen sets of every earlier slice
  (they are its prefixes in shard order), so equal keys of one slice index mean equal training
  histories: a (slice, key) checkpoint on disk can be reused, which is how untouched slices are
  skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import AbstractSet, Any, Iterable, Mapping, Sequence

import numpy as np

from mu_jax.data.splits import DataError

BY = ("identity", "index")


def avg_epochs_per_slice(num_slices: int, epochs: int) -> float:
  """The official average epochs per slice, ``2R/(R+1) · e/R`` (written as the official code does)."""
  return 2 * num_slices / (num_slices + 1) * epochs / num_slices


def slice_epochs(sl: int, num_slices: int, epochs: int) -> int:
  """Epochs of slice ``sl``: ``int((sl+1)·avg) − int(sl·avg)`` (may be 0 for a few slices)."""
  if not 0 <= sl < num_slices:
    raise ValueError(f"slice {sl} is not in 0..{num_slices - 1}")
  avg = avg_epochs_per_slice(num_slices, epochs)
  return int((sl + 1) * avg) - int(sl * avg)


def epoch_schedule(num_slices: int, epochs: int) -> list[int]:
  """``[slice_epochs(0), ..., slice_epochs(R−1)]``; it sums to ``int(R · avg)``."""
  return [slice_epochs(sl, num_slices, epochs) for sl in range(num_slices)]


def slice_key(example_ids: Iterable[str]) -> str:
  """The content hash of a slice: sha256 of the sorted example ids it has seen, ':'-joined."""
  return hashlib.sha256(":".join(sorted(example_ids)).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Partition:
  """Example ids per shard, in training order, and the number of slices per shard.

  Attributes:
    shards: ``shards[s]`` lists shard s's example ids in the order slices cut them.
    num_slices: R.
    by: "identity" or "index", how the shards were made.
    seed: the seed of the identity order (unused by "index").
  """

  shards: tuple[tuple[str, ...], ...]
  num_slices: int
  by: str
  seed: int = 0

  def __post_init__(self):
    if self.by not in BY:
      raise ValueError(f"partition 'by' must be one of {BY}, got {self.by!r}")
    if self.num_slices < 1:
      raise DataError(f"SISA needs at least one slice per shard, got {self.num_slices}")
    if not self.shards:
      raise DataError("SISA needs at least one shard")
    for s, ids in enumerate(self.shards):
      if len(ids) < self.num_slices:
        raise DataError(f"shard {s} holds {len(ids)} examples, fewer than the {self.num_slices} "
                        "slices it is cut into: use fewer shards or slices")
    where: dict[str, tuple[int, int]] = {}
    for s, ids in enumerate(self.shards):
      for pos, e in enumerate(ids):
        if e in where:
          raise DataError(f"example {e!r} is in shard {where[e][0]} and shard {s}")
        where[e] = (s, pos)
    object.__setattr__(self, "_where", where)

  @property
  def num_shards(self) -> int:
    return len(self.shards)

  def __contains__(self, example_id: str) -> bool:
    return example_id in self._where

  def position(self, example_id: str) -> tuple[int, int]:
    """(shard, position in the shard) of an example id.

    Raises:
      KeyError: the id is not in the partition.
    """
    return self._where[example_id]

  def slice_end(self, s: int, sl: int) -> int:
    """End (exclusive) of slice ``sl``'s cumulative prefix of shard ``s``."""
    n = len(self.shards[s])
    if sl == self.num_slices - 1:
      return n
    return (sl + 1) * (n // self.num_slices)

  def slice_of(self, s: int, pos: int) -> int:
    """The slice in which position ``pos`` of shard ``s`` first appears."""
    size = len(self.shards[s]) // self.num_slices
    return min(pos // size, self.num_slices - 1)

  def seen(self, s: int, sl: int, removed: AbstractSet[str] = frozenset()) -> tuple[str, ...]:
    """The ids slice ``sl`` of shard ``s`` trains on (its prefix minus ``removed``), in shard order."""
    return tuple(e for e in self.shards[s][:self.slice_end(s, sl)] if e not in removed)

  def key(self, s: int, sl: int, removed: AbstractSet[str] = frozenset()) -> str:
    return slice_key(self.seen(s, sl, removed))

  def keys(self, removed: AbstractSet[str] = frozenset()) -> list[list[str]]:
    """``keys[s][sl]`` for every shard and slice."""
    return [[self.key(s, sl, removed) for sl in range(self.num_slices)] for s in range(self.num_shards)]

  def retained_counts(self, s: int, removed: AbstractSet[str] = frozenset()) -> list[int]:
    """Examples each slice of shard ``s`` trains on after ``removed`` (no id lists are built)."""
    holes = np.sort(np.array([self._where[e][1] for e in removed
                              if e in self._where and self._where[e][0] == s], np.int64))
    ends = np.array([self.slice_end(s, sl) for sl in range(self.num_slices)], np.int64)
    return (ends - np.searchsorted(holes, ends, side="left")).tolist()

  def locate(self, example_ids: Iterable[str]) -> dict[int, int]:
    """The shards a request touches and, for each, the first slice it touches.

    Raises:
      KeyError: an id is not in the partition (the message lists up to five).
    """
    ids = list(example_ids)
    unknown = [e for e in ids if e not in self._where]
    if unknown:
      raise KeyError(f"ids not in the SISA partition: {unknown[:5]}")
    touched: dict[int, int] = {}
    for e in ids:
      s, pos = self._where[e]
      sl = self.slice_of(s, pos)
      touched[s] = min(sl, touched.get(s, sl))
    return dict(sorted(touched.items()))

  def to_dict(self) -> dict[str, Any]:
    return {"by": self.by, "seed": self.seed, "num_slices": self.num_slices,
            "shards": [list(ids) for ids in self.shards]}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Partition":
    return cls(tuple(tuple(ids) for ids in d["shards"]), int(d["num_slices"]), d["by"],
               int(d.get("seed", 0)))

  @property
  def content_hash(self) -> str:
    return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def make_partition(example_ids: Sequence[str], identities: Sequence[str], num_shards: int,
                   num_slices: int, by: str = "identity", seed: int = 0) -> Partition:
  """Splits a training set into shards (see the module docstring).

  Args:
    example_ids: the training ids in their stored order.
    identities: the person of each id.
    num_shards: S.
    num_slices: R.
    by: "identity" (a person's images in one shard) or "index" (the official uniform split).
    seed: orders the identities before they are dealt out ("identity" only).

  Returns:
    The partition.

  Raises:
    DataError: fewer identities than shards ("identity"), or a shard smaller than R.
  """
  ids = [str(e) for e in example_ids]
  people = [str(i) for i in identities]
  if len(ids) != len(people):
    raise ValueError(f"{len(ids)} example ids but {len(people)} identities")
  if num_shards < 1:
    raise DataError(f"SISA needs at least one shard, got {num_shards}")
  if by == "index":
    n = len(ids)
    if n < num_shards:
      raise DataError(f"{n} examples cannot fill {num_shards} shards")
    cuts = [t * (n // num_shards) for t in range(1, num_shards)]
    shards = [tuple(part) for part in np.split(np.asarray(ids, dtype=object), cuts)]
  elif by == "identity":
    by_person: dict[str, list[str]] = {}
    for e, p in zip(ids, people):
      by_person.setdefault(p, []).append(e)
    names = sorted(by_person)
    if len(names) < num_shards:
      raise DataError(f"{len(names)} identities cannot fill {num_shards} shards by identity; use "
                      "fewer shards or shard by index")
    order = np.random.default_rng(seed).permutation(len(names))
    members: list[list[str]] = [[] for _ in range(num_shards)]
    for i in order:
      # Deal each person to the lightest shard (ties: the lowest index), which keeps shard sizes
      # within one person's image count of each other.
      s = int(np.argmin([len(m) for m in members]))
      members[s].extend(by_person[names[i]])
    shards = [tuple(m) for m in members]
  else:
    raise ValueError(f"partition 'by' must be one of {BY}, got {by!r}")
  return Partition(tuple(shards), num_slices, by, seed)
