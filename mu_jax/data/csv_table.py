"""Reader for any labelled face data described by one CSV table.

Layout::

  DIR/labels.csv          image_path,identity,label[,split]      (one row per image)
  DIR/<image_path>        the images, paths relative to the CSV's folder (JPEG, PNG, ...)

Columns are found by name (defaults ``image_path`` and ``identity``; others can be named). Every
other column except ``split`` is a label column, or only those given as ``label_columns``:

* one label column: a multi-class task; each value is a class index 0..C-1 (C = ``num_classes``, or
  the largest index + 1);
* several label columns: a multi-label task; each value is 0 or 1 and the column names are the
  attribute names (e.g. CelebA's ``Male,Smiling,Young``).

An example id is the image path as the CSV writes it (``/``-separated); a person is the
``identity`` value. Which split a row belongs to:

* a ``split`` column, if the CSV has one: ``train``, ``test`` or ``unseen`` per row (a person must
  stay in one split: a person in two is refused, naming both rows);
* otherwise a seeded split of whole persons: ``test_fraction`` and ``unseen_fraction`` of the
  persons (at least one each), drawn with ``split_seed``; the rest is train.

The forget set is chosen from train as for MUFAC (:mod:`mu_jax.data.mufac`): whole persons
(``forget_mode="identity"``, :func:`mu_jax.data.splits.forget_identities`) or the first
``paper_forget_rows`` train rows in CSV order (``forget_mode="paper"``, the MUFAC reference's
protocol; a person cut in two is recorded in ``manifest.allowed_overlaps`` and reported, never
hidden). Image hashes go into the manifest, so byte-identical images across splits are reported by
:meth:`mu_jax.data.splits.SplitManifest.check`.

Every bad input (missing CSV or image, missing column, bad label, empty identity, repeated image,
unknown split) raises :class:`mu_jax.data.splits.DataError` naming the file and line.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import posixpath
from typing import Any, Callable, Sequence

import numpy as np

from mu_jax.data import images as images_lib
from mu_jax.data import splits
from mu_jax.data.splits import DataError, Examples, FaceDataset, IdentityLeakError, SplitManifest

SPLIT_COLUMN = "split"
SOURCE_SPLITS = ("train", "test", "unseen")
FORGET_MODES = ("identity", "paper")
TASKS = ("multiclass", "multilabel")


@dataclasses.dataclass(frozen=True)
class Table:
  """The parsed CSV.

  Attributes:
    path: the CSV file.
    lines: per row, its 1-based line number (the header is line 1).
    image_paths: per row, the image path as written ('/'-separated, relative to the CSV's folder).
    identities: per row, the person.
    labels: int32 [N] class indices (multiclass) or [N, A] of 0/1 (multilabel).
    label_columns: the label columns, in the order of ``labels``' last axis.
    task: "multiclass" or "multilabel".
    splits: per row, "train"/"test"/"unseen" from the split column, or None without one.
  """

  path: str
  lines: list[int]
  image_paths: list[str]
  identities: list[str]
  labels: np.ndarray
  label_columns: tuple[str, ...]
  task: str
  splits: list[str] | None

  def where(self, i: int) -> str:
    return f"{self.path} line {self.lines[i]}"


def _image_path(value: str, where: str) -> str:
  path = value.replace("\\", "/")
  if path.startswith("/") or (len(path) > 1 and path[1] == ":"):
    raise DataError(f"{where}: image path {value!r} is absolute; write it relative to the CSV's folder")
  normal = posixpath.normpath(path)
  if normal in (".", "..") or normal.startswith("../"):
    raise DataError(f"{where}: image path {value!r} leaves the CSV's folder")
  return normal


def _class_index(value: str, column: str, where: str) -> int:
  if not (value.isascii() and value.isdigit()):
    raise DataError(f"{where}: {column} {value!r} is not a class index (an integer 0, 1, 2, ...)")
  return int(value)


@dataclasses.dataclass(frozen=True)
class CsvRows:
  """A CSV file's checked header and its data rows (:func:`read_rows`).

  Attributes:
    header: the column names, stripped.
    columns: {column the reader uses: its index}, in the order the reader named them.
    rows: per data row, (1-based line number, fields); blank lines are not rows.
  """

  header: list[str]
  columns: dict[str, int]
  rows: list[tuple[int, list[str]]]


def read_rows(path: str, columns: Callable[[list[str]], Sequence[str]], *, what: str,
              expected: str) -> CsvRows:
  """Reads a CSV file whose header must name the columns a reader uses, each once.

  The one header and row check of mu_jax's CSV readers (this module's tables, MUFAC's CSVs).

  Args:
    path: the CSV file.
    columns: given the header, the columns the reader uses (it may raise DataError itself).
    what: the file's kind in messages ("CSV file", "MUFAC CSV").
    expected: what a good header holds, for the messages about an empty file or a missing column.

  Returns:
    The header, the used columns' indices and every data row.

  Raises:
    DataError: the file is missing, not UTF-8 or not CSV, is empty, lacks a used column, names a
      used column more than once, or has a row with another number of fields than the header
      (messages name the file, the column or the line).
  """
  try:
    # utf-8-sig: a CSV saved by Excel starts with a byte-order mark that would corrupt the header.
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.reader(f)
      try:
        header = [h.strip() for h in next(reader)]
      except StopIteration:
        raise DataError(f"{path}: empty file; expected a header with {expected}") from None
      used = list(dict.fromkeys(columns(header)))
      missing = [c for c in used if c not in header]
      if missing:
        raise DataError(f"{path}: header lacks columns {missing}; found columns {header}; "
                        f"expected {expected}")
      repeated = [c for c in used if header.count(c) > 1]
      if repeated:
        raise DataError(f"{path}: header names columns {repeated} more than once: {header}")
      rows = []
      for fields in reader:
        if not any(x.strip() for x in fields):
          continue
        if len(fields) != len(header):
          raise DataError(f"{path} line {reader.line_num}: {len(fields)} fields but the header "
                          f"has {len(header)} ({header}); the row is truncated or malformed: "
                          f"{fields}")
        rows.append((reader.line_num, fields))
  except FileNotFoundError:
    raise DataError(f"{path}: {what} not found") from None
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not UTF-8 text ({e})") from None
  except csv.Error as e:
    raise DataError(f"{path}: malformed CSV ({e})") from None
  return CsvRows(header, {c: header.index(c) for c in used}, rows)


def read_table(path: str | os.PathLike[str], *, image_column: str = "image_path",
               identity_column: str = "identity", label_columns: Sequence[str] | None = None,
               task: str | None = None, num_classes: int | None = None) -> Table:
  """Parses and validates the CSV (no image is opened).

  Args:
    path: the CSV file.
    image_column: the column of image paths.
    identity_column: the column of persons.
    label_columns: the label columns; None takes every other column except ``split``.
    task: "multiclass" or "multilabel"; None: multiclass for one label column, else multilabel.
    num_classes: multiclass: the number of classes (labels must be below it); None: largest + 1.

  Returns:
    The table, rows in file order (blank lines are not rows).

  Raises:
    DataError: the file is missing, empty or not UTF-8; a column is missing or repeated (a column
      the table does not use may repeat); a row is malformed, has an empty identity or image path,
      repeats an image, has a bad label or an unknown split (messages name the file and line).
  """
  path = os.fspath(path)
  if task is not None and task not in TASKS:
    raise DataError(f"{path}: task must be one of {TASKS} or None, got {task!r}")
  expected = (f"{image_column}, {identity_column} and one label column (multi-class) or several "
              "0/1 columns (multi-label)")
  given = None if label_columns is None else tuple(label_columns)

  def used(header: list[str]) -> list[str]:
    labels = given if given is not None else tuple(
        h for h in header if h not in (image_column, identity_column, SPLIT_COLUMN))
    if not labels:
      raise DataError(f"{path}: header has no label column; found columns {header}; expected "
                      f"{expected}")
    return [image_column, identity_column, *labels, *[SPLIT_COLUMN] * (SPLIT_COLUMN in header)]

  table = read_rows(path, used, what="CSV file", expected=expected)
  col = table.columns
  has_split = SPLIT_COLUMN in col
  label_columns = tuple(c for c in col if c not in (image_column, identity_column, SPLIT_COLUMN))
  required = (image_column, identity_column, *label_columns)
  if task is None:
    task = "multiclass" if len(label_columns) == 1 else "multilabel"
  if task == "multiclass" and len(label_columns) != 1:
    raise DataError(f"{path}: a multi-class task has one label column, got {list(label_columns)}")
  lines, image_paths, identities, labels, split_of = [], [], [], [], []
  first_line: dict[str, int] = {}
  for line, fields in table.rows:
    where = f"{path} line {line}"
    values = {c: fields[i].strip() for c, i in col.items()}
    empty = [c for c in required if not values[c]]
    if empty:
      raise DataError(f"{where}: empty {empty}")
    image = _image_path(values[image_column], where)
    if image in first_line:
      raise DataError(f"{where}: image {image!r} is already listed on line {first_line[image]}")
    first_line[image] = line
    if task == "multiclass":
      label = _class_index(values[label_columns[0]], label_columns[0], where)
      if num_classes is not None and label >= num_classes:
        raise DataError(f"{where}: {label_columns[0]} {label} is not below num_classes={num_classes}")
      labels.append(label)
    else:
      bad = [c for c in label_columns if values[c] not in ("0", "1")]
      if bad:
        raise DataError(f"{where}: multi-label columns {bad} must be 0 or 1, got "
                        f"{[values[c] for c in bad]}")
      labels.append([int(values[c]) for c in label_columns])
    if has_split:
      s = values[SPLIT_COLUMN].lower()
      if s not in SOURCE_SPLITS:
        raise DataError(f"{where}: split {values[SPLIT_COLUMN]!r} is not one of {list(SOURCE_SPLITS)}")
      split_of.append(s)
    lines.append(line)
    image_paths.append(image)
    identities.append(values[identity_column])
  if not lines:
    raise DataError(f"{path}: no data rows")
  shape = (0, len(label_columns)) if task == "multilabel" else (0,)
  labels_array = np.asarray(labels, np.int32).reshape((-1,) + shape[1:])
  return Table(path, lines, image_paths, identities, labels_array, label_columns, task,
               split_of if has_split else None)


def _person_split(table: Table, test_fraction: float, unseen_fraction: float, seed: int) -> list[str]:
  """Per row, train/test/unseen: the split column, checked; or a seeded split of whole persons."""
  n = len(table.lines)
  if table.splits is not None:
    first: dict[str, int] = {}
    for i in range(n):
      j = first.setdefault(table.identities[i], i)
      if table.splits[j] != table.splits[i]:
        raise IdentityLeakError(
            f"{table.where(i)}: person {table.identities[i]!r} is in split {table.splits[i]!r} but "
            f"line {table.lines[j]} puts them in {table.splits[j]!r}; keep each person in one split")
    return list(table.splits)
  for name, f in (("test_fraction", test_fraction), ("unseen_fraction", unseen_fraction)):
    if not 0.0 < f < 1.0:
      raise DataError(f"{name} must be in (0, 1) when {table.path} has no {SPLIT_COLUMN!r} column, "
                      f"got {f}")
  persons = sorted(set(table.identities))
  n_test = max(1, int(round(test_fraction * len(persons))))
  n_unseen = max(1, int(round(unseen_fraction * len(persons))))
  if len(persons) - n_test - n_unseen < 2:
    raise DataError(f"{table.path}: {len(persons)} persons leave {len(persons) - n_test - n_unseen} "
                    f"for train after {n_test} test and {n_unseen} unseen; train needs at least 2 "
                    "(one to forget, one to retain)")
  order = np.random.default_rng(seed).permutation(len(persons))
  split_of_person = {persons[k]: ("test" if r < n_test else "unseen" if r < n_test + n_unseen
                                  else "train") for r, k in enumerate(order)}
  return [split_of_person[p] for p in table.identities]


def read_csv_table(path: str | os.PathLike[str], *, image_size: int | None = 128,
                   image_column: str = "image_path", identity_column: str = "identity",
                   label_columns: Sequence[str] | None = None, task: str | None = None,
                   num_classes: int | None = None, test_fraction: float = 0.1,
                   unseen_fraction: float = 0.1, split_seed: int = 0,
                   forget_mode: str = "identity", forget_count: int | None = None,
                   forget_fraction: float | None = None,
                   forget_identities: Sequence[str] | None = None, forget_seed: int = 0,
                   paper_forget_rows: int | None = None, workers: int | None = None) -> FaceDataset:
  """Reads a CSV-described face dataset into memory with its split manifest.

  Args:
    path: the CSV file; image paths are relative to its folder.
    image_size: side length after the shorter-side resize and center crop; None keeps the files'
      size (they must then all agree).
    image_column, identity_column, label_columns, task, num_classes: see :func:`read_table`.
    test_fraction, unseen_fraction, split_seed: the person split when there is no split column.
    forget_mode: "identity" (whole persons) or "paper" (the first ``paper_forget_rows`` train rows).
    forget_count, forget_fraction, forget_identities: identity mode: exactly one of them.
    forget_seed: identity mode: seed of the random choice of persons.
    paper_forget_rows: paper mode: leading train rows to forget.
    workers: decoding threads (default: number of CPUs, at most 16).

  Returns:
    The dataset (dataset name "csv"): uint8 images, the table's labels, persons and example ids.

  Raises:
    DataError: any bad input, naming the file and line, or a bad split or forget argument.
  """
  path = os.fspath(path)
  if forget_mode not in FORGET_MODES:
    raise DataError(f"forget_mode must be one of {FORGET_MODES}, got {forget_mode!r}")
  table = read_table(path, image_column=image_column, identity_column=identity_column,
                     label_columns=label_columns, task=task, num_classes=num_classes)
  split_of = _person_split(table, test_fraction, unseen_fraction, split_seed)
  for s in SOURCE_SPLITS:
    if s not in split_of:
      raise DataError(f"{path}: no row is in {s}; the benchmark needs train (to forget from), test "
                      "(accuracy) and unseen (the attack's non-members)")
  root = os.path.dirname(os.path.abspath(path))
  files = [os.path.join(root, *p.split("/")) for p in table.image_paths]
  for i, f in enumerate(files):
    if not os.path.isfile(f):
      raise DataError(f"{table.where(i)}: image {table.image_paths[i]!r} not found ({f})")
  if table.task == "multiclass":
    n_cls = num_classes if num_classes is not None else int(table.labels.max()) + 1
    names: tuple[str, ...] = ()
  else:
    n_cls, names = len(table.label_columns), table.label_columns
  # Train rows first in file order (paper mode's "first rows"), then test, then unseen.
  order = [i for s in SOURCE_SPLITS for i in range(len(files)) if split_of[i] == s]
  meta = {"source": path, "reader": "csv", "image_size": image_size, "task": table.task,
          "label_columns": list(table.label_columns),
          "split": SPLIT_COLUMN if table.splits is not None else
                   {"test_fraction": test_fraction, "unseen_fraction": unseen_fraction,
                    "split_seed": split_seed}}

  def build(pixels: np.ndarray) -> FaceDataset:
    examples = Examples(pixels, table.labels[order], np.asarray([table.identities[i] for i in order], str),
                        np.asarray([table.image_paths[i] for i in order], str))
    return _assemble(examples, [split_of[i] for i in order], n_cls, table.task, names, meta,
                     forget_mode=forget_mode, forget_count=forget_count,
                     forget_fraction=forget_fraction, forget_identities=forget_identities,
                     forget_seed=forget_seed, paper_forget_rows=paper_forget_rows)

  # A wrong forget argument should fail before any image is decoded: build once on 1x1 stand-in
  # pixels (same code, same checks), then for real.
  build(np.zeros((len(order), 1, 1, 3), np.uint8))
  return build(images_lib.load_images([files[i] for i in order], image_size, workers=workers,
                                      names=[f"{table.where(i)}: {files[i]}" for i in order]))


def _assemble(examples: Examples, sources: Sequence[str], num_classes: int, task: str,
              label_names: tuple[str, ...], meta: dict[str, Any], *, forget_mode: str,
              forget_count: int | None, forget_fraction: float | None,
              forget_identities: Sequence[str] | None, forget_seed: int,
              paper_forget_rows: int | None) -> FaceDataset:
  pairs = list(zip(examples.example_ids.tolist(), examples.identities.tolist()))
  by_split = {s: [p for p, src in zip(pairs, sources) if src == s] for s in SOURCE_SPLITS}
  train = by_split["train"]
  manifest = SplitManifest(
      "csv", {"train": train, "retain": list(train), "forget": [], "test": by_split["test"],
              "unseen": by_split["unseen"]},
      image_hashes={e: splits.image_hash(im) for e, im in zip(examples.example_ids.tolist(),
                                                               examples.images)},
      meta=dict(meta))
  base = FaceDataset(examples, manifest, num_classes=num_classes, task=task, label_names=label_names)
  return splits.choose_forget(
      base, forget_mode, count=forget_count, fraction=forget_fraction,
      identities=forget_identities, seed=forget_seed,
      rule=lambda ds: splits.first_rows_forget(ds, paper_forget_rows),
      rule_text="forgets the first paper_forget_rows train rows")
