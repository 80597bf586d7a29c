"""The input pipeline: seeded epochs, global batches over all devices, the reference augmentation.

Images stay uint8 on the host; they become float32 NHWC in [0, 1] on the device, with no mean/std
normalisation (as the MUFAC/MUCAC reference code does: ``ToTensor()`` only).

Last-batch policy (tested):
  * Training streams drop the last partial batch by default. Every step then has one shape (one
    trace) and BatchNorm never sees a tiny batch; the order is reshuffled every epoch, so over
    epochs every example is used. With fewer examples than a batch, the batch shrinks to the
    largest multiple of the device count that fits (``effective_batch_size``).
  * A stream may instead keep it, as torch's ``DataLoader`` does by default
    (``padded_train_batches``): the last batch is padded to the full shape with a 0/1 mask, so it
    compiles with the others, and the steps leave the padded rows out of losses and statistics.
  * Evaluation pads the last batch to full size and carries a 0/1 ``mask``; padded rows are dropped
    on the host, so every example is evaluated exactly once.

Augmentation (the reference's ``RandomHorizontalFlip``, ``RandomAffine(0, shear=10, scale=(0.8, 1.2))``
and ``ColorJitter(0.2, 0.2, 0.2)``) runs on the device inside the jitted step. Each example's random
parameters come from ``fold_in(rng, its position in the global batch)``, so the result does not
depend on how the batch is split over devices. The pixels are torchvision's on PIL images
(nearest-neighbour affine, uint8 jitter in random order): :mod:`mu_jax.data.augment`.
"""

from __future__ import annotations

import math
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from mu_jax.data.splits import Examples


def effective_batch_size(n: int, batch_size: int, n_devices: int) -> int:
  """The training batch for a stream of ``n`` examples (see the module docstring)."""
  if batch_size % n_devices:
    raise ValueError(f"batch size {batch_size} is not divisible by the {n_devices} devices")
  if n >= batch_size:
    return batch_size
  b = (n // n_devices) * n_devices
  if b == 0:
    raise ValueError(f"a stream of {n} examples cannot feed {n_devices} devices")
  return b


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
  """The example order of one epoch: a permutation that depends only on (seed, epoch)."""
  if not shuffle:
    return np.arange(n)
  return np.random.default_rng([seed, epoch]).permutation(n)


def train_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True
                  ) -> list[np.ndarray]:
  """Index arrays of the full batches of one epoch (the last partial batch dropped)."""
  order = epoch_order(n, seed, epoch, shuffle)
  return [order[i:i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def padded_train_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True
                         ) -> list[tuple[np.ndarray, np.ndarray]]:
  """(index, mask) pairs of one epoch, the last partial batch kept: ``ceil(n / batch_size)``.

  The order is :func:`epoch_order`'s, so the full batches equal :func:`train_batches`'; the last
  batch is padded with its own first index under mask 0.
  """
  if n <= 0:
    raise ValueError(f"a stream needs at least one example, got {n}")
  order = epoch_order(n, seed, epoch, shuffle)
  out = []
  for start in range(0, n, batch_size):
    idx = order[start:start + batch_size]
    mask = np.zeros(batch_size, np.float32)
    mask[:len(idx)] = 1.0
    if len(idx) < batch_size:
      idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[0], idx.dtype)])
    out.append((idx, mask))
  return out


def eval_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(index, mask) pairs covering 0..n-1 once, the last batch padded with index 0 and mask 0."""
  for start in range(0, n, batch_size):
    idx = np.arange(start, min(start + batch_size, n))
    mask = np.ones(batch_size, np.float32)
    if len(idx) < batch_size:
      mask[len(idx):] = 0.0
      idx = np.concatenate([idx, np.zeros(batch_size - len(idx), np.int64)])
    yield idx, mask


def num_eval_batches(n: int, batch_size: int) -> int:
  return math.ceil(n / batch_size)


def host_batch(examples: Examples, index: np.ndarray) -> dict[str, np.ndarray]:
  """The arrays a step consumes: uint8 images and labels."""
  return {"image": examples.images[index], "label": examples.labels[index]}


def to_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] → float32 [0, 1] (torchvision ``ToTensor``); float input passes through."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def augment(rng: jax.Array, images: jax.Array, positions: jax.Array) -> jax.Array:
  """The reference augmentation of a batch, as torchvision computes it on PIL images
  (:func:`mu_jax.data.augment.augment`; example i keyed by ``fold_in(rng, positions[i])``)."""
  from mu_jax.data import augment as augment_lib  # pylint: disable=import-outside-toplevel
  return augment_lib.augment(rng, images, positions)
