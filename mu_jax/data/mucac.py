"""MUCAC reader: CelebA-HQ faces with identity numbers and three binary attributes.

Layout (docs/datasets.md#mucac; the ``CelebAMask-HQ`` folder of the reference)::

  ROOT/CelebA-HQ-identity.txt    lines "file_name identity", e.g. "0.jpg 2880"
  ROOT/CelebA-HQ-attribute.txt   line 1: the number of images; line 2: the 40 attribute names;
                                 then "file_name" followed by 40 values of 1 or -1
  ROOT/CelebA-HQ-img/            the images (file names as listed above)

The identity file of the reference has no header. A first line that does not parse as
``name integer`` is accepted only when it is a column-name header from
:data:`IDENTITY_HEADER_NAMES` (e.g. "file_name identity"); anything else is an error, so a shifted or
foreign file is never half-read. Attribute columns are found by name, so the reference's columns 21
(Male), 32 (Smiling) and 40 (Young) are read whatever the order; -1 becomes 0 (1 = male / smiling /
young). Images listed in the attribute file but not in the identity file belong to no split; their
count is recorded in ``manifest.meta["attribute_rows_without_identity"]``.

Splits by identity number, as the reference (``train_index=190, retain_index=1250,
unseen_index=4855``): test = id < ``test_max``; forget = ``test_max`` <= id < ``forget_max``; retain =
``forget_max`` <= id < ``retain_max``; train = forget + retain; unseen = id >= ``retain_max``. With
``forget_mode="identity"`` train is the same range but forget is a chosen set of whole persons.

Tasks: ``"multilabel"`` (labels int32 [N, 3] of 0/1 for Male, Smiling, Young; sigmoid + BCE) or
``"binary:Male"``, ``"binary:Smiling"``, ``"binary:Young"`` (one 2-class softmax task, labels [N]).

:func:`parse_mucac` and :func:`assemble` are shared with :mod:`mu_jax.data.tfds_builders`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import numpy as np

from mu_jax.data import images as images_lib
from mu_jax.data import splits
from mu_jax.data.splits import DataError, Examples, FaceDataset, SplitManifest

IDENTITY_FILE = "CelebA-HQ-identity.txt"
ATTRIBUTE_FILE = "CelebA-HQ-attribute.txt"
IMAGE_DIR = "CelebA-HQ-img"
ATTRIBUTES = ("Male", "Smiling", "Young")
TASKS = ("multilabel",) + tuple(f"binary:{a}" for a in ATTRIBUTES)
FORGET_MODES = ("range", "identity")
# Reference boundaries: ndb796/MachineUnlearning@9813cd7:02_MUCAC/multi_label_classification/
# Machine_Unlearning_MUCAC_Multi_Label_Base_Models.ipynb cells 10-15 (docs/datasets.md#mucac).
TEST_MAX, FORGET_MAX, RETAIN_MAX = 190, 1250, 4855
# Accepted header of the identity file: (first column names, second column names), lower case.
IDENTITY_HEADER_NAMES = (
    ("file_name", "filename", "file", "image", "image_id", "image_name", "img", "idx"),
    ("identity", "identity_id", "id", "person_id", "label"),
)


@dataclasses.dataclass(frozen=True)
class MucacRecord:
  """One image of the identity file, joined with its attributes.

  Attributes:
    file_name: the image file inside ``CelebA-HQ-img/``.
    identity: the CelebA identity number.
    attributes: (Male, Smiling, Young) as 0/1.
    line: 1-based line of the image in the identity file.
  """

  file_name: str
  identity: int
  attributes: tuple[int, int, int]
  line: int

  @property
  def example_id(self) -> str:
    return f"{IMAGE_DIR}/{self.file_name}"


def _lines(path: str) -> list[str]:
  try:
    with open(path, encoding="utf-8-sig") as f:
      return f.read().splitlines()
  except FileNotFoundError:
    raise DataError(f"{path}: file not found") from None
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not UTF-8 text ({e})") from None


def read_identity_file(path: str | os.PathLike[str]) -> list[tuple[str, int, int]]:
  """Parses ``CelebA-HQ-identity.txt``.

  Args:
    path: the identity file.

  Returns:
    [(file_name, identity, line)] in file order; line is 1-based.

  Raises:
    DataError: a line is not ``name integer`` (a known header on line 1 excepted), or a file name
      repeats; messages name the file and line.
  """
  path = os.fspath(path)
  out: list[tuple[str, int, int]] = []
  first: dict[str, int] = {}
  for line, text in enumerate(_lines(path), start=1):
    fields = text.split()
    if not fields:
      continue
    if len(fields) == 2 and _is_int(fields[1]):
      name, identity = fields[0], int(fields[1])
    elif (line == 1 and len(fields) == 2 and fields[0].lower() in IDENTITY_HEADER_NAMES[0]
          and fields[1].lower() in IDENTITY_HEADER_NAMES[1]):
      continue
    else:
      hint = " (a header must be two column names like 'file_name identity')" if line == 1 else ""
      raise DataError(f"{path} line {line}: expected 'file_name identity' with an integer "
                      f"identity, found {text!r}{hint}")
    if name in first:
      raise DataError(f"{path} line {line}: {name!r} is already listed on line {first[name]}")
    first[name] = line
    out.append((name, identity, line))
  if not out:
    raise DataError(f"{path}: no 'file_name identity' lines")
  return out


def read_attribute_file(path: str | os.PathLike[str], attributes: Sequence[str] = ATTRIBUTES
                        ) -> tuple[list[str], dict[str, tuple[tuple[int, ...], int]]]:
  """Parses ``CelebA-HQ-attribute.txt`` (CelebA's ``list_attr`` format).

  Args:
    path: the attribute file.
    attributes: names of the columns to return, in this order.

  Returns:
    (all attribute names of line 2, {file_name: (values of ``attributes`` as 0/1, line)}).

  Raises:
    DataError: line 1 is not the image count or disagrees with the rows, a wanted attribute is
      missing from line 2, a row has the wrong number of fields, a value is not 1 or -1, or a file
      name repeats; messages name the file, line and column.
  """
  path = os.fspath(path)
  lines = _lines(path)
  if len(lines) < 2:
    raise DataError(f"{path}: needs the image count on line 1 and the attribute names on line 2")
  if not _is_int(lines[0].strip()):
    raise DataError(f"{path} line 1: expected the number of images, found {lines[0]!r}")
  declared = int(lines[0])
  names = lines[1].split()
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise DataError(f"{path} line 2: attribute names {repeated} appear more than once")
  missing = [a for a in attributes if a not in names]
  if missing:
    raise DataError(f"{path} line 2: attributes {missing} not found; attribute names are {names}")
  cols = [names.index(a) for a in attributes]
  out: dict[str, tuple[tuple[int, ...], int]] = {}
  for line, text in enumerate(lines[2:], start=3):
    fields = text.split()
    if not fields:
      continue
    if len(fields) != len(names) + 1:
      raise DataError(f"{path} line {line}: {len(fields)} fields, expected the file name and "
                      f"{len(names)} attribute values; the row is truncated or malformed")
    values = fields[1:]
    for j, v in enumerate(values):
      if v not in ("1", "-1"):
        raise DataError(f"{path} line {line}: attribute {names[j]} of {fields[0]} is {v!r}; "
                        "values must be 1 or -1")
    if fields[0] in out:
      raise DataError(f"{path} line {line}: {fields[0]!r} is already listed on line "
                      f"{out[fields[0]][1]}")
    out[fields[0]] = (tuple(1 if values[c] == "1" else 0 for c in cols), line)
  if len(out) != declared:
    raise DataError(f"{path}: line 1 declares {declared} images but the file lists {len(out)}; "
                    "it is truncated or the count is wrong")
  return names, out


def parse_mucac(root: str | os.PathLike[str], *, check_files: bool = True
                ) -> tuple[list[MucacRecord], dict[str, Any]]:
  """Joins the identity and attribute files of a CelebA-HQ folder.

  Args:
    root: the folder holding the two text files and ``CelebA-HQ-img/``.
    check_files: also check that every listed image exists (one directory listing).

  Returns:
    (records in identity-file order, facts for the manifest meta).

  Raises:
    DataError: a file is bad (see the two readers), or an image of the identity file is missing from
      the attribute file or the image folder (the message names the identity file line).
  """
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise DataError(f"{root}: MUCAC (CelebA-HQ) root folder not found")
  id_path = os.path.join(root, IDENTITY_FILE)
  identities = read_identity_file(id_path)
  _, attrs = read_attribute_file(os.path.join(root, ATTRIBUTE_FILE))
  present = None
  if check_files:
    image_dir = os.path.join(root, IMAGE_DIR)
    try:
      present = set(os.listdir(image_dir))
    except FileNotFoundError:
      raise DataError(f"{image_dir}: image folder not found") from None
  records = []
  for name, identity, line in identities:
    if name not in attrs:
      raise DataError(f"{id_path} line {line}: {name!r} has no row in {ATTRIBUTE_FILE}")
    if present is not None and name not in present:
      raise DataError(f"{id_path} line {line}: image {name!r} not found in "
                      f"{os.path.join(root, IMAGE_DIR)}")
    records.append(MucacRecord(name, identity, attrs[name][0], line))  # type: ignore[arg-type]
  listed = {r.file_name for r in records}
  meta = {"images": len(records), "identities": len({r.identity for r in records}),
          "attribute_rows_without_identity": sum(1 for n in attrs if n not in listed)}
  return records, meta


def _is_int(text: str) -> bool:
  try:
    int(text)
  except ValueError:
    return False
  return True


def task_labels(attributes: np.ndarray, task: str) -> tuple[np.ndarray, int, tuple[str, ...]]:
  """Turns [N, 3] attribute bits into the labels of ``task``.

  Returns:
    (labels, num_classes, label_names).
  """
  if task == "multilabel":
    return attributes.astype(np.int32), len(ATTRIBUTES), ATTRIBUTES
  if task in TASKS:
    name = task.split(":", 1)[1]
    return attributes[:, ATTRIBUTES.index(name)].astype(np.int32), 2, (f"not {name}", name)
  raise DataError(f"unknown MUCAC task {task!r}; tasks are {TASKS}")


def assemble(examples: Examples, *, task: str = "multilabel", test_max: int = TEST_MAX,
             forget_max: int = FORGET_MAX, retain_max: int = RETAIN_MAX,
             forget_mode: str = "range", forget_count: int | None = None,
             forget_fraction: float | None = None, forget_identities: Sequence[str] | None = None,
             forget_seed: int = 0, meta: Mapping[str, Any] | None = None) -> FaceDataset:
  """Builds the MUCAC dataset and manifest from decoded examples.

  Args:
    examples: every image in identity-file order; labels int [N, 3] of 0/1 (Male, Smiling, Young),
      identities the identity numbers as strings.
    task: "multilabel" or "binary:<attribute>".
    test_max: identities below it form the test split.
    forget_max: range mode: identities in [test_max, forget_max) are forgotten.
    retain_max: identities in [test_max, retain_max) are train; the rest unseen.
    forget_mode: "range" (the reference) or "identity" (chosen whole persons of train).
    forget_count: identity mode: number of persons to forget.
    forget_fraction: identity mode: fraction of train persons to forget.
    forget_identities: identity mode: the persons (identity numbers) to forget.
    forget_seed: identity mode: seed of the random choice.
    meta: facts to record in the manifest.

  Returns:
    The dataset with train split into forget and retain.

  Raises:
    DataError: bad boundaries, task or forget arguments (named), an empty split, or a forget
      identity not in train.
  """
  labels, num_classes, label_names = task_labels(np.asarray(examples.labels), task)
  if not test_max <= forget_max <= retain_max:
    raise DataError(f"identity boundaries must satisfy test_max <= forget_max <= retain_max, got "
                    f"{test_max}, {forget_max}, {retain_max}")
  if forget_mode not in FORGET_MODES:
    raise DataError(f"forget_mode must be one of {FORGET_MODES}, got {forget_mode!r}")
  try:
    numbers = np.asarray([int(i) for i in examples.identities.tolist()], np.int64)
  except ValueError as e:
    raise DataError(f"MUCAC identities must be integers: {e}") from None
  examples = dataclasses.replace(examples, labels=labels)
  pairs = list(zip(examples.example_ids.tolist(), examples.identities.tolist()))

  def select(mask: np.ndarray) -> list[tuple[str, str]]:
    return [pairs[i] for i in np.flatnonzero(mask)]

  train = select((numbers >= test_max) & (numbers < retain_max))
  if not train:
    raise DataError(f"no image has an identity in the train range [{test_max}, {retain_max})")
  manifest = SplitManifest(
      "mucac",
      {"train": train, "retain": list(train), "forget": [],
       "test": select(numbers < test_max), "unseen": select(numbers >= retain_max)},
      image_hashes={e: splits.image_hash(im) for e, im in zip(examples.example_ids.tolist(),
                                                               examples.images)},
      meta={**(meta or {}), "task": task, "test_max": test_max, "forget_max": forget_max,
            "retain_max": retain_max})
  base = FaceDataset(examples, manifest, num_classes=num_classes,
                     task="multilabel" if task == "multilabel" else "multiclass",
                     label_names=label_names)
  def forget_range(ds: FaceDataset) -> FaceDataset:
    forget = [e for e, i in train if int(i) < forget_max]
    if not forget:
      raise DataError(f"no train image has an identity in the forget range [{test_max}, {forget_max})")
    if len(forget) == len(train):
      raise DataError(f"no train image has an identity in the retain range [{forget_max}, "
                      f"{retain_max}): nothing would be retained")
    return splits.with_forget(ds, forget, {"forget_mode": "range"})

  names = None if forget_identities is None else [str(i) for i in forget_identities]
  return splits.choose_forget(base, forget_mode, count=forget_count, fraction=forget_fraction,
                              identities=names, seed=forget_seed, rule=forget_range,
                              rule_text="forgets identities in [test_max, forget_max)")


def read_mucac(root: str | os.PathLike[str], *, image_size: int | None = 128,
               task: str = "multilabel", test_max: int = TEST_MAX, forget_max: int = FORGET_MAX,
               retain_max: int = RETAIN_MAX, forget_mode: str = "range",
               forget_count: int | None = None, forget_fraction: float | None = None,
               forget_identities: Sequence[str] | None = None, forget_seed: int = 0,
               workers: int | None = None) -> FaceDataset:
  """Reads a CelebA-HQ folder into memory with the MUCAC split manifest.

  Args:
    root: the folder with ``CelebA-HQ-identity.txt``, ``CelebA-HQ-attribute.txt`` and
      ``CelebA-HQ-img/``.
    image_size: side length after the reference ``Resize`` (+ center crop); None keeps the size.
    task: "multilabel" or "binary:Male" / "binary:Smiling" / "binary:Young".
    test_max: identities below it are test (190 in the reference).
    forget_max: range mode: identities in [test_max, forget_max) are forgotten (1250).
    retain_max: identities at or above it are unseen (4855).
    forget_mode: "range" or "identity".
    forget_count: identity mode: number of persons to forget.
    forget_fraction: identity mode: fraction of train persons to forget.
    forget_identities: identity mode: identity numbers to forget.
    forget_seed: identity mode: seed of the random choice.
    workers: decoding threads (default: number of CPUs, at most 16).

  Returns:
    The dataset; example ids "CelebA-HQ-img/<file>", identities the numbers as strings.

  Raises:
    DataError: any bad input (file, line, identity or argument named in the message).
  """
  root = os.fspath(root)
  # Check the task before reading anything.
  task_labels(np.zeros((0, len(ATTRIBUTES)), np.int32), task)
  records, facts = parse_mucac(root)
  attributes = np.asarray([r.attributes for r in records], np.int32).reshape(-1, len(ATTRIBUTES))
  identities = np.asarray([str(r.identity) for r in records], dtype=str)
  example_ids = np.asarray([r.example_id for r in records], dtype=str)

  def build(pixels: np.ndarray) -> FaceDataset:
    return assemble(Examples(pixels, attributes, identities, example_ids), task=task,
                    test_max=test_max, forget_max=forget_max, retain_max=retain_max,
                    forget_mode=forget_mode, forget_count=forget_count,
                    forget_fraction=forget_fraction, forget_identities=forget_identities,
                    forget_seed=forget_seed,
                    meta={"source": root, "reader": "mucac", "image_size": image_size, **facts})

  # Bad boundaries or forget arguments should fail before 30,000 images are decoded: build once on
  # 1x1 stand-in pixels (same code, same checks), then for real.
  build(np.zeros((len(records), 1, 1, 3), np.uint8))
  paths = [os.path.join(root, IMAGE_DIR, r.file_name) for r in records]
  return build(images_lib.load_images(
      paths, image_size, workers=workers,
      names=[f"{IDENTITY_FILE} line {r.line}: {p}" for r, p in zip(records, paths)]))
