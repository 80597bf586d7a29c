"""Tiny on-disk datasets in the exact published layouts, with real image files written by Pillow.

Used by the reader tests and reusable by any test (`from tests import fixtures`) that needs a MUFAC,
MUCAC or identity-folder tree:
``write_mufac(tmp_path)``, ``write_mucac(tmp_path)``, ``write_identity_folders(tmp_path)``. Every
image gets its own random pixels (seeded by its file name), so no two images are duplicates.
"""

from __future__ import annotations

import os
import pathlib
import zlib
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

MUFAC_COLUMNS = ("family_id", "person_id", "age_class", "image_path")
# (family_id, person_id, age_class) per row, in CSV order. With paper_forget_rows=6 the first six
# rows end in the middle of F0002_M (rows 5-7), so that person straddles the forget/retain boundary.
MUFAC_TRAIN = (
    [("F0001", "D", "a")] * 2 + [("F0001", "F", "d")] * 2 + [("F0002", "M", "e")] * 3
    + [("F0002", "S", "b")] * 2 + [("F0003", "GF", "g")] * 2)
MUFAC_VAL = [("F0801", "D", "c")] * 2 + [("F0801", "F", "f")] * 2
MUFAC_TEST = [("F0851", "M", "h")] * 2 + [("F0851", "S", "a")]
MUFAC_STRADDLING = ("F0002_M", 6)  # (person, paper_forget_rows that cuts it)
# Age in years written into MUFAC-style file names, one per class letter.
_AGE_YEARS = dict(zip("abcdefgh", (4, 10, 16, 25, 40, 50, 60, 70)))

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
    "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie "
    "Young").split()
# Identity per image 0.jpg, 1.jpg, ... chosen around the reference boundaries 190, 1250 and 4855:
# test {5, 150}, forget {190, 600, 1249}, retain {1250, 3000, 4854}, unseen {4855, 6000}.
MUCAC_IDENTITIES = (5, 5, 150, 190, 190, 600, 1249, 1250, 1250, 3000, 4854, 4855, 6000, 6000)


def write_image(path: str | os.PathLike[str], size: tuple[int, int] = (8, 8), *,
                mode: str = "RGB", fmt: str | None = None) -> np.ndarray:
  """Writes an image of random pixels (seeded by the file name) and returns its pixels.

  Args:
    path: the file; its extension picks the format unless ``fmt`` is given.
    size: (width, height).
    mode: "RGB" or "L" (grayscale).
    fmt: Pillow format name, e.g. "PPM" for a .pgm file.

  Returns:
    The pixels as written (before any lossy encoding).
  """
  rng = np.random.default_rng(zlib.crc32(os.fspath(path).encode()))
  w, h = size
  shape = (h, w, 3) if mode == "RGB" else (h, w)
  pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
  os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
  Image.fromarray(pixels, mode=mode).save(path, format=fmt)
  return pixels


def _mufac_csv(path: pathlib.Path, folder: pathlib.Path, rows: Sequence[Sequence[str]],
               header: Sequence[str], size: tuple[int, int]) -> None:
  counters: dict[tuple[str, str], int] = {}
  lines = [",".join(header)]
  for row in rows:
    family, person, age = row[:3]
    if len(row) > 3:
      name = row[3]
    else:
      k = counters[(family, person)] = counters.get((family, person), 0) + 1
      name = f"{family}_AGE_{person}_{_AGE_YEARS.get(age, 30)}_{age}{k}.jpg"
    values = {"family_id": family, "person_id": person, "age_class": age, "image_path": name}
    # Columns not named in MUFAC_COLUMNS get a filler value ("extra" columns).
    lines.append(",".join(values.get(c, "x") for c in header))
    write_image(folder / name, size)
  path.write_text("\n".join(lines) + "\n")


def write_mufac(root: str | os.PathLike[str], *, train: Sequence[Sequence[str]] = MUFAC_TRAIN,
                val: Sequence[Sequence[str]] = MUFAC_VAL, test: Sequence[Sequence[str]] = MUFAC_TEST,
                header: Sequence[str] = MUFAC_COLUMNS, size: tuple[int, int] = (8, 8)
                ) -> pathlib.Path:
  """Writes a MUFAC folder: the three CSVs, their image folders and an ignored kinship folder.

  Args:
    root: where to write (created).
    train: rows of custom_train_dataset.csv as (family_id, person_id, age_class[, image_path]);
      without an image_path a MUFAC-style name "F0001_AGE_D_4_a1.jpg" is made.
    val: rows of custom_val_dataset.csv (D_test).
    test: rows of custom_test_dataset.csv (D_unseen).
    header: the CSV header (columns other than the four MUFAC ones get the value "x").
    size: (width, height) of the JPEG images.

  Returns:
    The root path.
  """
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  for csv_name, folder, rows in (("custom_train_dataset.csv", "train_images", train),
                                 ("custom_val_dataset.csv", "val_images", val),
                                 ("custom_test_dataset.csv", "test_images", test)):
    (root / folder).mkdir(exist_ok=True)
    _mufac_csv(root / csv_name, root / folder, rows, header, size)
  # The published zip also holds kinship-pair folders; the reader must ignore them.
  write_image(root / "fixed_val_dataset" / "positive" / "pair_0.jpg", size)
  return root


def mucac_attribute_values(index: int) -> list[int]:
  """The default 40 attribute values (+1/-1) of image ``index`` in :func:`write_mucac`."""
  rng = np.random.default_rng(1000 + index)
  return [int(v) for v in rng.choice([-1, 1], size=len(CELEBA_ATTRIBUTES))]


def write_mucac(root: str | os.PathLike[str], *, identities: Sequence[int] = MUCAC_IDENTITIES,
                attributes: Mapping[str, Sequence[object]] | None = None,
                identity_header: str | None = None, size: tuple[int, int] = (16, 16)
                ) -> pathlib.Path:
  """Writes a CelebA-HQ folder: identity file, attribute file and ``CelebA-HQ-img/``.

  Args:
    root: where to write (created).
    identities: identity of image "0.jpg", "1.jpg", ... in order.
    attributes: {file name: 40 values} overriding :func:`mucac_attribute_values` (any objects; they
      are written with str(), so bad values can be planted).
    identity_header: a first line for the identity file (the published file has none).
    size: (width, height) of the JPEG images.

  Returns:
    The root path.
  """
  root = pathlib.Path(root)
  (root / "CelebA-HQ-img").mkdir(parents=True, exist_ok=True)
  names = [f"{i}.jpg" for i in range(len(identities))]
  id_lines = ([identity_header] if identity_header else []) + [
      f"{n} {i}" for n, i in zip(names, identities)]
  (root / "CelebA-HQ-identity.txt").write_text("\n".join(id_lines) + "\n")
  attr_lines = [str(len(names)), " ".join(CELEBA_ATTRIBUTES)]
  for k, n in enumerate(names):
    values = (attributes or {}).get(n, mucac_attribute_values(k))
    # CelebA pads values to a fixed width ("1" with two spaces, "-1" with one); keep that quirk.
    attr_lines.append(n + "".join(f" {v:>2}" for v in map(str, values)))
    write_image(root / "CelebA-HQ-img" / n, size)
  (root / "CelebA-HQ-attribute.txt").write_text("\n".join(attr_lines) + "\n")
  return root


def write_identity_folders(root: str | os.PathLike[str], *, persons: int = 10,
                           images_per_person: int | Sequence[int] = 3, ext: str = ".png",
                           grayscale: bool = False, size: tuple[int, int] = (8, 10),
                           readme: bool = True) -> pathlib.Path:
  """Writes ``root/person00/0.png ...`` (one folder per person) plus a root README.

  Args:
    root: where to write (created).
    persons: number of person folders ("person00", "person01", ...).
    images_per_person: images per person (one int, or one per person).
    ext: ".png", ".jpg", ".pgm" (grayscale PGM as in ORL) or ".bmp".
    grayscale: write single-channel images.
    size: (width, height); not square by default, to exercise the crop.
    readme: also write ROOT/README (allowed documentation).

  Returns:
    The root path.
  """
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  counts = [images_per_person] * persons if isinstance(images_per_person, int) else images_per_person
  fmt = "PPM" if ext == ".pgm" else None
  for p, n in enumerate(counts):
    for k in range(n):
      write_image(root / f"person{p:02d}" / f"{k}{ext}", size,
                  mode="L" if grayscale or ext == ".pgm" else "RGB", fmt=fmt)
  if readme:
    (root / "README").write_text("Tiny identity-folder fixture.\n")
  return root
