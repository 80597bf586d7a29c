"""The reference augmentation against Pillow (which computes torchvision's PIL transforms) and
against torchvision's functional ops where torchvision imports, plus hand-computed cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from mu_jax.data import augment


def _pillow_affine(img: np.ndarray, shear_deg: float, scale: float) -> np.ndarray:
  """What torchvision's F.affine(pil, 0, [0, 0], scale, [shear, 0], NEAREST, fill=0) hands Pillow:
  the inverse map [[1, tan(shear)], [0, 1]] / scale about the centre (W/2, H/2)."""
  h, w = img.shape[:2]
  t = np.tan(np.deg2rad(shear_deg))
  a, b = 1.0 / scale, t / scale
  cx, cy = w * 0.5, h * 0.5
  matrix = (a, b, cx - a * cx - b * cy, 0.0, a, cy - a * cy)
  out = Image.fromarray(img).transform((w, h), Image.AFFINE, matrix, Image.NEAREST, fillcolor=0)
  return np.asarray(out)


def _pillow_jitter(img: np.ndarray, factors, order) -> np.ndarray:
  pil = Image.fromarray(img)
  enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
  for k in order:
    pil = enhancers[k](pil).enhance(float(factors[k]))
  return np.asarray(pil)


def _images(seed, shapes=((16, 16), (17, 13), (128, 128))):
  rng = np.random.default_rng(seed)
  return rng, [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in shapes]


def test_hand_computed_nearest_scale_and_truncating_brightness():
  # 4×4, scale 2, no shear: output column x samples x' = (x + ½ − 2)/2 + 2 → 1.25, 1.75, 2.25, 2.75,
  # whose pixels are columns 1, 1, 2, 2 (and the same for rows). Bilinear would blend them.
  img = np.arange(16, dtype=np.uint8).reshape(4, 4, 1) * 10
  out = np.asarray(augment.affine_nearest(jnp.asarray(img), 0.0, 2.0))[..., 0]
  np.testing.assert_array_equal(out, img[np.ix_([1, 1, 2, 2], [1, 1, 2, 2])][..., 0])
  # Scale 0.5: x' = 2(x + ½ − 2) + 2 → −1, 1, 3, 5; the outer ring falls outside and is filled with 0.
  small = np.asarray(augment.affine_nearest(jnp.asarray(img + 1), 0.0, 0.5))[..., 0]
  np.testing.assert_array_equal(small, [[0, 0, 0, 0], [0, 51, 71, 0], [0, 131, 151, 0], [0, 0, 0, 0]])
  # Brightness truncates toward zero as Pillow's blend: 101·0.8 = 80.8 → 80; 250·1.2 → 255 (clip).
  px = jnp.array([[[101.0, 200.0, 250.0]]])
  np.testing.assert_array_equal(augment.adjust_brightness(px, 0.8), [[[80.0, 160.0, 200.0]]])
  np.testing.assert_array_equal(augment.adjust_brightness(px, 1.2), [[[121.0, 240.0, 255.0]]])


@pytest.mark.parametrize("k,name", [(0, "adjust_brightness"), (1, "adjust_contrast"),
                                    (2, "adjust_saturation")])
def test_jitter_ops_equal_pillow_enhance_exactly(k, name):
  rng, imgs = _images(1)
  fn = jax.jit(getattr(augment, name))
  for img in imgs:
    for factor in rng.uniform(0.8, 1.2, size=4):
      order = [k]
      want = _pillow_jitter(img, {k: factor}, order)
      got = np.asarray(fn(jnp.asarray(img, jnp.float32), factor))
      np.testing.assert_array_equal(got, want.astype(np.float32), err_msg=f"{name} {factor}")


def test_nearest_affine_equals_pillow_but_for_edge_rounding():
  rng, imgs = _images(2)
  fn = jax.jit(augment.affine_nearest)
  differ = total = 0
  for img in imgs * 4:
    shear, scale = rng.uniform(-10, 10), rng.uniform(0.8, 1.2)
    want = _pillow_affine(img, shear, scale)
    got = np.asarray(fn(jnp.asarray(img), shear, scale))
    assert got.dtype == np.uint8
    differ += int(np.any(got != want, axis=-1).sum())
    total += img.shape[0] * img.shape[1]
  # Pillow's 16.16 fixed point against float32 (module docstring): a few pixels in 10^4.
  assert differ <= 1e-3 * total, (differ, total)


def test_apply_equals_pillow_pipeline():
  rng, imgs = _images(3)
  fn = jax.jit(augment.apply)
  for img in imgs:
    for flip in (False, True):
      shear, scale = rng.uniform(-10, 10), rng.uniform(0.8, 1.2)
      factors = rng.uniform(0.8, 1.2, size=3)
      order = rng.permutation(3)
      x = img[:, ::-1] if flip else img
      want = _pillow_jitter(_pillow_affine(np.ascontiguousarray(x), shear, scale), factors, order)
      got = np.asarray(fn(jnp.asarray(img), flip, shear, scale, jnp.asarray(factors, jnp.float32),
                          jnp.asarray(order)))
      # Float input in [0, 1] is the same image: the result does not depend on the input dtype.
      again = np.asarray(fn(jnp.asarray(img, jnp.float32) / 255.0, flip, shear, scale,
                            jnp.asarray(factors, jnp.float32), jnp.asarray(order)))
      np.testing.assert_array_equal(again, got)
      # Edge-rounding pixels of the affine (see above) may differ; everything else is exact.
      assert np.mean(np.round(got * 255.0) != want) <= 1e-3


def test_augment_is_seeded_quantised_and_draws_both_jitter_orders():
  _, imgs = _images(4, shapes=((16, 16),) * 8)
  x = jnp.asarray(np.stack(imgs))
  pos = jnp.arange(8)
  fn = jax.jit(augment.augment)
  a = np.asarray(fn(jax.random.key(1), x, pos))
  assert a.shape == (8, 16, 16, 3) and a.dtype == np.float32
  assert a.min() >= 0.0 and a.max() <= 1.0
  assert np.abs(a * 255.0 - np.round(a * 255.0)).max() < 1e-3  # uint8 values throughout
  np.testing.assert_array_equal(a, fn(jax.random.key(1), x, pos))
  assert np.abs(a - np.asarray(fn(jax.random.key(2), x, pos))).max() > 0
  # Example i depends on its position only: reversing the batch reverses the output.
  np.testing.assert_array_equal(a[::-1], fn(jax.random.key(1), x[::-1], pos[::-1]))
  draws = jax.jit(jax.vmap(augment.sample))(jax.random.split(jax.random.key(0), 60))
  orders = {tuple(o) for o in np.asarray(draws["order"])}
  assert len(orders) > 2 and all(sorted(o) == [0, 1, 2] for o in orders)
  factors, shear, scale = (np.asarray(draws[k]) for k in ("factors", "shear_deg", "scale"))
  assert factors.min() >= 0.8 and factors.max() <= 1.2 and np.abs(shear).max() <= 10.0
  assert scale.min() >= 0.8 and scale.max() <= 1.2 and 0 < np.asarray(draws["flip"]).mean() < 1


def _torchvision_functional():
  """torchvision's functional transforms, or a skip where torchvision cannot be imported (its
  import can fail with errors other than ImportError when its compiled ops do not match torch)."""
  try:
    import torchvision.transforms.functional as tf
    from torchvision.transforms import InterpolationMode
  except Exception as e:  # noqa: BLE001  (any import failure means: not available here)
    pytest.skip(f"torchvision is not importable: {e!r}"[:200])
  return tf, InterpolationMode


def test_against_torchvision_functional_ops():
  tf, modes = _torchvision_functional()
  rng, imgs = _images(5)
  differ = total = 0
  for img in imgs * 3:
    pil = Image.fromarray(img)
    shear, scale = float(rng.uniform(-10, 10)), float(rng.uniform(0.8, 1.2))
    want = np.asarray(tf.affine(pil, angle=0.0, translate=[0, 0], scale=scale, shear=[shear, 0.0],
                                interpolation=modes.NEAREST, fill=0))
    got = np.asarray(augment.affine_nearest(jnp.asarray(img), shear, scale))
    differ += int(np.any(got != want, axis=-1).sum())
    total += img.shape[0] * img.shape[1]
    for fn, ours in ((tf.adjust_brightness, augment.adjust_brightness),
                     (tf.adjust_contrast, augment.adjust_contrast),
                     (tf.adjust_saturation, augment.adjust_saturation)):
      factor = float(rng.uniform(0.8, 1.2))
      np.testing.assert_array_equal(np.asarray(ours(jnp.asarray(img, jnp.float32), factor)),
                                    np.asarray(fn(pil, factor)).astype(np.float32))
  assert differ <= 1e-3 * total, (differ, total)
