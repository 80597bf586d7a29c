"""Tests of KL / JS / agreement / parameter distance against closed forms and hand cases."""

import math

import numpy as np
import pytest

from mu_jax.evaluation import distances

# p = softmax([0, ln 3]) = (1/4, 3/4) (the unlearned model), q = (1/2, 1/2) (the retrained one).
P = np.array([[0.0, math.log(3.0)]])
Q = np.array([[0.0, 0.0]])


def _kl(a, b):
  return sum(x * math.log(x / y) for x, y in zip(a, b))


def test_identical_models_have_zero_divergence():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(50, 6)) * 5
  for task in ("multiclass", "multilabel"):
    assert distances.kl_divergence(x, x, task) == pytest.approx(0.0, abs=1e-12)
    assert distances.js_divergence(x, x, task) == pytest.approx(0.0, abs=1e-12)
    assert distances.top1_agreement(x, x, task) == 1.0


def test_two_class_hand_case_and_direction():
  # KL(p‖q) = ¼ ln(½) + ¾ ln(3/2) = 0.1308; KL(q‖p) = ½ ln 2 + ½ ln(2/3) = 0.1438.
  assert distances.kl_divergence(P, Q) == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))
  assert distances.kl_divergence(P, Q) == pytest.approx(0.1308121, abs=1e-7)
  assert distances.kl_divergence(Q, P) == pytest.approx(0.1438410, abs=1e-7)
  m = (0.375, 0.625)
  js = 0.5 * _kl((0.25, 0.75), m) + 0.5 * _kl((0.5, 0.5), m)
  assert distances.js_divergence(P, Q) == pytest.approx(js, rel=1e-12)
  assert distances.js_divergence(Q, P) == pytest.approx(js, rel=1e-12)


def test_multilabel_is_mean_of_bernoulli_divergences():
  # Attribute 0: σ(ln 3) = 3/4 against 1/2 (the hand case above); attribute 1 identical.
  p = np.array([[math.log(3.0), 1.0]])
  q = np.array([[0.0, 1.0]])
  kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
  assert distances.kl_divergence(p, q, "multilabel") == pytest.approx(kl / 2, rel=1e-12)
  m = (0.625, 0.375)
  js = 0.5 * _kl((0.75, 0.25), m) + 0.5 * _kl((0.5, 0.5), m)
  assert distances.js_divergence(p, q, "multilabel") == pytest.approx(js / 2, rel=1e-12)


def test_js_is_bounded_by_ln2_and_symmetric():
  disjoint_p = np.array([[60.0, -60.0]])
  disjoint_q = np.array([[-60.0, 60.0]])
  assert distances.js_divergence(disjoint_p, disjoint_q) == pytest.approx(math.log(2), abs=1e-12)
  assert math.isfinite(distances.kl_divergence(disjoint_p, disjoint_q))
  rng = np.random.default_rng(1)
  for _ in range(5):
    a, b = rng.normal(size=(30, 4)) * 10, rng.normal(size=(30, 4)) * 10
    for task in ("multiclass", "multilabel"):
      js = distances.js_divergence(a, b, task)
      assert 0.0 <= js <= math.log(2)
      assert js == pytest.approx(distances.js_divergence(b, a, task), rel=1e-10)
      assert distances.kl_divergence(a, b, task) >= 0.0


def test_top1_agreement_hand_case():
  a = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 3.0], [5.0, 4.0]])
  b = np.array([[2.0, 0.0], [1.0, 0.0], [0.0, 3.0], [1.0, 4.0]])
  assert distances.top1_agreement(a, b) == 0.5
  # Multi-label: 8 present/absent decisions (logit > 0); they differ at [1, 0] (0 vs 1), [1, 1]
  # (1 vs 0) and [2, 0] (2 vs 0).
  assert distances.top1_agreement(a, b, "multilabel") == 5 / 8


def test_shape_and_task_validation():
  with pytest.raises(ValueError, match="same shape"):
    distances.kl_divergence(np.zeros((2, 3)), np.zeros((2, 4)))
  with pytest.raises(ValueError, match="task"):
    distances.js_divergence(P, Q, "regression")
  with pytest.raises(ValueError, match="q_logits"):
    distances.kl_divergence(P, np.array([[np.nan, 0.0]]))


def test_param_l2_distance():
  a = {"dense": {"kernel": np.array([[1.0, 2.0]]), "bias": np.array([0.0])}, "scale": np.float32(3.0)}
  b = {"dense": {"kernel": np.array([[1.0, 0.0]]), "bias": np.array([1.0])}, "scale": np.float32(1.0)}
  # (2−0)² + (0−1)² + (3−1)² = 9.
  assert distances.param_l2_distance(a, b) == pytest.approx(3.0)
  assert distances.param_l2_distance(a, a) == 0.0


def test_param_l2_distance_names_first_difference():
  a = {"dense": {"kernel": np.zeros((2, 3)), "bias": np.zeros(3)}, "head": {"w": np.zeros(2)}}
  missing = {"dense": {"kernel": np.zeros((2, 3))}, "head": {"w": np.zeros(2), "v": np.zeros(1)}}
  with pytest.raises(ValueError, match=r"'dense/bias' is in params_a but not in params_b"):
    distances.param_l2_distance(a, missing)
  reshaped = {"dense": {"kernel": np.zeros((3, 2)), "bias": np.zeros(3)}, "head": {"w": np.zeros(2)}}
  with pytest.raises(ValueError, match=r"at 'dense/kernel'.*\(2, 3\).*\(3, 2\)"):
    distances.param_l2_distance(a, reshaped)
