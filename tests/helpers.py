"""Small shared builders for tests."""

import functools

import jax

from mu_jax.data import synthetic
from mu_jax.models import create_model
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
