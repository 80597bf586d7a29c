"""Reader for one-folder-per-person face sets (VGGFace2, CASIA-WebFace, LFW, ORL style).

The layout is the one these sets are distributed in: VGGFace2 (Cao et al., FG 2018, arXiv
1710.08092), CASIA-WebFace (Yi et al., arXiv 1411.7923), LFW (Huang et al., UMass Amherst technical
report 07-49, 2007), the ORL / AT&T faces (Samaria and Harter, IEEE WACV 1994). See
docs/datasets.md#identity-folders.

Layout::

  ROOT/<person>/<image>.(jpg|jpeg|png|pgm|bmp)
  ROOT/README, ROOT/*.txt, ROOT/*.md ...   allowed at the root level (documentation, pair lists)

A person is the folder name; an example id is ``"<person>/<file>"``. Hidden entries (names starting
with '.') are ignored everywhere. Anything else (a file with another extension inside a person
folder, a folder inside a person folder, a non-text file at the root) is an error naming it, so a
mis-extracted archive is never half-read. Grayscale images (ORL's .pgm) become RGB.

Splits are made of whole persons. Persons with fewer than ``min_images`` images are set aside (they
cannot be both enrolled and queried in retrieval); they are listed in
``manifest.meta["excluded_identities"]``, not dropped silently. Of the rest, drawn with
``split_seed``, ``test_fraction`` of the persons form test and ``unseen_fraction`` form unseen; the
remaining persons are train, and the forget set is a choice of whole train persons
(:func:`mu_jax.data.splits.forget_identities`).

Labels are identity indices for retrieval training: the T train persons (sorted by name) are
0..T-1 and ``num_classes`` is T. Test persons continue at T..T+t-1 and unseen persons after them, so
every label is a valid, distinct person index (never -1) but test/unseen labels are at or past
``num_classes``: they are for identity matching in retrieval evaluation, never for a classification
loss over the train head.
"""

from __future__ import annotations

import os
from typing import Sequence

from absl import logging
import numpy as np

from mu_jax.data import images as images_lib
from mu_jax.data import splits
from mu_jax.data.splits import DataError, Examples, FaceDataset, SplitManifest

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".bmp")
# Root-level files that document the data rather than hold it.
_TEXT_PREFIXES = ("readme", "license", "licence", "copying", "citation")
_TEXT_SUFFIXES = (".txt", ".md", ".rst")


def _is_root_text(name: str) -> bool:
  lower = name.lower()
  return lower.startswith(_TEXT_PREFIXES) or lower.endswith(_TEXT_SUFFIXES)


def scan_identity_folders(root: str | os.PathLike[str]) -> dict[str, list[str]]:
  """Lists the images of every person folder.

  Args:
    root: the dataset folder.

  Returns:
    {person: [image file names, sorted]} for every person folder (sorted by name), even empty ones.

  Raises:
    DataError: the root is missing or holds no person folder, or an entry is neither an image, a
      hidden file nor root-level documentation (the message names it).
  """
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise DataError(f"{root}: identity-folder root not found")
  persons: dict[str, list[str]] = {}
  for entry in sorted(os.scandir(root), key=lambda e: e.name):
    if entry.name.startswith("."):
      continue
    if entry.is_dir():
      files = []
      for item in sorted(os.scandir(entry.path), key=lambda e: e.name):
        if item.name.startswith("."):
          continue
        if item.is_dir():
          raise DataError(f"{item.path}: a folder inside the person folder {entry.name!r}; expected "
                          f"only images ({', '.join(IMAGE_EXTENSIONS)})")
        if os.path.splitext(item.name)[1].lower() not in IMAGE_EXTENSIONS:
          raise DataError(f"{item.path}: not an image file; person folders may hold only "
                          f"{', '.join(IMAGE_EXTENSIONS)} files (and hidden files)")
        files.append(item.name)
      persons[entry.name] = files
    elif not _is_root_text(entry.name):
      raise DataError(f"{entry.path}: unexpected file at the root; expected one folder per person "
                      "(and README/.txt/.md documentation)")
  if not persons:
    raise DataError(f"{root}: no person folders found")
  return persons


def _split_count(fraction: float, total: int, name: str) -> int:
  if not 0.0 <= fraction < 1.0:
    raise DataError(f"{name} must be in [0, 1), got {fraction}")
  # A positive fraction always yields at least one person, so a small set still gets the split.
  return max(1, int(round(fraction * total))) if fraction > 0 else 0


def read_identity_folders(root: str | os.PathLike[str], *, image_size: int | None = 64,
                          forget_count: int | None = None, forget_fraction: float | None = None,
                          forget_identities: Sequence[str] | None = None, forget_seed: int = 0,
                          test_fraction: float = 0.1, unseen_fraction: float = 0.1,
                          split_seed: int = 0, min_images: int = 2,
                          workers: int | None = None) -> FaceDataset:
  """Reads a one-folder-per-person dataset with an identity-disjoint split.

  Args:
    root: the dataset folder.
    image_size: side length after the shorter-side resize and center crop; None keeps the files'
      size (they must then all agree).
    forget_count: number of train persons to forget.
    forget_fraction: fraction of train persons to forget.
    forget_identities: the persons (folder names) to forget. Give exactly one of the three.
    forget_seed: seed of the random choice of forgotten persons.
    test_fraction: fraction of the eligible persons held out as test.
    unseen_fraction: fraction of the eligible persons held out as unseen.
    split_seed: seed of the person split.
    min_images: persons with fewer images are excluded (recorded in the manifest meta).
    workers: decoding threads (default: number of CPUs, at most 16).

  Returns:
    The dataset, task "multiclass", labels as described in the module docstring.

  Raises:
    DataError: a bad entry in the folder, an unreadable image, too few persons, or bad forget or
      fraction arguments (named in the message).
  """
  root = os.fspath(root)
  given = [k for k, v in {"forget_count": forget_count, "forget_fraction": forget_fraction,
                          "forget_identities": forget_identities}.items() if v is not None]
  if len(given) != 1:
    raise DataError("read_identity_folders needs exactly one of forget_count, forget_fraction or "
                    f"forget_identities; got {given or 'none'}")
  if min_images < 1:
    raise DataError(f"min_images must be at least 1, got {min_images}")
  persons = scan_identity_folders(root)
  eligible = sorted(p for p, files in persons.items() if len(files) >= min_images)
  excluded = sorted(set(persons) - set(eligible))
  if excluded:
    logging.info("%s: %d person(s) with fewer than %d images excluded", root, len(excluded),
                 min_images)
  n_test = _split_count(test_fraction, len(eligible), "test_fraction")
  n_unseen = _split_count(unseen_fraction, len(eligible), "unseen_fraction")
  n_train = len(eligible) - n_test - n_unseen
  if n_train < 2:
    raise DataError(f"{root}: {len(eligible)} person(s) with at least {min_images} images leave "
                    f"{n_train} for train after {n_test} test and {n_unseen} unseen; train needs at "
                    "least 2 (one to forget, one to retain)")
  order = np.random.default_rng(split_seed).permutation(len(eligible))
  drawn = [eligible[i] for i in order]
  test = sorted(drawn[:n_test])
  unseen = sorted(drawn[n_test:n_test + n_unseen])
  train = sorted(drawn[n_test + n_unseen:])
  # Label = position in train + test + unseen: train persons first, so they index the class head.
  people = train + test + unseen
  rows = [(p, label, f) for label, p in enumerate(people) for f in persons[p]]
  labels = np.asarray([label for _, label, _ in rows], np.int32)
  identities = np.asarray([p for p, _, _ in rows], dtype=str)
  example_ids = np.asarray([f"{p}/{f}" for p, _, f in rows], dtype=str)
  pairs = list(zip(example_ids.tolist(), identities.tolist()))
  train_set, test_set, unseen_set = set(train), set(test), set(unseen)
  train_pairs = [x for x in pairs if x[1] in train_set]
  meta = {"source": root, "reader": "identity_folder", "image_size": image_size,
          "split_seed": split_seed, "test_fraction": test_fraction,
          "unseen_fraction": unseen_fraction, "min_images": min_images,
          "excluded_identities": excluded,
          "excluded_images": sum(len(persons[p]) for p in excluded),
          "labels": f"train persons 0..{len(train) - 1} (num_classes); test persons "
                    f"{len(train)}..{len(train) + len(test) - 1}; unseen persons after"}

  def build(pixels: np.ndarray) -> FaceDataset:
    manifest = SplitManifest(
        "identity_folder:" + os.path.basename(os.path.normpath(root)),
        {"train": train_pairs, "retain": list(train_pairs), "forget": [],
         "test": [x for x in pairs if x[1] in test_set],
         "unseen": [x for x in pairs if x[1] in unseen_set]},
        image_hashes={e: splits.image_hash(im) for e, im in zip(example_ids.tolist(), pixels)},
        meta=dict(meta))
    base = FaceDataset(Examples(pixels, labels, identities, example_ids), manifest,
                       num_classes=len(train), task="multiclass", label_names=tuple(train))
    return splits.forget_identities(base, identities=forget_identities, count=forget_count,
                                    fraction=forget_fraction, seed=forget_seed)

  # A wrong forget argument should fail before every image is decoded: build once on 1x1
  # stand-in pixels (same code, same checks), then for real.
  build(np.zeros((len(rows), 1, 1, 3), np.uint8))
  paths = [os.path.join(root, p, f) for p, _, f in rows]
  return build(images_lib.load_images(paths, image_size, workers=workers))
