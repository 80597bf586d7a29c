"""The training run shared by the multi-process workers and the 1-process reference."""

import jax

from mu_jax import parallel
from mu_jax.data import pipeline
from mu_jax.training import steps
from tests import helpers

STEPS = 4
BATCH = 16


def train_steps():
  """``STEPS`` data-parallel train steps (augmented) from a fixed state; returns host params."""
  ds = helpers.tiny_dataset(size=8)
  train = ds.split("train")
  state = parallel.replicate(helpers.tiny_state(size=8))
  step = steps.compiled_train_step("multiclass", True)
  for i, idx in enumerate(pipeline.train_batches(len(train), BATCH, seed=0, epoch=0)[:STEPS]):
    state, _ = step(state, parallel.shard(pipeline.host_batch(train, idx)), jax.random.key(i))
  return parallel.to_host(state.params)
