"""Synthetic faces: the embedded default data set, deterministic and offline.

mu_jax's own design, not a published data set (docs/datasets.md#synthetic-faces).

Each person gets a face shape, skin and hair colour, eye placement, a beard (men) and a fine
per-person texture. Each image of a person has an age class (the person's base age, moved by at
most one class between photos) and a smile drawn per image, plus nuisances: position, brightness,
pixel noise.

What a model can learn, by design:
  * **Across people** (generalises to unseen persons): the age is shown by grey hair, forehead
    wrinkles and face size; gender by the beard; smiling by the mouth curve; "young" is age < 4.
  * **Only by memorising a person**: the age cue is drawn at the person's *apparent* age, the true
    age shifted by a per-person offset of -1, 0 or +1 classes (probabilities 0.2, 0.6, 0.2). A model that knows the person (from
    the texture and face geometry) can undo the offset; on a new person it cannot. Training persons
    therefore end with lower loss than unseen persons, as in MUFAC (train accuracy 0.86 against
    test 0.59), which gives a membership-inference attack something real to find.

Splits are shaped like MUFAC's: persons are split into train, test and unseen (identity-disjoint);
forget is a set of whole training persons (``identity`` mode) or the first rows of train in person
order (``paper`` mode, which, as the reference's first 1,500 rows, can cut a person in two).
"""

from __future__ import annotations

import numpy as np

from mu_jax.data import splits
from mu_jax.data.splits import DataError, Examples, FaceDataset, SplitManifest

AGE_NAMES = ("0-6", "7-12", "13-19", "20-30", "31-45", "46-55", "56-66", "67-80")
ATTRIBUTE_NAMES = ("Male", "Smiling", "Young")
TASKS = ("age", "multilabel", "binary:Male", "binary:Smiling", "binary:Young")


def _person_params(rng: np.random.Generator) -> dict[str, np.ndarray | float]:
  return {
      "skin": rng.uniform([0.45, 0.3, 0.2], [0.95, 0.8, 0.65]),
      "hair": rng.uniform(0.0, 0.3, 3),
      "bg": rng.uniform(0.1, 0.9, 3),
      "face_w": rng.uniform(0.30, 0.40), "face_h": rng.uniform(0.38, 0.48),
      "eye_dx": rng.uniform(0.11, 0.17), "eye_y": rng.uniform(-0.10, -0.02),
      "eye_r": rng.uniform(0.035, 0.06), "eye_col": rng.uniform(0.0, 0.5, 3),
      "mouth_w": rng.uniform(0.08, 0.16), "nose": rng.uniform(0.03, 0.08),
      "male": float(rng.random() < 0.5), "smile_p": rng.uniform(0.2, 0.8),
      "base_age": int(rng.integers(0, 8)),
      # Most persons look their age; one in five looks a class older, one in five a class younger.
      "age_offset": int(rng.choice([-1, 0, 1], p=[0.2, 0.6, 0.2])),
  }


def person_texture(rng: np.random.Generator, size: int) -> np.ndarray:
  """A per-person high-frequency pattern [size, size, 3]: square cells (``size // 2`` a side, at
  least two) of random sign per cell and channel, fixed for the person (the retrieval faces'
  generator draws the same)."""
  cells = max(2, size // 2)
  pattern = rng.choice([-1.0, 1.0], size=(cells, cells, 3))
  rep = int(np.ceil(size / cells))
  return np.kron(pattern, np.ones((rep, rep, 1)))[:size, :size]


def render(p: dict, texture: np.ndarray, apparent_age: float, smiling: bool,
           rng: np.random.Generator, size: int) -> np.ndarray:
  """Renders one face image, float32 [size, size, 3] in [0, 1]."""
  ys, xs = np.meshgrid(np.linspace(-0.5, 0.5, size), np.linspace(-0.5, 0.5, size), indexing="ij")
  dy, dx = rng.uniform(-0.04, 0.04, 2)
  ys, xs = ys - dy, xs - dx
  a = np.clip(apparent_age, 0, 7) / 7.0
  scale = 0.8 + 0.2 * min(1.0, apparent_age / 3.0)  # children have smaller faces
  fw, fh = p["face_w"] * scale, p["face_h"] * scale
  img = np.broadcast_to(p["bg"], (size, size, 3)).copy()
  face = (xs / fw) ** 2 + (ys / fh) ** 2 <= 1.0
  grey = np.array([0.8, 0.8, 0.8])
  hair_col = (1 - a) * p["hair"] + a * grey  # hair greys with age (base hair is dark)
  hair = ((xs / (fw * 1.08)) ** 2 + ((ys + 0.04) / (fh * 1.05)) ** 2 <= 1.0) & (ys < -fh * 0.45)
  img[hair] = hair_col
  img[face & ~hair] = p["skin"]
  # The person's texture, on the face only: what a network memorises to recognise the person.
  img = np.where(face[..., None], img + 0.05 * texture, img)
  # Forehead wrinkles: more and darker with age.
  n_wrinkles = int(round(a * 4))
  for k in range(n_wrinkles):
    y0 = -fh * 0.5 + k * 0.05
    line = (np.abs(ys - y0) < 0.012 + 0.006 * a) & (np.abs(xs) < fw * 0.55) & face
    img[line] *= 0.55
  for sx in (-1, 1):
    eye = ((xs - sx * p["eye_dx"]) ** 2 + (ys - p["eye_y"]) ** 2) <= p["eye_r"] ** 2
    img[eye] = p["eye_col"]
  nose = (np.abs(xs) < 0.015) & (ys > p["eye_y"] + 0.03) & (ys < p["eye_y"] + 0.03 + p["nose"])
  img[nose] *= 0.75
  # Mouth: a curve that bends up when smiling.
  my = 0.16
  curve = (0.9 if smiling else -0.2) * (xs / max(p["mouth_w"], 1e-3)) ** 2 * 0.05
  mouth = (np.abs(ys - (my - curve)) < 0.018) & (np.abs(xs) < p["mouth_w"])
  img[mouth] = [0.55, 0.1, 0.15]
  if p["male"]:
    beard = face & (ys > 0.1) & ~mouth
    img[beard] = img[beard] * 0.45 + 0.55 * p["hair"] * 0.6
  img = img * rng.uniform(0.85, 1.15) + rng.normal(0, 0.02, img.shape)
  return np.clip(img, 0.0, 1.0).astype(np.float32)


def generate(num_identities: int = 60, images_per_identity: int = 10, image_size: int = 32,
             seed: int = 0) -> tuple[Examples, np.ndarray, list[dict]]:
  """Generates every image of every person.

  Returns:
    (examples with age labels, attribute labels [N, 3] of 0/1, per-person parameters).
  """
  if num_identities < 4:
    raise DataError(f"synthetic data needs at least 4 identities, got {num_identities}")
  if images_per_identity < 1:
    raise DataError(f"images_per_identity must be >= 1, got {images_per_identity}")
  if image_size < 8:
    raise DataError(f"image_size must be >= 8, got {image_size}")
  images, ages, attrs, ids, example_ids, people = [], [], [], [], [], []
  for person in range(num_identities):
    rng = np.random.default_rng([seed, person])
    p = _person_params(rng)
    tex = person_texture(rng, image_size)
    people.append(p)
    for k in range(images_per_identity):
      age = int(np.clip(p["base_age"] + rng.integers(-1, 2), 0, 7))
      smiling = bool(rng.random() < p["smile_p"])
      img = render(p, tex, age + p["age_offset"] + rng.normal(0, 0.3), smiling, rng, image_size)
      images.append(np.round(img * 255).astype(np.uint8))
      ages.append(age)
      attrs.append([int(p["male"]), int(smiling), int(age < 4)])
      ids.append(f"P{person:04d}")
      example_ids.append(f"synthetic/P{person:04d}/{k:03d}.png")
  ex = Examples(np.stack(images), np.asarray(ages, np.int32), np.asarray(ids), np.asarray(example_ids))
  return ex, np.asarray(attrs, np.int32), people


def check_person_fractions(test_fraction: float, unseen_fraction: float) -> None:
  """Both held-out fractions of persons must lie in (0, 0.5)."""
  for name, f in (("test_fraction", test_fraction), ("unseen_fraction", unseen_fraction)):
    if not 0 < f < 0.5:
      raise DataError(f"{name} must be in (0, 0.5), got {f}")


def person_split_manifest(dataset: str, ex: Examples, num_identities: int, test_fraction: float,
                          unseen_fraction: float, seed: int, meta: dict) -> SplitManifest:
  """Identity-disjoint train / test / unseen split of generated persons ``P0000``, ``P0001``, ...

  The persons held out are drawn with ``seed`` (at least one each for test and unseen); retain
  and forget start empty (a forget set is drawn afterwards). Image hashes feed the duplicate
  check.

  Args:
    dataset: the manifest's dataset name.
    ex: the generated examples (identities are the person names).
    num_identities: how many persons were generated.
    test_fraction: fraction of persons in test.
    unseen_fraction: fraction of persons in unseen.
    seed: the generator seed.
    meta: facts about the generation, stored in the manifest.

  Returns:
    The manifest, train rows in example order.
  """
  persons = [f"P{i:04d}" for i in range(num_identities)]
  order = np.random.default_rng([seed, 10_000]).permutation(num_identities)
  n_test = max(1, int(round(test_fraction * num_identities)))
  n_unseen = max(1, int(round(unseen_fraction * num_identities)))
  test_p = {persons[i] for i in order[:n_test]}
  unseen_p = {persons[i] for i in order[n_test:n_test + n_unseen]}
  pairs = list(zip(ex.example_ids.tolist(), ex.identities.tolist()))
  return SplitManifest(
      dataset,
      {"train": [(e, i) for e, i in pairs if i not in test_p and i not in unseen_p],
       "retain": [], "forget": [],
       "test": [(e, i) for e, i in pairs if i in test_p],
       "unseen": [(e, i) for e, i in pairs if i in unseen_p]},
      image_hashes={e: splits.image_hash(img) for e, img in zip(ex.example_ids.tolist(), ex.images)},
      meta=meta)


def make_dataset(num_identities: int = 60, images_per_identity: int = 10, image_size: int = 32,
                 task: str = "age", test_fraction: float = 0.15, unseen_fraction: float = 0.15,
                 forget_mode: str = "identity", forget_count: int | None = None,
                 forget_fraction: float | None = 0.15, forget_identities=None, forget_seed: int = 0,
                 paper_forget_rows: int | None = None, seed: int = 0) -> FaceDataset:
  """The synthetic face data set with a MUFAC-shaped split.

  Args:
    num_identities: persons.
    images_per_identity: images per person.
    image_size: side of the square images.
    task: "age" (8 classes), "multilabel" (Male, Smiling, Young) or "binary:<attribute>".
    test_fraction: fraction of persons held out as D_test.
    unseen_fraction: fraction of persons held out as D_unseen (the attack's non-members).
    forget_mode: "identity" (whole persons, by count, fraction or names) or "paper" (the first
      ``paper_forget_rows`` train rows, as the MUFAC reference; may cut a person in two).
    forget_count, forget_fraction, forget_identities: the identity-mode request (one of them).
    forget_seed: draws the forgotten persons.
    paper_forget_rows: paper-mode row count.
    seed: the generator seed (persons and images).

  Returns:
    A :class:`FaceDataset` whose manifest passes :meth:`SplitManifest.check`.
  """
  if task not in TASKS:
    raise DataError(f"synthetic task must be one of {TASKS}, got {task!r}")
  check_person_fractions(test_fraction, unseen_fraction)
  ex, attrs, _ = generate(num_identities, images_per_identity, image_size, seed)
  if task == "multilabel":
    ex = Examples(ex.images, attrs, ex.identities, ex.example_ids)
    num_classes, label_names, kind = 3, ATTRIBUTE_NAMES, "multilabel"
  elif task.startswith("binary:"):
    j = ATTRIBUTE_NAMES.index(task.split(":", 1)[1])
    ex = Examples(ex.images, attrs[:, j].astype(np.int32), ex.identities, ex.example_ids)
    num_classes, label_names, kind = 2, ("no", "yes"), "multiclass"
  else:
    num_classes, label_names, kind = 8, AGE_NAMES, "multiclass"
  manifest = person_split_manifest(
      "synthetic", ex, num_identities, test_fraction, unseen_fraction, seed,
      {"generator_seed": seed, "num_identities": num_identities,
       "images_per_identity": images_per_identity, "image_size": image_size, "task": task})
  train = manifest.splits["train"]
  ds = FaceDataset(ex, manifest, num_classes, kind, label_names)
  if forget_mode not in ("identity", "paper"):
    raise DataError(f"forget_mode must be 'identity' or 'paper', got {forget_mode!r}")
  if forget_mode == "paper":
    rows = paper_forget_rows or max(1, int(round(0.15 * len(train))))
    return splits.first_rows_forget(ds, rows)
  return splits.choose_forget(
      ds, "identity", count=forget_count, identities=forget_identities, seed=forget_seed,
      fraction=None if (forget_count is not None or forget_identities) else forget_fraction)
