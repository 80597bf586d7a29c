"""Tests of image decoding: torchvision Resize(int) semantics, RGB conversion, clear errors."""

import io

import numpy as np
from PIL import Image
import pytest

from mu_jax.data import images
from mu_jax.data.splits import DataError
from tests import fixtures


def test_square_image_is_resized_to_size(tmp_path):
  pixels = fixtures.write_image(tmp_path / "a.png", (16, 16))
  out = images.load_image(tmp_path / "a.png", 8)
  assert out.shape == (8, 8, 3) and out.dtype == np.uint8
  expected = np.asarray(Image.fromarray(pixels).resize((8, 8), Image.BILINEAR))
  np.testing.assert_array_equal(out, expected)


def test_non_square_resizes_shorter_side_then_center_crops(tmp_path):
  # 10 wide x 25 high: torchvision Resize(4) gives 4 x int(4 * 25 / 10) = 4 x 10, then crop rows 3..7.
  pixels = fixtures.write_image(tmp_path / "tall.png", (10, 25))
  out = images.load_image(tmp_path / "tall.png", 4)
  resized = np.asarray(Image.fromarray(pixels).resize((4, 10), Image.BILINEAR))
  np.testing.assert_array_equal(out, resized[3:7])
  # Wide image: the crop is horizontal, with CenterCrop's rounding (left = round((9 - 4) / 2) = 2).
  pixels = fixtures.write_image(tmp_path / "wide.png", (18, 8))
  out = images.load_image(tmp_path / "wide.png", 4)
  resized = np.asarray(Image.fromarray(pixels).resize((9, 4), Image.BILINEAR))
  np.testing.assert_array_equal(out, resized[:, 2:6])


def test_size_none_keeps_pixels_and_grayscale_becomes_rgb(tmp_path):
  pixels = fixtures.write_image(tmp_path / "g.pgm", (5, 7), mode="L", fmt="PPM")
  out = images.load_image(tmp_path / "g.pgm", None)
  assert out.shape == (7, 5, 3)
  for c in range(3):
    np.testing.assert_array_equal(out[..., c], pixels)


def test_missing_unreadable_and_truncated_files_name_the_path(tmp_path):
  with pytest.raises(DataError, match=r"nope\.png: image file not found"):
    images.load_image(tmp_path / "nope.png", 8)
  (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
  with pytest.raises(DataError, match=r"junk\.jpg: unreadable"):
    images.load_image(tmp_path / "junk.jpg", 8)
  fixtures.write_image(tmp_path / "cut.png", (32, 32))
  data = (tmp_path / "cut.png").read_bytes()
  (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
  with pytest.raises(DataError, match=r"cut\.png: unreadable or truncated"):
    images.load_image(tmp_path / "cut.png", 8)
  Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "deep.png")
  with pytest.raises(DataError, match=r"deep\.png: pixel mode"):
    images.load_image(tmp_path / "deep.png", 8)
  with pytest.raises(DataError, match="positive int"):
    images.load_image(tmp_path / "cut.png", 0)


def test_load_images_keeps_order_and_reports_the_first_bad_file(tmp_path):
  paths = [tmp_path / f"{i}.png" for i in range(12)]
  expected = np.stack([fixtures.write_image(p, (6, 6)) for p in paths])
  np.testing.assert_array_equal(images.load_images(paths, None, workers=4), expected)
  np.testing.assert_array_equal(images.load_images(paths, 6, workers=4), expected)
  paths[7].write_bytes(b"bad")
  paths[9].write_bytes(b"bad")
  names = [f"list.csv line {i + 2}" for i in range(12)]
  with pytest.raises(DataError, match=r"^list\.csv line 9: unreadable"):
    images.load_images(paths, 6, names=names, workers=4)
  assert images.load_images([], 6).shape == (0, 6, 6, 3)


def test_load_images_without_size_refuses_mixed_shapes(tmp_path):
  fixtures.write_image(tmp_path / "a.png", (6, 6))
  fixtures.write_image(tmp_path / "b.png", (6, 7))
  with pytest.raises(DataError, match=r"b\.png: image is 6x7"):
    images.load_images([tmp_path / "a.png", tmp_path / "b.png"], None)


def test_encode_png_and_rgb_file_bytes_round_trip(tmp_path):
  pixels = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
  np.testing.assert_array_equal(images.decode(images.encode_png(pixels), None), pixels)
  # An RGB JPEG is kept byte for byte; a grayscale PGM becomes a PNG with the same RGB pixels.
  fixtures.write_image(tmp_path / "c.jpg", (8, 8))
  assert images.rgb_file_bytes(tmp_path / "c.jpg") == (tmp_path / "c.jpg").read_bytes()
  fixtures.write_image(tmp_path / "g.pgm", (8, 8), mode="L", fmt="PPM")
  data = images.rgb_file_bytes(tmp_path / "g.pgm")
  assert Image.open(io.BytesIO(data)).format == "PNG"
  np.testing.assert_array_equal(images.decode(data, 4), images.load_image(tmp_path / "g.pgm", 4))
  with pytest.raises(ValueError, match="uint8"):
    images.encode_png(pixels.astype(np.float32))
