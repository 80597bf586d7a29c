"""Retrieval unlearning methods: losses against direct formulas, pure steps traced once and equal on
4 and 1 devices, and a short dispersion run that forgets on synthetic faces."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mu_jax import parallel
from mu_jax.data import synthetic
from mu_jax.methods import driver
from mu_jax.retrieval import data as rdata
from mu_jax.retrieval import evaluate as reval
from mu_jax.retrieval import methods as rmethods
from mu_jax.retrieval import model as rmodel
from mu_jax.retrieval import train as rtrain
from mu_jax.training import fit as fitlib
from tests import helpers
from tests.helpers import lax_convolutions  # noqa: F401  (autouse fixture)


R, S = parallel.REPLICATED, parallel.SHARDED


@functools.lru_cache(maxsize=None)
def tiny_data():
  return rdata.retrieval_data(helpers.tiny_dataset())


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


# ------------------------------------------------------------------------------------- losses


def test_uniformity_loss_equals_direct_formula():
  z = _unit(np.random.default_rng(0).normal(size=(7, 5)))
  pairs = [np.exp(-2.0 * np.sum((z[i] - z[j]) ** 2)) for i in range(7) for j in range(7) if i != j]
  np.testing.assert_allclose(rmethods.uniformity_loss(jnp.asarray(z, jnp.float32), 2.0),
                             np.log(np.mean(pairs)), rtol=1e-5)


def test_hard_dispersion_loss_equals_direct_formula():
  z = _unit(np.random.default_rng(1).normal(size=(6, 4)))
  ids = np.array([0, 0, 0, 1, 1, 2])  # person 2 has no partner: left out of the mean
  tau = 0.1
  cos = z @ z.T
  want = np.mean([tau * np.log(np.sum([np.exp(cos[i, j] / tau) for j in range(6)
                                       if j != i and ids[j] == ids[i]])) for i in range(5)])
  np.testing.assert_allclose(rmethods.hard_dispersion_loss(jnp.asarray(z, jnp.float32),
                                                           jnp.asarray(ids), tau), want, rtol=1e-5)
  # Without any same-person pair the loss is 0, not nan.
  assert float(rmethods.hard_dispersion_loss(jnp.asarray(z, jnp.float32), jnp.arange(6))) == 0.0


def test_farthest_map():
  c = jnp.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]])
  np.testing.assert_array_equal(rmethods.farthest_map(c), [2, 2, 0])


def test_factories_validate_and_registry():
  assert rmethods.names() == ["random_labels", "gradient_ascent", "boundary_shrink", "scrub",
                              "dispersion", "cure"]
  with pytest.raises(ValueError, match="w_uniform"):
    rmethods.dispersion(w_uniform=0.0, w_hard=0.0)
  with pytest.raises(ValueError, match="clusters"):
    rmethods.cure(clusters=1)
  with pytest.raises(ValueError, match="stream"):
    rmethods.gradient_ascent(stream="retain")
  with pytest.raises(TypeError, match="dispersion"):
    rmethods.create("dispersion", temperature=1.0)
  with pytest.raises(KeyError):
    rmethods.parse_methods("dispersion,nope")
  assert rmethods.parse_methods("all") == rmethods.names()
  assert rmethods.create("cure").tasks == ("multiclass",)


# --------------------------------------------------- steps: pure, traced once, 4 devices == 1


@functools.lru_cache(maxsize=None)
def _base_state():
  data = tiny_data()
  model = rmodel.create_embedding_model("small_cnn", data.num_classes, embed_dim=16, width=4)
  return parallel.to_host(helpers.tiny_state(model))


def _start(unlearner, data):
  """The driver's start: the method's optimizer, then its init."""
  state = _base_state()
  splits = data.unlearning_splits()
  spec = driver.spec_for(state, splits, "multiclass")
  tx = unlearner.optimizer
  state = state.replace(tx=tx, opt_state=tx.init(state.params), step=jnp.zeros((), jnp.int32))
  state, aux = unlearner.init(state, jax.random.key(0), spec)
  return parallel.to_host((state, aux)), spec


def _batch(stream, data):
  # Eight images over up to four persons per stream, so set-level losses see same-person pairs.
  def pick(ex):
    persons = np.unique(ex.labels)[:4]
    per = -(-8 // len(persons))
    idx = np.concatenate([np.nonzero(ex.labels == l)[0][:per] for l in persons])[:8]
    return {"image": ex.images[idx], "label": ex.labels[idx]}

  f, r = pick(data.forget), pick(data.retain)
  return {"forget": f, "retain": r} if stream in ("paired", "zip") else {"forget": f, "retain": r,
                                                                          "train": r}[stream]


def _compiled(step, augment, n, traces):
  """The driver's compiled form of ``step`` on ``n`` devices; each trace appends to ``traces``."""
  devs = jax.devices()[:n]

  def counted(*args):
    traces.append(n)
    return step(*args)

  fn = parallel.data_parallel(driver.guarded(counted, augment), in_specs=(R, R, S, R, R, R),
                              out_specs=(R, R, R, R), devices=devs)
  return lambda st, aux, b, rng: fn(parallel.replicate(st, devs), parallel.replicate(aux, devs),
                                    parallel.shard(b, devs), rng,
                                    {"progress": jnp.float32(0.5), "epoch": jnp.int32(1), "hp": {}},
                                    jnp.bool_(False))


@pytest.mark.parametrize("name", rmethods.names())
def test_steps_pure_traced_once_and_equal_on_4_and_1_devices(name):
  data = tiny_data()
  hp = {"clusters": 2} if name == "cure" else {}
  unlearner = rmethods.create(name, **hp)
  (state, aux), spec = _start(unlearner, data)
  seen = set()
  for phase in unlearner.phases(spec):
    if id(phase.step) in seen:
      continue
    seen.add(id(phase.step))
    batch = _batch(phase.stream, data)
    traces = []
    one = _compiled(phase.step, phase.augment, 1, traces)
    four = _compiled(phase.step, phase.augment, 4, traces)
    out1 = parallel.to_host(one(state, aux, batch, jax.random.key(7)))
    out4 = parallel.to_host(four(state, aux, batch, jax.random.key(7)))
    assert np.isfinite(out1[2]["loss"]) and not out1[3], (name, phase.name, out1[2])
    chex.assert_trees_all_close(out1[:3], out4[:3], rtol=2e-4, atol=2e-5)
    # Pure: the same inputs give the same outputs; a second call (new key) does not retrace.
    again = parallel.to_host(one(state, aux, batch, jax.random.key(7)))
    chex.assert_trees_all_equal(out1[:3], again[:3])
    one(state, aux, batch, jax.random.key(8))
    four(state, aux, batch, jax.random.key(8))
    assert sorted(traces) == [1, 4], (name, phase.name, traces)
    state, aux = out1[0], out1[1]
    if phase.after is not None:
      state, aux = parallel.to_host(
          jax.jit(phase.after)(state, aux, driver.step_info(unlearner, 0, 1.0)))
    # Parameters moved, except in cure's K-means passes, which only update the centroids.
    moved = not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(out1[0].params),
                                                         jax.tree.leaves(_base_state().params)))
    assert moved == (not phase.name.startswith("kmeans")), (name, phase.name)
  if name == "cure":
    assert np.all(np.isfinite(aux["centroids"])) and aux["target"].shape == (2,)
    assert float(aux["fresh"]) == 0.0


# -------------------------------------------------------------- a short dispersion run forgets


def test_short_dispersion_run_forgets_on_synthetic_faces(tmp_path):
  """On synthetic faces (5 of 16 train persons forgotten), a short dispersion run lowers forget
  mAP by at least 0.2 and forget compactness by at least 0.05, while retain mAP stays within 0.05
  of the original's."""
  data = rdata.retrieval_data(synthetic.make_dataset(num_identities=24, images_per_identity=8,
                                                     image_size=16, forget_count=5))
  model = rmodel.create_embedding_model("small_cnn", data.num_classes, embed_dim=32, width=8,
                                        scale=16.0)
  cfg = fitlib.TrainConfig(epochs=30, batch_size=32, lr=0.1, lr_boundaries=(), augment=False,
                           weight_decay=5e-4)
  original = parallel.to_host(rtrain.fit(model, data.train, cfg, seed=0, stage_dir=str(tmp_path),
                                         progress=False).state)
  before = reval.evaluate_state(original, data.train, data.forget_identities)
  result = driver.run_detailed(rmethods.dispersion(), original, data.unlearning_splits(),
                               driver.RunConfig(batch_size=16, task="multiclass", log_splits=()))
  after = reval.evaluate_state(result.state, data.train, data.forget_identities)
  assert not result.halted
  assert before["forget_map"] > 0.9 and before["retain_map"] > 0.9, before
  assert after["forget_map"] < before["forget_map"] - 0.2, (before, after)
  assert after["forget_compactness"] < before["forget_compactness"] - 0.05, (before, after)
  assert after["retain_map"] > before["retain_map"] - 0.05, (before, after)


# ------------------------------------------------- cure: pseudo-labels fixed between clusterings


def test_cure_pseudo_labels_come_from_the_teacher_and_hold_while_the_student_moves():
  """Two hand-placed centroids at the two forget images whose original embeddings lie farthest
  apart; 20 erasure steps on one fixed batch. Each step's pull loss must use the pseudo-label of the
  original's embedding (computed here from scratch), not the student's current nearest centroid,
  even after the student's embeddings have crossed to the other cluster; at the end every forget
  image sits in its target cluster."""
  data = tiny_data()
  unl = rmethods.cure(lr=0.1, clusters=2, w_match=0.0)
  (state, aux), spec = _start(unl, data)
  erase = next(p for p in unl.phases(spec) if p.name.startswith("erase"))
  batch = _batch("paired", data)
  batch = {k: {"image": v["image"].astype(np.float32) / 255.0, "label": v["label"]}
           for k, v in batch.items()}
  xf = batch["forget"]["image"]

  def eval_emb(st):
    return np.asarray(rmodel.embed(st, st.params, st.batch_stats, xf, train=False)[1], np.float64)

  zt = eval_emb(state)
  d2 = np.sum((zt[:, None] - zt[None]) ** 2, -1)
  i, j = np.unravel_index(np.argmax(d2), d2.shape)
  cents = zt[[i, j]]
  own_teacher = np.argmin(np.sum((zt[:, None] - cents[None]) ** 2, -1), -1)
  target = 1 - own_teacher  # two clusters: the farthest is the other one
  assert 0 < own_teacher.sum() < len(own_teacher)
  aux = {**aux, "centroids": jnp.asarray(cents, jnp.float32), "target": jnp.array([1, 0], jnp.int32)}

  one = jax.devices()[:1]
  step = parallel.data_parallel(
      lambda st, a, b: erase.step(st, a, b, jax.random.key(0), {"epoch": jnp.int32(0)}),
      in_specs=(R, R, S), out_specs=(R, R, R), devices=one)

  def forget_emb(s, b):  # the step's forward: retain batch first, then forget, BN stats chained
    _, _, stats = rmodel.embed(s, s.params, s.batch_stats, b["retain"]["image"], train=True)
    return rmodel.embed(s, s.params, stats, b["forget"]["image"], train=True)[1]

  run_emb = parallel.data_parallel(forget_emb, in_specs=(R, S), out_specs=S, devices=one)

  def train_emb(st):
    out = run_emb(parallel.replicate(st, one), parallel.shard(batch, one))
    return np.asarray(parallel.to_host(out), np.float64)

  unit = cents / np.linalg.norm(cents, axis=1, keepdims=True)
  crossed = 0
  for _ in range(20):
    z = train_emb(state)
    own_student = np.argmin(np.sum((z[:, None] - cents[None]) ** 2, -1), -1)
    crossed = max(crossed, int(np.sum(own_student != own_teacher)))
    want_pull = np.mean(1.0 - np.sum(z * unit[target], -1))
    state, aux_out, m = parallel.to_host(step(parallel.replicate(state, one),
                                              parallel.replicate(aux, one),
                                              parallel.shard(batch, one)))
    np.testing.assert_allclose(float(m["pull"]), want_pull, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_equal(aux_out["centroids"], aux["centroids"])
  assert crossed > 0  # the student did cross: a label from its own embedding would have flipped
  final = eval_emb(state)
  nearest = np.argmin(np.sum((final[:, None] - cents[None]) ** 2, -1), -1)
  np.testing.assert_array_equal(nearest, target)
