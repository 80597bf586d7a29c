"""Tests of the MUCAC (CelebA-HQ) reader on a tiny copy of the published layout."""

import numpy as np
import pytest

from mu_jax.data import mucac
from mu_jax.data.splits import DataError
from tests import fixtures

MALE, SMILING, YOUNG = (fixtures.CELEBA_ATTRIBUTES.index(a) for a in ("Male", "Smiling", "Young"))


@pytest.fixture
def root(tmp_path):
  return fixtures.write_mucac(tmp_path / "CelebAMask-HQ")


def _expected_attributes(n):
  values = np.asarray([fixtures.mucac_attribute_values(k) for k in range(n)])
  return (values[:, [MALE, SMILING, YOUNG]] == 1).astype(np.int32)


def test_identity_ranges_follow_the_reference_boundaries(root):
  ds = mucac.read_mucac(root, image_size=8)
  m = ds.manifest
  ids = {s: sorted({int(i) for i in m.identities(s)}) for s in m.splits}
  assert ids["test"] == [5, 150]
  assert ids["forget"] == [190, 600, 1249]
  assert ids["retain"] == [1250, 3000, 4854]
  assert ids["train"] == [190, 600, 1249, 1250, 3000, 4854]
  assert ids["unseen"] == [4855, 6000]
  assert {s: len(v) for s, v in m.splits.items()} == {
      "train": 8, "retain": 4, "forget": 4, "test": 3, "unseen": 3}
  assert m.ids("test") == ["CelebA-HQ-img/0.jpg", "CelebA-HQ-img/1.jpg", "CelebA-HQ-img/2.jpg"]
  assert m.check().ok and m.meta["forget_mode"] == "range"
  assert ds.examples.images.shape == (14, 8, 8, 3)


def test_multilabel_labels_map_minus_one_to_zero(root):
  ds = mucac.read_mucac(root, image_size=8)
  assert ds.task == "multilabel" and ds.num_classes == 3
  assert ds.label_names == ("Male", "Smiling", "Young")
  np.testing.assert_array_equal(ds.examples.labels, _expected_attributes(14))
  assert set(np.unique(ds.examples.labels)) == {0, 1}


def test_binary_tasks(root):
  expected = _expected_attributes(14)
  for j, name in enumerate(("Male", "Smiling", "Young")):
    ds = mucac.read_mucac(root, image_size=8, task=f"binary:{name}")
    assert ds.task == "multiclass" and ds.num_classes == 2
    assert ds.label_names == (f"not {name}", name)
    np.testing.assert_array_equal(ds.examples.labels, expected[:, j])
  with pytest.raises(DataError, match="unknown MUCAC task 'binary:Bald'"):
    mucac.read_mucac(root, task="binary:Bald")


def test_explicit_attribute_values(tmp_path):
  values = {"0.jpg": [1] * 40, "1.jpg": [-1] * 40}
  root = fixtures.write_mucac(tmp_path, identities=(5, 200, 1300, 5000), attributes=values)
  ds = mucac.read_mucac(root, image_size=8)
  assert ds.examples.labels[:2].tolist() == [[1, 1, 1], [0, 0, 0]]


def test_custom_boundaries_and_identity_mode(root):
  ds = mucac.read_mucac(root, image_size=8, test_max=600, forget_max=1250, retain_max=6000)
  assert {int(i) for i in ds.manifest.identities("test")} == {5, 150, 190}
  assert {int(i) for i in ds.manifest.identities("unseen")} == {6000}
  ds = mucac.read_mucac(root, image_size=8, forget_mode="identity", forget_identities=[3000, "190"])
  m = ds.manifest
  assert m.identities("forget") == {"190", "3000"} and m.check().ok
  assert len(m.splits["forget"]) == 3
  with pytest.raises(DataError, match=r"not in train.*'5'"):
    mucac.read_mucac(root, image_size=8, forget_mode="identity", forget_identities=[5])
  with pytest.raises(DataError, match=r"\['forget_count'\] only apply"):
    mucac.read_mucac(root, image_size=8, forget_count=1)
  with pytest.raises(DataError, match="test_max <= forget_max <= retain_max"):
    mucac.read_mucac(root, image_size=8, test_max=2000)
  with pytest.raises(DataError, match=r"forget range \[190, 190\)"):
    mucac.read_mucac(root, image_size=8, forget_max=190)


def test_identity_header_is_accepted_only_in_known_forms(tmp_path):
  root = fixtures.write_mucac(tmp_path / "a", identity_header="file_name identity")
  assert len(mucac.read_mucac(root, image_size=8).examples) == 14
  root = fixtures.write_mucac(tmp_path / "b", identity_header="celebrity names")
  with pytest.raises(DataError, match=r"CelebA-HQ-identity\.txt line 1: expected 'file_name identity'"):
    mucac.read_mucac(root, image_size=8)


def _rewrite(path, line, text):
  lines = path.read_text().splitlines()
  lines[line - 1] = text
  path.write_text("\n".join(lines) + "\n")


def test_bad_attribute_value_names_line_and_column(root):
  _rewrite(root / "CelebA-HQ-attribute.txt", 5, "2.jpg " + " ".join(["1"] * 20 + ["0"] + ["1"] * 19))
  with pytest.raises(DataError, match=r"CelebA-HQ-attribute\.txt line 5: attribute Male of 2\.jpg is "
                     "'0'; values must be 1 or -1"):
    mucac.read_mucac(root, image_size=8)


def test_attribute_file_structure_errors(root):
  path = root / "CelebA-HQ-attribute.txt"
  original = path.read_text()
  _rewrite(path, 2, " ".join(a for a in fixtures.CELEBA_ATTRIBUTES if a != "Smiling"))
  with pytest.raises(DataError, match=r"line 2: attributes \['Smiling'\] not found"):
    mucac.read_mucac(root, image_size=8)
  path.write_text(original)
  _rewrite(path, 4, "1.jpg 1 -1 1")
  with pytest.raises(DataError, match=r"CelebA-HQ-attribute\.txt line 4: 4 fields.*truncated"):
    mucac.read_mucac(root, image_size=8)
  path.write_text(original)
  _rewrite(path, 1, "15")
  with pytest.raises(DataError, match="line 1 declares 15 images but the file lists 14"):
    mucac.read_mucac(root, image_size=8)


def test_identity_file_errors(root):
  path = root / "CelebA-HQ-identity.txt"
  original = path.read_text()
  _rewrite(path, 3, "2.jpg two")
  with pytest.raises(DataError, match=r"CelebA-HQ-identity\.txt line 3: .*'2\.jpg two'"):
    mucac.read_mucac(root, image_size=8)
  path.write_text(original + "99.jpg 7\n")
  with pytest.raises(DataError, match=r"CelebA-HQ-identity\.txt line 15: '99\.jpg' has no row in "
                     r"CelebA-HQ-attribute\.txt"):
    mucac.read_mucac(root, image_size=8)
  path.write_text(original + "0.jpg 7\n")
  with pytest.raises(DataError, match=r"line 15: '0\.jpg' is already listed on line 1"):
    mucac.read_mucac(root, image_size=8)


def test_missing_and_truncated_images(root):
  (root / "CelebA-HQ-img" / "4.jpg").unlink()
  with pytest.raises(DataError, match=r"CelebA-HQ-identity\.txt line 5: image '4\.jpg' not found"):
    mucac.read_mucac(root, image_size=8)
  fixtures.write_image(root / "CelebA-HQ-img" / "4.jpg", (64, 64))
  data = (root / "CelebA-HQ-img" / "4.jpg").read_bytes()
  (root / "CelebA-HQ-img" / "4.jpg").write_bytes(data[:-300])
  with pytest.raises(DataError, match=r"CelebA-HQ-identity\.txt line 5: .*4\.jpg: unreadable"):
    mucac.read_mucac(root, image_size=8)


def test_attribute_rows_without_identity_are_counted(root):
  path = root / "CelebA-HQ-identity.txt"
  path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
  ds = mucac.read_mucac(root, image_size=8)
  assert len(ds.examples) == 13
  assert ds.manifest.meta["attribute_rows_without_identity"] == 1
