"""Population statistics: logit-scaled confidence, the NeurIPS 2023 forget score, U-LiRA, ToW.

Hand-made confidences with known answers, the public competition formulas re-derived by hand and
written out naively (every model against every threshold), and scipy.stats.norm for the Gaussians.
"""

import math

import numpy as np
import pytest
from scipy import special, stats

from mu_jax.evaluation import columns, population, report

DELTA = population.DELTA


# ---------------------------------------------------------------------------------------------
# Logit-scaled confidence.


def test_confidence_is_log_odds_of_the_true_class():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (3, 5, 4))  # 3 members, 5 examples, 4 classes
  labels = np.array([0, 3, 1, 2, 3])
  got = population.logit_scaled_confidence(logits, labels)
  p = special.softmax(logits, axis=-1)[:, np.arange(5), labels]
  np.testing.assert_allclose(got, np.log(p) - np.log1p(-p), rtol=1e-10)
  # The public code's recipe: max-shifted softmax, log(p_y + 1e-45) − log(Σ_wrong p + 1e-45).
  shifted = np.exp(logits - logits.max(-1, keepdims=True))
  probs = shifted / shifted.sum(-1, keepdims=True)
  right = probs[:, np.arange(5), labels]
  np.testing.assert_allclose(got, np.log(right + 1e-45) - np.log(1 - right + 1e-45), rtol=1e-9)


def test_confidence_stays_exact_where_probabilities_round_to_one():
  got = population.logit_scaled_confidence([[1000.0, 0.0, 0.0], [0.0, 800.0, 800.0]], [0, 0])
  np.testing.assert_allclose(got, [1000.0 - math.log(2), -800.0 - math.log(2)])


def test_multilabel_confidence_is_the_signed_logit():
  logits = np.array([[2.0, -1.0], [0.5, 3.0]])
  got = population.logit_scaled_confidence(logits, [[1, 0], [0, 1]], task="multilabel")
  np.testing.assert_allclose(got, [[2.0, 1.0], [-0.5, 3.0]])
  sig = special.expit(logits)
  np.testing.assert_allclose(np.log(sig) - np.log1p(-sig), logits)


@pytest.mark.parametrize("logits,labels,task,match", [
    (np.zeros((2, 3)), [0, 3], "multiclass", "class indices"),
    (np.zeros((2, 3)), [0], "multiclass", "shape"),
    (np.zeros((2, 3)), [[0, 1, 2], [1, 0, 1]], "multilabel", "0 or 1"),
    (np.full((2, 3), np.nan), [0, 1], "multiclass", "non-finite"),
    (np.zeros((2, 3)), [0, 1], "regression", "task"),
])
def test_confidence_rejects_bad_input(logits, labels, task, match):
  with pytest.raises(ValueError, match=match):
    population.logit_scaled_confidence(logits, labels, task)


# ---------------------------------------------------------------------------------------------
# The forget score: per-example ε against metric.py's rules.


def _naive_epsilon(unlearned, retrained, delta=DELTA):
  """metric.py's ε written out with every model compared with every threshold, one threshold list
  per right end as the public code builds it (google-deepmind/unlearning_evaluation@ffae0ff)."""
  u, r = np.asarray(unlearned, float), np.asarray(retrained, float)
  du, dr = u.max() - u.min(), r.max() - r.min()
  if min(du, dr) / max(du, dr) < 0.01:
    return 50.0
  pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
  rates = []
  # Single threshold: positive when φ ≥ t.
  lo, hi = min(pos.min(), neg.min()), max(pos.max(), neg.max())
  for t in np.linspace(lo, hi, int(np.ceil((hi - lo) * 100))):
    rates.append((np.mean(neg >= t), np.mean(pos < t)))
  # Double threshold on the peakier sample.
  p2, n2 = (neg, pos) if np.ptp(pos) >= np.ptp(neg) else (pos, neg)
  width = min(np.ptp(pos), np.ptp(neg))
  lo, hi = p2.min() + width - 2.0, p2.max() + 2.0
  rights = np.linspace(lo, hi, int(np.ceil((hi - lo) * 100)))
  lefts = np.concatenate([np.linspace(tr - width - 2.0, tr - width + 2.0, 400) for tr in rights])
  rights = np.repeat(rights, 400)
  inside_p = (lefts[None] <= p2[:, None]) & (p2[:, None] <= rights[None])
  inside_n = (lefts[None] <= n2[:, None]) & (n2[:, None] <= rights[None])
  rates += list(zip(inside_n.mean(0), (~inside_p).mean(0)))
  best = -1.0
  for fpr, fnr in rates:
    if fpr == 0 and fnr == 0:
      return 50.0
    if fpr == 0 or fnr == 0:
      continue
    terms = [math.log(1 - delta - fpr) - math.log(fnr) if fpr < 1 - delta else -math.inf,
             math.log(1 - delta - fnr) - math.log(fpr) if fnr < 1 - delta else -math.inf]
    best = max(best, max(terms), 0.0)
  return best


def test_epsilon_of_two_shifted_samples_is_log_three():
  # Retrained has the larger median, so it is the positive side. With quarters for both rates the
  # best rule is FPR = FNR = 1/4 (single: 2 < t ≤ 2.5; double: e.g. [0, 2.4]), every other rule
  # with both rates positive is worse, so ε = log((1 − δ − 1/4) / (1/4)) = log(3 − 4δ).
  eps = population.example_epsilon([0.0, 1.0, 2.0, 3.0], [1.5, 2.5, 3.5, 4.5])
  assert eps == pytest.approx(math.log(3 - 4 * DELTA), rel=1e-12)


def test_double_threshold_catches_a_sample_inside_the_other():
  # Unlearned lies between the retrained models' values: no single threshold separates them (the
  # best is FPR = 1/2, FNR = 1/4: log 2), but the interval [2.0, 2.3] holds every unlearned model
  # and no retrained one: FPR = FNR = 0, ε = ∞, capped at 50.
  assert population.example_epsilon([2.0, 2.1, 2.2, 2.3], [0.0, 1.0, 3.0, 4.0]) == 50.0
  # One retrained model (2.05) inside the unlearned range: single thresholds give ε = 0 (no rule
  # with both rates positive does better than chance); the intervals [2.0, 2.2] or [2.05, 2.3] give
  # FPR = FNR = 1/4, so ε = log(3 − 4δ), found by the double-threshold rule alone.
  eps = population.example_epsilon([2.0, 2.1, 2.2, 2.3], [0.0, 2.05, 3.0, 4.0])
  assert eps == pytest.approx(math.log(3 - 4 * DELTA), rel=1e-12)


def test_epsilon_matches_the_naive_rules_on_random_samples():
  rng = np.random.default_rng(1)
  cases = [(rng.normal(0, 1, 8), rng.normal(0.7, 1.3, 8)),
           (rng.normal(0, 1, 7), rng.normal(0, 1, 9)),
           (rng.normal(1, 0.3, 8), rng.normal(0, 1, 8)),
           (np.round(rng.normal(0, 1, 8), 1), np.round(rng.normal(0.2, 1, 8), 1))]  # ties
  for u, r in cases:
    assert population.example_epsilon(u, r) == pytest.approx(_naive_epsilon(u, r), rel=1e-12)


def test_a_spike_against_a_spread_is_the_cap_and_constants_are_handled():
  assert population.example_epsilon([1.0, 1.0, 1.001], [0.0, 1.0, 2.0]) == 50.0
  assert population.example_epsilon([1.0, 1.0, 1.0], [1.0, 1.0]) == 0.0
  assert population.example_epsilon([1.0, 1.0, 1.0], [2.0, 2.0]) == 50.0


def test_bucket_points_follow_the_public_buckets():
  # N = 512: ⌈ln 511⌉ = 7, buckets [0, 0.5), [0.5, 1), ..., [6.5, 7), points 1, 1/2, ..., 2^−13.
  got = population.epsilon_points([0.0, 0.49, 0.5, math.log(3), 6.99, 7.0, 50.0], 512)
  np.testing.assert_array_equal(got, [1.0, 1.0, 0.5, 0.25, 2.0 ** -13, 0.0, 0.0])
  # N = 4: ⌈ln 3⌉ = 2, four buckets.
  np.testing.assert_array_equal(population.epsilon_points([1.9, 2.0], 4), [0.125, 0.0])
  with pytest.raises(ValueError, match="at least 3 models"):
    population.epsilon_points([0.0], 2)


def test_identical_populations_score_one_and_disjoint_ones_zero():
  rng = np.random.default_rng(2)
  confs = rng.normal(0, 1, (12, 6))
  same = population.forget_score(confs, confs.copy())
  assert same["forget_score"] == 1.0 and np.all(same["epsilons"] == 0.0)
  far = population.forget_score(confs, confs + 10.0)
  assert far["forget_score"] == 0.0 and np.all(far["epsilons"] == 50.0)
  # Half the examples unchanged, half moved far away: F = 1/2.
  mixed = confs.copy()
  mixed[:, :3] += 10.0
  assert population.forget_score(mixed, confs)["forget_score"] == 0.5


def test_forget_score_averages_the_hand_computed_points():
  u = np.array([[0.0, 2.0], [1.0, 2.1], [2.0, 2.2], [3.0, 2.3]])
  r = np.array([[1.5, 0.0], [2.5, 2.05], [3.5, 3.0], [4.5, 4.0]])
  # Both examples have ε = log 3 (above): bucket [1, 1.5) of N = 4, a quarter point each.
  got = population.forget_score(u, r)
  assert got["forget_score"] == 0.25 and got["num_models"] == 4


def test_forget_score_rejects_mismatched_examples():
  with pytest.raises(ValueError, match="same forget examples"):
    population.forget_score(np.zeros((4, 3)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match="models, examples"):
    population.forget_score(np.zeros(4), np.zeros((4, 2)))


def test_neurips_final_score_scales_by_relative_utility():
  got = population.neurips_score(0.5, [0.8, 0.9], [0.9, 0.9], 0.6, [0.75, 0.75])
  assert got == pytest.approx(0.5 * (0.85 / 0.9) * (0.6 / 0.75))
  with pytest.raises(ValueError, match="fractions"):
    population.neurips_score(0.5, 85.0, 90.0, 60.0, 75.0)


def test_retrained_ceiling_compares_two_disjoint_halves():
  rng = np.random.default_rng(3)
  confs = rng.normal(0, 1, (9, 4))
  retain, test = rng.uniform(0.8, 0.9, 9), rng.uniform(0.6, 0.7, 9)
  got = population.retrained_ceiling(confs, retain_acc=retain, test_acc=test, seed=5)
  a, b = got["halves"]
  assert len(a) == 4 and len(b) == 5 and sorted(np.r_[a, b]) == list(range(9))
  want = population.forget_score(confs[a], confs[b])
  assert got["forget_score"] == want["forget_score"] and got["num_models"] == 4
  assert got["neurips_score"] == pytest.approx(
      want["forget_score"] * retain[a].mean() / retain[b].mean() * test[a].mean() / test[b].mean())
  with pytest.raises(ValueError, match="at least 6"):
    population.retrained_ceiling(confs[:5])


# ---------------------------------------------------------------------------------------------
# Identity-level U-LiRA.


def _population(members, persons, images_per_person, shift, rng, noise=1.0):
  """Each member unlearned a random half of the pool persons; φ = per-image base + shift if the
  member unlearned the image's person + N(0, noise²)."""
  unlearned = np.zeros((members, persons), int)
  for m in range(members):
    unlearned[m, rng.permutation(persons)[:persons // 2]] = 1
  person = np.repeat(np.arange(persons), images_per_person)
  base = rng.normal(0, 2, person.size)
  confs = base + shift * unlearned[:, person] + rng.normal(0, noise, (members, person.size))
  return confs, unlearned, person


def test_log_ratio_is_the_gaussian_ratio_of_the_other_members():
  rng = np.random.default_rng(4)
  confs, unlearned, person = _population(10, 6, 2, 1.0, rng)
  ratios = population.ulira_log_ratios(confs, unlearned, person)
  for t, i in [(0, 0), (3, 5), (9, 11)]:
    shadows = np.arange(10) != t
    side = unlearned[:, person[i]].astype(bool)
    mu_in, sd_in = stats.norm.fit(confs[shadows & side, i])
    mu_out, sd_out = stats.norm.fit(confs[shadows & ~side, i])
    want = (stats.norm.logpdf(confs[t, i], mu_in, sd_in)
            - stats.norm.logpdf(confs[t, i], mu_out, sd_out))
    assert ratios[t, i] == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_log_ratio_recovers_the_known_gaussians():
  # Many shadows from N(1, 0.5²) (unlearned) and N(−1, 1) (never trained): the fitted ratio at each
  # target's value is close to the true one.
  rng = np.random.default_rng(5)
  members = 20000
  unlearned = (np.arange(members) % 2)[:, None]
  confs = np.where(unlearned == 1, rng.normal(1, 0.5, (members, 1)),
                   rng.normal(-1, 1, (members, 1)))
  ratios = population.ulira_log_ratios(confs, unlearned, np.array([0]))[:, 0]
  true = stats.norm.logpdf(confs[:, 0], 1, 0.5) - stats.norm.logpdf(confs[:, 0], -1, 1)
  typical = np.abs(confs[:, 0]) < 3
  # 10,000 shadows per side fit σ to about 1%, so the ratio (which spans about 30 here) is off by a
  # few hundredths typically and a few tenths at the edges.
  err = np.abs(ratios - true)[typical]
  assert np.median(err) < 0.1 and err.max() < 0.5
  assert np.corrcoef(ratios, true)[0, 1] > 0.999


def test_identical_distributions_give_chance_and_separated_ones_certainty():
  rng = np.random.default_rng(6)
  chance = population.ulira(*_population(32, 20, 3, 0.0, rng), n_bootstrap=50)
  assert abs(chance["ulira_auc"] - 0.5) < 0.1 and abs(chance["ulira_acc"] - 0.5) < 0.1
  assert chance["ulira_auc_ci_low"] <= chance["ulira_auc"] <= chance["ulira_auc_ci_high"]
  assert chance["ulira_tpr_at_1pct_fpr"] < 0.1 and chance["ulira_targets"] == 32
  assert chance["ulira_level"] == "person" and chance["log_ratios"].shape == (32, 60)
  sharp = population.ulira(*_population(32, 20, 3, 6.0, rng), n_bootstrap=0)
  assert sharp["ulira_auc"] > 0.99 and sharp["ulira_acc"] > 0.95
  assert sharp["ulira_tpr_at_1pct_fpr"] > 0.9 and sharp["ulira_tpr_at_5pct_fpr"] > 0.95
  assert "ulira_auc_ci_low" not in sharp


def test_person_scores_average_their_images():
  # One image of each person carries the whole signal; the person-level scores average it with
  # the person's uninformative images, the example level sees the informative images on their own.
  rng = np.random.default_rng(7)
  confs, unlearned, person = _population(24, 10, 4, 0.0, rng)
  first = np.r_[True, np.diff(person) != 0]
  confs[:, first] += 3.0 * unlearned[:, person[first]]
  got = population.ulira(confs, unlearned, person, n_bootstrap=0)
  ratios = got["log_ratios"]
  t = 0
  per_person = np.array([ratios[t, person == p].mean() for p in range(10)])
  assert got["per_target_auc"][t] == pytest.approx(
      population.attacks.auroc(per_person[unlearned[t] == 1], per_person[unlearned[t] == 0]))
  images = population.ulira(confs[:, first], unlearned, None, example_level=True, n_bootstrap=0)
  assert images["ulira_level"] == "example" and images["ulira_auc"] > 0.9


def test_ulira_balances_and_uses_global_variance_on_request():
  rng = np.random.default_rng(8)
  confs, unlearned, person = _population(16, 12, 2, 2.0, rng)
  unlearned[0, :] = 0
  unlearned[0, :3] = 1  # target 0: 3 unlearned persons against 9 never trained
  per_image = population.ulira(confs, unlearned, person, n_bootstrap=0)
  glob = population.ulira(confs, unlearned, person, variance="global", n_bootstrap=0)
  assert per_image["ulira_auc"] > 0.8 and glob["ulira_auc"] > 0.8
  assert not np.allclose(per_image["log_ratios"], glob["log_ratios"])
  # Balanced: target 0 is scored on its 3 unlearned persons and 3 of its 9 never-trained ones.
  assert per_image["per_target_units"][0] == 6 and np.all(per_image["per_target_units"][1:] == 12)


def test_ulira_leaves_out_pairs_with_too_few_shadows_and_refuses_bad_masks():
  rng = np.random.default_rng(9)
  confs, _, person = _population(8, 5, 2, 1.0, rng)
  unlearned = np.array([[1, 1, 0, 1, 0], [1, 1, 0, 1, 0], [0, 1, 1, 0, 1], [0, 0, 1, 1, 1],
                        [0, 1, 0, 0, 1], [0, 0, 1, 1, 0], [0, 0, 1, 0, 1], [0, 0, 0, 0, 0]])
  # Person 0 was unlearned by members 0 and 1 only: as targets, each has one such shadow.
  got = population.ulira(confs, unlearned, person, n_bootstrap=0)
  ratios = got["log_ratios"]
  assert np.all(np.isnan(ratios[:2, person == 0])) and not np.any(np.isnan(ratios[2:]))
  assert got["ulira_pairs_left_out"] == 4 and np.isfinite(got["ulira_auc"])
  # Person 0 is not scored for targets 0 and 1: their AUROC is over the other persons only.
  t, per_person = 1, [np.nanmean(ratios[1, person == p]) for p in (1, 2, 3, 4)]
  side = unlearned[t, 1:] == 1  # persons 1 and 3 unlearned, 2 and 4 never trained: balanced
  want = population.attacks.auroc(np.array(per_person)[side], np.array(per_person)[~side])
  assert got["per_target_auc"][t] == pytest.approx(want)
  glob = population.ulira_log_ratios(confs, unlearned, person, variance="global")
  assert np.array_equal(np.isnan(glob), np.isnan(ratios))
  with pytest.raises(ValueError, match="no \\(target member, image\\) pair"):
    population.ulira(confs, np.ones_like(unlearned), person)
  with pytest.raises(ValueError, match="0 \\(never trained\\) and 1"):
    population.ulira(confs, unlearned * 2, person)
  with pytest.raises(ValueError, match="column indices"):
    population.ulira(confs, unlearned, person + 10)


# ---------------------------------------------------------------------------------------------
# Tug of war and the registry.


def test_tow_is_the_product_of_accuracy_gaps():
  assert population.tow(0.9, 0.95, 0.7, 0.9, 0.95, 0.7) == 1.0
  assert population.tow(1.0, 0.9, 0.6, 0.7, 1.0, 0.65) == pytest.approx(0.7 * 0.9 * 0.95)
  assert math.isnan(population.tow(float("nan"), 0.9, 0.6, 0.7, 1.0, 0.65))
  with pytest.raises(ValueError, match="retrained_test_acc .*percentage"):
    population.tow(1.0, 0.9, 0.6, 0.7, 1.0, 65.0)
  with pytest.raises(KeyError, match="lacks \\['retain_acc'\\]"):
    population.tow_from_rows({"model": "x", "forget_acc": 1, "test_acc": 1}, {})


def _outputs(correct):
  """Per-split outputs of a 2-class model, correct on the given share of 20 examples."""
  labels = np.zeros(20, int)
  out = {}
  for split, share in correct.items():
    logits = np.tile([[-2.0, 2.0]], (20, 1))
    logits[:int(share * 20)] = [2.0, -2.0]
    out[split] = {"logits": logits, "label": labels, "loss": np.linspace(0.1, 1.0, 20)}
  return out


def test_report_rows_carry_tow_against_the_retrained_model():
  retrained = _outputs({"forget": 0.5, "retain": 1.0, "test": 0.75, "unseen": 0.5})
  model = _outputs({"forget": 0.9, "retain": 0.95, "test": 0.7, "unseen": 0.5})
  row = report.model_row("m", model, "multiclass", retrained=retrained, n_bootstrap=0)
  assert row["tow"] == pytest.approx((1 - 0.4) * (1 - 0.05) * (1 - 0.05))
  same = report.model_row("r", retrained, "multiclass", retrained=retrained, n_bootstrap=0)
  assert same["tow"] == 1.0
  assert "tow" not in report.model_row("m", model, "multiclass", n_bootstrap=0)


def test_population_columns_are_registered():
  for key, better in [("tow", "higher"), ("forget_score", "higher"), ("neurips_score", "higher"),
                      ("ulira_auc", "retrained"), ("ulira_acc", "retrained"),
                      ("ulira_tpr_at_1pct_fpr", "retrained")]:
    assert columns.BY_KEY[key].better == better and columns.BY_KEY[key].doc
