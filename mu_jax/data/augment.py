"""The reference training augmentation, pixel for pixel as torchvision computes it on PIL images.

The MUFAC/MUCAC notebooks (Choi & Na, arXiv 2311.02240; ndb796/MachineUnlearning) train with

    RandomHorizontalFlip() → RandomAffine(0, shear=10, scale=(0.8, 1.2))
    → ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2) → ToTensor()

on PIL images, so every stage works on uint8 pixels:

* ``RandomAffine`` interpolates nearest-neighbour (torchvision's default) about the centre
  (W/2, H/2) and fills with 0. Pillow samples output pixel (x, y) at the input point
  M⁻¹·(x + ½ − W/2, y + ½ − H/2) + (W/2, H/2) and takes the pixel that contains it (floor), with
  M⁻¹ = [[1, tan(shear)], [0, 1]] / scale for a shear along x (torchvision's
  ``_get_inverse_affine_matrix`` with angle 0 and no translation). Pillow evaluates that map in
  16.16 fixed point (its ``affine_fixed``), this module in float32, so a pixel whose source point
  lies within about 1e-3 px of a pixel edge can take the neighbouring pixel: 30 of 101,643 pixels
  over 20 random images at 13×17, 16×16 and 128×128 in our comparison with torchvision 0.28.
* ``ColorJitter`` applies brightness, contrast and saturation in a random order (torchvision draws a
  permutation per image), each factor uniform in [0.8, 1.2]. Each is Pillow's ``ImageEnhance``: a
  blend ``degenerate + factor·(image − degenerate)`` computed in float32 and truncated to uint8 (then
  clipped to [0, 255]), with degenerate = 0 (brightness), the rounded mean of the image's Pillow
  grey level (contrast), or the per-pixel Pillow grey level (saturation). Pillow's grey level is
  (19595·R + 38470·G + 7471·B + 2¹⁵) >> 16.

Every intermediate is therefore an integer in [0, 255]; :func:`augment` returns float32 in [0, 1]
(``ToTensor``). Every training step uses it (through ``mu_jax.data.pipeline.augment``), with
per-example keys ``fold_in(rng, global position)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# torchvision's RandomAffine(0, shear=10, scale=(0.8, 1.2)) and ColorJitter(0.2, 0.2, 0.2).
SHEAR_DEG = 10.0
SCALE = (0.8, 1.2)
JITTER = 0.2


def to_pixels(image: jax.Array) -> jax.Array:
  """uint8 pixels, or floats in [0, 1] rounded back to the uint8 grid, as float32 in [0, 255]."""
  if image.dtype == jnp.uint8:
    return image.astype(jnp.float32)
  return jnp.clip(jnp.round(image.astype(jnp.float32) * 255.0), 0.0, 255.0)


def affine_nearest(image: jax.Array, shear_deg: jax.Array, scale: jax.Array) -> jax.Array:
  """Pillow's nearest-neighbour affine of torchvision ``F.affine(img, 0, [0, 0], scale,
  [shear_deg, 0], NEAREST, fill=0)`` on one [H, W, C] image (any dtype; values are only moved).

  Args:
    image: [H, W, C].
    shear_deg: shear along x in degrees.
    scale: the scale factor.

  Returns:
    The transformed [H, W, C] image, same dtype; pixels mapped from outside the input are 0.
  """
  h, w = image.shape[:2]
  t = jnp.tan(jnp.deg2rad(jnp.asarray(shear_deg, jnp.float32)))
  s = jnp.asarray(scale, jnp.float32)
  # Pixel centres relative to the image centre (W/2, H/2), as Pillow's affine transform sees them.
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + 0.5 - h / 2.0,
                        jnp.arange(w, dtype=jnp.float32) + 0.5 - w / 2.0, indexing="ij")
  src_x = (xx + t * yy) / s + w / 2.0
  src_y = yy / s + h / 2.0
  xi, yi = jnp.floor(src_x).astype(jnp.int32), jnp.floor(src_y).astype(jnp.int32)
  inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
  picked = image[jnp.clip(yi, 0, h - 1), jnp.clip(xi, 0, w - 1)]
  return jnp.where(inside[..., None], picked, jnp.zeros((), image.dtype))


def pillow_grey(pixels: jax.Array) -> jax.Array:
  """Pillow's ``convert("L")`` of [..., 3] integer pixels (float32 values in [0, 255]) → [...]."""
  p = pixels.astype(jnp.int32)
  return ((p[..., 0] * 19595 + p[..., 1] * 38470 + p[..., 2] * 7471 + 0x8000) >> 16).astype(jnp.float32)


def _blend(degenerate: jax.Array, pixels: jax.Array, factor: jax.Array) -> jax.Array:
  """Pillow's ``Image.blend(degenerate, image, factor)`` on uint8 values: float32, truncated, clipped."""
  out = degenerate + jnp.asarray(factor, jnp.float32) * (pixels - degenerate)
  return jnp.clip(jnp.trunc(out), 0.0, 255.0)


def adjust_brightness(pixels: jax.Array, factor: jax.Array) -> jax.Array:
  """torchvision ``F.adjust_brightness`` on a PIL image: ``ImageEnhance.Brightness``."""
  return _blend(jnp.zeros_like(pixels), pixels, factor)


def adjust_contrast(pixels: jax.Array, factor: jax.Array) -> jax.Array:
  """torchvision ``F.adjust_contrast`` on a PIL image: ``ImageEnhance.Contrast``, whose degenerate
  image is the mean grey level rounded to an integer."""
  mean = jnp.floor(jnp.mean(pillow_grey(pixels)) + 0.5)
  return _blend(jnp.full_like(pixels, mean), pixels, factor)


def adjust_saturation(pixels: jax.Array, factor: jax.Array) -> jax.Array:
  """torchvision ``F.adjust_saturation`` on a PIL image: ``ImageEnhance.Color``."""
  grey = pillow_grey(pixels)[..., None]
  return _blend(jnp.broadcast_to(grey, pixels.shape), pixels, factor)


def apply(image: jax.Array, flip: jax.Array, shear_deg: jax.Array, scale: jax.Array,
          factors: jax.Array, order: jax.Array) -> jax.Array:
  """The augmentation of one image with given random parameters.

  Args:
    image: [H, W, 3] uint8, or float in [0, 1] (rounded to the uint8 grid first).
    flip: bool, mirror left-right first.
    shear_deg, scale: the affine's parameters.
    factors: [3] brightness, contrast and saturation factors.
    order: [3] a permutation of (0, 1, 2): which of brightness (0), contrast (1), saturation (2)
      runs first, second, third.

  Returns:
    [H, W, 3] float32 in [0, 1], every value a multiple of 1/255.
  """
  x = to_pixels(image)
  x = jnp.where(flip, x[:, ::-1], x)
  x = affine_nearest(x, shear_deg, scale)
  ops = (adjust_brightness, adjust_contrast, adjust_saturation)
  for i in range(3):
    k = order[i]
    x = lax.switch(k, [lambda v, op=op: op(v, factors[k]) for op in ops], x)
  return x / 255.0


def sample(rng: jax.Array, shear_deg: float = SHEAR_DEG, scale: tuple[float, float] = SCALE,
           jitter: float = JITTER) -> dict[str, jax.Array]:
  """One image's random parameters, with torchvision's distributions (keyword arguments of
  :func:`apply`)."""
  k_flip, k_shear, k_scale, k_jit, k_order = jax.random.split(rng, 5)
  return {
      "flip": jax.random.bernoulli(k_flip),
      "shear_deg": jax.random.uniform(k_shear, (), minval=-shear_deg, maxval=shear_deg),
      "scale": jax.random.uniform(k_scale, (), minval=scale[0], maxval=scale[1]),
      "factors": jax.random.uniform(k_jit, (3,), minval=1 - jitter, maxval=1 + jitter),
      "order": jax.random.permutation(k_order, 3),
  }


def augment_one(rng: jax.Array, image: jax.Array) -> jax.Array:
  """The reference augmentation of one [H, W, 3] image (uint8, or float in [0, 1])."""
  return apply(image, **sample(rng))


def augment(rng: jax.Array, images: jax.Array, positions: jax.Array) -> jax.Array:
  """Augments a batch; example i uses ``fold_in(rng, positions[i])`` (its global batch position).

  Args:
    rng: the batch's key.
    images: [B, H, W, 3] uint8, or float in [0, 1].
    positions: [B] global batch positions (``mu_jax.parallel.global_index``).

  Returns:
    [B, H, W, 3] float32 in [0, 1].
  """
  keys = jax.vmap(lambda p: jax.random.fold_in(rng, p))(positions)
  return jax.vmap(augment_one)(keys, images)
