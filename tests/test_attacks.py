"""Tests of the threshold attacks and SVC-MIA: hand-made sets, naive references, closed forms."""

import math

import numpy as np
import pytest
from scipy import stats

from mu_jax.evaluation import attacks

# Members [3, 2, 1] and non-members [2, 0]: a tie at 2 and a member below a non-member.
MEMBERS = np.array([3.0, 2.0, 1.0])
NONMEMBERS = np.array([2.0, 0.0])


def _naive_auroc(m, n):
  m, n = np.asarray(m)[:, None], np.asarray(n)[None, :]
  return float(np.mean((m > n) + 0.5 * (m == n)))


def test_roc_points_hand_case():
  fpr, tpr, thr = attacks.roc_curve_scores(MEMBERS, NONMEMBERS)
  # Thresholds inf, 3, 2, 1, 0 accept {}, {3}, {3, 2, 2'}, {.., 1}, everything.
  np.testing.assert_allclose(thr, [np.inf, 3, 2, 1, 0])
  np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
  np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 1, 1])


def test_auroc_hand_case_and_naive_reference():
  # Pairs: 3>2, 3>0, 2=2 (half), 2>0, 1<2, 1>0 -> 4.5 / 6.
  assert attacks.auroc(MEMBERS, NONMEMBERS) == pytest.approx(0.75)
  rng = np.random.default_rng(0)
  for _ in range(5):
    m = rng.integers(0, 6, size=37).astype(float)  # integer scores: many ties
    n = rng.integers(0, 5, size=23).astype(float)
    assert attacks.auroc(m, n) == pytest.approx(_naive_auroc(m, n), abs=1e-12)
  assert attacks.auroc([1.0, 2.0], [5.0]) == 0.0
  assert attacks.auroc([1.0], [1.0]) == 0.5


def test_tpr_at_fpr_hand_case():
  assert attacks.tpr_at_fpr(MEMBERS, NONMEMBERS, 0.0) == pytest.approx(1 / 3)
  assert attacks.tpr_at_fpr(MEMBERS, NONMEMBERS, 0.49) == pytest.approx(1 / 3)
  assert attacks.tpr_at_fpr(MEMBERS, NONMEMBERS, 0.5) == 1.0
  # 100 distinct non-members: FPR 1% allows exactly one false positive, 0.1% allows none.
  nonmembers = np.arange(100.0)
  members = np.array([100.5, 99.5, 98.5, 50.0])
  assert attacks.tpr_at_fpr(members, nonmembers, 0.01) == 0.75
  assert attacks.tpr_at_fpr(members, nonmembers, 0.001) == 0.5
  assert attacks.tpr_at_fpr(members, nonmembers, 0.02) == 0.75


def test_two_normals_match_closed_form():
  # Members ~ N(d, 1), non-members ~ N(0, 1): AUROC = Φ(d/√2), TPR at FPR f = Φ(d − Φ⁻¹(1 − f)).
  rng = np.random.default_rng(1)
  d, n = 1.0, 20000
  m, nm = rng.normal(d, 1.0, n), rng.normal(0.0, 1.0, n)
  # sd of the AUROC estimate is about 0.003 at this n; 0.01 is over 3 sd.
  assert attacks.auroc(m, nm) == pytest.approx(stats.norm.cdf(d / math.sqrt(2)), abs=0.01)
  expected_tpr = stats.norm.cdf(d - stats.norm.ppf(0.99))
  assert attacks.tpr_at_fpr(m, nm, 0.01) == pytest.approx(expected_tpr, abs=0.02)


def test_loss_attack_separable_and_keys():
  members = np.linspace(0.0, 0.1, 50)      # low loss: members
  nonmembers = np.linspace(1.0, 3.0, 80)
  out = attacks.loss_attack(members, nonmembers, n_bootstrap=20)
  for key in ("auroc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"):
    assert out[key] == 1.0
    assert out[f"{key}_ci_low"] == out[f"{key}_ci_high"] == 1.0
  assert (out["n_member"], out["n_nonmember"], out["n_bootstrap"]) == (50, 80, 20)
  # Swapping the roles turns the attack upside down: the score is −loss.
  assert attacks.loss_attack(nonmembers, members, n_bootstrap=0)["auroc"] == 0.0
  assert "auroc_ci_low" not in attacks.loss_attack(members, nonmembers, n_bootstrap=0)


def test_loss_attack_bootstrap_interval():
  rng = np.random.default_rng(2)
  members, nonmembers = rng.normal(0.0, 1.0, 400), rng.normal(0.5, 1.0, 400)
  out = attacks.loss_attack(members, nonmembers, n_bootstrap=200, seed=0)
  true_auroc = stats.norm.cdf(0.5 / math.sqrt(2))
  for key in ("auroc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"):
    assert out[f"{key}_ci_low"] <= out[key] <= out[f"{key}_ci_high"]
  assert out["auroc_ci_low"] < true_auroc < out["auroc_ci_high"]
  # Half-width ~ 1.96 · 0.02 at this n; the interval must be neither degenerate nor huge.
  assert 0.02 < out["auroc_ci_high"] - out["auroc_ci_low"] < 0.12
  again = attacks.loss_attack(members, nonmembers, n_bootstrap=200, seed=0)
  assert again == out


def test_score_input_validation():
  with pytest.raises(ValueError, match="member_losses"):
    attacks.loss_attack([], [1.0])
  with pytest.raises(ValueError, match="nonmember_scores"):
    attacks.auroc([1.0], [np.nan])
  with pytest.raises(ValueError, match="fpr"):
    attacks.tpr_at_fpr([1.0], [0.0], 1.5)


def test_modified_entropy_hand_values():
  p = np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [1.0, 0.0, 0.0]])
  y = np.array([0, 1, 0])
  # Row 0: −(1−0.7)·ln 0.7 − 0.2·ln 0.8 − 0.1·ln 0.9 = 0.1070025 + 0.0446287 + 0.0105361.
  # Row 1: −(1−0.2)·ln 0.2 − 0.7·ln 0.3 − 0.1·ln 0.9 = 1.2875503 + 0.8427814 + 0.0105361.
  # Row 2: a confident correct prediction has modified entropy 0.
  np.testing.assert_allclose(attacks.modified_entropy(p, y), [0.1621673, 2.1408678, 0.0], atol=1e-6)
  # The widely copied variant (log p_i where the paper has log(1 − p_i)) would give 0.659 for row 0.
  assert abs(attacks.modified_entropy(p[:1], y[:1])[0] - 0.659) > 0.4
  # A confident mistake is large but finite (logs of 0 are floored at log 1e-30).
  wrong = attacks.modified_entropy(np.array([[1.0, 0.0]]), np.array([1]))[0]
  assert np.isfinite(wrong) and wrong > 100


def test_other_svc_features():
  p = np.array([[0.25, 0.25, 0.25, 0.25], [0.1, 0.6, 0.2, 0.1]])
  y = np.array([2, 2])
  np.testing.assert_allclose(attacks.svc_features(p, y, "entropy")[:, 0],
                             [math.log(4), -(0.2 * math.log(0.1) + 0.6 * math.log(0.6) + 0.2 * math.log(0.2))])
  np.testing.assert_allclose(attacks.svc_features(p, y, "confidence")[:, 0], [0.25, 0.2])
  # Row 0 ties: argmax takes class 0, which is not the label.
  np.testing.assert_allclose(attacks.svc_features(p, y, "correctness")[:, 0], [0.0, 0.0])
  np.testing.assert_allclose(attacks.svc_features(p, np.array([0, 1]), "correctness")[:, 0], [1, 1])
  assert attacks.svc_features(p, y, "prob").shape == (2, 4)
  with pytest.raises(ValueError, match="feature"):
    attacks.svc_features(p, y, "loss")


def _probs(rng, n, conf_low, conf_high, classes=3):
  """Softmax-like rows whose true class has probability uniform in [conf_low, conf_high]."""
  y = rng.integers(0, classes, n)
  conf = rng.uniform(conf_low, conf_high, n)
  p = np.repeat(((1 - conf) / (classes - 1))[:, None], classes, axis=1)
  p[np.arange(n), y] = conf
  return p, y


def test_svc_mia_separable():
  rng = np.random.default_rng(3)
  members, nonmembers = _probs(rng, 150, 0.95, 1.0), _probs(rng, 150, 0.3, 0.5)
  member_like, nonmember_like = _probs(rng, 100, 0.95, 1.0), _probs(rng, 100, 0.3, 0.5)
  for feature in ("confidence", "entropy", "m_entropy", "prob"):
    assert attacks.svc_mia(*members, *nonmembers, *member_like, feature) == 0.0
    assert attacks.svc_mia(*members, *nonmembers, *nonmember_like, feature) == 1.0


def test_svc_mia_identical_distributions_have_no_advantage():
  rng = np.random.default_rng(4)
  shadow_in, shadow_out = _probs(rng, 400, 0.2, 0.95), _probs(rng, 400, 0.2, 0.95)
  target_a, target_b = _probs(rng, 400, 0.2, 0.95), _probs(rng, 400, 0.2, 0.95)
  a = attacks.svc_mia_all(*shadow_in, *shadow_out, *target_a)
  b = attacks.svc_mia_all(*shadow_in, *shadow_out, *target_b)
  assert set(a) == set(attacks.SVC_FEATURES)
  # Two samples of one distribution through one fixed classifier: the difference is sampling noise
  # (sd ~0.035 at n=400); 0.15 is over 4 sd.
  for feature in attacks.SVC_FEATURES:
    assert abs(a[feature] - b[feature]) < 0.15, feature


def test_forget_efficacy_uses_first_len_test_retain_examples():
  rng = np.random.default_rng(5)
  head, tail = _probs(rng, 100, 0.95, 1.0), _probs(rng, 400, 0.3, 0.5)
  retain = (np.concatenate([head[0], tail[0]]), np.concatenate([head[1], tail[1]]))
  test = _probs(rng, 100, 0.3, 0.5)
  forget = _probs(rng, 80, 0.95, 1.0)
  out = attacks.svc_mia_forget_efficacy(*retain, *test, *forget, features=("confidence",))
  # Shadow members are the 100 confident head examples, so a confident forget set looks like members.
  assert out == {"confidence": 0.0}
  with pytest.raises(ValueError, match="retain_labels"):
    attacks.svc_mia_forget_efficacy(*_probs(rng, 50, 0.3, 0.5), *test, *forget)


def test_svc_mia_refuses_multilabel_and_logits():
  rng = np.random.default_rng(6)
  p, y = _probs(rng, 20, 0.5, 0.9)
  multilabel = rng.integers(0, 2, size=(20, 3))
  with pytest.raises(ValueError, match="single-label"):
    attacks.svc_mia(p, multilabel, p, y, p, y)
  with pytest.raises(ValueError, match="shadow_test_probs"):
    attacks.svc_mia(p, y, np.log(p), y, p, y)
  with pytest.raises(ValueError, match="single-label"):
    attacks.svc_mia(p, y, p, y, rng.uniform(size=(20, 3)), y)
