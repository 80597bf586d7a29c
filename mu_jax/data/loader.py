"""Builds the data set a config names (``config.data``), whatever its reader."""

from __future__ import annotations

from typing import Any, Mapping

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


def load_dataset(cfg: Mapping[str, Any]) -> FaceDataset:
  """Reads the data set described by a config's ``data`` section.

  Args:
    cfg: ``config.data``: ``name`` (synthetic, mufac, mucac, identity_folder, tfds_mufac,
      tfds_mucac, csv), ``data_dir`` (for csv: the CSV file), ``image_size``, ``task`` and the
      ``forget`` request (``mode``, ``count``/``fraction``/``identities``, ``seed``; paper mode:
      ``paper_rows``).

  Raises:
    DataError: an unknown data set name or a missing ``data_dir``.
  """
  name = cfg["name"]
  kw = _forget_kwargs(cfg)
  forget = dict(cfg.get("forget", {}))
  if name == "synthetic":
    from mu_jax.data import synthetic
    return synthetic.make_dataset(
        num_identities=cfg["num_identities"], images_per_identity=cfg["images_per_identity"],
        image_size=cfg["image_size"], task=cfg.get("task", "age"), seed=cfg.get("seed", 0),
        test_fraction=cfg.get("test_fraction", 0.15), unseen_fraction=cfg.get("unseen_fraction", 0.15),
        paper_forget_rows=forget.get("paper_rows"), **kw)
  data_dir = cfg.get("data_dir")
  if not data_dir:
    raise DataError(f"data set {name!r} needs --config.data.data_dir=DIR (the downloaded files)")
  if name == "mufac":
    from mu_jax.data import mufac
    return mufac.read_mufac(data_dir, image_size=cfg["image_size"],
                            paper_forget_rows=forget.get("paper_rows") or 1500, **kw)
  if name == "mucac":
    from mu_jax.data import mucac
    return mucac.read_mucac(data_dir, image_size=cfg["image_size"], task=cfg.get("task", "multilabel"),
                            **kw)
  if name in ("tfds_mufac", "tfds_mucac"):
    # data_dir is the TFDS data dir the builder was prepared into (mu_jax.data.tfds_builders).
    from mu_jax.data import tfds_builders
    if name == "tfds_mufac":
      return tfds_builders.read_tfds("mufac", data_dir, image_size=cfg["image_size"],
                                     paper_forget_rows=forget.get("paper_rows") or 1500, **kw)
    return tfds_builders.read_tfds("mucac", data_dir, image_size=cfg["image_size"],
                                   task=cfg.get("task", "multilabel"), **kw)
  if name == "csv":
    # data_dir is the CSV file; image paths in it are relative to its folder.
    from mu_jax.data import csv_table
    return csv_table.read_csv_table(
        data_dir, image_size=cfg["image_size"], task=cfg.get("task"),
        test_fraction=cfg.get("test_fraction", 0.1), unseen_fraction=cfg.get("unseen_fraction", 0.1),
        split_seed=cfg.get("seed", 0), paper_forget_rows=forget.get("paper_rows"), **kw)
  if name == "identity_folder":
    from mu_jax.data import identity_folder
    kw.pop("forget_mode")
    return identity_folder.read_identity_folders(data_dir, image_size=cfg["image_size"], **kw)
  raise DataError(f"unknown data set {name!r}; use synthetic, mufac, mucac, identity_folder, "
                  "tfds_mufac, tfds_mucac or csv")
