"""Identity-labelled splits for retrieval: any FaceDataset → train/retain/forget/held-out persons.

Embedding models are trained to classify *persons*, so every image's label becomes its person's
index: the T train persons, sorted by name, are 0..T-1 (the rows of the margin head), and test then
unseen persons continue after them, so held-out labels are distinct person indices at or past T
(for matching in retrieval, never for a loss over the head). This is the convention of
:func:`mu_jax.data.identity_folder.read_identity_folders`, whose datasets pass through unchanged;
the synthetic faces (labelled by age) and any other reader are relabelled the same way.

**Synthetic identities** (:func:`make_synthetic_identities`, data name ``"synthetic_identities"``).
The embedded synthetic faces give every person a fixed background and colours, so raw pixels
already retrieve them (pixel-space mAP 0.98 on 40 persons) and any model, including one retrained
without a person, still finds that person: nothing to forget. This variant, mu_jax's own, draws
the background, a colour cast, the face geometry (within a band around the person's own), the
apparent age, the smile and a shift of up to ``max_shift`` pixels anew for every image, and gives
each person a stronger fixed skin texture (``texture_gain`` times the synthetic one). What stays
the same across a person's images is then mostly that texture and the rough face shape: learnable
for the persons a model trains on, weak for the others (pixel-space mAP 0.08-0.15 at the
benchmark's settings, nuisance 0.6 and texture gain 2). A model that never saw a person retrieves
them poorly, so the retrained model is a meaningful target.

**Probe photos** (:func:`hold_out_probes`). The privacy threat retrieval unlearning answers is a
*new* photo of a person matched against a gallery. So before anything trains, every train person
with at least 3 images gives up a seeded share of them (30 % by default, at least 1, and never so
many that fewer than 2 stay) as *probes*: the manifest lists them as their own split ``probe`` and
removes them from ``train``, ``retain`` and ``forget``, so no model trains or unlearns on them. The
images left in ``train`` are the *enrolled* gallery. Persons with fewer images keep all of them;
the manifest's ``meta["probes"]`` counts them.

Retrieval is evaluated over the enrolled images of the train persons (forget and retain identities
in one gallery, :func:`mu_jax.retrieval.metrics.evaluate_retrieval`), with the probes against that
gallery (:func:`mu_jax.retrieval.metrics.evaluate_probes`) and, as a reference for how well the
model generalises to people it never saw, over the held-out (test + unseen) persons on their own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from mu_jax.data import loader, splits, synthetic
from mu_jax.data.splits import DataError, Examples, FaceDataset, SplitManifest

# The manifest split that holds the probe photos (beside the five of mu_jax.data.splits.SPLITS).
PROBE_SPLIT = "probe"


def identity_labels(dataset: FaceDataset) -> FaceDataset:
  """Returns ``dataset`` with labels replaced by person indices (module docstring).

  Raises:
    DataError: the dataset has no train persons.
  """
  m = dataset.manifest
  train = sorted(m.identities("train"))
  if not train:
    raise DataError(f"{m.dataset}: no train persons to label")
  test = m.identities("test") - set(train)
  heldout = sorted(test) + sorted(m.identities("unseen") - test - set(train))
  index = {p: i for i, p in enumerate(train + heldout)}
  ids = dataset.examples.identities.tolist()
  # Persons outside every split (none in the bundled readers) get -1: never used by a loss.
  labels = np.asarray([index.get(p, -1) for p in ids], np.int32)
  ex = dataclasses.replace(dataset.examples, labels=labels)
  return dataclasses.replace(dataset, examples=ex, num_classes=len(train), task="multiclass",
                             label_names=tuple(train))


@dataclasses.dataclass(frozen=True)
class RetrievalData:
  """The splits a retrieval experiment uses.

  Attributes:
    dataset: the identity-labelled dataset.
    train: every train image (forget + retain persons): the retrieval evaluation set.
    retain: images of the retained persons.
    forget: images of the forgotten persons.
    heldout: test + unseen persons (never trained on): the generalisation reference.
    forget_identities: names of the forgotten persons.
    probe: held-out photos of the train persons (module docstring), in no other split.
  """

  dataset: FaceDataset
  train: Examples
  retain: Examples
  forget: Examples
  heldout: Examples
  forget_identities: tuple[str, ...]
  probe: Examples

  @property
  def num_classes(self) -> int:
    return self.dataset.num_classes

  def unlearning_splits(self) -> dict[str, Examples]:
    """The mapping the unlearning driver consumes (retain and forget only: held-out labels lie
    outside the head, so the driver must not score them)."""
    return {"retain": self.retain, "forget": self.forget}


def hold_out_probes(dataset: FaceDataset, fraction: float = 0.3, seed: int = 0,
                    min_images: int = 3) -> FaceDataset:
  """Moves a seeded share of every train person's images into the ``probe`` split.

  A person with at least ``min_images`` train images gives ``max(1, round(fraction × n))`` of them,
  capped at n − 2 (two enrolled images must stay, so the person can still be queried among the
  enrolled images); persons with fewer images give none. The images are drawn per person, persons
  in sorted order, with ``seed``. ``train``, ``retain`` and ``forget`` lose the probes; test and
  unseen persons are untouched. ``meta["probes"]`` records the request and the counts.

  Args:
    dataset: a dataset whose manifest has no ``probe`` split yet.
    fraction: share of each person's images held out, in [0, 0.5]; 0 holds out none.
    seed: the draw.
    min_images: the fewest train images a person needs to give probes (at least 3).

  Returns:
    The dataset with the new manifest (the same examples).

  Raises:
    DataError: a bad fraction or minimum, or the manifest already has probes.
  """
  m = dataset.manifest
  if not 0.0 <= fraction <= 0.5:
    raise DataError(f"data.probe_fraction must be in [0, 0.5], got {fraction}")
  if min_images < 3:
    raise DataError(f"probes need persons with at least 3 images (2 stay enrolled), got {min_images}")
  if PROBE_SPLIT in m.splits:
    raise DataError(f"{m.dataset}: the manifest already has a {PROBE_SPLIT!r} split")
  by_person: dict[str, list[str]] = {}
  for e, i in m.splits["train"]:
    by_person.setdefault(i, []).append(e)
  rng = np.random.default_rng([seed, 31_000])
  probes: set[str] = set()
  too_few = []
  for person in sorted(by_person) if fraction > 0.0 else ():
    ids = by_person[person]
    if len(ids) < min_images:
      too_few.append(person)
      continue
    k = min(len(ids) - 2, max(1, int(round(fraction * len(ids)))))
    probes.update(ids[j] for j in rng.choice(len(ids), size=k, replace=False))
  splits_ = {k: [(e, i) for e, i in v if e not in probes] if k in ("train", "retain", "forget") else v
             for k, v in m.splits.items()}
  splits_[PROBE_SPLIT] = [(e, i) for e, i in m.splits["train"] if e in probes]
  if not splits_["forget"] or not splits_["retain"]:
    raise DataError(f"{m.dataset}: holding out probes left the forget or retain split empty")
  forget = m.identities("forget")
  meta = dict(m.meta, probes={
      "fraction": fraction, "seed": seed, "min_images": min_images, "images": len(probes),
      "forget_images": sum(i in forget for _, i in splits_[PROBE_SPLIT]),
      "persons_with_probes": len({i for _, i in splits_[PROBE_SPLIT]}),
      "persons_without_probes": len(by_person) - len({i for _, i in splits_[PROBE_SPLIT]}),
      "persons_with_too_few_images": len(too_few)})
  manifest = SplitManifest(m.dataset, splits_, m.image_hashes, meta, m.allowed_overlaps)
  return dataclasses.replace(dataset, manifest=manifest)


def probe_examples(dataset: FaceDataset) -> Examples:
  """The examples of the manifest's ``probe`` split (none when it has no such split).

  Raises:
    DataError: a probe is also listed in another split, or is not a train person's image.
  """
  m = dataset.manifest
  pairs = m.splits.get(PROBE_SPLIT, [])
  ids = [e for e, _ in pairs]
  elsewhere = set(ids) & {e for s, v in m.splits.items() if s != PROBE_SPLIT for e, _ in v}
  if elsewhere:
    raise DataError(f"{m.dataset}: probe images also listed in another split: {sorted(elsewhere)[:5]}")
  strangers = {i for _, i in pairs} - m.identities("train")
  if strangers:
    raise DataError(f"{m.dataset}: probes of persons who are not train persons: {sorted(strangers)[:5]}")
  index = {e: j for j, e in enumerate(dataset.examples.example_ids.tolist())}
  unknown = [e for e in ids if e not in index]
  if unknown:
    raise DataError(f"manifest split {PROBE_SPLIT!r} names examples that were not read: {unknown[:5]}")
  return dataset.examples.subset(np.asarray([index[e] for e in ids], np.int64))


def retrieval_data(dataset: FaceDataset, probe_fraction: float = 0.3,
                   probe_seed: int = 0) -> RetrievalData:
  """Holds out probes (:func:`hold_out_probes`), identity-labels ``dataset`` and gathers its
  retrieval splits.

  Args:
    dataset: the data set as read (no ``probe`` split yet).
    probe_fraction: share of each train person's images held out as probes (0: none).
    probe_seed: the draw of the probes.

  Raises:
    DataError: the manifest leaks identities across splits, or forget/retain is empty.
  """
  dataset.manifest.check()
  ds = identity_labels(hold_out_probes(dataset, probe_fraction, probe_seed))
  ds.manifest.check()
  parts = [ds.split(s) for s in ("test", "unseen")]
  nonempty = [p for p in parts if len(p)]
  heldout = Examples.concatenate(nonempty) if nonempty else parts[0]
  return RetrievalData(ds, ds.split("train"), ds.split("retain"), ds.split("forget"), heldout,
                       tuple(sorted(ds.manifest.identities("forget"))), probe_examples(ds))


def _person(rng: np.random.Generator) -> dict[str, Any]:
  return {"skin": rng.uniform([0.45, 0.3, 0.2], [0.95, 0.8, 0.65]), "hair": rng.uniform(0.0, 0.6, 3),
          "eye_col": rng.uniform(0.0, 0.5, 3),
          "face_w": rng.uniform(0.30, 0.40), "face_h": rng.uniform(0.38, 0.48),
          "eye_dx": rng.uniform(0.11, 0.17), "eye_y": rng.uniform(-0.10, -0.02),
          "eye_r": rng.uniform(0.035, 0.06), "mouth_w": rng.uniform(0.08, 0.16),
          "nose": rng.uniform(0.03, 0.08), "male": float(rng.random() < 0.5),
          "age": rng.uniform(1.0, 6.0)}


# Per-image geometry jitter (half-widths, in face-relative units) at nuisance 1.
_GEOMETRY_JITTER = {"face_w": 0.03, "face_h": 0.03, "eye_dx": 0.02, "eye_y": 0.02, "mouth_w": 0.02,
                    "nose": 0.01}


def synthetic_identity_images(num_identities: int, images_per_identity: int, image_size: int,
                              seed: int = 0, nuisance: float = 1.0, texture_gain: float = 1.5,
                              max_shift: int = 2) -> Examples:
  """Renders the synthetic-identities images (module docstring), labels 0 until relabelled.

  Args:
    num_identities: persons ("P0000", ...).
    images_per_identity: images per person.
    image_size: side of the square images.
    seed: the generator seed.
    nuisance: scales the per-image colour cast (±25 % per channel at 1), geometry jitter and
      apparent-age noise (σ = 1 class at 1).
    texture_gain: the person's skin texture relative to :func:`mu_jax.data.synthetic.render`'s.
    max_shift: largest per-image translation in pixels (circular).

  Raises:
    DataError: too few persons or images, or a tiny image size.
  """
  if num_identities < 4 or images_per_identity < 2 or image_size < 8:
    raise DataError("synthetic identities need >= 4 persons, >= 2 images each and image_size >= 8; "
                    f"got {num_identities}, {images_per_identity}, {image_size}")
  images, ids, example_ids = [], [], []
  for k in range(num_identities):
    rng = np.random.default_rng([seed, 20_000 + k])
    p = _person(rng)
    texture = synthetic.person_texture(rng, image_size) * texture_gain
    for j in range(images_per_identity):
      q = dict(p, bg=rng.uniform(0.1, 0.9, 3))
      cast = rng.uniform(1 - 0.25 * nuisance, 1 + 0.25 * nuisance, 3)
      for c in ("skin", "hair", "eye_col"):
        q[c] = np.clip(p[c] * cast, 0.0, 1.0)
      for g, half in _GEOMETRY_JITTER.items():
        q[g] = p[g] + rng.uniform(-half, half) * nuisance
      img = synthetic.render(q, texture, p["age"] + rng.normal(0.0, nuisance),
                             bool(rng.random() < 0.5), rng, image_size)
      dy, dx = rng.integers(-max_shift, max_shift + 1, 2)
      images.append(np.round(np.roll(img, (dy, dx), (0, 1)) * 255).astype(np.uint8))
      ids.append(f"P{k:04d}")
      example_ids.append(f"synthetic_identities/P{k:04d}/{j:03d}.png")
  n = len(images)
  return Examples(np.stack(images), np.zeros(n, np.int32), np.asarray(ids), np.asarray(example_ids))


def make_synthetic_identities(num_identities: int = 60, images_per_identity: int = 10,
                              image_size: int = 32, test_fraction: float = 0.15,
                              unseen_fraction: float = 0.15, forget_count: int | None = None,
                              forget_fraction: float | None = 0.15,
                              forget_identities: Sequence[str] | None = None, forget_seed: int = 0,
                              seed: int = 0, nuisance: float = 1.0, texture_gain: float = 1.5,
                              max_shift: int = 2) -> FaceDataset:
  """The synthetic-identities data set, person-labelled, with an identity-disjoint split.

  Persons are split into train, test and unseen as :func:`mu_jax.data.synthetic.make_dataset`
  does; the forget set is whole train persons (by ``forget_identities``, ``forget_count`` or
  ``forget_fraction``, drawn with ``forget_seed``). The image arguments are those of
  :func:`synthetic_identity_images`.

  Returns:
    A :class:`FaceDataset` with labels as :func:`identity_labels` gives them.
  """
  synthetic.check_person_fractions(test_fraction, unseen_fraction)
  ex = synthetic_identity_images(num_identities, images_per_identity, image_size, seed, nuisance,
                                 texture_gain, max_shift)
  manifest = synthetic.person_split_manifest(
      "synthetic_identities", ex, num_identities, test_fraction, unseen_fraction, seed,
      {"generator_seed": seed, "num_identities": num_identities,
       "images_per_identity": images_per_identity, "image_size": image_size,
       "nuisance": nuisance, "texture_gain": texture_gain, "max_shift": max_shift})
  ds = FaceDataset(ex, manifest, 1, "multiclass")
  given = forget_count is not None or bool(forget_identities)
  ds = splits.forget_identities(ds, identities=list(forget_identities) if forget_identities else None,
                                count=forget_count, fraction=None if given else forget_fraction,
                                seed=forget_seed)
  return identity_labels(ds)


def load(cfg: Mapping[str, Any]) -> RetrievalData:
  """Reads the data set of a config's ``data`` section and returns its retrieval splits.

  Every name goes through the one reader registry, :func:`mu_jax.data.loader.load_dataset`
  (``synthetic_identities`` is :func:`make_synthetic_identities`; the synthetic faces are read
  with ``task="age"``: the labels are replaced anyway). ``probe_fraction`` (default 0.3) and
  ``probe_seed`` (default 0) choose the probe photos (:func:`hold_out_probes`).
  """
  cfg = dict(cfg)
  if cfg.get("name") == "synthetic":
    cfg["task"] = "age"
  return retrieval_data(loader.load_dataset(cfg), float(cfg.get("probe_fraction", 0.3)),
                        int(cfg.get("probe_seed", 0)))
