"""Identity-level split manifests: which example is in which split, and leak checks.

Every reader produces a :class:`FaceDataset`: all examples in memory (uint8 images, labels, the
person each image shows, a stable example id) plus a :class:`SplitManifest` naming, for each of the
splits ``train``, ``retain``, ``forget``, ``test`` and ``unseen``, the example ids it holds with
their identity.

The manifest is saved as JSON with a content hash, so a result can always be traced back to the exact
split that produced it. :meth:`SplitManifest.check` refuses a manifest in which one person appears
in two of ``forget``, ``retain``, ``test`` and ``unseen`` (unless the split was explicitly built to
reproduce a published protocol that has such an overlap, in which case the overlap is recorded and
reported, never hidden), and reports images whose bytes are identical across splits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

SPLITS = ("train", "retain", "forget", "test", "unseen")
# Splits that must never share a person: a person in two of them leaks membership.
DISJOINT_SPLITS = ("forget", "retain", "test", "unseen")


class DataError(ValueError):
  """Bad input data: the message names the file, row, identity or flag that is wrong."""


class IdentityLeakError(DataError):
  """One person appears in two splits that must be identity-disjoint."""


@dataclasses.dataclass(frozen=True)
class Examples:
  """Examples held in memory.

  Attributes:
    images: uint8 array [N, H, W, 3].
    labels: int32 [N] for a class task, or int32 [N, A] of 0/1 for a multi-label task.
    identities: str array [N]: the person each image shows.
    example_ids: str array [N]: stable ids (usually the image path relative to the data root).
  """

  images: np.ndarray
  labels: np.ndarray
  identities: np.ndarray
  example_ids: np.ndarray

  def __post_init__(self):
    n = len(self.images)
    for name in ("labels", "identities", "example_ids"):
      if len(getattr(self, name)) != n:
        raise ValueError(f"Examples.{name} has {len(getattr(self, name))} rows, images has {n}")

  def __len__(self) -> int:
    return len(self.images)

  def subset(self, index: np.ndarray | Sequence[int]) -> "Examples":
    index = np.asarray(index, dtype=np.int64)
    return Examples(self.images[index], self.labels[index], self.identities[index],
                    self.example_ids[index])

  @staticmethod
  def concatenate(parts: Sequence["Examples"]) -> "Examples":
    return Examples(*(np.concatenate([getattr(p, f.name) for p in parts])
                      for f in dataclasses.fields(Examples)))


def image_hash(image: np.ndarray) -> str:
  """Content hash of decoded pixels (shape included), for exact-duplicate detection."""
  h = hashlib.sha256(str(image.shape).encode())
  h.update(np.ascontiguousarray(image).tobytes())
  return h.hexdigest()[:16]


@dataclasses.dataclass
class LeakReport:
  """What :meth:`SplitManifest.check` found.

  Attributes:
    identity_overlaps: {"a/b": [identities in both a and b]} over the disjoint splits.
    duplicate_images: {"a/b": [[example id in a, example id in b], ...]} for byte-identical images.
    allowed_overlaps: overlaps the manifest declares on purpose (a published protocol).
  """

  identity_overlaps: dict[str, list[str]]
  duplicate_images: dict[str, list[list[str]]]
  allowed_overlaps: dict[str, list[str]]

  @property
  def ok(self) -> bool:
    return not self.identity_overlaps

  def to_dict(self) -> dict[str, Any]:
    return {
        "identity_disjoint": self.ok,
        "identity_overlaps": self.identity_overlaps,
        "allowed_overlaps": self.allowed_overlaps,
        "duplicate_images": {k: len(v) for k, v in self.duplicate_images.items()},
        "duplicate_examples": {k: v[:10] for k, v in self.duplicate_images.items()},
    }


@dataclasses.dataclass
class SplitManifest:
  """Named splits as lists of (example_id, identity).

  Attributes:
    dataset: the dataset name ("synthetic", "mufac", "mucac", ...).
    splits: {split name: [(example_id, identity), ...]} for every name in :data:`SPLITS`.
    image_hashes: {example_id: content hash}, used by the duplicate check.
    meta: free-form facts about how the split was made (forget mode, seed, counts, ...).
    allowed_overlaps: {"forget/retain": [identities]}: overlaps that a published protocol has and
      that this manifest reproduces on purpose. They are reported, not refused.
  """

  dataset: str
  splits: dict[str, list[tuple[str, str]]]
  image_hashes: dict[str, str] = dataclasses.field(default_factory=dict)
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)
  allowed_overlaps: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    missing = [s for s in SPLITS if s not in self.splits]
    if missing:
      raise DataError(f"manifest for {self.dataset!r} lacks splits {missing}")
    self.splits = {k: [(str(e), str(i)) for e, i in v] for k, v in self.splits.items()}

  def ids(self, split: str) -> list[str]:
    return [e for e, _ in self.splits[split]]

  def identities(self, split: str) -> set[str]:
    return {i for _, i in self.splits[split]}

  def to_dict(self) -> dict[str, Any]:
    return {
        "dataset": self.dataset,
        "meta": self.meta,
        "allowed_overlaps": self.allowed_overlaps,
        "splits": {k: [list(p) for p in v] for k, v in self.splits.items()},
        "image_hashes": self.image_hashes,
    }

  @property
  def content_hash(self) -> str:
    """sha256 over the split membership (not the meta), stable across runs and machines."""
    payload = json.dumps({k: self.splits[k] for k in SPLITS}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]

  def save(self, path: str | os.PathLike[str]) -> None:
    """Writes JSON atomically (:func:`mu_jax.checkpoints.atomic_write`)."""
    from mu_jax import checkpoints  # pylint: disable=import-outside-toplevel
    data = self.to_dict()
    data["content_hash"] = self.content_hash
    with checkpoints.atomic_write(os.fspath(path)) as f:
      json.dump(data, f)

  @classmethod
  def load(cls, path: str | os.PathLike[str]) -> "SplitManifest":
    with open(path) as f:
      data = json.load(f)
    m = cls(dataset=data["dataset"], splits={k: [tuple(p) for p in v] for k, v in data["splits"].items()},
            image_hashes=data.get("image_hashes", {}), meta=data.get("meta", {}),
            allowed_overlaps=data.get("allowed_overlaps", {}))
    if "content_hash" in data and data["content_hash"] != m.content_hash:
      raise DataError(f"{path}: content hash {data['content_hash']} does not match its splits "
                      f"({m.content_hash}); the file was edited or is corrupt")
    return m

  def leak_report(self) -> LeakReport:
    """Finds identities shared by disjoint splits and byte-identical images across splits."""
    overlaps, allowed = {}, {}
    for a, b in itertools.combinations(DISJOINT_SPLITS, 2):
      shared = sorted(self.identities(a) & self.identities(b))
      key = f"{a}/{b}"
      ok = set(self.allowed_overlaps.get(key, [])) | set(self.allowed_overlaps.get(f"{b}/{a}", []))
      if shared:
        bad = [i for i in shared if i not in ok]
        if bad:
          overlaps[key] = bad
        if len(bad) < len(shared):
          allowed[key] = [i for i in shared if i in ok]
    duplicates: dict[str, list[list[str]]] = {}
    if self.image_hashes:
      by_hash = {s: {} for s in DISJOINT_SPLITS}
      for s in DISJOINT_SPLITS:
        for e in self.ids(s):
          h = self.image_hashes.get(e)
          if h is not None:
            by_hash[s].setdefault(h, []).append(e)
      for a, b in itertools.combinations(DISJOINT_SPLITS, 2):
        pairs = [[ea, eb] for h in by_hash[a].keys() & by_hash[b].keys()
                 for ea in by_hash[a][h] for eb in by_hash[b][h]]
        if pairs:
          duplicates[f"{a}/{b}"] = sorted(pairs)
    return LeakReport(overlaps, duplicates, allowed)

  def check(self) -> LeakReport:
    """Validates the manifest and returns its leak report.

    Raises:
      DataError: train is not exactly retain + forget, or an example id is listed twice in a split.
      IdentityLeakError: a person is in two of forget, retain, test, unseen (undeclared).
    """
    for s in SPLITS:
      ids = self.ids(s)
      if len(set(ids)) != len(ids):
        dup = next(e for e, c in _counts(ids).items() if c > 1)
        raise DataError(f"split {s!r} lists example {dup!r} more than once")
    train, rf = set(self.ids("train")), set(self.ids("retain")) | set(self.ids("forget"))
    if train != rf or set(self.ids("retain")) & set(self.ids("forget")):
      extra = sorted(train ^ rf)[:5]
      raise DataError(f"train must be exactly retain + forget (disjoint); differing ids: {extra}")
    if not self.splits["forget"]:
      raise DataError("the forget split is empty: name at least one identity or example to forget")
    if not self.splits["retain"]:
      raise DataError("the forget split is the whole training set: nothing would be retained")
    report = self.leak_report()
    if not report.ok:
      detail = "; ".join(f"{k}: {v[:5]}{' ...' if len(v) > 5 else ''} ({len(v)} identities)"
                         for k, v in report.identity_overlaps.items())
      raise IdentityLeakError(f"identities shared between splits: {detail}")
    return report


def _counts(items: Iterable[str]) -> dict[str, int]:
  out: dict[str, int] = {}
  for x in items:
    out[x] = out.get(x, 0) + 1
  return out


@dataclasses.dataclass
class FaceDataset:
  """All examples of a dataset plus the manifest that splits them.

  Attributes:
    examples: every example referenced by the manifest, each exactly once.
    manifest: the split manifest.
    num_classes: number of logits of the task head.
    task: "multiclass" (softmax + CE) or "multilabel" (sigmoid + BCE).
    label_names: human names of the classes or attributes.
  """

  examples: Examples
  manifest: SplitManifest
  num_classes: int
  task: str = "multiclass"
  label_names: tuple[str, ...] = ()

  def __post_init__(self):
    self._index = {e: i for i, e in enumerate(self.examples.example_ids.tolist())}
    if len(self._index) != len(self.examples):
      raise DataError(f"{self.manifest.dataset}: duplicate example ids in the examples")
    for s in SPLITS:
      unknown = [e for e in self.manifest.ids(s) if e not in self._index]
      if unknown:
        raise DataError(f"manifest split {s!r} names examples that were not read: {unknown[:5]}")

  def split(self, name: str) -> Examples:
    if name not in SPLITS:
      raise KeyError(f"unknown split {name!r}; splits are {SPLITS}")
    return self.examples.subset([self._index[e] for e in self.manifest.ids(name)])

  def splits(self) -> dict[str, Examples]:
    return {s: self.split(s) for s in SPLITS}


def with_forget(dataset: FaceDataset, forget_ids: Sequence[str], meta: Mapping[str, Any] | None = None,
                allowed_overlaps: Mapping[str, list[str]] | None = None) -> FaceDataset:
  """Returns the dataset with train re-split into forget (``forget_ids``) and retain (the rest)."""
  train = dict(dataset.manifest.splits["train"])
  unknown = [e for e in forget_ids if e not in train]
  if unknown:
    raise DataError(f"forget request names examples that are not in train: {unknown[:5]}")
  fset = set(forget_ids)
  splits = dict(dataset.manifest.splits)
  splits["forget"] = [(e, train[e]) for e in forget_ids]
  splits["retain"] = [(e, i) for e, i in dataset.manifest.splits["train"] if e not in fset]
  manifest = SplitManifest(dataset.manifest.dataset, splits, dataset.manifest.image_hashes,
                           {**dataset.manifest.meta, **(meta or {})}, dict(allowed_overlaps or {}))
  return dataclasses.replace(dataset, manifest=manifest)


def first_rows_forget(dataset: FaceDataset, rows: int | None, mode: str = "paper") -> FaceDataset:
  """Forgets the first ``rows`` train rows, in file order: the MUFAC reference's protocol.

  It may cut a person in two; the persons shared by forget and retain are recorded in
  ``meta["paper_shared_identities"]`` and allowed as an overlap (reported, not hidden).

  Raises:
    DataError: ``rows`` is missing or leaves forget or retain empty.
  """
  train = dataset.manifest.splits["train"]
  if rows is None or not 0 < rows < len(train):
    raise DataError(f"forget_mode={mode!r} forgets the first paper_forget_rows train rows: "
                    f"paper_forget_rows={rows} must be in (0, {len(train)}) so that retain is not "
                    "empty")
  head, tail = train[:rows], train[rows:]
  shared = sorted({i for _, i in head} & {i for _, i in tail})
  return with_forget(dataset, [e for e, _ in head],
                     {"forget_mode": mode, "paper_forget_rows": rows,
                      "paper_shared_identities": shared,
                      "forget_identity_count": len({i for _, i in head})},
                     {"forget/retain": shared} if shared else {})


def choose_forget(dataset: FaceDataset, mode: str, *, count: int | None = None,
                  fraction: float | None = None, identities: Sequence[str] | None = None,
                  seed: int = 0, rule=None, rule_text: str = "") -> FaceDataset:
  """The one forget-set selection every reader uses.

  Args:
    dataset: the dataset with train still whole.
    mode: "identity" (whole persons: exactly one of ``count``, ``fraction`` or ``identities``,
      :func:`forget_identities`) or a reader's row rule (MUFAC's "paper", MUCAC's "range").
    count, fraction, identities, seed: the identity-mode request.
    rule: for any other mode, ``rule(dataset) -> FaceDataset`` applying it.
    rule_text: what the rule forgets, for the error that names identity-mode arguments given to it.

  Raises:
    DataError: identity-mode arguments given to a rule, not exactly one of them in identity mode,
      or an unknown mode.
  """
  given = [k for k, v in {"forget_count": count, "forget_fraction": fraction,
                          "forget_identities": identities}.items() if v is not None]
  if mode != "identity":
    if rule is None:
      raise DataError(f"unknown forget_mode {mode!r}")
    if given:
      raise DataError(f"forget_mode={mode!r} {rule_text}; {given} only apply to "
                      "forget_mode='identity'")
    return rule(dataset)
  if len(given) != 1:
    raise DataError("forget_mode='identity' needs exactly one of forget_count, forget_fraction or "
                    f"forget_identities; got {given or 'none'}")
  return forget_identities(dataset, identities=identities, count=count, fraction=fraction,
                           seed=seed)


def forget_identities(dataset: FaceDataset, *, identities: Sequence[str] | None = None,
                      count: int | None = None, fraction: float | None = None,
                      seed: int = 0) -> FaceDataset:
  """Forgets whole persons: every train image of the chosen identities.

  Exactly one of ``identities`` (explicit names), ``count`` or ``fraction`` (of train identities,
  drawn with ``seed``) must be given.

  Raises:
    DataError: a named identity is not in train, or the request is empty or takes every person.
  """
  train_ids = sorted(dataset.manifest.identities("train"))
  given = [x is not None for x in (identities, count, fraction)]
  if sum(given) != 1:
    raise DataError("give exactly one of identities, count or fraction for the forget set")
  if identities is not None:
    identities = [str(i) for i in identities]
    unknown = [i for i in identities if i not in set(train_ids)]
    if unknown:
      raise DataError(f"forget request names identities that are not in train: {unknown[:5]}")
    chosen = list(dict.fromkeys(identities))
  else:
    n = count if count is not None else int(round(fraction * len(train_ids)))
    if fraction is not None and not 0.0 < fraction < 1.0:
      raise DataError(f"forget fraction must be in (0, 1), got {fraction}")
    if n <= 0:
      raise DataError(f"forget request selects no identity (count={count}, fraction={fraction})")
    if n >= len(train_ids):
      raise DataError(f"forget request takes {n} of {len(train_ids)} train identities: "
                      "nothing would be retained")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(train_ids, size=n, replace=False).tolist())
  cset = set(chosen)
  forget_ids = [e for e, i in dataset.manifest.splits["train"] if i in cset]
  if len(forget_ids) == len(dataset.manifest.splits["train"]):
    raise DataError("the forget request covers every train image: nothing would be retained")
  return with_forget(dataset, forget_ids,
                     {"forget_mode": "identity", "forget_identities": sorted(cset), "forget_seed": seed})


def summarize(dataset: FaceDataset) -> dict[str, Any]:
  """Per split: images, identities and the label histogram; plus the leak check (JSON-ready)."""
  out: dict[str, Any] = {"dataset": dataset.manifest.dataset, "task": dataset.task,
                         "num_classes": dataset.num_classes, "manifest_hash": dataset.manifest.content_hash,
                         "splits": {}}
  for s in SPLITS:
    ex = dataset.split(s)
    if dataset.task == "multilabel":
      hist = {n: int(ex.labels[:, j].sum()) if len(ex) else 0
              for j, n in enumerate(dataset.label_names or range(dataset.num_classes))}
    else:
      counts = np.bincount(ex.labels.astype(np.int64), minlength=dataset.num_classes) if len(ex) else \
          np.zeros(dataset.num_classes, np.int64)
      names = dataset.label_names or tuple(str(i) for i in range(dataset.num_classes))
      hist = {str(n): int(c) for n, c in zip(names, counts)}
    out["splits"][s] = {"images": len(ex), "identities": len(set(ex.identities.tolist())),
                        "labels": hist}
  try:
    out["leak_check"] = dataset.manifest.check().to_dict()
  except DataError as e:
    out["leak_check"] = {"identity_disjoint": False, "error": str(e),
                         **dataset.manifest.leak_report().to_dict()}
  out["meta"] = dataset.manifest.meta
  return out
