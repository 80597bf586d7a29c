"""Embedding model, margin heads, identity-labelled data, margin training and retrieval evaluation."""

import functools
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mu_jax import parallel
from mu_jax.methods import driver
from mu_jax.retrieval import data as rdata
from mu_jax.retrieval import evaluate as reval
from mu_jax.retrieval import model as rmodel
from mu_jax.retrieval import train as rtrain
from mu_jax.training import fit as fitlib
from tests import helpers
from tests.helpers import lax_convolutions  # noqa: F401  (autouse fixture)


def tiny_embedding_model(num_classes, head="cosface", **kw):
  return rmodel.create_embedding_model("small_cnn", num_classes, embed_dim=16, head=head, width=4, **kw)


def tiny_data():
  return rdata.retrieval_data(helpers.tiny_dataset())


# ------------------------------------------------------------------------------- margin heads


def test_cosface_equals_direct_formula():
  rng = np.random.default_rng(0)
  cos = rng.uniform(-1, 1, (6, 5)).astype(np.float32)
  y = np.array([0, 1, 2, 3, 4, 0])
  out = np.asarray(rmodel.margin_logits(jnp.asarray(cos), jnp.asarray(y), "cosface", 30.0, 0.35))
  want = 30.0 * cos
  want[np.arange(6), y] = 30.0 * (cos[np.arange(6), y] - 0.35)
  np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-5)


def test_arcface_equals_direct_formula_and_its_continuation():
  m, s = 0.5, 16.0
  # True-class cosines on both sides of cos(π − m) ≈ −0.878.
  cos_y = np.array([0.99, 0.5, 0.0, -0.5, -0.87, -0.9, -0.99], np.float32)
  cos = np.full((7, 3), 0.1, np.float32)
  cos[:, 1] = cos_y
  y = np.ones(7, np.int64)
  out = np.asarray(rmodel.margin_logits(jnp.asarray(cos), jnp.asarray(y), "arcface", s, m))
  theta = np.arccos(cos_y.astype(np.float64))
  want_y = np.where(theta + m <= np.pi, np.cos(theta + m), cos_y - m * np.sin(m))
  np.testing.assert_allclose(out[:, 1], s * want_y, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out[:, [0, 2]], s * 0.1, rtol=1e-6)
  # The continuation keeps the target logit decreasing in θ (monotone through the switch).
  assert np.all(np.diff(out[:, 1]) < 0)


def test_model_head_matches_formula_from_its_parameters():
  model = tiny_embedding_model(5, head="arcface", scale=10.0)
  x = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (4, 16, 16, 3)), jnp.float32)
  variables = jax.jit(lambda r: model.init(r, x, train=False))(jax.random.key(0))
  logits, emb = jax.jit(lambda v: model.apply(v, x, train=False, features=True))(variables)
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
  w = np.asarray(variables["params"]["fc"]["Dense_0"]["kernel"])
  cos = np.asarray(emb) @ (w / np.linalg.norm(w, axis=0))
  np.testing.assert_allclose(logits, 10.0 * cos, rtol=1e-4, atol=1e-5)
  y = jnp.array([0, 1, 2, 3])
  with_margin = jax.jit(lambda v: model.apply(v, x, train=False, labels=y))(variables)
  want = rmodel.margin_logits(jnp.asarray(cos), y, "arcface", 10.0, 0.5)
  np.testing.assert_allclose(with_margin, want, rtol=1e-4, atol=1e-4)
  # The head has no bias, and the classification driver reads the identity count from the model.
  assert set(variables["params"]["fc"]["Dense_0"]) == {"kernel"}
  state = helpers.tiny_state(model)
  data = tiny_data()
  assert driver.spec_for(state, data.unlearning_splits(), "multiclass").num_classes == 5


def test_create_embedding_model_validates():
  with pytest.raises(ValueError, match="head"):
    rmodel.create_embedding_model("small_cnn", 4, head="sphereface")
  with pytest.raises(ValueError, match="scale"):
    rmodel.create_embedding_model("small_cnn", 4, scale=0.0)
  assert rmodel.create_embedding_model("small_cnn", 4, head="arcface").margin == 0.5


# ----------------------------------------------------------------------------------------- data


def test_identity_labels_index_train_persons_first():
  data = tiny_data()
  ds = data.dataset
  train_persons = sorted(ds.manifest.identities("train"))
  assert ds.num_classes == len(train_persons) and ds.label_names == tuple(train_persons)
  for ex in (data.train, data.retain, data.forget):
    assert all(train_persons[l] == p for l, p in zip(ex.labels, ex.identities))
  assert len(data.heldout) and np.all(data.heldout.labels >= ds.num_classes)
  # One label per person, distinct across persons.
  pairs = set(zip(ds.examples.labels.tolist(), ds.examples.identities.tolist()))
  assert len(pairs) == len({p for _, p in pairs})
  assert set(data.forget_identities) == set(data.forget.identities)
  # Idempotent (identity-folder datasets are already labelled this way).
  again = rdata.identity_labels(ds)
  np.testing.assert_array_equal(again.examples.labels, ds.examples.labels)


def test_synthetic_identities_are_deterministic_and_split_by_person():
  a = rdata.make_synthetic_identities(12, 3, 16, forget_count=2, seed=3)
  b = rdata.make_synthetic_identities(12, 3, 16, forget_count=2, seed=3)
  np.testing.assert_array_equal(a.examples.images, b.examples.images)
  a.manifest.check()
  assert len(a.manifest.identities("forget")) == 2
  assert a.num_classes == len(a.manifest.identities("train"))
  # Per-image nuisances: two images of one person differ more than rounding.
  assert np.abs(a.examples.images[0].astype(int) - a.examples.images[1]).mean() > 5


# ------------------------------------------------------------------------------------- training


@functools.lru_cache(maxsize=None)
def _train_step_on(n_devices):
  if n_devices == len(jax.devices()):
    return rtrain.compiled_train_step(False)  # the one fit uses: compiled once for both tests
  return parallel.data_parallel(functools.partial(rtrain.train_step, augment=False),
                                in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED),
                                out_specs=(parallel.REPLICATED, parallel.REPLICATED),
                                devices=jax.devices()[:n_devices])


def _step_on(n_devices, state, batch, rng):
  devices = jax.devices()[:n_devices]
  return _train_step_on(n_devices)(parallel.replicate(state, devices),
                                   parallel.shard(batch, devices), rng)


def test_margin_train_step_on_4_devices_equals_1_and_learns():
  data = tiny_data()
  state = helpers.tiny_state(tiny_embedding_model(data.num_classes))
  batch = {"image": data.train.images[:16], "label": data.train.labels[:16]}
  s1, m1 = _step_on(1, state, batch, jax.random.key(0))
  s4, m4 = _step_on(4, state, batch, jax.random.key(0))
  chex.assert_trees_all_close(parallel.to_host((s1.params, s1.batch_stats, m1)),
                              parallel.to_host((s4.params, s4.batch_stats, m4)), rtol=2e-5, atol=2e-6)
  losses, s = [], parallel.to_host(s1)
  for i in range(6):
    s, m = _step_on(1, s, batch, jax.random.key(i))
    s = parallel.to_host(s)
    losses.append(float(m["loss"]))
  assert losses[-1] < losses[0], losses


def test_fit_logs_retrieval_resumes_identically_and_stage_records(tmp_path):
  data = tiny_data()
  model = tiny_embedding_model(data.num_classes)
  cfg = fitlib.TrainConfig(epochs=2, batch_size=32, lr=0.05, lr_boundaries=(), augment=False)
  full = rtrain.fit(model, data.train, cfg, seed=1, stage_dir=str(tmp_path / "full"),
                    eval_sets={"heldout": data.heldout}, progress=False)
  rows = [json.loads(l) for l in open(tmp_path / "full" / "metrics.jsonl")]
  assert [r["epoch"] for r in rows] == [1, 2] and 0 <= rows[-1]["heldout_map"] <= 1

  class Stop(Exception):
    pass

  def interrupt(epoch):
    raise Stop()

  with pytest.raises(Stop):
    rtrain.fit(model, data.train, cfg, seed=1, stage_dir=str(tmp_path / "cut"), progress=False,
               on_epoch_end=interrupt)
  resumed = rtrain.fit(model, data.train, cfg, seed=1, stage_dir=str(tmp_path / "cut"), progress=False)
  assert resumed.resumed_from_epoch == 1
  chex.assert_trees_all_close(parallel.to_host(full.state.params),
                              parallel.to_host(resumed.state.params), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------- evaluation


def test_outputs_rows_result_files_and_plot(tmp_path):
  data = tiny_data()
  state = helpers.tiny_state(tiny_embedding_model(data.num_classes))
  out = reval.outputs(state, data.train)  # 128 images in one padded batch of 256
  assert out["embedding"].shape == (len(data.train), 16)
  np.testing.assert_allclose(np.linalg.norm(out["embedding"], axis=1), 1.0, rtol=1e-5)
  assert np.all(np.isfinite(out["loss"]))
  held = reval.outputs(state, data.heldout)
  assert np.all(np.isnan(held["loss"]))  # held-out persons have no class in the head
  row = reval.evaluate_state(state, data.train, data.forget_identities, data.heldout,
                             outputs_dir=str(tmp_path / "outputs"))
  for k in ("forget_map", "forget_rank1", "retain_map", "retain_rank1", "forget_compactness",
            "retain_compactness", "identifiability", "heldout_map"):
    assert 0.0 <= row[k] <= 1.0 + 1e-9, k
  assert sorted(os.listdir(tmp_path / "outputs")) == ["heldout.npz", "train.npz"]
  rows = [{"model": "original", **row, "wall_s": 1.0, "cost_vs_retrain": 0.5}]
  paths = reval.write_results(str(tmp_path / "results"), rows, {"seed": 0}, "abc")
  saved = json.load(open(paths["json"]))
  assert saved["manifest_hash"] == "abc" and saved["rows"][0]["model"] == "original"
  assert "forget mAP" in open(paths["md"]).read()
  png = reval.pca_plot(str(tmp_path / "results" / "pca.png"),
                       [("original", out["embedding"], data.train.identities)] * 2,
                       data.forget_identities)
  assert os.path.getsize(png) > 1000
