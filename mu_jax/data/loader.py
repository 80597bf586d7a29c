"""Builds the data set a config names (``config.data``), whatever its reader."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from mu_jax.data.splits import DataError, FaceDataset


def _forget_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
  f = dict(cfg.get("forget", {}))
  count, names = f.get("count"), f.get("identities") or None
  # The configs default to a fraction; a count or names given on top of it replace it. ``is not
  # None``, so that count 0 is refused as an empty request instead of falling back to the fraction.
  fraction = None if count is not None or names is not None else f.get("fraction")
  return {"forget_mode": f.get("mode", "identity"), "forget_count": count,
          "forget_fraction": fraction, "forget_identities": names,
          "forget_seed": f.get("seed", 0)}


Reader = Callable[[Mapping[str, Any]], FaceDataset]
READERS: dict[str, Reader] = {}


def register_reader(name: str, reader: Reader) -> None:
  """Makes ``config.data.name == name`` read with ``reader(config.data)``.

  Both pipelines read through this one registry: classification uses the dataset as it is,
  retrieval relabels it by person (:mod:`mu_jax.retrieval.data`).

  Raises:
    ValueError: ``name`` is taken by another reader.
  """
  if name in READERS and READERS[name] is not reader:
    raise ValueError(f"data set reader {name!r} is already registered")
  READERS[name] = reader


def _data_dir(cfg: Mapping[str, Any]) -> str:
  data_dir = cfg.get("data_dir")
  if not data_dir:
    raise DataError(f"data set {cfg['name']!r} needs --config.data.data_dir=DIR (the downloaded "
                    "files)")
  return data_dir


def _synthetic(cfg: Mapping[str, Any]) -> FaceDataset:
  from mu_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  forget = dict(cfg.get("forget", {}))
  return synthetic.make_dataset(
      num_identities=cfg["num_identities"], images_per_identity=cfg["images_per_identity"],
      image_size=cfg["image_size"], task=cfg.get("task", "age"), seed=cfg.get("seed", 0),
      test_fraction=cfg.get("test_fraction", 0.15), unseen_fraction=cfg.get("unseen_fraction", 0.15),
      paper_forget_rows=forget.get("paper_rows"), **_forget_kwargs(cfg))


def _mufac(cfg: Mapping[str, Any]) -> FaceDataset:
  from mu_jax.data import mufac  # pylint: disable=import-outside-toplevel
  forget = dict(cfg.get("forget", {}))
  return mufac.read_mufac(_data_dir(cfg), image_size=cfg["image_size"],
                          paper_forget_rows=forget.get("paper_rows") or 1500, **_forget_kwargs(cfg))


def _mucac(cfg: Mapping[str, Any]) -> FaceDataset:
  from mu_jax.data import mucac  # pylint: disable=import-outside-toplevel
  return mucac.read_mucac(_data_dir(cfg), image_size=cfg["image_size"],
                          task=cfg.get("task", "multilabel"), **_forget_kwargs(cfg))


def _identity_folder(cfg: Mapping[str, Any]) -> FaceDataset:
  from mu_jax.data import identity_folder  # pylint: disable=import-outside-toplevel
  kw = _forget_kwargs(cfg)
  kw.pop("forget_mode")
  return identity_folder.read_identity_folders(_data_dir(cfg), image_size=cfg["image_size"], **kw)


def _synthetic_identities(cfg: Mapping[str, Any]) -> FaceDataset:
  from mu_jax.retrieval import data as rdata  # pylint: disable=import-outside-toplevel
  forget = dict(cfg.get("forget", {}))
  return rdata.make_synthetic_identities(
      cfg["num_identities"], cfg["images_per_identity"], cfg["image_size"],
      forget_count=forget.get("count"), forget_fraction=forget.get("fraction"),
      forget_identities=forget.get("identities") or None, forget_seed=forget.get("seed", 0),
      seed=cfg.get("seed", 0), nuisance=cfg.get("nuisance", 1.0),
      texture_gain=cfg.get("texture_gain", 1.5), max_shift=cfg.get("max_shift", 2))


def _tfds(cfg: Mapping[str, Any]) -> FaceDataset:
  # data_dir is the TFDS data dir the builder was prepared into (mu_jax.data.tfds_builders).
  from mu_jax.data import tfds_builders  # pylint: disable=import-outside-toplevel
  forget = dict(cfg.get("forget", {}))
  if cfg["name"] == "tfds_mufac":
    return tfds_builders.read_tfds("mufac", _data_dir(cfg), image_size=cfg["image_size"],
                                   paper_forget_rows=forget.get("paper_rows") or 1500,
                                   **_forget_kwargs(cfg))
  return tfds_builders.read_tfds("mucac", _data_dir(cfg), image_size=cfg["image_size"],
                                 task=cfg.get("task", "multilabel"), **_forget_kwargs(cfg))


def _csv(cfg: Mapping[str, Any]) -> FaceDataset:
  # data_dir is the CSV file; image paths in it are relative to its folder.
  from mu_jax.data import csv_table  # pylint: disable=import-outside-toplevel
  forget = dict(cfg.get("forget", {}))
  return csv_table.read_csv_table(
      _data_dir(cfg), image_size=cfg["image_size"], task=cfg.get("task"),
      test_fraction=cfg.get("test_fraction", 0.1), unseen_fraction=cfg.get("unseen_fraction", 0.1),
      split_seed=cfg.get("seed", 0), paper_forget_rows=forget.get("paper_rows"),
      **_forget_kwargs(cfg))


for _name, _reader in (("synthetic", _synthetic), ("mufac", _mufac), ("mucac", _mucac),
                       ("identity_folder", _identity_folder),
                       ("synthetic_identities", _synthetic_identities), ("tfds_mufac", _tfds),
                       ("tfds_mucac", _tfds), ("csv", _csv)):
  register_reader(_name, _reader)


def load_dataset(cfg: Mapping[str, Any]) -> FaceDataset:
  """Reads the data set described by a config's ``data`` section.

  Args:
    cfg: ``config.data``: ``name`` (a key of :data:`READERS`: synthetic, mufac, mucac,
      identity_folder, synthetic_identities, tfds_mufac, tfds_mucac, csv, or one added by
      :func:`register_reader`), ``data_dir`` (for csv: the CSV file), ``image_size``, ``task`` and the ``forget`` request (``mode``,
      ``count``/``fraction``/``identities``, ``seed``; paper mode: ``paper_rows``).

  Raises:
    DataError: an unknown data set name or a missing ``data_dir``.
  """
  name = cfg["name"]
  if name not in READERS:
    raise DataError(f"unknown data set {name!r}; readers: {', '.join(sorted(READERS))}")
  return READERS[name](cfg)
