"""Tests of the MUFAC reader on a tiny copy of the published layout."""

import numpy as np
import pytest

from mu_jax.data import mufac
from mu_jax.data.splits import DataError, IdentityLeakError
from tests import fixtures


@pytest.fixture
def root(tmp_path):
  return fixtures.write_mufac(tmp_path / "mufac")


def test_counts_labels_and_ids(root):
  ds = mufac.read_mufac(root, image_size=4, paper_forget_rows=6)
  m = ds.manifest
  assert {s: len(m.splits[s]) for s in m.splits} == {
      "train": 11, "retain": 5, "forget": 6, "test": 4, "unseen": 3}
  assert ds.num_classes == 8 and ds.task == "multiclass"
  assert ds.label_names == ("0-6", "7-12", "13-19", "20-30", "31-45", "46-55", "56-66", "67-80")
  assert ds.examples.images.shape == (18, 4, 4, 3)
  train = ds.split("train")
  # Age letters a..h map to 0..7 in CSV order; identity is family_person; id is folder/file.
  assert train.labels.tolist() == [0, 0, 3, 3, 4, 4, 4, 1, 1, 6, 6]
  assert train.identities[0] == "F0001_D"
  assert train.example_ids[0] == "train_images/F0001_AGE_D_4_a1.jpg"
  assert ds.split("test").example_ids[0].startswith("val_images/")
  assert ds.split("unseen").labels.tolist() == [7, 7, 0]
  assert m.identities("unseen") == {"F0851_M", "F0851_S"}
  assert len(m.image_hashes) == 18


def test_paper_mode_forgets_leading_rows_and_reports_the_straddling_person(root):
  person, rows = fixtures.MUFAC_STRADDLING
  ds = mufac.read_mufac(root, image_size=4, paper_forget_rows=rows)
  m = ds.manifest
  assert m.ids("forget") == m.ids("train")[:rows]
  assert m.meta["paper_shared_identities"] == [person]
  assert m.allowed_overlaps == {"forget/retain": [person]}
  report = m.check()  # Declared, so reported rather than refused.
  assert report.allowed_overlaps == {"forget/retain": [person]}
  # Without the declaration the same split is a leak.
  m.allowed_overlaps = {}
  with pytest.raises(IdentityLeakError, match=person):
    m.check()
  # A boundary on a person boundary shares nobody.
  clean = mufac.read_mufac(root, image_size=4, paper_forget_rows=4).manifest
  assert clean.meta["paper_shared_identities"] == [] and clean.allowed_overlaps == {}


def test_identity_mode_forgets_whole_persons(root):
  ds = mufac.read_mufac(root, image_size=4, forget_mode="identity",
                        forget_identities=["F0002_M", "F0003_GF"])
  m = ds.manifest
  assert m.identities("forget") == {"F0002_M", "F0003_GF"}
  assert not m.identities("forget") & m.identities("retain")
  assert m.check().ok and not m.check().allowed_overlaps
  assert len(m.splits["forget"]) == 5
  drawn = mufac.read_mufac(root, image_size=4, forget_mode="identity", forget_count=2,
                           forget_seed=3).manifest
  assert len(drawn.identities("forget")) == 2 and drawn.check().ok


def test_forget_arguments_are_checked(root):
  with pytest.raises(DataError, match="not in train.*F0801_D"):
    mufac.read_mufac(root, image_size=4, forget_mode="identity", forget_identities=["F0801_D"])
  with pytest.raises(DataError, match="exactly one of forget_count"):
    mufac.read_mufac(root, image_size=4, forget_mode="identity")
  with pytest.raises(DataError, match=r"\['forget_count'\] only apply"):
    mufac.read_mufac(root, image_size=4, forget_count=2)
  with pytest.raises(DataError, match="paper_forget_rows=11"):
    mufac.read_mufac(root, image_size=4, paper_forget_rows=11)
  with pytest.raises(DataError, match="forget_mode must be"):
    mufac.read_mufac(root, image_size=4, forget_mode="rows")


def test_extra_columns_in_any_order_are_allowed(tmp_path):
  header = ("", "image_path", "age_class", "person_id", "family_id", "note")
  root = fixtures.write_mufac(tmp_path, header=header)
  ds = mufac.read_mufac(root, image_size=4, paper_forget_rows=6)
  assert ds.split("train").labels.tolist()[:3] == [0, 0, 3]
  assert ds.split("train").identities[2] == "F0001_F"


def test_count_mufac_reads_only_the_csvs(root):
  for f in (root / "train_images").iterdir():
    f.unlink()
  out = mufac.count_mufac(root, paper_forget_rows=6)
  assert out["splits"]["train"]["rows"] == 11 and out["splits"]["train"]["identities"] == 5
  assert out["splits"]["train"]["families"] == 3
  assert out["splits"]["train"]["age_classes"]["a (0-6)"] == 2
  assert out["paper"] == {"forget_rows": 6, "forget_identities": 3, "shared_identities": ["F0002_M"]}


def _rewrite(path, line, text):
  lines = path.read_text().splitlines()
  lines[line - 1] = text
  path.write_text("\n".join(lines) + "\n")


def test_csv_row_naming_a_missing_file(root):
  (root / "val_images" / "F0801_AGE_F_50_f2.jpg").unlink()
  with pytest.raises(DataError, match=r"custom_val_dataset\.csv line 5: image 'F0801_AGE_F_50_f2\.jpg' "
                     "not found"):
    mufac.read_mufac(root, image_size=4)


def test_unreadable_and_truncated_images_name_csv_line_and_file(root):
  (root / "test_images" / "F0851_AGE_S_4_a1.jpg").write_bytes(b"garbage")
  with pytest.raises(DataError, match=r"custom_test_dataset\.csv line 4: .*F0851_AGE_S_4_a1\.jpg: "
                     "unreadable"):
    mufac.read_mufac(root, image_size=4, paper_forget_rows=6)
  path = root / "train_images" / "F0001_AGE_F_25_d2.jpg"
  fixtures.write_image(path, (64, 64))
  path.write_bytes(path.read_bytes()[:-200])
  with pytest.raises(DataError, match=r"custom_train_dataset\.csv line 5: .*F0001_AGE_F_25_d2\.jpg: "
                     "unreadable or truncated"):
    mufac.read_mufac(root, image_size=4, paper_forget_rows=6)


def test_unknown_age_class(root):
  _rewrite(root / "custom_train_dataset.csv", 3, "F0001,D,z,F0001_AGE_D_4_a2.jpg")
  with pytest.raises(DataError, match=r"custom_train_dataset\.csv line 3: unknown age_class 'z'"):
    mufac.read_mufac(root, image_size=4)


def test_wrong_column_names(root):
  _rewrite(root / "custom_val_dataset.csv", 1, "family,person_id,age_class,image_path")
  with pytest.raises(DataError, match=r"custom_val_dataset\.csv: header lacks columns \['family_id'\]; "
                     r"found columns \['family', 'person_id', 'age_class', 'image_path'\]; expected the columns"):
    mufac.read_mufac(root, image_size=4)


def test_repeated_column_and_empty_csv(root):
  _rewrite(root / "custom_train_dataset.csv", 1, "family_id,person_id,age_class,image_path,person_id")
  with pytest.raises(DataError, match=r"custom_train_dataset\.csv: header names columns "
                     r"\['person_id'\] more than once"):
    mufac.count_mufac(root)
  (root / "custom_train_dataset.csv").write_text("")
  with pytest.raises(DataError, match=r"custom_train_dataset\.csv: empty file; expected a header "
                     r"with the columns \['family_id', 'person_id', 'age_class', 'image_path'\]"):
    mufac.count_mufac(root)


def test_truncated_csv_row(root):
  _rewrite(root / "custom_train_dataset.csv", 9, "F0002,S,b")
  with pytest.raises(DataError, match=r"custom_train_dataset\.csv line 9: 3 fields .* truncated"):
    mufac.count_mufac(root)


def test_repeated_image_and_bad_image_path(root):
  _rewrite(root / "custom_train_dataset.csv", 3, "F0001,D,a,F0001_AGE_D_4_a1.jpg")
  with pytest.raises(DataError, match=r"line 3: image 'F0001_AGE_D_4_a1\.jpg' is already listed on "
                     "line 2"):
    mufac.read_mufac(root, image_size=4)
  _rewrite(root / "custom_train_dataset.csv", 3, "F0001,D,a,../x.jpg")
  with pytest.raises(DataError, match=r"line 3: image_path '\.\./x\.jpg' must be a file name"):
    mufac.read_mufac(root, image_size=4)


def test_missing_csv_and_folder(root):
  (root / "custom_test_dataset.csv").unlink()
  with pytest.raises(DataError, match=r"custom_test_dataset\.csv: MUFAC CSV not found"):
    mufac.read_mufac(root)
  fixtures.write_mufac(root)
  for f in (root / "val_images").iterdir():
    f.unlink()
  (root / "val_images").rmdir()
  with pytest.raises(DataError, match=r"val_images: image folder of custom_val_dataset\.csv not found"):
    mufac.read_mufac(root)


def test_full_size_and_decoding_in_parallel_keep_order(root):
  ds = mufac.read_mufac(root, image_size=None, paper_forget_rows=6, workers=3)
  assert ds.examples.images.shape == (18, 8, 8, 3)
  single = mufac.read_mufac(root, image_size=None, paper_forget_rows=6, workers=1)
  np.testing.assert_array_equal(ds.examples.images, single.examples.images)
  assert ds.manifest.content_hash == single.manifest.content_hash
