"""SISA partitioning: the official uniform split, identity shards, slices, epoch budget, slice keys."""

import hashlib
import itertools

import numpy as np
import pytest

from mu_jax.data.splits import DataError
from mu_jax.sisa import partition as P


def _people(n_people=10, per=(3, 4, 5)):
  """Example ids and identities, persons with 3, 4 or 5 images, in person order."""
  ids, who = [], []
  for p in range(n_people):
    for k in range(per[p % len(per)]):
      ids.append(f"p{p:02d}/{k}")
      who.append(f"p{p:02d}")
  return ids, who


@pytest.mark.parametrize("num_slices,epochs",
                         list(itertools.product(range(1, 11), (1, 2, 4, 7, 20, 30))))
def test_slice_epochs_sum_to_the_official_budget(num_slices, epochs):
  avg = 2 * num_slices / (num_slices + 1) * epochs / num_slices
  schedule = P.epoch_schedule(num_slices, epochs)
  assert sum(schedule) == int(num_slices * avg)
  assert all(e >= 0 for e in schedule)
  # Slice sl sees (sl+1)/R of the shard: the schedule costs about e epochs of the whole shard.
  shard_epochs = sum((sl + 1) / num_slices * e for sl, e in enumerate(schedule))
  assert abs(shard_epochs - epochs) <= 1.0


def test_slice_epochs_match_the_official_formula():
  assert P.avg_epochs_per_slice(4, 4) == pytest.approx(1.6)
  assert P.epoch_schedule(4, 4) == [1, 2, 1, 2]
  assert P.epoch_schedule(1, 20) == [20]
  assert P.epoch_schedule(3, 2) == [1, 1, 1]
  with pytest.raises(ValueError):
    P.slice_epochs(4, 4, 4)


def test_index_partition_is_the_official_uniform_split():
  ids = [f"e{i}" for i in range(23)]
  part = P.make_partition(ids, ["x"] * 23, 4, 2, by="index")
  # np.split(arange(23), [5, 10, 15]): contiguous, the last shard takes the remainder.
  assert [len(s) for s in part.shards] == [5, 5, 5, 8]
  assert sum(part.shards, ()) == tuple(ids)


def test_identity_partition_keeps_each_person_in_one_shard_contiguously():
  ids, who = _people()
  part = P.make_partition(ids, who, 3, 2, by="identity", seed=1)
  person = dict(zip(ids, who))
  assert sorted(sum(part.shards, ())) == sorted(ids)
  shard_of = {}
  for s, shard in enumerate(part.shards):
    runs = [k for k, _ in itertools.groupby(person[e] for e in shard)]
    assert len(runs) == len(set(runs)), "a person's images must be contiguous"
    for p in runs:
      assert shard_of.setdefault(p, s) == s
  sizes = [len(s) for s in part.shards]
  assert max(sizes) - min(sizes) <= 5  # within one person's image count
  assert part == P.make_partition(ids, who, 3, 2, by="identity", seed=1)
  assert part != P.make_partition(ids, who, 3, 2, by="identity", seed=2)


def test_slices_are_cumulative_prefixes_and_the_last_runs_to_the_end():
  ids = [f"e{i:02d}" for i in range(11)]
  part = P.make_partition(ids, ids, 1, 3, by="index")
  assert [part.slice_end(0, sl) for sl in range(3)] == [3, 6, 11]
  assert part.seen(0, 1) == tuple(ids[:6])
  assert [part.slice_of(0, pos) for pos in (0, 2, 3, 5, 6, 10)] == [0, 0, 1, 1, 2, 2]
  assert part.seen(0, 2, {"e01", "e07"}) == tuple(e for e in ids if e not in ("e01", "e07"))
  assert part.retained_counts(0, {"e01", "e07", "unknown"}) == [2, 5, 9]


def test_slice_key_is_sha256_of_the_sorted_ids():
  ids = ["b", "a", "c"]
  assert P.slice_key(ids) == hashlib.sha256(b"a:b:c").hexdigest()
  assert P.slice_key(reversed(ids)) == P.slice_key(ids)


def test_key_changes_exactly_for_touched_slices():
  ids, who = _people(12)
  part = P.make_partition(ids, who, 3, 4, by="identity", seed=0)
  clean = part.keys()
  rng = np.random.default_rng(0)
  for _ in range(20):
    removed = set(rng.choice(ids, size=int(rng.integers(1, 6)), replace=False).tolist())
    touched = part.locate(removed)
    new = part.keys(removed)
    for s in range(part.num_shards):
      for sl in range(part.num_slices):
        changed = new[s][sl] != clean[s][sl]
        assert changed == (s in touched and sl >= touched[s]), (s, sl, touched)


def test_locate_finds_the_first_touched_slice_and_refuses_unknown_ids():
  ids = [f"e{i:02d}" for i in range(12)]
  part = P.make_partition(ids, ids, 2, 3, by="index")
  assert part.locate(["e05", "e01", "e10"]) == {0: 0, 1: 2}
  with pytest.raises(KeyError, match="nope"):
    part.locate(["e01", "nope"])


def test_bad_partitions_are_refused():
  ids, who = _people(4)
  with pytest.raises(DataError, match="identities cannot fill"):
    P.make_partition(ids, who, 5, 1, by="identity")
  with pytest.raises(DataError, match="fewer than the 8 slices"):
    P.make_partition(ids, who, 2, 8, by="index")
  with pytest.raises(DataError, match="shard 0 and shard 1"):
    P.Partition((("a", "b"), ("b", "c")), 1, "index")
  with pytest.raises(ValueError, match="by"):
    P.make_partition(ids, who, 2, 1, by="random")


def test_round_trip_and_content_hash():
  ids, who = _people(6)
  part = P.make_partition(ids, who, 2, 2, by="identity", seed=3)
  again = P.Partition.from_dict(part.to_dict())
  assert again == part and again.content_hash == part.content_hash
  assert P.make_partition(ids, who, 2, 3, by="identity", seed=3).content_hash != part.content_hash
