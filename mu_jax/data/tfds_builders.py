"""TFDS builders for MUFAC and MUCAC, and a reader from prepared TFDS data to a FaceDataset.

TensorFlow is not a dependency, so everything here runs on TFDS's numpy paths (tested with tfds
4.9.10 and no TensorFlow installed):

* Preparing: ``builder.download_and_prepare(file_format="array_record",
  download_config=tfds.download.DownloadConfig(manual_dir=...))``. The default TFRecord format and
  encoding an ``Image`` feature from a numpy array both call TensorFlow, so the builders hand the
  ``Image`` feature encoded bytes instead: the original JPEG/PNG file bytes when the file is an RGB
  JPEG or PNG, otherwise a lossless PNG of its RGB conversion (:func:`images.rgb_file_bytes`).
  Images are stored at their original resolution; the size is chosen when reading.
* Without the ``importlib_resources`` backport (tfds installs it only on Python < 3.9), tfds 4.9.10
  fails to locate a builder defined inside a package (``code_path``) and ``download_and_prepare``
  raises ModuleNotFoundError; the builders set ``code_path`` to this file to skip that lookup.
* A missing or empty manual dir is refused by TFDS itself (an AssertionError that quotes
  ``MANUAL_DOWNLOAD_INSTRUCTIONS``); a manual dir without the expected files raises DataError.
* Reading: ``tfds.data_source(...)`` / ``builder.as_data_source()`` (not ``tfds.load`` or
  ``as_dataset``, which need TensorFlow). :func:`read_tfds` reads the image bytes undecoded
  (``tfds.decode.SkipDecoding``) and decodes them with :mod:`mu_jax.data.images`, the same code as
  the direct readers, so the pixels, and hence the manifest and its hash, are identical to
  :func:`mufac.read_mufac` / :func:`mucac.read_mucac` on the same files.

Features of both datasets: ``image`` (encoded bytes, decoded as uint8 [H, W, 3]), ``label``
(MUFAC: the age class 0..7; MUCAC: int32 [3] of 0/1 for Male, Smiling, Young, so one prepared copy
serves the multi-label and every binary task), ``identity`` (text: "F0001_D" or the CelebA identity
number), ``example_id`` (text, as the direct readers) and ``index`` (the example's position in its
source file: the CSV row order for MUFAC, the identity-file order for MUCAC). ``index`` restores the
source order that the MUFAC paper forget set ("the first 1,500 rows") depends on; the builders also
disable TFDS's shuffling, but :func:`read_tfds` does not rely on it.

Splits: MUFAC train / test / unseen = the train / val / test CSV (docs/datasets.md#mufac). MUCAC
train / test / unseen by the reference identity ranges (190 and 4855); :func:`read_tfds` joins them
again and applies whatever boundaries it is given, so a prepared copy does not fix the protocol.

The parsing is the readers' own (:func:`mufac.parse_mufac`, :func:`mucac.parse_mucac`), so the two
paths accept and refuse exactly the same files.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from mu_jax.data import images as images_lib
from mu_jax.data import mucac
from mu_jax.data import mufac
from mu_jax.data.splits import DataError, Examples, FaceDataset

_CITATION = """\
@article{choi2023towards,
  title={Towards Machine Unlearning Benchmarks: Forgetting the Personal Identities in Facial
         Recognition Systems},
  author={Choi, Dasol and Na, Dongbin},
  journal={arXiv preprint arXiv:2311.02240},
  year={2023}
}"""
_HOMEPAGE = "https://github.com/ndb796/MachineUnlearning"
SPLITS = ("train", "test", "unseen")


def _common_features(label: tfds.features.FeatureConnector) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      # encoding_format is ignored for encoded bytes; the stored bytes are JPEG or PNG.
      "image": tfds.features.Image(shape=(None, None, 3)),
      "label": label,
      "identity": tfds.features.Text(),
      "example_id": tfds.features.Text(),
      "index": tfds.features.Scalar(dtype=np.int64),
  })


def _find_root(manual_dir: os.PathLike[str] | str, marker: str, instructions: str) -> str:
  """The folder holding ``marker``: the manual dir itself or exactly one folder directly inside."""
  manual_dir = os.fspath(manual_dir)
  if os.path.exists(os.path.join(manual_dir, marker)):
    return manual_dir
  found = sorted(os.path.join(manual_dir, d) for d in os.listdir(manual_dir)
                 if os.path.exists(os.path.join(manual_dir, d, marker)))
  if len(found) == 1:
    return found[0]
  if found:
    raise DataError(f"{manual_dir}: {marker} found in several folders {found}; keep only one")
  raise DataError(f"{manual_dir}: {marker} not found there or in a folder directly inside it.\n"
                  f"{instructions}")


class Mufac(tfds.core.GeneratorBasedBuilder):
  """MUFAC: Korean family faces with 8 age classes (Choi & Na 2023)."""

  # tfds 4.9.10 computes code_path for a builder inside a package through the importlib_resources
  # backport, which it only installs on Python < 3.9; on 3.11 download_and_prepare then fails with
  # ModuleNotFoundError. Naming this file directly avoids that lookup (it is only used to look for
  # a checksums.tsv beside the builder, and there is none: the data are a manual download).
  code_path = tfds.core.Path(__file__)
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "The published 128x128 zip: train/val/test CSV as train/test/unseen."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download custom_korean_family_dataset_resolution_128.zip (the MUFAC link in the README of
https://github.com/ndb796/MachineUnlearning; the faces come from AI Hub's "Family Relationship
Dataset", dataSetSn=528, whose terms apply) and unzip it into the manual dir, so that either
<manual_dir>/custom_train_dataset.csv or
<manual_dir>/custom_korean_family_dataset_resolution_128/custom_train_dataset.csv exists, next to
custom_val_dataset.csv, custom_test_dataset.csv and the folders train_images/, val_images/ and
test_images/ (other folders such as fixed_val_dataset/ are ignored). Do not rename anything.
"""

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly: dataset_info_from_configs() expects the builder in its own package
    # folder with metadata files.
    return tfds.core.DatasetInfo(
        builder=self,
        description="MUFAC (Machine Unlearning for Facial Age Classifier): 128x128 Korean faces, "
                    "8 age classes, identity = family_id + person_id.",
        features=_common_features(tfds.features.ClassLabel(names=list(mufac.AGE_RANGES))),
        homepage=_HOMEPAGE,
        citation=_CITATION,
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = _find_root(dl_manager.manual_dir, mufac.LAYOUT["train"][0],
                      self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    parsed = mufac.parse_mufac(root)
    return {split: self._generate_examples(root, parsed[split]) for split in SPLITS}

  def _generate_examples(self, root: str, rows: list[mufac.MufacRow]):
    for index, row in enumerate(rows):
      path = os.path.join(root, row.folder, row.image_path)
      yield row.example_id, {
          "image": images_lib.rgb_file_bytes(path, name=f"{row.where}: {path}"),
          "label": row.age_class,
          "identity": row.identity,
          "example_id": row.example_id,
          "index": index,
      }


class Mucac(tfds.core.GeneratorBasedBuilder):
  """MUCAC: CelebA-HQ faces with identities and the Male, Smiling, Young attributes."""

  code_path = tfds.core.Path(__file__)  # See Mufac.code_path.
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "CelebA-HQ with identity numbers; train/test/unseen by 190 and 4855."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download CelebAMask-HQ.zip (https://github.com/switchablenorms/CelebAMask-HQ; its folder
CelebA-HQ-img/ holds the 30,000 images) and the annotation files CelebA-HQ-identity.txt and
CelebA-HQ-attribute.txt (linked from the MUCAC section of
https://github.com/ndb796/MachineUnlearning, via
ndb796/CelebA-HQ-Face-Identity-and-Attributes-Recognition-PyTorch). Place them so that either
<manual_dir> or <manual_dir>/CelebAMask-HQ holds CelebA-HQ-identity.txt, CelebA-HQ-attribute.txt and
CelebA-HQ-img/.
"""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="MUCAC (Machine Unlearning for Celebrity Attribute Classifier): CelebA-HQ "
                    "faces; label = [Male, Smiling, Young] as 0/1; identity = CelebA identity.",
        features=_common_features(tfds.features.Tensor(shape=(len(mucac.ATTRIBUTES),),
                                                       dtype=np.int32)),
        homepage=_HOMEPAGE,
        citation=_CITATION,
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = _find_root(dl_manager.manual_dir, mucac.IDENTITY_FILE,
                      self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    records, _ = mucac.parse_mucac(root)
    indexed = list(enumerate(records))

    def split_of(r: mucac.MucacRecord) -> str:
      if r.identity < mucac.TEST_MAX:
        return "test"
      return "train" if r.identity < mucac.RETAIN_MAX else "unseen"

    return {s: self._generate_examples(root, [(i, r) for i, r in indexed if split_of(r) == s])
            for s in SPLITS}

  def _generate_examples(self, root: str, records: list[tuple[int, mucac.MucacRecord]]):
    for index, r in records:
      path = os.path.join(root, mucac.IMAGE_DIR, r.file_name)
      yield r.example_id, {
          "image": images_lib.rgb_file_bytes(
              path, name=f"{mucac.IDENTITY_FILE} line {r.line}: {path}"),
          "label": np.asarray(r.attributes, np.int32),
          "identity": str(r.identity),
          "example_id": r.example_id,
          "index": index,
      }


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _read_splits(builder: tfds.core.DatasetBuilder, image_size: int | None, workers: int | None,
                 chunk_size: int, index_per_split: bool) -> tuple[Examples, list[str]]:
  """Reads every split into one Examples in the direct reader's order.

  Args:
    builder: a prepared builder.
    image_size: output side length or None.
    workers: decoding threads.
    chunk_size: records read and decoded at a time, so the encoded bytes of a large dataset never
      sit in memory all at once.
    index_per_split: True when ``index`` counts within each split (MUFAC: the splits then follow
      one another, train, test, unseen); False when it is global (MUCAC).

  Returns:
    (examples, the split each example was read from).
  """
  sources = builder.as_data_source(decoders={"image": tfds.decode.SkipDecoding()})
  missing = [s for s in SPLITS if s not in sources]
  if missing:
    raise DataError(f"{builder.data_dir}: prepared {builder.name} lacks splits {missing}")
  sizes = {s: len(sources[s]) for s in SPLITS}
  total = sum(sizes.values())
  offsets = {s: sum(sizes[t] for t in SPLITS[:SPLITS.index(s)]) if index_per_split else 0
             for s in SPLITS}
  pixels: np.ndarray | None = None
  labels: list[Any] = [None] * total
  identities, example_ids, split_of = [""] * total, [""] * total, [""] * total
  filled = np.zeros(total, bool)
  for s in SPLITS:
    source = sources[s]
    for lo in range(0, sizes[s], chunk_size):
      records = source.__getitems__(list(range(lo, min(lo + chunk_size, sizes[s]))))
      where = [f"tfds {builder.name} split {s} record {lo + k} ({_text(r['example_id'])})"
               for k, r in enumerate(records)]
      decoded = images_lib.load_images([bytes(r["image"]) for r in records], image_size,
                                       names=where, workers=workers)
      if pixels is None:
        pixels = np.empty((total,) + decoded.shape[1:], np.uint8)
      elif decoded.shape[1:] != pixels.shape[1:]:
        raise DataError(f"{where[0]}: images of shape {decoded.shape[1:]} and {pixels.shape[1:]}; "
                        "give an image size to resize them")
      for k, r in enumerate(records):
        p = offsets[s] + int(r["index"])
        if not 0 <= p < total or filled[p]:
          raise DataError(f"{where[k]}: index {int(r['index'])} is out of range or repeated; the "
                          "prepared data is inconsistent, prepare it again")
        filled[p] = True
        pixels[p] = decoded[k]
        labels[p] = r["label"]
        identities[p], example_ids[p], split_of[p] = _text(r["identity"]), _text(r["example_id"]), s
  if pixels is None:
    raise DataError(f"{builder.data_dir}: prepared {builder.name} holds no example")
  examples = Examples(pixels, np.asarray(labels, np.int32), np.asarray(identities, dtype=str),
                      np.asarray(example_ids, dtype=str))
  return examples, split_of


def read_tfds(name_or_builder: str | tfds.core.DatasetBuilder, data_dir: str | None = None, *,
              image_size: int | None = 128, workers: int | None = None, chunk_size: int = 256,
              **forget_args: Any) -> FaceDataset:
  """Reads a prepared MUFAC or MUCAC TFDS dataset into the FaceDataset the direct reader gives.

  Args:
    name_or_builder: "mufac" or "mucac" (optionally with a version, "mufac:1.0.0"), or a builder.
    data_dir: the TFDS data dir (with a name; a builder carries its own).
    image_size: as in the direct readers.
    workers: decoding threads.
    chunk_size: records read and decoded at a time.
    **forget_args: the direct reader's remaining keyword arguments: for MUFAC ``forget_mode``,
      ``forget_count``, ``forget_fraction``, ``forget_identities``, ``forget_seed``,
      ``paper_forget_rows``; for MUCAC also ``task``, ``test_max``, ``forget_max``, ``retain_max``.

  Returns:
    The dataset, with the same examples, order and manifest hash as the direct reader on the files
    the TFDS dataset was prepared from.

  Raises:
    DataError: the dataset is not prepared, not MUFAC/MUCAC, or inconsistent; or bad arguments.
  """
  if isinstance(name_or_builder, str):
    builder = tfds.builder(name_or_builder, data_dir=data_dir)
  else:
    builder = name_or_builder
  if builder.name not in ("mufac", "mucac"):
    raise DataError(f"read_tfds reads the mufac and mucac builders, not {builder.name!r}")
  if not builder.is_prepared():
    raise DataError(f"{builder.data_dir}: {builder.name} is not prepared; run "
                    "builder.download_and_prepare(file_format='array_record', download_config="
                    "tfds.download.DownloadConfig(manual_dir=...)) first")
  meta = {"source": f"tfds:{builder.name}/{builder.version} in {builder.data_dir}",
          "reader": "tfds", "image_size": image_size}
  if builder.name == "mufac":
    examples, split_of = _read_splits(builder, image_size, workers, chunk_size, True)
    return mufac.assemble(examples, split_of, meta=meta, **forget_args)
  examples, _ = _read_splits(builder, image_size, workers, chunk_size, False)
  return mucac.assemble(examples, meta=meta, **forget_args)
