"""Train step, data-parallel equality, deterministic resumable fit."""

import json
import os

import chex
import jax
import pytest

from mu_jax import parallel
from mu_jax.training import fit as fitlib, steps
from tests import helpers


def _step_on(devices, state, batch, rng, augment=True):
  fn = parallel.data_parallel(
      lambda s, b, r: steps.train_step(s, b, r, task="multiclass", augment=augment),
      in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED),
      out_specs=(parallel.REPLICATED, parallel.REPLICATED), devices=devices)
  return fn(parallel.replicate(state, devices), parallel.shard(batch, devices), rng)


def test_four_devices_available():
  assert len(jax.devices()) == 4


def test_train_steps_lower_the_loss_on_a_fixed_batch():
  ds = helpers.tiny_dataset()
  tr = ds.split("train")
  batch = {"image": tr.images[:16], "label": tr.labels[:16]}
  state = helpers.tiny_state()
  losses = []
  for i in range(8):
    state, m = _step_on(jax.devices()[:1], state, batch, jax.random.key(i), augment=False)
    state = parallel.to_host(state)
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0] - 0.1, losses


def test_data_parallel_step_on_4_devices_equals_1_device():
  ds = helpers.tiny_dataset()
  tr = ds.split("train")
  batch = {"image": tr.images[:16], "label": tr.labels[:16]}
  state = helpers.tiny_state()
  s1, m1 = _step_on(jax.devices()[:1], state, batch, jax.random.key(3))
  s4, m4 = _step_on(jax.devices()[:4], state, batch, jax.random.key(3))
  chex.assert_trees_all_close(parallel.to_host((s1.params, s1.batch_stats, m1)),
                              parallel.to_host((s4.params, s4.batch_stats, m4)), rtol=2e-5, atol=2e-6)


def _fit(tmp, epochs=3, **kw):
  ds = helpers.tiny_dataset()
  cfg = fitlib.TrainConfig(epochs=epochs, batch_size=16, lr=0.05, lr_boundaries=(2,))
  return fitlib.fit(helpers.tiny_model(), ds.split("train"), cfg, task="multiclass", seed=1,
                    stage_dir=str(tmp), eval_sets={"test": ds.split("test")}, progress=False, **kw)


def test_fit_writes_metrics_and_checkpoints(tmp_path):
  res = _fit(tmp_path)
  spe = len(helpers.tiny_dataset().split("train")) // 16
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["epoch"] for r in rows] == [1, 2, 3]
  assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy"} <= rows[0].keys()
  assert sorted(os.listdir(tmp_path / "checkpoints"), key=int) == [str(2 * spe), str(3 * spe)]  # keeps 2
  assert res.examples == 3 * spe * 16
  assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_fit_resumes_to_identical_parameters(tmp_path):
  full = _fit(tmp_path / "full")

  class Stop(Exception):
    pass

  def interrupt(epoch):
    if epoch == 2:
      raise Stop()

  with pytest.raises(Stop):
    _fit(tmp_path / "cut", on_epoch_end=interrupt)
  resumed = _fit(tmp_path / "cut")
  assert resumed.resumed_from_epoch == 2
  chex.assert_trees_all_equal(parallel.to_host(full.state.params), parallel.to_host(resumed.state.params))
  rows = [json.loads(l)["epoch"] for l in open(tmp_path / "cut" / "metrics.jsonl")]
  assert rows == [1, 2, 3]


def test_fit_is_deterministic_for_a_seed(tmp_path):
  a = _fit(tmp_path / "a", epochs=1)
  b = _fit(tmp_path / "b", epochs=1)
  chex.assert_trees_all_equal(parallel.to_host(a.state.params), parallel.to_host(b.state.params))


@pytest.mark.parametrize("field,value,match", [
    ("epochs", 0, "epochs must be positive"), ("lr", -0.1, "lr must be positive"),
    ("momentum", 1.5, "momentum"), ("batch_size", 0, "batch_size")])
def test_train_config_rejects_out_of_range_values(field, value, match):
  with pytest.raises(ValueError, match=match):
    fitlib.TrainConfig(**{field: value})


def test_train_config_rejects_unknown_fields():
  with pytest.raises(ValueError, match="unknown train config fields \\['epohcs'\\]"):
    fitlib.TrainConfig.from_config({"epohcs": 3})
