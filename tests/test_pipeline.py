"""Batching policy and augmentation of the input pipeline."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mu_jax.data import pipeline


def test_train_batches_drop_the_last_partial_batch_and_reshuffle():
  b0 = pipeline.train_batches(10, 4, seed=0, epoch=0)
  b1 = pipeline.train_batches(10, 4, seed=0, epoch=1)
  assert [len(b) for b in b0] == [4, 4]
  assert len(set(np.concatenate(b0))) == 8
  assert not np.array_equal(np.concatenate(b0), np.concatenate(b1))
  np.testing.assert_array_equal(np.concatenate(b0), np.concatenate(pipeline.train_batches(10, 4, 0, 0)))


def test_eval_batches_cover_every_example_once_with_a_mask():
  got = list(pipeline.eval_batches(10, 4))
  idx = np.concatenate([i[m > 0] for i, m in got])
  np.testing.assert_array_equal(idx, np.arange(10))
  assert got[-1][1].tolist() == [1, 1, 0, 0]


def test_effective_batch_size():
  assert pipeline.effective_batch_size(100, 64, 4) == 64
  assert pipeline.effective_batch_size(30, 64, 4) == 28
  with pytest.raises(ValueError, match="cannot feed"):
    pipeline.effective_batch_size(3, 64, 4)
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.effective_batch_size(100, 30, 4)


def test_to_float_is_totensor():
  x = jnp.array([[[[0, 255, 51]]]], jnp.uint8)
  np.testing.assert_allclose(pipeline.to_float(x), [[[[0.0, 1.0, 0.2]]]], rtol=1e-6)


def test_augmentation_is_seeded_bounded_and_varies():
  x = jax.random.uniform(jax.random.key(0), (6, 16, 16, 3))
  pos = jnp.arange(6)
  a = pipeline.augment(jax.random.key(1), x, pos)
  b = pipeline.augment(jax.random.key(1), x, pos)
  c = pipeline.augment(jax.random.key(2), x, pos)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
  # Example i depends only on its own position key: reordering positions reorders outputs.
  d = pipeline.augment(jax.random.key(1), x[::-1], pos[::-1])
  np.testing.assert_allclose(d[::-1], a, rtol=1e-6)
