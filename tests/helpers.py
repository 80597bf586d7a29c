"""Small shared builders for tests."""

import functools

import jax
import pytest

from experiments.configs import synthetic as synthetic_config
from mu_jax.data import synthetic
from mu_jax.models import create_model
from mu_jax.ops import conv as conv_ops
from mu_jax.training import fit as fitlib


@functools.lru_cache(maxsize=None)
def tiny_dataset(task: str = "age", size: int = 16, identities: int = 24, per: int = 8):
  return synthetic.make_dataset(num_identities=identities, images_per_identity=per, image_size=size,
                                task=task, forget_fraction=0.2)


def tiny_model(num_classes: int = 8, **kw):
  return create_model("small_cnn", num_classes, width=kw.pop("width", 4), **kw)


def tiny_state(model=None, cfg=None, size=16, seed=0):
  model = model or tiny_model()
  cfg = cfg or fitlib.TrainConfig(epochs=1, batch_size=16, lr=0.05)
  return fitlib.new_state(model, jax.random.key(seed), (size, size, 3), cfg, 10)


def tiny_config(overrides: dict | None = None):
  """The runlocal synthetic config shrunk to seconds: 16 persons x 4 images at 8x8, width 4.

  ``overrides`` maps dotted keys ("data.image_size") to values set on top.
  """
  c = synthetic_config.get_config("runlocal")
  c.data.num_identities = 16
  c.data.images_per_identity = 4
  c.data.image_size = 8
  c.model.width = 4
  c.train.epochs = 2
  c.train.batch_size = 8
  c.train.lr_boundaries = ()
  c.unlearn.batch_size = 8
  c.eval.bootstrap = 20
  c.update_from_flattened_dict(overrides or {})
  return c.to_dict()


@pytest.fixture(autouse=True, scope="module")
def lax_convolutions():
  """Plain ``lax`` convolutions for a test module: they compile faster than the CPU lowering of
  :mod:`mu_jax.ops.conv` (equal to float32 rounding, tests/test_ops_conv.py), which keeps modules
  that compile many small steps within their time budget. Import it into a module to apply it."""
  old = conv_ops.get_impl()
  conv_ops.set_impl("xla")
  yield
  conv_ops.set_impl(old)
