"""Probe photos for retrieval unlearning: the held-out split, its metrics on hand-made embeddings
with known answers, the unretrievable level, and that no probe ever reaches training or unlearning."""

import dataclasses
import itertools
import json
import math
import os

import numpy as np
import pytest

from mu_jax.data.splits import DataError, SplitManifest
from mu_jax.retrieval import data as rdata
from mu_jax.retrieval import metrics
from tests.helpers import lax_convolutions  # noqa: F401  (autouse fixture)


def _dataset(num_identities=12, images=10):
  return rdata.make_synthetic_identities(num_identities, images, 8, forget_count=2, seed=3)


def _drop_train_images(ds, person, keep):
  """The dataset with only ``keep`` of ``person``'s images left in train/retain/forget."""
  m = ds.manifest
  mine = [e for e, i in m.splits["train"] if i == person]
  gone = set(mine[keep:])
  splits = {k: [(e, i) for e, i in v if e not in gone] for k, v in m.splits.items()}
  return dataclasses.replace(ds, manifest=SplitManifest(m.dataset, splits, m.image_hashes, m.meta))


# ------------------------------------------------------------------------------------ the split

def test_probes_are_their_own_split_thirty_percent_per_person_and_seeded(tmp_path):
  ds = _dataset()
  train_persons = sorted(ds.manifest.identities("train"))
  small = train_persons[-1]
  ds = _drop_train_images(ds, small, 2)  # too few images: keeps both
  three = train_persons[-2]
  ds = _drop_train_images(ds, three, 3)  # the fewest that give a probe: one
  held = rdata.hold_out_probes(ds, 0.3, seed=0)
  m = held.manifest
  probes = m.splits["probe"]
  count = {p: sum(i == p for _, i in probes) for p in train_persons}
  assert count[small] == 0 and count[three] == 1
  assert all(count[p] == 3 for p in train_persons if p not in (small, three))  # 30 % of 10
  probe_ids = {e for e, _ in probes}
  for s in ("train", "retain", "forget", "test", "unseen"):
    assert not probe_ids & set(m.ids(s)), s
  assert set(m.ids("train")) | probe_ids == set(ds.manifest.ids("train"))
  m.check()  # train is still exactly retain + forget, no identity leaks
  assert m.meta["probes"]["persons_with_too_few_images"] == 1
  assert m.meta["probes"]["images"] == len(probes)
  assert m.meta["probes"]["forget_images"] == sum(i in m.identities("forget") for _, i in probes)
  # Seeded: the same seed draws the same probes, another seed others.
  assert rdata.hold_out_probes(ds, 0.3, seed=0).manifest.splits["probe"] == probes
  assert rdata.hold_out_probes(ds, 0.3, seed=1).manifest.splits["probe"] != probes
  # The manifest file keeps the split; the content hash follows the enrolled images.
  m.save(tmp_path / "manifest.json")
  again = SplitManifest.load(tmp_path / "manifest.json")
  assert again.splits["probe"] == probes and again.content_hash == m.content_hash
  assert m.content_hash != ds.manifest.content_hash
  assert rdata.hold_out_probes(ds, 0.0).manifest.splits["probe"] == []


def test_bad_probe_requests_are_refused():
  ds = _dataset()
  with pytest.raises(DataError, match="probe_fraction"):
    rdata.hold_out_probes(ds, 0.7)
  with pytest.raises(DataError, match="already has"):
    rdata.hold_out_probes(rdata.hold_out_probes(ds), 0.3)
  held = rdata.hold_out_probes(ds)
  m = held.manifest
  bad = dict(m.splits, probe=m.splits["probe"] + [m.splits["retain"][0]])
  with pytest.raises(DataError, match="also listed in another split"):
    rdata.probe_examples(dataclasses.replace(held, manifest=SplitManifest(m.dataset, bad)))


def test_retrieval_data_enrols_what_is_left_and_labels_probes_as_their_person():
  data = rdata.retrieval_data(_dataset())
  probe_ids = set(data.probe.example_ids.tolist())
  assert len(data.probe) == 3 * data.num_classes
  for part in (data.train, data.retain, data.forget, *data.unlearning_splits().values()):
    assert not probe_ids & set(part.example_ids.tolist())
  index = {p: k for k, p in enumerate(data.dataset.label_names)}
  assert [index[p] for p in data.probe.identities] == data.probe.labels.tolist()


# ------------------------------------------------------------------------------------ metrics

def _at(*degrees):
  r = np.radians(degrees)
  return np.stack([np.cos(r), np.sin(r)], axis=1)


def test_probes_on_another_persons_centroid_flip():
  # A's enrolled images near 0°, B's near 90°; A's probes sit on B's centroid, B's on their own.
  gallery, g_ids = _at(-5, 0, 5, 85, 90, 95), np.array(["A"] * 3 + ["B"] * 3)
  probes, p_ids = _at(90, 90, 90), np.array(["A", "A", "B"])
  a = metrics.probe_metrics(probes[:2], p_ids[:2], gallery, g_ids)
  b = metrics.probe_metrics(probes[2:], p_ids[2:], gallery, g_ids)
  assert a["flip_rate"] == 1.0 and a["rank1"] == 0.0 and b["flip_rate"] == 0.0 and b["rank1"] == 1.0
  # A's positives rank 4, 5, 6 (cos 5° < ... < cos 0°... all below B's three): AP = (1/4+2/5+3/6)/3.
  assert a["map"] == pytest.approx((1 / 4 + 2 / 5 + 3 / 6) / 3)
  assert a["rank5"] == 1.0  # two of A's three images make the first five
  assert b["map"] == 1.0
  row = metrics.evaluate_probes(probes, p_ids, gallery, g_ids, ["A"])
  assert row["forget_probe_flip_rate"] == 1.0 and row["retain_probe_flip_rate"] == 0.0
  assert row["n_forget_probes"] == 2 and row["n_retain_probes"] == 1
  assert set(row) == set(metrics.probe_keys("forget")) | set(metrics.probe_keys("retain")) | {
      "n_forget_probes", "n_retain_probes"}


def test_ties_split_evenly():
  # The probe at 45° sees one image of its own person and one of another at the same cosine.
  gallery, g_ids = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), np.array(["A", "B", "B"])
  m = metrics.probe_metrics([[1.0, 1.0]], ["A"], gallery, g_ids)
  assert m["rank1"] == 0.5 and m["flip_rate"] == 0.5 and m["map"] == 0.5
  # Seven gallery images all tied (one of them the probe's person): Rank-5 is the chance that a
  # random order puts it in the first five, 5/7, as enumerating every order gives.
  g7 = np.tile([[1.0, 0.0]], (7, 1))
  ids7 = np.array(["A"] + [f"x{k}" for k in range(6)])
  m7 = metrics.probe_metrics([[1.0, 0.0]], ["A"], g7, ids7)
  orders = list(itertools.permutations(range(7)))
  assert m7["rank5"] == pytest.approx(np.mean([0 in o[:5] for o in orders]))
  assert m7["rank5"] == pytest.approx(5 / 7) and m7["rank1"] == pytest.approx(1 / 7)
  # Two of the probe's images among 6 tied, with one other person's image above them:
  # 4 places left among 6 → 1 − C(4, 4)/C(6, 4).
  g = np.concatenate([[[0.6, 0.8]], np.tile([[1.0, 0.0]], (6, 1))])
  ids = np.array(["z", "A", "A", "y1", "y2", "y3", "y4"])
  assert metrics.probe_metrics([[0.6, 0.8]], ["A"], g, ids)["rank5"] == pytest.approx(
      1 - 1 / math.comb(6, 4))


def test_tar_at_far_of_probe_pairs_hand_case():
  # Genuine pair scores 0.9 and 0.5; the other-person pairs score 0.8, 0.2, 0.1 (and so on).
  gallery = np.array([[0.9, math.sqrt(1 - 0.81)], [0.5, -math.sqrt(0.75)],
                      [0.8, 0.6], [0.2, -math.sqrt(0.96)], [0.1, math.sqrt(0.99)]])
  ids = np.array(["A", "A", "B", "C", "D"])
  m = metrics.probe_metrics([[1.0, 0.0]], ["A"], gallery, ids)
  # FAR ≤ 1e-2 over 3 impostor pairs admits none: the threshold sits above 0.8, one genuine of two.
  assert m["tar_at_far_1e-2"] == 0.5 and m["tar_at_far_1e-3"] == 0.5


def test_expected_average_precision_formula_matches_every_arrangement():
  size, n = 8, 3
  aps = []
  for pos in itertools.combinations(range(size), n):
    hits = np.cumsum(np.isin(np.arange(size), pos))
    aps.append(np.mean([hits[k] / (k + 1) for k in pos]))
  ids = np.array(["A"] * n + [f"o{k}" for k in range(size - n)])
  level = metrics.unretrievable_probe_metrics(["A"], ids)
  assert level["map"] == pytest.approx(np.mean(aps), abs=1e-12)
  assert level["rank1"] == pytest.approx(n / size)
  assert level["rank5"] == pytest.approx(1 - math.comb(size - n, 5) / math.comb(size, 5))
  assert level["flip_rate"] == pytest.approx(1 - n / size)
  assert level["tar_at_far_1e-3"] == 1e-3 and level["tar_at_far_1e-2"] == 1e-2


def test_random_embeddings_give_the_unretrievable_level():
  rng = np.random.default_rng(0)
  counts = [2, 3, 5, 8, 12]  # enrolled images per person: unequal shares of the gallery
  g_ids = np.repeat([f"p{k}" for k in range(5)], counts)
  p_ids = np.array([f"p{k}" for k in range(5)] * 2)
  want = metrics.unretrievable_probe_metrics(p_ids, g_ids)
  runs = [metrics.probe_metrics(rng.normal(size=(len(p_ids), 16)), p_ids,
                                rng.normal(size=(len(g_ids), 16)), g_ids) for _ in range(600)]
  for k in ("rank1", "rank5", "map", "flip_rate"):
    got = np.mean([r[k] for r in runs])
    assert got == pytest.approx(want[k], abs=0.015), k
  assert want["flip_rate"] == pytest.approx(1 - 6 / 30)  # a person holds 6 of 30 on average
  assert want["rank1"] == pytest.approx(6 / 30)
  # TAR at FAR f is f: one large draw, 40 persons × 20 enrolled images, 200 probes.
  g_ids = np.repeat([f"p{k}" for k in range(40)], 20)
  p_ids = np.repeat([f"p{k}" for k in range(40)], 5)
  big = metrics.probe_metrics(rng.normal(size=(200, 64)), p_ids, rng.normal(size=(800, 64)), g_ids)
  assert big["tar_at_far_1e-2"] == pytest.approx(1e-2, abs=4e-3)
  assert big["tar_at_far_1e-3"] == pytest.approx(1e-3, abs=1.5e-3)


def test_moving_only_forget_embeddings_leaves_retained_probe_metrics_unchanged():
  rng = np.random.default_rng(1)
  # Retained persons in dimensions 0-7 (positive orthant: they never score below 0 with each
  # other), forgotten persons in dimensions 8-15: every retain-forget cosine is 0.
  def clusters(n, dims):
    centres = np.zeros((n, 16))
    centres[:, dims] = rng.uniform(0.2, 1.0, (n, len(dims)))
    def images(per):
      x = np.repeat(centres, per, 0)
      x[:, dims] += 0.05 * rng.uniform(0, 1, (len(x), len(dims)))
      return x
    return images(4), images(2)  # enrolled, probes
  r_gal, r_probe = clusters(6, np.arange(8))
  f_gal, f_probe = clusters(3, np.arange(8, 16))
  r_ids, f_ids = [f"r{k}" for k in range(6)], [f"f{k}" for k in range(3)]
  g_ids = np.concatenate([np.repeat(r_ids, 4), np.repeat(f_ids, 4)])
  p_ids = np.concatenate([np.repeat(r_ids, 2), np.repeat(f_ids, 2)])
  before = metrics.evaluate_probes(np.concatenate([r_probe, f_probe]), p_ids,
                                   np.concatenate([r_gal, f_gal]), g_ids, f_ids)
  # The "method": scatter the forgotten persons' embeddings at random within their own dimensions.
  scatter = lambda x: np.concatenate([np.zeros((len(x), 8)), rng.normal(size=(len(x), 8))], 1)
  after = metrics.evaluate_probes(np.concatenate([r_probe, scatter(f_probe)]), p_ids,
                                  np.concatenate([r_gal, scatter(f_gal)]), g_ids, f_ids)
  retain = metrics.probe_keys("retain")
  assert {k: after[k] for k in retain} == {k: before[k] for k in retain}
  assert before["forget_probe_rank1"] == 1.0 and after["forget_probe_rank1"] < 0.7
  assert after["forget_probe_flip_rate"] > before["forget_probe_flip_rate"]


def test_probe_inputs_are_checked():
  with pytest.raises(ValueError, match="gallery is empty"):
    metrics.probe_metrics(_at(0), ["A"], np.zeros((0, 2)), np.zeros(0, str))
  with pytest.raises(ValueError, match="probe_ids must have shape"):
    metrics.probe_metrics(_at(0, 10), ["A"], _at(0), ["A"])
  m = metrics.probe_metrics(_at(0), ["Z"], _at(0, 90), ["A", "B"])
  assert m["n_probes_without_enrolled"] == 1 and math.isnan(m["rank1"])


# ------------------------------------------------------------------------------------ pipeline

def test_no_probe_reaches_training_or_unlearning_and_the_table_has_the_references(tmp_path,
                                                                                   monkeypatch):
  from experiments.configs import retrieval as rconfig
  from mu_jax import methods
  from mu_jax.pipelines import retrieval
  from mu_jax.retrieval import train as rtrain
  c = rconfig.get_config("runlocal")
  c.data.num_identities, c.data.images_per_identity, c.data.image_size = 12, 4, 8
  c.model.width, c.model.embed_dim = 4, 8
  c.train.epochs, c.train.batch_size, c.train.lr_boundaries = 2, 8, ()
  c.unlearn.batch_size = 8
  c.eval.plot = False
  c.unlearn.hparams.gradient_ascent.epochs = 1
  seen = []
  real_fit, real_run = rtrain.fit, methods.run_detailed

  def fit_spy(model, examples, *args, **kwargs):
    seen.append(("fit", set(examples.example_ids.tolist())))
    return real_fit(model, examples, *args, **kwargs)

  def run_spy(unlearner, state, splits, *args, **kwargs):
    for name, ex in splits.items():
      seen.append((name, set(ex.example_ids.tolist())))
    return real_run(unlearner, state, splits, *args, **kwargs)

  monkeypatch.setattr(rtrain, "fit", fit_spy)
  monkeypatch.setattr(methods, "run_detailed", run_spy)
  wd = str(tmp_path)
  out = retrieval.run_retrieval(c, wd, "gradient_ascent", progress=False, log=lambda _: None)
  manifest = json.load(open(os.path.join(wd, "retrieval", "manifest.json")))
  probes = {e for e, _ in manifest["splits"]["probe"]}
  enrolled = {e for e, _ in manifest["splits"]["train"]}
  assert len(probes) == 8 and not probes & enrolled  # 8 train persons × 1 of 4 images
  assert [n for n, _ in seen] == ["fit", "fit", "retain", "forget"]
  assert all(not ids & probes for _, ids in seen)
  assert seen[0][1] == enrolled
  rows = {r["model"]: r for r in out["rows"]}
  assert list(rows) == ["original", "retrained", "unretrievable", "gradient_ascent"]
  # Per-stage example counts: the original saw 2 epochs of the enrolled images, never a probe.
  assert rows["original"]["examples"] == 2 * len(enrolled)
  ids = {e: i for e, i in manifest["splits"]["train"]}
  gallery_ids = np.array([ids[e] for e, _ in manifest["splits"]["train"]])
  forget = sorted({i for _, i in manifest["splits"]["forget"]})
  level = metrics.unretrievable_probe_row([i for _, i in manifest["splits"]["probe"]], gallery_ids,
                                          forget)
  for k in metrics.probe_keys("forget") + metrics.probe_keys("retain"):
    assert rows["unretrievable"][k] == pytest.approx(level[k])
    for m in ("original", "retrained", "gradient_ascent"):
      assert 0.0 <= rows[m][k] <= 1.0, (m, k)
  # Each probe person holds 3 of the 24 enrolled images: Rank-1 at the unretrievable level is 1/8.
  assert rows["unretrievable"]["forget_probe_rank1"] == pytest.approx(3 / 24)
  saved = json.load(open(os.path.join(wd, "results", "retrieval.json")))["rows"]
  assert "forget_probe_tar_at_far_1e-2" in saved[0] and "forget_map" in saved[0]
  assert "unretrievable" in out["table"] and "forget probe R@1 (≈ unretrievable)" in out["table"]
  assert os.path.exists(os.path.join(wd, "retrieval", rows["gradient_ascent"]["stage"], "outputs",
                                     "probe.npz"))
