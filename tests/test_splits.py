"""Split manifest invariants, the identity leak check, the duplicate report, JSON round trip."""

import numpy as np
import pytest

from mu_jax.data import splits, synthetic
from mu_jax.data.splits import DataError, IdentityLeakError, SplitManifest


def _manifest(**over):
  s = {"train": [("a1", "A"), ("a2", "A"), ("b1", "B")], "retain": [("b1", "B")],
       "forget": [("a1", "A"), ("a2", "A")], "test": [("c1", "C")], "unseen": [("d1", "D")]}
  s.update(over)
  return SplitManifest("toy", s)


def test_clean_manifest_passes_and_hash_is_stable(tmp_path):
  m = _manifest()
  assert m.check().ok
  m.save(tmp_path / "m.json")
  back = SplitManifest.load(tmp_path / "m.json")
  assert back.content_hash == m.content_hash
  assert back.splits == m.splits


def test_planted_identity_leak_is_refused():
  m = _manifest(test=[("c1", "C"), ("a9", "A")])
  with pytest.raises(IdentityLeakError, match="forget/test: \\['A'\\]"):
    m.check()


def test_declared_paper_overlap_is_reported_not_refused():
  m = _manifest(train=[("a1", "A"), ("a2", "A"), ("b1", "B")], forget=[("a1", "A")],
                retain=[("a2", "A"), ("b1", "B")])
  with pytest.raises(IdentityLeakError, match="forget/retain"):
    m.check()
  m.allowed_overlaps = {"forget/retain": ["A"]}
  report = m.check()
  assert report.ok and report.allowed_overlaps == {"forget/retain": ["A"]}


def test_duplicate_images_across_splits_are_reported():
  m = _manifest()
  m.image_hashes = {"a1": "h1", "a2": "h2", "b1": "h3", "c1": "h1", "d1": "h4"}
  report = m.check()
  assert report.duplicate_images == {"forget/test": [["a1", "c1"]]}
  assert report.to_dict()["duplicate_images"] == {"forget/test": 1}


@pytest.mark.parametrize("over,match", [
    ({"retain": [("b1", "B"), ("a1", "A")]}, "train must be exactly retain \\+ forget"),
    ({"forget": [], "retain": [("a1", "A"), ("a2", "A"), ("b1", "B")]}, "forget split is empty"),
    ({"retain": [], "forget": [("a1", "A"), ("a2", "A"), ("b1", "B")]}, "whole training set"),
    ({"test": [("c1", "C"), ("c1", "C")]}, "more than once"),
])
def test_invalid_manifests(over, match):
  with pytest.raises(DataError, match=match):
    _manifest(**over).check()


def test_edited_manifest_file_is_refused(tmp_path):
  m = _manifest()
  m.save(tmp_path / "m.json")
  text = (tmp_path / "m.json").read_text().replace('"c1"', '"c2"')
  (tmp_path / "m.json").write_text(text)
  with pytest.raises(DataError, match="content hash"):
    SplitManifest.load(tmp_path / "m.json")


def test_forget_request_errors_name_the_identity():
  ds = synthetic.make_dataset(num_identities=12, images_per_identity=3, image_size=8)
  with pytest.raises(DataError, match="P9999"):
    splits.forget_identities(ds, identities=["P9999"])
  test_person = sorted(ds.manifest.identities("test"))[0]
  with pytest.raises(DataError, match=test_person):
    splits.forget_identities(ds, identities=[test_person])
  with pytest.raises(DataError, match="nothing would be retained"):
    splits.forget_identities(ds, count=len(ds.manifest.identities("train")))
  with pytest.raises(DataError, match="no identity"):
    splits.forget_identities(ds, count=0)


def test_synthetic_identity_split_is_identity_disjoint():
  ds = synthetic.make_dataset(num_identities=40, images_per_identity=4, image_size=16)
  report = ds.manifest.check()
  assert report.ok and not report.duplicate_images
  s = splits.summarize(ds)
  assert s["splits"]["train"]["images"] == s["splits"]["retain"]["images"] + s["splits"]["forget"]["images"]
  assert s["splits"]["forget"]["identities"] == 4  # 15% of 28 train persons, rounded
  assert sum(s["splits"]["test"]["labels"].values()) == s["splits"]["test"]["images"]


def test_synthetic_paper_mode_reports_the_shared_person():
  ds = synthetic.make_dataset(num_identities=20, images_per_identity=5, image_size=8,
                              forget_mode="paper", paper_forget_rows=7)
  shared = ds.manifest.meta["paper_shared_identities"]
  assert len(shared) == 1  # row 7 cuts the second person (5 images each) in two
  report = ds.manifest.check()
  assert report.allowed_overlaps == {"forget/retain": shared}
  assert len(ds.split("forget")) == 7


def test_synthetic_is_deterministic_and_identity_is_in_the_pixels():
  a = synthetic.make_dataset(num_identities=8, images_per_identity=4, image_size=16)
  b = synthetic.make_dataset(num_identities=8, images_per_identity=4, image_size=16)
  np.testing.assert_array_equal(a.examples.images, b.examples.images)
  assert a.manifest.content_hash == b.manifest.content_hash
  x = a.examples.images.astype(np.float32)
  ids = a.examples.identities
  # Images of one person are closer to each other than to other persons' (on average).
  same, diff = [], []
  for i in range(len(x)):
    for j in range(i + 1, len(x)):
      (same if ids[i] == ids[j] else diff).append(np.abs(x[i] - x[j]).mean())
  assert np.mean(same) < 0.6 * np.mean(diff)


@pytest.mark.parametrize("task,shape,classes", [("age", (), 8), ("multilabel", (3,), 3),
                                                ("binary:Smiling", (), 2)])
def test_synthetic_tasks(task, shape, classes):
  ds = synthetic.make_dataset(num_identities=10, images_per_identity=3, image_size=8, task=task)
  assert ds.num_classes == classes
  assert ds.examples.labels.shape[1:] == shape
  assert ds.examples.labels.min() >= 0 and ds.examples.labels.max() < max(classes, 2)


def test_synthetic_bad_arguments():
  with pytest.raises(DataError, match="task"):
    synthetic.make_dataset(task="gender")
  with pytest.raises(DataError, match="forget_mode"):
    synthetic.make_dataset(num_identities=10, images_per_identity=2, image_size=8, forget_mode="x")
