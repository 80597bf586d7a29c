"""Tests of the TFDS builders: prepare as array_record, read back without TensorFlow.

The builders need the optional ``tfds`` extra (``pip install 'mu_jax[tfds]'``); without it these
tests are skipped, and CI installs the extra so they run there.
"""

import sys

import numpy as np
import pytest

_WHY = "the tfds extra is not installed (pip install 'mu_jax[tfds]')"
tfds = pytest.importorskip("tensorflow_datasets", reason=_WHY)
pytest.importorskip("array_record", reason=_WHY)

# pylint: disable=wrong-import-position
from mu_jax.data import loader
from mu_jax.data import mucac
from mu_jax.data import mufac
from mu_jax.data import tfds_builders
from mu_jax.data.splits import DataError
from tests import fixtures


def _prepare(builder_cls, manual_dir, data_dir):
  builder = builder_cls(data_dir=str(data_dir))
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _assert_same(a, b):
  assert a.manifest.content_hash == b.manifest.content_hash
  assert a.manifest.splits == b.manifest.splits
  assert a.manifest.image_hashes == b.manifest.image_hashes
  assert a.manifest.allowed_overlaps == b.manifest.allowed_overlaps
  for field in ("images", "labels", "identities", "example_ids"):
    np.testing.assert_array_equal(getattr(a.examples, field), getattr(b.examples, field))
  assert (a.num_classes, a.task, a.label_names) == (b.num_classes, b.task, b.label_names)


@pytest.fixture(scope="module")
def mufac_prepared(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("mufac")
  # The zip unpacks into a folder of its own; the builder finds it inside the manual dir.
  fixtures.write_mufac(tmp / "manual" / "custom_korean_family_dataset_resolution_128")
  return tmp / "manual" / "custom_korean_family_dataset_resolution_128", tmp / "data", _prepare(
      tfds_builders.Mufac, tmp / "manual", tmp / "data")


@pytest.fixture(scope="module")
def mucac_prepared(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("mucac")
  fixtures.write_mucac(tmp / "manual")
  return tmp / "manual", tmp / "data", _prepare(tfds_builders.Mucac, tmp / "manual", tmp / "data")


def test_mufac_round_trip_equals_direct_reader(mufac_prepared):
  root, data_dir, builder = mufac_prepared
  assert {s: builder.info.splits[s].num_examples for s in ("train", "test", "unseen")} == {
      "train": 11, "test": 4, "unseen": 3}
  for kwargs in ({"paper_forget_rows": 6},
                 {"forget_mode": "identity", "forget_count": 2, "forget_seed": 1}):
    direct = mufac.read_mufac(root, image_size=4, **kwargs)
    via_tfds = tfds_builders.read_tfds("mufac", str(data_dir), image_size=4, chunk_size=5, **kwargs)
    _assert_same(direct, via_tfds)
  assert via_tfds.manifest.meta["reader"] == "tfds"
  # Full-size images come back byte-identical too.
  _assert_same(mufac.read_mufac(root, image_size=None, paper_forget_rows=6),
               tfds_builders.read_tfds(builder, image_size=None, paper_forget_rows=6))
  assert "tensorflow" not in sys.modules


def test_mufac_data_source_decodes_without_tensorflow(mufac_prepared):
  root, data_dir, _ = mufac_prepared
  source = tfds.data_source("mufac", data_dir=str(data_dir), split="test")
  record = source[0]
  assert record["image"].shape == (8, 8, 3) and record["image"].dtype == np.uint8
  assert record["example_id"] == b"val_images/F0801_AGE_D_16_c1.jpg"
  assert record["identity"] == b"F0801_D" and record["label"] == 2 and record["index"] == 0
  assert "tensorflow" not in sys.modules


def test_mucac_round_trip_equals_direct_reader(mucac_prepared):
  root, data_dir, builder = mucac_prepared
  assert {s: builder.info.splits[s].num_examples for s in ("train", "test", "unseen")} == {
      "train": 8, "test": 3, "unseen": 3}
  for kwargs in ({}, {"task": "binary:Smiling"},
                 {"forget_mode": "identity", "forget_identities": ["600", "3000"]},
                 {"test_max": 600, "forget_max": 1250, "retain_max": 6000}):
    direct = mucac.read_mucac(root, image_size=8, **kwargs)
    via_tfds = tfds_builders.read_tfds("mucac", str(data_dir), image_size=8, chunk_size=4, **kwargs)
    _assert_same(direct, via_tfds)
  record = tfds.data_source("mucac", data_dir=str(data_dir), split="unseen")[0]
  assert record["label"].shape == (3,) and record["image"].shape == (16, 16, 3)


def test_loader_reads_prepared_tfds_data(mufac_prepared, mucac_prepared):
  """A config's ``data.name`` "tfds_mufac" / "tfds_mucac" reaches read_tfds with the config's forget request."""
  root, data_dir, _ = mufac_prepared
  cfg = {"name": "tfds_mufac", "data_dir": str(data_dir), "image_size": 4,
         "forget": {"mode": "paper", "paper_rows": 6}}
  via_loader = loader.load_dataset(cfg)
  _assert_same(via_loader, mufac.read_mufac(root, image_size=4, paper_forget_rows=6))
  assert via_loader.manifest.meta["reader"] == "tfds"
  cfg = {"name": "tfds_mufac", "data_dir": str(data_dir), "image_size": 4,
         "forget": {"mode": "identity", "count": 2, "seed": 1}}
  _assert_same(loader.load_dataset(cfg),
               mufac.read_mufac(root, image_size=4, forget_mode="identity", forget_count=2, forget_seed=1))
  root, data_dir, _ = mucac_prepared
  cfg = {"name": "tfds_mucac", "data_dir": str(data_dir), "image_size": 8, "task": "binary:Smiling",
         "forget": {"mode": "range"}}
  via_loader = loader.load_dataset(cfg)
  _assert_same(via_loader, mucac.read_mucac(root, image_size=8, task="binary:Smiling"))
  assert via_loader.manifest.meta["reader"] == "tfds"


def test_missing_manual_files_and_unprepared_data(tmp_path):
  (tmp_path / "manual").mkdir()
  (tmp_path / "manual" / "notes.txt").write_text("wrong folder")
  with pytest.raises(DataError, match=r"(?s)custom_train_dataset\.csv not found.*Download custom_korean"):
    _prepare(tfds_builders.Mufac, tmp_path / "manual", tmp_path / "data")
  with pytest.raises(DataError, match="mucac is not prepared"):
    tfds_builders.read_tfds("mucac", str(tmp_path / "data"))


def test_bad_manual_files_fail_with_the_readers_errors(tmp_path):
  root = fixtures.write_mufac(tmp_path / "manual")
  (root / "train_images" / "F0003_AGE_GF_60_g2.jpg").write_bytes(b"junk")
  with pytest.raises(DataError, match=r"custom_train_dataset\.csv line 12: .*F0003_AGE_GF_60_g2\.jpg: "
                     "unreadable"):
    _prepare(tfds_builders.Mufac, root, tmp_path / "data")
  (root / "custom_val_dataset.csv").write_text("family_id,person_id,age,image_path\n")
  with pytest.raises(DataError, match=r"custom_val_dataset\.csv: header lacks columns \['age_class'\]"):
    _prepare(tfds_builders.Mufac, root, tmp_path / "data2")
