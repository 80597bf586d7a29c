"""Tests of the retrieval metrics on hand-placed embeddings with known answers."""

import math

import numpy as np
import pytest

from mu_jax.retrieval import metrics


def _at(*degrees):
  """Unit vectors in the plane at the given angles."""
  r = np.radians(degrees)
  return np.stack([np.cos(r), np.sin(r)], axis=1)


def _clusters(rng, n_ids, per_id, dim=16, spread=0.05, prefix="id"):
  centres = rng.normal(size=(n_ids, dim))
  emb = np.repeat(centres, per_id, axis=0) + spread * rng.normal(size=(n_ids * per_id, dim))
  ids = np.repeat([f"{prefix}{i}" for i in range(n_ids)], per_id)
  return emb, ids


def test_gallery_query_split():
  ids = np.array(["a", "a", "a", "b", "b", "c", "d", "d", "d", "d"])
  q, g = metrics.gallery_query_split(ids, n_query_per_identity=1, seed=0)
  assert sorted(np.concatenate([q, g]).tolist()) == list(range(10))
  assert sorted(ids[q].tolist()) == ["a", "b", "d"]  # "c" has one image: gallery only
  q3, _ = metrics.gallery_query_split(ids, n_query_per_identity=3, seed=0)
  # At most images − 1 queries per identity, so each keeps a gallery positive.
  assert sorted(ids[q3].tolist()) == ["a", "a", "b", "d", "d", "d"]
  again, _ = metrics.gallery_query_split(ids, 1, seed=0)
  assert np.array_equal(q, again)
  with pytest.raises(ValueError, match="n_query_per_identity"):
    metrics.gallery_query_split(ids, 0)


def test_perfect_retrieval():
  rng = np.random.default_rng(0)
  emb, ids = _clusters(rng, 8, 4)
  q, g = metrics.gallery_query_split(ids, 1, seed=1)
  out = metrics.retrieval_metrics(emb[q], ids[q], emb[g], ids[g])
  assert out == {"map": 1.0, "rank1": 1.0, "n_queries": 8, "n_queries_without_positive": 0}


def test_known_ranking_gives_known_ap():
  # Gallery at 10°, 20°, 30°, 40° from the queries (both at 0°), identities A, B, A, B.
  gallery, gallery_ids = _at(10, 20, 30, 40), np.array(["A", "B", "A", "B"])
  # Query A: positives at ranks 1 and 3 -> AP = (1/1 + 2/3) / 2. Query B: ranks 2 and 4 -> (1/2 + 2/4) / 2.
  ap_a = (1 / 1 + 2 / 3) / 2
  ap_b = (1 / 2 + 2 / 4) / 2
  out = metrics.retrieval_metrics(_at(0), ["A"], gallery, gallery_ids)
  assert out["map"] == pytest.approx(ap_a) and out["rank1"] == 1.0
  out = metrics.retrieval_metrics(_at(0, 0), ["A", "B"], gallery, gallery_ids)
  assert out["map"] == pytest.approx((ap_a + ap_b) / 2)
  assert out["rank1"] == 0.5


def test_query_without_positive_is_excluded_and_counted():
  gallery, gallery_ids = _at(10, 20, 30, 40), np.array(["A", "B", "A", "B"])
  out = metrics.retrieval_metrics(_at(0, 0), ["A", "Z"], gallery, gallery_ids)
  assert out["map"] == pytest.approx((1 + 2 / 3) / 2)
  assert (out["n_queries"], out["n_queries_without_positive"]) == (1, 1)
  only_missing = metrics.retrieval_metrics(_at(0), ["Z"], gallery, gallery_ids)
  assert math.isnan(only_missing["map"]) and only_missing["n_queries_without_positive"] == 1


def test_identifiability():
  gallery, gallery_ids = _at(10, 20, 30, 40), np.array(["A", "B", "A", "B"])
  # Nearest to 0° is A (10°); nearest to 45° is B (40°); Z has no gallery image: not identified.
  assert metrics.identifiability(_at(0, 0, 45, 0), ["A", "B", "B", "Z"], gallery, gallery_ids) == 0.5


def test_compactness_on_a_circle():
  theta = 30.0
  # Identity "a": unit vectors at ±θ around 0°; identity "b": ±10° around 90°; "c" a singleton.
  emb = np.concatenate([_at(-theta, theta), _at(80, 100), _at(200)])
  ids = np.array(["a", "a", "b", "b", "c"])
  expected = (2 * math.cos(math.radians(theta)) + 2 * math.cos(math.radians(10))) / 4
  assert metrics.compactness(emb, ids) == pytest.approx(expected)
  assert metrics.compactness(emb[:2], ids[:2]) == pytest.approx(math.cos(math.radians(theta)))
  # Scaling does not matter (cosine), and singleton identities are left out.
  assert metrics.compactness(3 * emb[:4], ids[:4]) == pytest.approx(expected)
  # Two opposite vectors have no centroid direction: compactness 0.
  assert metrics.compactness(_at(0, 180), ["x", "x"]) == pytest.approx(0.0, abs=1e-12)


def test_tar_at_far_hand_case():
  # A at 0° and 10°; B at 90° and 265°.
  emb = _at(0, 10, 90, 265)
  ids = ["A", "A", "B", "B"]
  # Genuine: AA cos 10° = 0.985, BB cos 175° = −0.996. Impostors: cos 90° = 0, cos 265° = −0.087,
  # cos 80° = 0.174, cos 255° = −0.259. Any FAR < 1 accepts only AA; FAR 1 accepts both.
  assert metrics.tar_at_far(emb, ids, 0.0) == 0.5
  assert metrics.tar_at_far(emb, ids, 0.25) == 0.5
  assert metrics.tar_at_far(emb, ids, 0.99) == 0.5
  assert metrics.tar_at_far(emb, ids, 1.0) == 1.0
  with pytest.raises(ValueError, match="genuine and impostor"):
    metrics.tar_at_far(_at(0, 10), ["A", "A"])


def test_tar_at_far_matches_brute_force():
  rng = np.random.default_rng(2)
  emb, ids = _clusters(rng, 10, 5, dim=8, spread=0.8)
  x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  pairs = [(i, j) for i in range(len(x)) for j in range(i + 1, len(x))]
  sims = np.array([x[i] @ x[j] for i, j in pairs])
  same = np.array([ids[i] == ids[j] for i, j in pairs])
  for far in (0.0, 0.01, 0.1):
    best = 0.0
    for t in np.unique(sims):
      if np.mean(sims[~same] >= t) <= far:
        best = max(best, np.mean(sims[same] >= t))
    assert metrics.tar_at_far(emb, ids, far) == pytest.approx(best)


def test_evaluate_retrieval_forget_vs_retain():
  rng = np.random.default_rng(3)
  retain_emb, retain_ids = _clusters(rng, 10, 5, prefix="r")
  # Forgotten identities after a perfect dispersion: their images are random directions.
  forget_ids = np.repeat(["f0", "f1", "f2", "f3"], 5)
  forget_emb = rng.normal(size=(20, 16))
  emb = np.concatenate([retain_emb, forget_emb])
  ids = np.concatenate([retain_ids, forget_ids])
  out = metrics.evaluate_retrieval(emb, ids, ["f0", "f1", "f2", "f3"], seed=0)
  assert set(out) == {"forget_map", "forget_rank1", "retain_map", "retain_rank1",
                      "forget_compactness", "retain_compactness", "identifiability",
                      "retain_tar_at_far_1e-3", "n_forget_queries", "n_retain_queries"}
  assert (out["n_forget_queries"], out["n_retain_queries"]) == (4, 10)
  assert out["retain_map"] == 1.0 and out["retain_rank1"] == 1.0
  assert out["retain_tar_at_far_1e-3"] == 1.0
  assert out["forget_map"] < 0.6 and out["identifiability"] <= 0.5
  assert out["retain_compactness"] > 0.95 > 0.7 > out["forget_compactness"]

  # Before unlearning the forgotten identities are clusters too, and fully identifiable.
  forget_before, _ = _clusters(rng, 4, 5, prefix="f")
  before = metrics.evaluate_retrieval(np.concatenate([retain_emb, forget_before]), ids,
                                      ["f0", "f1", "f2", "f3"], seed=0)
  assert before["forget_map"] == 1.0 and before["identifiability"] == 1.0
  with pytest.raises(ValueError, match="forget_identities"):
    metrics.evaluate_retrieval(emb, ids, ["f9"])


def test_two_tied_gallery_items_score_the_same_in_either_order():
  # One query, a positive and a negative at the same similarity: AP 0.5 and Rank-1 0.5 in both
  # gallery orders (a stable sort alone would give 1.0/1 one way and 0.5/0 the other).
  gallery = _at(30, -30)
  for ids in (["A", "B"], ["B", "A"]):
    out = metrics.retrieval_metrics(_at(0), ["A"], gallery, ids)
    assert out["map"] == pytest.approx(0.5) and out["rank1"] == pytest.approx(0.5), ids
    assert metrics.identifiability(_at(0), ["A"], gallery, ids) == pytest.approx(0.5)


def _sklearn_reference(q, q_ids, g, g_ids):
  """Per-query AP from scikit-learn and the share of positives among the items tied first."""
  from sklearn.metrics import average_precision_score

  qn = q / np.linalg.norm(q, axis=1, keepdims=True)
  gn = g / np.linalg.norm(g, axis=1, keepdims=True)
  aps, top1 = [], []
  for i in range(len(q)):
    sims = np.array([qn[i] @ gn[j] for j in range(len(g))])
    pos = g_ids == q_ids[i]
    if not pos.any():
      continue
    aps.append(average_precision_score(pos, sims))
    top1.append(pos[sims == sims.max()].mean())
  return float(np.mean(aps)), float(np.mean(top1)), len(aps)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_and_rank1_match_sklearn_with_ties_and_any_gallery_order(seed):
  rng = np.random.default_rng(seed)
  # Embeddings of norm 2 whose normalised entries are 0, ±0.5 or ±1: cosine similarities are
  # exact in any summation order, with or without fused multiply-adds, so ties are real ties
  # (duplicates and symmetric points) on every CPU.
  pool = np.array([[a, b, c, d] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)
                   for d in (-1, 1)] + list(2 * np.eye(4)) + list(-2 * np.eye(4)), float)
  g = pool[rng.integers(0, len(pool), size=60)]
  g_ids = rng.integers(0, 6, size=60)
  q = pool[rng.integers(0, len(pool), size=25)]
  q_ids = rng.integers(0, 7, size=25)  # identity 6 has no gallery image
  want_map, want_r1, n = _sklearn_reference(q, q_ids, g, g_ids)
  out = metrics.retrieval_metrics(q, q_ids, g, g_ids)
  assert out["n_queries"] == n and out["n_queries_without_positive"] == len(q) - n
  assert out["map"] == pytest.approx(want_map, abs=1e-12)
  assert out["rank1"] == pytest.approx(want_r1, abs=1e-12)
  perm = rng.permutation(len(g))
  shuffled = metrics.retrieval_metrics(q, q_ids, g[perm], g_ids[perm])
  assert shuffled["map"] == pytest.approx(out["map"], abs=1e-12)
  assert shuffled["rank1"] == pytest.approx(out["rank1"], abs=1e-12)


def test_map_matches_sklearn_without_ties_across_chunks():
  # More queries than one chunk, continuous embeddings (no ties): sklearn's AP on every query.
  from sklearn.metrics import average_precision_score

  rng = np.random.default_rng(5)
  g, g_ids = _clusters(rng, 20, 6, dim=8, spread=0.9)
  q = rng.normal(size=(300, 8))
  q_ids = np.array([f"id{i}" for i in rng.integers(0, 20, size=300)])
  out = metrics.retrieval_metrics(q, q_ids, g, g_ids)
  sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (g / np.linalg.norm(g, axis=1, keepdims=True)).T
  want = np.mean([average_precision_score(g_ids == q_ids[i], sims[i]) for i in range(len(q))])
  top1 = np.mean(g_ids[np.argmax(sims, axis=1)] == q_ids)
  assert out["map"] == pytest.approx(want, abs=1e-12)
  assert out["rank1"] == pytest.approx(top1, abs=1e-12)


def test_thousands_of_queries_take_little_time():
  import time

  rng = np.random.default_rng(6)
  g, g_ids = _clusters(rng, 500, 4, dim=64, spread=0.5)
  q = g[::2] + 0.1 * rng.normal(size=(1000, 64))
  start = time.perf_counter()
  out = metrics.retrieval_metrics(q, g_ids[::2], g, g_ids)
  elapsed = time.perf_counter() - start
  assert out["n_queries"] == 1000 and out["rank1"] > 0.9
  assert elapsed < 10.0, elapsed  # vectorised and chunked: about a second on a shared 2-core CPU
