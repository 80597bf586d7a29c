"""Tests of the one-folder-per-person reader."""

import numpy as np
import pytest

from mu_jax.data import identity_folder
from mu_jax.data.splits import DataError
from tests import fixtures


@pytest.fixture
def root(tmp_path):
  return fixtures.write_identity_folders(tmp_path / "faces")


def test_person_disjoint_splits_and_label_layout(root):
  ds = identity_folder.read_identity_folders(root, image_size=4, forget_count=2)
  m = ds.manifest
  # 10 persons: 1 test, 1 unseen (round(0.1 * 10)), 8 train of which 2 forgotten.
  assert {s: len(m.identities(s)) for s in m.splits} == {
      "train": 8, "retain": 6, "forget": 2, "test": 1, "unseen": 1}
  assert {s: len(v) for s, v in m.splits.items()} == {
      "train": 24, "retain": 18, "forget": 6, "test": 3, "unseen": 3}
  assert m.check().ok
  assert ds.num_classes == 8 and ds.task == "multiclass"
  train = ds.split("train")
  assert sorted(set(train.labels.tolist())) == list(range(8))
  assert ds.label_names == tuple(sorted(m.identities("train")))
  # Held-out persons get their own indices past the train classes, never -1.
  assert ds.split("test").labels.tolist() == [8] * 3
  assert ds.split("unseen").labels.tolist() == [9] * 3
  assert train.example_ids[0] == f"{train.identities[0]}/0.png"
  assert ds.examples.images.shape == (30, 4, 4, 3)


def test_split_is_seeded(root):
  a = identity_folder.read_identity_folders(root, image_size=4, forget_count=2).manifest
  b = identity_folder.read_identity_folders(root, image_size=4, forget_count=2).manifest
  c = identity_folder.read_identity_folders(root, image_size=4, forget_count=2, split_seed=1).manifest
  assert a.content_hash == b.content_hash != c.content_hash


def test_grayscale_pgm_becomes_rgb(tmp_path):
  root = fixtures.write_identity_folders(tmp_path, persons=4, ext=".pgm", size=(6, 6))
  ds = identity_folder.read_identity_folders(root, image_size=None, forget_identities=["person01"],
                                             test_fraction=0.25, unseen_fraction=0.0)
  assert ds.examples.images.shape == (12, 6, 6, 3)
  np.testing.assert_array_equal(ds.examples.images[..., 0], ds.examples.images[..., 2])
  assert ds.manifest.identities("forget") == {"person01"}
  assert not ds.manifest.splits["unseen"]


def test_persons_with_too_few_images_are_reported(tmp_path):
  root = fixtures.write_identity_folders(tmp_path, persons=6, images_per_person=[3, 1, 3, 3, 3, 3])
  ds = identity_folder.read_identity_folders(root, image_size=4, forget_count=1)
  assert ds.manifest.meta["excluded_identities"] == ["person01"]
  assert ds.manifest.meta["excluded_images"] == 1
  assert "person01" not in set(ds.examples.identities.tolist())


def test_hidden_files_and_root_docs_are_allowed_other_files_are_not(root):
  (root / ".DS_Store").write_bytes(b"x")
  (root / "person00" / ".hidden").write_bytes(b"x")
  (root / "pairs.txt").write_text("pairs\n")
  identity_folder.read_identity_folders(root, image_size=4, forget_count=1)
  (root / "person03" / "notes.doc").write_text("x")
  with pytest.raises(DataError, match=r"person03/notes\.doc: not an image file"):
    identity_folder.read_identity_folders(root, image_size=4, forget_count=1)
  (root / "person03" / "notes.doc").unlink()
  (root / "archive.zip").write_bytes(b"x")
  with pytest.raises(DataError, match=r"archive\.zip: unexpected file at the root"):
    identity_folder.read_identity_folders(root, image_size=4, forget_count=1)
  (root / "archive.zip").unlink()
  (root / "person02" / "more").mkdir()
  with pytest.raises(DataError, match=r"person02/more: a folder inside the person folder"):
    identity_folder.read_identity_folders(root, image_size=4, forget_count=1)


def test_bad_images_and_arguments(root):
  (root / "person04" / "1.png").write_bytes(b"not a png")
  with pytest.raises(DataError, match=r"person04/1\.png: unreadable"):
    identity_folder.read_identity_folders(root, image_size=4, forget_count=1)
  # Argument errors come before any image is decoded, so the bad image does not mask them.
  with pytest.raises(DataError, match="exactly one of forget_count"):
    identity_folder.read_identity_folders(root, image_size=4)
  with pytest.raises(DataError, match=r"not in train.*'nobody'"):
    identity_folder.read_identity_folders(root, image_size=4, forget_identities=["nobody"])
  with pytest.raises(DataError, match="test_fraction must be in"):
    identity_folder.read_identity_folders(root, image_size=4, forget_count=1, test_fraction=1.5)
  with pytest.raises(DataError, match="train needs at least 2"):
    identity_folder.read_identity_folders(root, image_size=4, forget_count=1, test_fraction=0.5,
                                          unseen_fraction=0.45)
  (root / "empty").mkdir()
  with pytest.raises(DataError, match=r"empty: no person folders"):
    identity_folder.read_identity_folders(root / "empty", image_size=4, forget_count=1)
