"""The hand-written metrics against the libraries that define them, on random inputs with ties.

mu_jax keeps its own implementations where the library's convention differs (scikit-learn's top-k
breaks ties toward the higher class index, mu_jax's toward the lower one, as ``argmax``) or where the
library works on probabilities that underflow (mu_jax's divergences work on log-probabilities); each
test states the mapping between the two conventions.
"""

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.special import rel_entr, softmax
from sklearn import metrics as skm

from mu_jax.evaluation import attacks, distances, metrics
from mu_jax.retrieval import metrics as rmetrics


def _tied_scores(rng, n):
  """Scores on a coarse grid: many exact ties, within and across the two groups."""
  return np.round(rng.normal(size=n), 1)


@pytest.mark.parametrize("seed", range(4))
def test_roc_auroc_and_tpr_at_fpr_match_sklearn(seed):
  rng = np.random.default_rng(seed)
  member, nonmember = _tied_scores(rng, 150) + 0.3, _tied_scores(rng, 230)
  y = np.r_[np.ones(len(member)), np.zeros(len(nonmember))]
  s = np.r_[member, nonmember]
  assert attacks.auroc(member, nonmember) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
  fpr, tpr, thr = attacks.roc_curve_scores(member, nonmember)
  want_fpr, want_tpr, want_thr = skm.roc_curve(y, s, drop_intermediate=False)
  np.testing.assert_allclose(fpr, want_fpr, atol=1e-12)
  np.testing.assert_allclose(tpr, want_tpr, atol=1e-12)
  np.testing.assert_array_equal(thr[1:], want_thr[1:])
  assert np.isinf(thr[0]) and np.isinf(want_thr[0])
  for target in (0.0, 0.01, 0.1, 0.5):
    # The best admissible point of sklearn's curve; counts compared as counts (k/N is inexact).
    admissible = np.round(want_fpr * len(nonmember)) <= np.floor(target * len(nonmember) + 1e-9)
    assert attacks.tpr_at_fpr(member, nonmember, target) == pytest.approx(
        want_tpr[admissible].max(), abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_topk_accuracy_matches_sklearn_with_ties(k):
  rng = np.random.default_rng(k)
  logits = rng.integers(0, 4, size=(300, 6)).astype(float)  # many tied logits per row
  labels = rng.integers(0, 6, size=300)
  # sklearn ranks tied classes from the highest index down; mu_jax from the lowest up, as argmax.
  # Reversing the class order maps one convention onto the other exactly.
  want = skm.top_k_accuracy_score(5 - labels, logits[:, ::-1], k=k, labels=np.arange(6))
  assert metrics.topk_accuracy(logits, labels, k) == pytest.approx(want, abs=1e-12)
  if k == 1:
    assert metrics.topk_accuracy(logits, labels, 1) == pytest.approx(
        np.mean(np.argmax(logits, 1) == labels))
  smooth = rng.normal(size=(300, 6))  # no ties: both conventions agree directly
  assert metrics.topk_accuracy(smooth, labels, k) == pytest.approx(
      skm.top_k_accuracy_score(labels, smooth, k=k, labels=np.arange(6)), abs=1e-12)


def test_cross_entropy_matches_sklearn_log_loss():
  rng = np.random.default_rng(7)
  logits = 3 * rng.normal(size=(200, 5))
  labels = rng.integers(0, 5, size=200)
  want = skm.log_loss(labels, softmax(logits, axis=1), labels=np.arange(5))
  assert metrics.per_example_loss(logits, labels).mean() == pytest.approx(want, rel=1e-9)
  y = rng.integers(0, 2, size=(200, 5))
  probs = 1 / (1 + np.exp(-logits))
  want_bce = np.mean([skm.log_loss(y[:, a], probs[:, a], labels=[0, 1]) for a in range(5)])
  assert metrics.per_example_loss(logits, y, "multilabel").mean() == pytest.approx(want_bce, rel=1e-9)


def test_kl_and_js_match_scipy():
  rng = np.random.default_rng(8)
  p_logits, q_logits = 2 * rng.normal(size=(100, 6)), 2 * rng.normal(size=(100, 6))
  p_logits[:10] = q_logits[:10]  # some identical rows: divergence 0 there
  p, q = softmax(p_logits, axis=1), softmax(q_logits, axis=1)
  assert distances.kl_divergence(p_logits, q_logits) == pytest.approx(
      rel_entr(p, q).sum(1).mean(), rel=1e-9)
  # scipy's jensenshannon is the distance (the square root of the divergence), natural log.
  assert distances.js_divergence(p_logits, q_logits) == pytest.approx(
      np.mean(jensenshannon(p, q, axis=1) ** 2), rel=1e-9)
  # Multi-label: each attribute a Bernoulli (present, absent); mean over attributes and examples.
  sp, sq = 1 / (1 + np.exp(-p_logits)), 1 / (1 + np.exp(-q_logits))
  bp, bq = np.stack([sp, 1 - sp], -1), np.stack([sq, 1 - sq], -1)
  assert distances.kl_divergence(p_logits, q_logits, "multilabel") == pytest.approx(
      rel_entr(bp, bq).sum(-1).mean(), rel=1e-9)
  assert distances.js_divergence(p_logits, q_logits, "multilabel") == pytest.approx(
      np.mean(jensenshannon(bp, bq, axis=-1) ** 2), rel=1e-9)


def test_tar_at_far_matches_sklearn_roc_curve():
  rng = np.random.default_rng(9)
  emb = np.round(rng.normal(size=(60, 3)), 0) + 0.01  # coarse: tied similarities
  ids = rng.integers(0, 8, size=60)
  x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
  i, j = np.triu_indices(60, 1)
  sims, same = np.sum(x[i] * x[j], 1), ids[i] == ids[j]
  fpr, tpr, _ = skm.roc_curve(same, sims, drop_intermediate=False)
  n_imp = int((~same).sum())
  for far in (0.0, 0.01, 0.1):
    admissible = np.round(fpr * n_imp) <= np.floor(far * n_imp + 1e-9)
    assert rmetrics.tar_at_far(emb, ids, far) == pytest.approx(tpr[admissible].max(), abs=1e-12)
