"""Tests of the CSV reader on real PNG files written into a temporary folder."""

import numpy as np
import pytest

from mu_jax.data import csv_table
from mu_jax.data import loader
from mu_jax.data.splits import DataError, IdentityLeakError
from tests import fixtures


def _write(root, rows, header=("image_path", "identity", "age")):
  """Writes the images named in column 0 (8x8 random PNGs) and the CSV; returns (csv, pixels)."""
  pixels = {}
  for row in rows:
    if row[0] not in pixels:
      pixels[row[0]] = fixtures.write_image(root / row[0])
  text = "\n".join(",".join(map(str, r)) for r in (header, *rows)) + "\n"
  (root / "labels.csv").write_text(text)
  return root / "labels.csv", pixels


# Six persons, two images each; the split column keeps every person in one split.
SPLIT_ROWS = [
    ("img/p0_a.png", "p0", 0, "train"), ("img/p0_b.png", "p0", 1, "train"),
    ("img/p1_a.png", "p1", 2, "train"), ("img/p1_b.png", "p1", 2, "train"),
    ("img/p2_a.png", "p2", 3, "train"), ("img/p2_b.png", "p2", 0, "train"),
    ("img/p3_a.png", "p3", 1, "test"), ("img/p3_b.png", "p3", 1, "test"),
    ("img/p4_a.png", "p4", 4, "unseen"), ("img/p4_b.png", "p4", 2, "unseen"),
]


def test_split_column_multiclass_manifest_and_pixels(tmp_path):
  path, pixels = _write(tmp_path, SPLIT_ROWS, ("image_path", "identity", "age", "split"))
  ds = csv_table.read_csv_table(path, image_size=None, forget_identities=["p1"])
  m = ds.manifest
  assert (m.dataset, ds.task, ds.num_classes) == ("csv", "multiclass", 5)
  assert m.ids("test") == ["img/p3_a.png", "img/p3_b.png"]
  assert m.identities("unseen") == {"p4"}
  assert m.ids("forget") == ["img/p1_a.png", "img/p1_b.png"]
  assert m.identities("retain") == {"p0", "p2"}
  assert m.meta["split"] == "split" and m.meta["reader"] == "csv"
  report = m.check()
  assert report.ok and not report.duplicate_images
  train = ds.split("train")
  np.testing.assert_array_equal(train.labels, [0, 1, 2, 2, 3, 0])
  np.testing.assert_array_equal(train.images[0], pixels["img/p0_a.png"])  # PNG is lossless
  assert ds.split("unseen").labels.tolist() == [4, 2]


def test_seeded_person_split_multilabel(tmp_path):
  rows = [(f"faces/{p}_{k}.png", p, (i + k) % 2, i % 2, 1) for i, p in
          enumerate(f"q{j}" for j in range(10)) for k in range(2)]
  path, _ = _write(tmp_path, rows, ("image_path", "identity", "Male", "Smiling", "Young"))
  kw = dict(image_size=4, test_fraction=0.2, unseen_fraction=0.2, forget_count=2)
  ds = csv_table.read_csv_table(path, split_seed=3, **kw)
  m = ds.manifest
  assert ds.task == "multilabel" and ds.label_names == ("Male", "Smiling", "Young")
  assert ds.num_classes == 3 and ds.examples.labels.shape == (20, 3)
  assert [len(m.identities(s)) for s in ("test", "unseen", "forget", "retain")] == [2, 2, 2, 4]
  assert m.check().ok
  # Rows keep their labels through the split.
  by_id = {r[0]: r[2:] for r in rows}
  for e, label in zip(ds.examples.example_ids, ds.examples.labels):
    assert tuple(label) == by_id[e]
  # The split is a function of the seed.
  again = csv_table.read_csv_table(path, split_seed=3, **kw).manifest
  other = csv_table.read_csv_table(path, split_seed=4, **kw).manifest
  assert again.content_hash == m.content_hash
  held_out = lambda manifest: (manifest.identities("test"), manifest.identities("unseen"))
  assert held_out(other) != held_out(m)


def test_paper_mode_reports_the_cut_person_and_duplicates_are_found(tmp_path):
  path, _ = _write(tmp_path, SPLIT_ROWS, ("image_path", "identity", "age", "split"))
  ds = csv_table.read_csv_table(path, image_size=4, forget_mode="paper", paper_forget_rows=3)
  m = ds.manifest
  assert m.ids("forget") == ["img/p0_a.png", "img/p0_b.png", "img/p1_a.png"]
  assert m.allowed_overlaps == {"forget/retain": ["p1"]} and m.check().ok
  # A test image byte-identical to a train image is reported by the leak check.
  (tmp_path / "img" / "p3_a.png").write_bytes((tmp_path / "img" / "p2_a.png").read_bytes())
  m = csv_table.read_csv_table(path, image_size=4, forget_count=1).manifest
  assert m.check().duplicate_images


def test_loader_dispatches_csv(tmp_path):
  path, _ = _write(tmp_path, SPLIT_ROWS, ("image_path", "identity", "age", "split"))
  ds = loader.load_dataset({"name": "csv", "data_dir": str(path), "image_size": 4,
                            "forget": {"mode": "identity", "identities": ["p2"]}})
  assert ds.manifest.identities("forget") == {"p2"} and ds.examples.images.shape == (10, 4, 4, 3)


@pytest.mark.parametrize("edit,message", [
    (lambda rows: rows[:2] + [("img/p1_a.png", "", 2, "train")] + rows[3:],
     r"labels.csv line 4: empty \['identity'\]"),
    (lambda rows: rows[:4] + [("img/p2_a.png", "p2", "x", "train")] + rows[5:],
     r"labels.csv line 6: age 'x' is not a class index"),
    (lambda rows: rows[:4] + [("img/p2_a.png", "p2", "-1", "train")] + rows[5:],
     r"labels.csv line 6: age '-1' is not a class index"),
    (lambda rows: rows[:6] + [("img/p3_a.png", "p3", 1, "val")] + rows[7:],
     r"labels.csv line 8: split 'val' is not one of"),
    (lambda rows: rows[:6] + [("img/p3_a.png", "p0", 1, "test")] + rows[7:],
     r"labels.csv line 8: person 'p0' is in split 'test' but line 2 puts them in 'train'"),
    (lambda rows: rows + [("img/p0_a.png", "p0", 0, "train")],
     r"labels.csv line 12: image 'img/p0_a.png' is already listed on line 2"),
    (lambda rows: rows + [("/abs/x.png", "p0", 0, "train")], r"labels.csv line 12: .* is absolute"),
    (lambda rows: [r for r in rows if r[3] != "unseen"], r"labels.csv: no row is in unseen"),
])
def test_bad_rows_name_file_and_line(tmp_path, edit, message):
  header = ("image_path", "identity", "age", "split")
  path, _ = _write(tmp_path, SPLIT_ROWS, header)
  text = "\n".join(",".join(map(str, r)) for r in (header, *edit(list(SPLIT_ROWS))))
  path.write_text(text + "\n")
  with pytest.raises(DataError, match=message) as e:
    csv_table.read_csv_table(path, image_size=4, forget_count=1)
  if "person" in message:
    assert isinstance(e.value, IdentityLeakError)


def test_header_checks_name_the_file_and_the_column(tmp_path):
  path, _ = _write(tmp_path, SPLIT_ROWS, ("image_path", "identity", "age", "split"))
  path.write_text("image_path,identity,age,identity\n" + path.read_text().split("\n", 1)[1])
  with pytest.raises(DataError, match=r"labels.csv: header names columns \['identity'\] more than once"):
    csv_table.read_table(path)
  # A repeated column the table does not read is no obstacle.
  path.write_text("image_path,identity,age,split,note,note\n" + "\n".join(
      ",".join(map(str, r)) + ",x,y" for r in SPLIT_ROWS) + "\n")
  table = csv_table.read_table(path, label_columns=["age"])
  assert table.label_columns == ("age",) and table.splits[-1] == "unseen"
  path.write_text("image_path,identity\n")
  with pytest.raises(DataError, match=r"labels.csv: header has no label column; found columns "
                     r"\['image_path', 'identity'\]"):
    csv_table.read_table(path)
  path.write_text("")
  with pytest.raises(DataError, match="labels.csv: empty file; expected a header with image_path, "
                     "identity and one label column"):
    csv_table.read_table(path)


def test_missing_file_column_image_and_bad_multilabel(tmp_path):
  with pytest.raises(DataError, match="nope.csv: CSV file not found"):
    csv_table.read_csv_table(tmp_path / "nope.csv", forget_count=1)
  path, _ = _write(tmp_path, SPLIT_ROWS, ("image_path", "person", "age", "split"))
  with pytest.raises(DataError, match=r"labels.csv: header lacks columns \['identity'\]"):
    csv_table.read_csv_table(path, forget_count=1)
  ds = csv_table.read_csv_table(path, identity_column="person", image_size=4, forget_count=1)
  assert ds.manifest.identities("test") == {"p3"}
  (tmp_path / "img" / "p3_b.png").unlink()
  with pytest.raises(DataError, match=r"labels.csv line 9: image 'img/p3_b.png' not found"):
    csv_table.read_csv_table(path, identity_column="person", forget_count=1)
  (tmp_path / "img" / "p3_b.png").write_bytes(b"not a png")
  with pytest.raises(DataError, match=r"labels.csv line 9: .*p3_b.png: unreadable"):
    csv_table.read_csv_table(path, identity_column="person", image_size=4, forget_count=1)
  rows = [("a.png", "p0", 1, 2, "train")]
  path, _ = _write(tmp_path, rows, ("image_path", "identity", "Male", "Young", "split"))
  with pytest.raises(DataError, match=r"labels.csv line 2: multi-label columns \['Young'\] must be 0 or 1"):
    csv_table.read_csv_table(path, forget_count=1)
  with pytest.raises(DataError, match="labels.csv line 6: age 3 is not below num_classes=3"):
    csv_table.read_table(_write(tmp_path, SPLIT_ROWS, ("image_path", "identity", "age", "split"))[0],
                         num_classes=3)
  with pytest.raises(DataError, match="forget_mode must be one of"):
    csv_table.read_csv_table(path, forget_mode="range")
