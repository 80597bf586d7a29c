"""Image decoding shared by every reader: Pillow decode, RGB, torchvision-style resize, center crop.

The reference notebooks load faces with ``Image.open(path).convert("RGB")`` followed by
``transforms.Resize(128)``. Given an int, torchvision's ``Resize`` scales the shorter side to that
size, keeps the aspect ratio (the longer side becomes ``int(size * long / short)``) and, on PIL
images, uses Pillow's bilinear filter. :func:`load_image` does exactly that and then center-crops to
``size`` x ``size`` (with torchvision's ``CenterCrop`` rounding) so that every image of a dataset has
one array shape. For the published square crops (MUFAC's 128 x 128, CelebA-HQ's 1024 x 1024)
torchvision's ``Resize(128)`` already gives 128 x 128, so the crop removes nothing and the pixels
match the reference. EXIF orientation is not applied, as in the reference.

Every failure (missing file, unknown format, truncated data, unsupported pixel mode) raises
:class:`~mu_jax.data.splits.DataError` naming the file: :func:`load_image` forces a full decode with
``Image.load()`` so a truncated file cannot pass as a partly grey image.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
from typing import Callable, Sequence, Union

import numpy as np
from PIL import Image

from mu_jax.data.splits import DataError

# An image source: a path on disk or the encoded file bytes.
Source = Union[str, os.PathLike, bytes]

# Pixel modes whose values do not fit uint8: Pillow's convert("RGB") would clip them silently.
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _describe(source: Source, name: str | None) -> str:
  if name is not None:
    return name
  if isinstance(source, bytes):
    return f"<{len(source)} encoded bytes>"
  return os.fspath(source)


def _open(source: Source, name: str | None) -> Image.Image:
  """Opens and fully decodes an image, turning every Pillow failure into a DataError."""
  where = _describe(source, name)
  try:
    if isinstance(source, bytes):
      image = Image.open(io.BytesIO(source))
    else:
      image = Image.open(os.fspath(source))
    # Image.open only reads the header; load() decodes every pixel, so truncated data fails here.
    image.load()
  except FileNotFoundError as e:
    raise DataError(f"{where}: image file not found") from e
  except Image.DecompressionBombError as e:
    raise DataError(f"{where}: image too large to decode safely ({e})") from e
  except (OSError, ValueError, SyntaxError, EOFError) as e:
    # UnidentifiedImageError and "image file is truncated" are both OSErrors.
    raise DataError(f"{where}: unreadable or truncated image ({type(e).__name__}: {e})") from e
  if image.mode in _WIDE_MODES:
    raise DataError(f"{where}: pixel mode {image.mode!r} (16-bit or float) is not supported; "
                    "convert the image to 8-bit first")
  return image


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
  """Scales the shorter side to ``size`` as torchvision's ``Resize(size)`` does on PIL images.

  Args:
    image: an RGB Pillow image.
    size: target length of the shorter side.

  Returns:
    The resized image (the same object when the shorter side already has that length, as in
    torchvision).
  """
  w, h = image.size
  short, long = (w, h) if w <= h else (h, w)
  if short == size:
    return image
  new_short, new_long = size, int(size * long / short)
  new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
  return image.resize((new_w, new_h), Image.BILINEAR)


def center_crop(image: Image.Image, size: int) -> Image.Image:
  """Crops the central ``size`` x ``size`` window with torchvision ``CenterCrop``'s rounding."""
  w, h = image.size
  if (w, h) == (size, size):
    return image
  top = int(round((h - size) / 2.0))
  left = int(round((w - size) / 2.0))
  return image.crop((left, top, left + size, top + size))


def decode(source: Source, size: int | None, *, name: str | None = None) -> np.ndarray:
  """Decodes a path or encoded bytes to uint8 [H, W, 3]; see :func:`load_image`.

  Args:
    source: a file path or the encoded bytes of a file.
    size: output side length, or None to keep the decoded size.
    name: how error messages call the image (defaults to the path).

  Returns:
    uint8 array [size, size, 3], or [H, W, 3] when ``size`` is None.
  """
  if size is not None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
      raise DataError(f"image size must be a positive int or None, got {size!r}")
    size = int(size)
  image = _open(source, name)
  if image.mode != "RGB":
    image = image.convert("RGB")
  if size is not None:
    image = center_crop(resize_shorter_side(image, size), size)
  return np.asarray(image, dtype=np.uint8)


def load_image(path: str | os.PathLike, size: int | None) -> np.ndarray:
  """Loads one image as the reference does: RGB, shorter side to ``size``, then a center crop.

  Args:
    path: the image file.
    size: output side length (torchvision ``Resize(size)`` + ``CenterCrop(size)``), or None to keep
      the file's own size.

  Returns:
    uint8 array [size, size, 3] ([H, W, 3] when ``size`` is None). Grayscale and palette images
    become RGB.

  Raises:
    DataError: the file is missing, not an image, truncated, or 16-bit/float; the message names it.
  """
  return decode(path, size)


def load_images(sources: Sequence[Source], size: int | None, *,
                names: Sequence[str] | None = None, workers: int | None = None) -> np.ndarray:
  """Decodes many images on a thread pool, in order, into one uint8 [N, H, W, 3] array.

  Pillow releases the GIL while it decodes and resizes, so threads scale over cores. The output
  keeps the input order, and a failure reports the first bad image in that order (the remaining
  work is cancelled), so errors are deterministic.

  Args:
    sources: file paths or encoded bytes.
    size: output side length, or None to keep the decoded size (then all images must share it).
    names: per-source descriptions that replace the path in error messages (e.g.
      "custom_train_dataset.csv line 7: /data/train_images/x.jpg").
    workers: thread count; defaults to the number of CPUs (at most 16).

  Returns:
    uint8 array [N, size, size, 3].

  Raises:
    DataError: an image cannot be decoded, or (size None) images differ in shape.
  """
  n = len(sources)
  if names is not None and len(names) != n:
    raise ValueError(f"names has {len(names)} entries for {n} sources")
  if n == 0:
    return np.zeros((0, size or 0, size or 0, 3), np.uint8)

  def describe(i: int) -> str:
    return _describe(sources[i], None if names is None else names[i])

  def one(i: int) -> np.ndarray:
    return decode(sources[i], size, name=describe(i))

  workers = workers or min(16, os.cpu_count() or 1)
  if size is not None:
    out = np.empty((n, size, size, 3), np.uint8)

    def fill(i: int) -> None:
      out[i] = one(i)

    _run_in_order(fill, n, workers)
    return out
  decoded: list[np.ndarray] = [None] * n  # type: ignore[list-item]

  def keep(i: int) -> None:
    decoded[i] = one(i)

  _run_in_order(keep, n, workers)
  first = decoded[0].shape
  for i, image in enumerate(decoded):
    if image.shape != first:
      raise DataError(f"{describe(i)}: image is {image.shape[1]}x{image.shape[0]} but "
                      f"{describe(0)} is {first[1]}x{first[0]}; give an image size to resize them")
  return np.stack(decoded)


def _run_in_order(fn: Callable[[int], None], n: int, workers: int) -> None:
  """Runs fn(0..n-1) on a pool; re-raises the error of the lowest failing index."""
  if workers <= 1 or n == 1:
    for i in range(n):
      fn(i)
    return
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
  try:
    futures = [pool.submit(fn, i) for i in range(n)]
    for f in futures:
      # result() re-raises the worker's exception; walking in index order makes it the first bad one.
      f.result()
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def encode_png(image: np.ndarray) -> bytes:
  """Encodes a uint8 [H, W, 3] (or [H, W] / [H, W, 1]) array as PNG bytes (lossless)."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f"encode_png needs uint8 pixels, got {image.dtype}")
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4))):
    raise ValueError(f"encode_png needs [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {image.shape}")
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def rgb_file_bytes(path: str | os.PathLike, *, name: str | None = None) -> bytes:
  """Returns bytes that any decoder reads as this file's RGB pixels.

  An RGB JPEG or PNG is returned byte for byte; anything else (grayscale, palette, RGBA, other
  formats) becomes a lossless PNG of its RGB conversion. Decoding either with :func:`decode` gives
  exactly the pixels :func:`load_image` gives for the original file, and decoders that assume three
  channels (TFDS's ``Image`` feature) read it correctly too. The file is fully decoded, so a corrupt
  file fails here.

  Raises:
    DataError: the file is missing or cannot be decoded.
  """
  image = _open(path, name)
  if image.mode == "RGB" and image.format in ("JPEG", "PNG"):
    with open(path, "rb") as f:
      return f.read()
  return encode_png(np.asarray(image.convert("RGB"), dtype=np.uint8))
