"""Tests of mu_jax.evaluation.metrics against hand-computed values and naive formulas."""

import numpy as np
import pytest

from mu_jax.evaluation import metrics


def test_softmax_is_stable_and_normalised():
  p = metrics.softmax(np.array([[1000.0, 0.0], [0.0, 0.0], [-1000.0, -1000.0]]))
  np.testing.assert_allclose(p, [[1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 7))
  np.testing.assert_allclose(metrics.softmax(x).sum(axis=1), 1.0)
  np.testing.assert_allclose(metrics.softmax(x), np.exp(x) / np.exp(x).sum(axis=1, keepdims=True))


def test_probabilities_per_task():
  x = np.array([[0.0, np.log(3.0)], [800.0, -800.0]])
  np.testing.assert_allclose(metrics.probabilities(x, "multilabel"), [[0.5, 0.75], [1.0, 0.0]])
  np.testing.assert_allclose(metrics.probabilities(x, "multiclass")[0], [0.25, 0.75])
  with pytest.raises(ValueError, match="task"):
    metrics.probabilities(x, "binary")


def test_topk_accuracy_hand_case():
  logits = np.array([[0.1, 0.5, 0.4],   # label 2 is second -> top-2 hit
                     [3.0, 2.0, 1.0],   # label 2 is third -> top-3 hit only
                     [1.0, 1.0, 0.0]])  # label 1 ties class 0, which wins as argmax does -> rank 2
  labels = np.array([2, 2, 1])
  assert metrics.topk_accuracy(logits, labels, 1) == 0.0
  assert metrics.topk_accuracy(logits, labels, 2) == pytest.approx(2 / 3)
  assert metrics.topk_accuracy(logits, labels, 3) == 1.0


def test_top1_equals_argmax_with_ties():
  rng = np.random.default_rng(1)
  logits = rng.integers(0, 3, size=(200, 5)).astype(float)  # many ties
  labels = rng.integers(0, 5, size=200)
  assert metrics.topk_accuracy(logits, labels, 1) == np.mean(np.argmax(logits, 1) == labels)


def test_topk_rejects_bad_input():
  with pytest.raises(ValueError, match="k must be"):
    metrics.topk_accuracy(np.zeros((2, 3)), [0, 1], 4)
  with pytest.raises(ValueError, match="labels"):
    metrics.topk_accuracy(np.zeros((2, 3)), [0, 3], 1)
  with pytest.raises(ValueError, match="non-finite"):
    metrics.topk_accuracy(np.array([[np.nan, 0.0]]), [0], 1)


def test_multilabel_accuracy_hand_case():
  logits = np.array([[1.0, -1.0, 0.0], [2.0, 2.0, -3.0]])
  labels = np.array([[1, 0, 0], [0, 1, 1]])
  # Attribute 0: right, wrong; attribute 1: right, right; attribute 2: logit 0 is "absent" -> right,
  # then wrong.
  mean, per_attribute = metrics.multilabel_accuracy(logits, labels)
  np.testing.assert_allclose(per_attribute, [0.5, 1.0, 0.5])
  assert mean == pytest.approx(2 / 3)


def test_cross_entropy_matches_naive_and_is_stable():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(6, 4))
  y = rng.integers(0, 4, size=6)
  naive = -np.log(np.exp(x[np.arange(6), y]) / np.exp(x).sum(axis=1))
  np.testing.assert_allclose(metrics.per_example_loss(x, y, "multiclass"), naive, rtol=1e-12)
  # log(1 + e^-1000) ~ 0 and a wrong confident class costs exactly the logit gap.
  np.testing.assert_allclose(metrics.per_example_loss([[1000.0, 0.0]], [1]), [1000.0])
  np.testing.assert_allclose(metrics.per_example_loss([[1000.0, 0.0]], [0]), [0.0], atol=1e-300)


def test_bce_matches_naive_and_is_stable():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(5, 3))
  y = rng.integers(0, 2, size=(5, 3))
  s = 1 / (1 + np.exp(-x))
  naive = np.mean(-(y * np.log(s) + (1 - y) * np.log(1 - s)), axis=1)
  np.testing.assert_allclose(metrics.per_example_loss(x, y, "multilabel"), naive, rtol=1e-12)
  # Mean over the two attributes: 1000 for the confidently wrong one, 0 for the right one.
  out = metrics.per_example_loss([[1000.0, -1000.0]], [[0, 0]], "multilabel")
  np.testing.assert_allclose(out, [500.0])
  with pytest.raises(ValueError, match="0 or 1"):
    metrics.per_example_loss([[0.0, 0.0]], [[0, 2]], "multilabel")
