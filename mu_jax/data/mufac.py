"""MUFAC reader: the published ``custom_korean_family_dataset_resolution_128`` folder, unchanged.

Layout (docs/datasets.md#mufac;
ndb796/MachineUnlearning@9813cd7:01_MUFAC/Machine_Unlearning_MUFAC_Base_Models.ipynb)::

  ROOT/custom_train_dataset.csv   ROOT/train_images/   -> D_train
  ROOT/custom_val_dataset.csv     ROOT/val_images/     -> D_test   (the reference uses val as test)
  ROOT/custom_test_dataset.csv    ROOT/test_images/    -> D_unseen
  ROOT/fixed_val_dataset/, ROOT/fixed_test_dataset/, ...  kinship leftovers, ignored

Each CSV has the columns ``family_id, person_id, age_class, image_path`` (found by name; extra
columns are allowed). ``image_path`` is a file name inside the split's folder, ``age_class`` a letter
'a'..'h' (8 age ranges, the classification target). A person is ``f"{family_id}_{person_id}"``; an
example id is ``f"{folder}/{image_path}"``.

Two ways to choose the forget set:

* ``forget_mode="paper"``: the first 1,500 rows of the train CSV, exactly as the reference
  notebooks (``image_age_list[:1500]``). Row 1,500 of the published CSV cuts person F0046_D in two,
  so this forget set shares a person with the retain set. The shared persons are written to
  ``manifest.allowed_overlaps["forget/retain"]`` and ``manifest.meta["paper_shared_identities"]``:
  the leak is reproduced on purpose and reported, never hidden.
* ``forget_mode="identity"``: whole persons (:func:`mu_jax.data.splits.forget_identities`), so no
  person is on both sides.

The parsing functions (:func:`read_csv`, :func:`parse_mufac`) and :func:`assemble` are shared with
the TFDS builder (:mod:`mu_jax.data.tfds_builders`), so both paths give the same manifest.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np

from mu_jax.data import csv_table
from mu_jax.data import images as images_lib
from mu_jax.data import splits
from mu_jax.data.splits import DataError, Examples, FaceDataset, SplitManifest

# Reference split name -> (CSV file, image folder).
LAYOUT = {
    "train": ("custom_train_dataset.csv", "train_images"),
    "test": ("custom_val_dataset.csv", "val_images"),
    "unseen": ("custom_test_dataset.csv", "test_images"),
}
COLUMNS = ("family_id", "person_id", "age_class", "image_path")
AGE_CLASSES = "abcdefgh"
AGE_RANGES = ("0-6", "7-12", "13-19", "20-30", "31-45", "46-55", "56-66", "67-80")
NUM_CLASSES = len(AGE_CLASSES)
PAPER_FORGET_ROWS = 1500
FORGET_MODES = ("paper", "identity")


@dataclasses.dataclass(frozen=True)
class MufacRow:
  """One data row of a MUFAC CSV.

  Attributes:
    csv_file: the CSV's file name (for messages).
    line: 1-based line number of the row in that file (the header is line 1).
    family_id: household id, e.g. "F0001".
    person_id: role in the household, e.g. "D".
    age_class: 0..7 (the letter 'a'..'h' of the CSV).
    image_path: file name inside ``folder``.
    folder: the split's image folder, e.g. "train_images".
  """

  csv_file: str
  line: int
  family_id: str
  person_id: str
  age_class: int
  image_path: str
  folder: str

  @property
  def identity(self) -> str:
    return f"{self.family_id}_{self.person_id}"

  @property
  def example_id(self) -> str:
    return f"{self.folder}/{self.image_path}"

  @property
  def where(self) -> str:
    return f"{self.csv_file} line {self.line}"


def read_csv(path: str | os.PathLike[str], folder: str) -> list[MufacRow]:
  """Parses one MUFAC CSV, validating the header and every row.

  Args:
    path: the CSV file.
    folder: the image folder its ``image_path`` values live in (recorded in each row).

  Returns:
    The data rows in file order (blank lines are not rows).

  Raises:
    DataError: the file is missing or not UTF-8, the header lacks a required column, a row has the
      wrong number of fields, an empty id, an unknown age class, an ``image_path`` that is not a
      plain file name, or repeats an image; messages name the file and line.
  """
  path = os.fspath(path)
  name = os.path.basename(path)
  table = csv_table.read_rows(path, lambda header: COLUMNS, what="MUFAC CSV",
                              expected=f"the columns {list(COLUMNS)}")
  rows: list[MufacRow] = []
  first_line: dict[str, int] = {}
  for line, fields in table.rows:
    values = {c: fields[i].strip() for c, i in table.columns.items()}
    empty = [c for c in ("family_id", "person_id", "image_path") if not values[c]]
    if empty:
      raise DataError(f"{path} line {line}: empty {empty}")
    letter = values["age_class"]
    if len(letter) != 1 or letter not in AGE_CLASSES:
      raise DataError(f"{path} line {line}: unknown age_class {letter!r}; expected one of "
                      f"{list(AGE_CLASSES)}")
    image_path = values["image_path"]
    if os.path.basename(image_path) != image_path or image_path in (".", ".."):
      raise DataError(f"{path} line {line}: image_path {image_path!r} must be a file name "
                      f"inside {folder}/")
    if image_path in first_line:
      raise DataError(f"{path} line {line}: image {image_path!r} is already listed on line "
                      f"{first_line[image_path]}")
    first_line[image_path] = line
    rows.append(MufacRow(name, line, values["family_id"], values["person_id"],
                         AGE_CLASSES.index(letter), image_path, folder))
  return rows


def parse_mufac(root: str | os.PathLike[str], *, check_files: bool = True) -> dict[str, list[MufacRow]]:
  """Reads the three CSVs of a MUFAC folder.

  Args:
    root: the unzipped ``custom_korean_family_dataset_resolution_128`` folder.
    check_files: also check that every row's image exists (one directory listing per split).

  Returns:
    {"train": rows, "test": rows, "unseen": rows} (train, val and test CSV), each in file order.

  Raises:
    DataError: a CSV or image folder is missing, a row is bad (see :func:`read_csv`), or a row names
      an image that is not in its folder (the message names the CSV, the line and the file).
  """
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise DataError(f"{root}: MUFAC root folder not found")
  out = {}
  for split, (csv_name, folder) in LAYOUT.items():
    rows = read_csv(os.path.join(root, csv_name), folder)
    if check_files:
      folder_path = os.path.join(root, folder)
      try:
        present = set(os.listdir(folder_path))
      except FileNotFoundError:
        raise DataError(f"{folder_path}: image folder of {csv_name} not found") from None
      for row in rows:
        if row.image_path not in present:
          raise DataError(f"{row.where}: image {row.image_path!r} not found in {folder_path}")
    out[split] = rows
  if not out["train"]:
    raise DataError(f"{os.path.join(root, LAYOUT['train'][0])}: no data rows")
  return out


def assemble(examples: Examples, sources: Sequence[str], *, forget_mode: str = "paper",
             forget_count: int | None = None, forget_fraction: float | None = None,
             forget_identities: Sequence[str] | None = None, forget_seed: int = 0,
             paper_forget_rows: int = PAPER_FORGET_ROWS,
             meta: Mapping[str, Any] | None = None) -> FaceDataset:
  """Builds the MUFAC dataset and its manifest from decoded examples.

  Args:
    examples: every example, train CSV rows first in file order, then val, then test rows.
    sources: per example, the reference split it came from: "train", "test" or "unseen".
    forget_mode: "paper" (first ``paper_forget_rows`` train rows) or "identity" (whole persons).
    forget_count: identity mode: number of persons to forget.
    forget_fraction: identity mode: fraction of train persons to forget.
    forget_identities: identity mode: the persons to forget ("F0001_D", ...).
    forget_seed: identity mode: seed of the random choice of persons.
    paper_forget_rows: paper mode: how many leading train rows to forget.
    meta: facts to record in the manifest (source, image size, ...).

  Returns:
    The dataset (8 age classes, multiclass) with train split into forget and retain.

  Raises:
    DataError: bad forget arguments (named), or a forget identity not in train.
  """
  sources = np.asarray(sources)
  if len(sources) != len(examples):
    raise ValueError(f"sources has {len(sources)} entries for {len(examples)} examples")
  if forget_mode not in FORGET_MODES:
    raise DataError(f"forget_mode must be one of {FORGET_MODES}, got {forget_mode!r}")
  by_split = {}
  for s in LAYOUT:
    index = np.flatnonzero(sources == s)
    by_split[s] = list(zip(examples.example_ids[index].tolist(), examples.identities[index].tolist()))
  train = by_split["train"]
  manifest = SplitManifest(
      "mufac",
      {"train": train, "retain": list(train), "forget": [], "test": by_split["test"],
       "unseen": by_split["unseen"]},
      image_hashes={e: splits.image_hash(im) for e, im in zip(examples.example_ids.tolist(),
                                                               examples.images)},
      meta=dict(meta or {}))
  base = FaceDataset(examples, manifest, num_classes=NUM_CLASSES, task="multiclass",
                     label_names=AGE_RANGES)
  return splits.choose_forget(
      base, forget_mode, count=forget_count, fraction=forget_fraction,
      identities=forget_identities, seed=forget_seed,
      rule=lambda ds: splits.first_rows_forget(ds, paper_forget_rows),
      rule_text="forgets the first paper_forget_rows train rows")


def read_mufac(root: str | os.PathLike[str], *, image_size: int | None = 128,
               forget_mode: str = "paper", forget_count: int | None = None,
               forget_fraction: float | None = None,
               forget_identities: Sequence[str] | None = None, forget_seed: int = 0,
               paper_forget_rows: int = PAPER_FORGET_ROWS,
               workers: int | None = None) -> FaceDataset:
  """Reads a MUFAC folder into memory with its split manifest.

  Args:
    root: the unzipped ``custom_korean_family_dataset_resolution_128`` folder.
    image_size: side length after the reference ``Resize`` (+ center crop); None keeps the files'
      size (they must then all agree).
    forget_mode: "paper" or "identity" (see the module docstring).
    forget_count: identity mode: number of persons to forget.
    forget_fraction: identity mode: fraction of train persons to forget.
    forget_identities: identity mode: the persons to forget.
    forget_seed: identity mode: seed of the random choice.
    paper_forget_rows: paper mode: leading train rows to forget (1,500 in the reference).
    workers: decoding threads (default: number of CPUs, at most 16).

  Returns:
    The dataset: uint8 images, int32 age classes 0..7, persons "F0001_D", ids "train_images/x.jpg".

  Raises:
    DataError: any bad input (file, line, identity or argument named in the message).
  """
  root = os.fspath(root)
  parsed = parse_mufac(root)
  rows = [r for s in LAYOUT for r in parsed[s]]
  sources = [s for s in LAYOUT for _ in parsed[s]]
  labels = np.asarray([r.age_class for r in rows], np.int32)
  identities = np.asarray([r.identity for r in rows], dtype=str)
  example_ids = np.asarray([r.example_id for r in rows], dtype=str)

  def build(pixels: np.ndarray) -> FaceDataset:
    return assemble(Examples(pixels, labels, identities, example_ids), sources,
                    forget_mode=forget_mode, forget_count=forget_count,
                    forget_fraction=forget_fraction, forget_identities=forget_identities,
                    forget_seed=forget_seed, paper_forget_rows=paper_forget_rows,
                    meta={"source": root, "reader": "mufac", "image_size": image_size})

  # A wrong forget argument should fail before thousands of images are decoded: build once on
  # 1x1 stand-in pixels (same code, same checks), then for real.
  build(np.zeros((len(rows), 1, 1, 3), np.uint8))
  paths = [os.path.join(root, r.folder, r.image_path) for r in rows]
  return build(images_lib.load_images(paths, image_size, workers=workers,
                                      names=[f"{r.where}: {p}" for r, p in zip(rows, paths)]))


def count_mufac(root: str | os.PathLike[str], *,
                paper_forget_rows: int = PAPER_FORGET_ROWS) -> dict[str, Any]:
  """Summarizes the CSVs only (no image is opened): rows, persons, families, age classes.

  Args:
    root: the MUFAC folder.
    paper_forget_rows: the paper forget size whose person overlap is reported.

  Returns:
    {"root", "splits": {split: {"csv", "rows", "identities", "families", "age_classes"}},
    "paper": {"forget_rows", "forget_identities", "shared_identities"}} (JSON-ready).
  """
  parsed = parse_mufac(root, check_files=False)
  out: dict[str, Any] = {"root": os.fspath(root), "splits": {}}
  for split, rows in parsed.items():
    hist = np.bincount([r.age_class for r in rows], minlength=NUM_CLASSES)
    out["splits"][split] = {
        "csv": LAYOUT[split][0], "rows": len(rows),
        "identities": len({r.identity for r in rows}),
        "families": len({r.family_id for r in rows}),
        "age_classes": {f"{c} ({a})": int(n) for c, a, n in zip(AGE_CLASSES, AGE_RANGES, hist)},
    }
  train = parsed["train"]
  head = {r.identity for r in train[:paper_forget_rows]}
  tail = {r.identity for r in train[paper_forget_rows:]}
  out["paper"] = {"forget_rows": min(paper_forget_rows, len(train)), "forget_identities": len(head),
                  "shared_identities": sorted(head & tail)}
  return out
