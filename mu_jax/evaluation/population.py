"""Statistics over populations of models: the NeurIPS 2023 forget score, identity-level U-LiRA, ToW.

The functions here turn per-member, per-example outputs of many models (K members trained, unlearned
or retrained with different seeds and inclusion masks) into the numbers of the result table. They
run on the host in numpy and scipy, like every other evaluation in mu_jax; training the populations
is not done here. Columns: ``docs/metrics.md``.

**Logit-scaled confidence** (:func:`logit_scaled_confidence`): φ = log p_y − log(1 − p_y), the
statistic both attacks below read. For a class task it equals z_y − logsumexp_{j≠y} z_j exactly,
so it is computed that way in float64 and stays finite for any finite logits; for a multi-label head
it is the attribute's logit, signed by its label (log σ(z) − log σ(−z) = z).

**The NeurIPS 2023 machine unlearning competition score** (Triantafillou et al., "Are we making
progress in unlearning? Findings from the first NeurIPS unlearning competition", arXiv 2406.09073;
the scoring code is google-deepmind/unlearning_evaluation@ffae0ff:metric.py and main.py). For each
forget example, φ under N unlearned models and under N retrained models are two samples; an
estimate of ε (in the sense of (ε, δ)-indistinguishability, δ = 1e-5) is the largest
log((1 − δ − FPR) / FNR) or log((1 − δ − FNR) / FPR) over two families of decision rules
(:func:`example_epsilon`). The ε of the examples are bucketed (width 0.5, halving points) into the
forget score F in [0, 1] (:func:`forget_score`), and the final score multiplies F by the retain and
test accuracies of the unlearned models relative to the retrained ones (:func:`neurips_score`).
:func:`retrained_ceiling` gives the value a perfect method reaches at a given N: two disjoint halves
of one retrained population compared with each other.

**Identity-level U-LiRA** (:func:`ulira`): mu_jax's adaptation to forgetting *persons* of U-LiRA
(Hayes, Shumailov, Triantafillou, Khalifa, Papernot, "Inexact Unlearning Needs More Careful
Evaluations to Avoid a False Sense of Privacy", arXiv 2403.01218), which itself builds on LiRA
(Carlini et al., "Membership Inference Attacks From First Principles", IEEE S&P 2022, arXiv
2112.03570). Each member of a population trained on a random half of a pool of persons and then
unlearned, with the method under test, the pool persons it trained on; the attack asks, for a target
model and a person, "was this person unlearned, or never trained on?". The paper's unit is an
example; here it is a person (the per-image likelihood ratios are averaged over the person's
images), and the example-level form is a flag. This adaptation is mu_jax's, not the paper's.

**Tug of war** (:func:`tow`; Zhao, Kurmanji, Bărbulescu, Triantafillou, Triantafillou, "What makes
unlearning hard and what to do about it", NeurIPS 2024, arXiv 2406.01257): the product over forget,
retain and test of one minus the accuracy gap to the retrained model.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import special

from mu_jax.evaluation import attacks

# The competition's constants (google-deepmind/unlearning_evaluation@ffae0ff:metric.py).
DELTA = 1e-5
EPSILON_CAP = 50.0
THRESHOLDS_PER_UNIT = 100
# The double-threshold rule searches this far (in units of φ) around the peakier distribution.
_DOUBLE_BUFFER = 2.0
# A distribution whose spread is under this share of the other's is called degenerate (ε = cap).
_PEAKY_RATIO = 0.01
_BUCKET_WIDTH = 0.5

# U-LiRA: a Gaussian fitted to shadow confidences that are all equal would have zero variance and an
# infinite density; this floor (in units of φ) keeps the log ratio finite without moving any fit
# whose spread is larger than about 1e-3.
_MIN_VARIANCE = 1e-6


# ---------------------------------------------------------------------------------------------
# Logit-scaled confidence.


def logit_scaled_confidence(logits, labels, task: str = "multiclass") -> np.ndarray:
  """φ = log p_y − log(1 − p_y) of the true label, computed stably from logits.

  Class task: φ = z_y − logsumexp_{j≠y} z_j (the two log-probabilities share the normaliser, which
  cancels), in float64. The public competition code adds 1e-45 inside each log, which clips φ to
  about ±103.6; this function does not clip, so the two agree wherever |φ| is below that.
  Multi-label task: per attribute, φ = log σ(z) − log σ(−z) = z when the attribute is present and
  −z when it is absent.

  Args:
    logits: [..., N, C] (leading axes, e.g. a member axis, are kept).
    labels: [N] class indices (class task) or [N, C] 0/1 targets (multi-label task), shared by every
      leading index.
    task: "multiclass" or "multilabel".

  Returns:
    φ with shape [..., N] (class task) or [..., N, C] (multi-label task), float64.
  """
  z = np.asarray(logits, dtype=np.float64)
  if z.ndim < 2:
    raise ValueError(f"logits must have shape [..., N, C], got shape {z.shape}")
  if not np.all(np.isfinite(z)):
    raise ValueError(f"logits hold {int(np.sum(~np.isfinite(z)))} non-finite values (nan or inf)")
  n, c = z.shape[-2:]
  y = np.asarray(labels)
  if task == "multilabel":
    if y.shape != (n, c):
      raise ValueError(f"labels must have shape ({n}, {c}) for a multi-label task, got {y.shape}")
    if not np.all((y == 0) | (y == 1)):
      raise ValueError("multi-label labels must be 0 or 1")
    return np.where(y.astype(bool), z, -z)
  if task != "multiclass":
    raise ValueError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
  if c < 2:
    raise ValueError(f"a class task needs at least 2 logits per example, got {c}")
  if y.shape != (n,):
    raise ValueError(f"labels must have shape ({n},) to match the logits, got {y.shape}")
  if n and (not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0 or y.max() >= c):
    raise ValueError(f"labels must be class indices in [0, {c})")
  y = y.astype(np.int64)
  index = np.broadcast_to(y[:, None], z.shape[:-1] + (1,))
  true_logit = np.take_along_axis(z, index, axis=-1)[..., 0]
  others = z.copy()
  np.put_along_axis(others, index, -np.inf, axis=-1)
  return true_logit - special.logsumexp(others, axis=-1)


# ---------------------------------------------------------------------------------------------
# The NeurIPS 2023 forget score.


def _sample(values, name: str) -> np.ndarray:
  x = np.asarray(values, dtype=np.float64)
  if x.ndim != 1 or x.size == 0:
    raise ValueError(f"{name} must be a non-empty vector of confidences (one per model), got shape "
                     f"{x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} holds {int(np.sum(~np.isfinite(x)))} non-finite values (nan or inf)")
  return x


def _count_at_least(sorted_x: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
  """How many of ``sorted_x`` are ≥ each threshold."""
  return len(sorted_x) - np.searchsorted(sorted_x, thresholds, side="left")


def _count_between(sorted_x: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
  """How many of ``sorted_x`` lie in the closed interval [left, right], per interval."""
  return np.maximum(np.searchsorted(sorted_x, right, side="right")
                    - np.searchsorted(sorted_x, left, side="left"), 0)


def _single_threshold_rates(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(FPR, FNR) of "positive when φ ≥ t", t on an even grid from the smallest to the largest φ."""
  lo, hi = min(pos.min(), neg.min()), max(pos.max(), neg.max())
  t = np.linspace(lo, hi, int(math.ceil((hi - lo) * THRESHOLDS_PER_UNIT)))
  fnr = (len(pos) - _count_at_least(np.sort(pos), t)) / len(pos)
  fpr = _count_at_least(np.sort(neg), t) / len(neg)
  return fpr, fnr


def _double_threshold_rates(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(FPR, FNR) of "positive when left ≤ φ ≤ right", the positive being the peakier sample.

  As in metric.py, the peakier sample (smaller range; on a tie, ``b``) is the positive class, the
  right ends run over a grid from its minimum + its range − 2 to its maximum + 2, and for each right
  end the left ends run over 4 units centred one range below it. The ε formula is symmetric in FPR
  and FNR, so which sample is called positive does not change ε.
  """
  range_a, range_b = np.ptp(a), np.ptp(b)
  width = min(range_a, range_b)
  pos, neg = (b, a) if range_a >= range_b else (a, b)
  lo, hi = pos.min() + width - _DOUBLE_BUFFER, pos.max() + _DOUBLE_BUFFER
  right = np.linspace(lo, hi, int(math.ceil((hi - lo) * THRESHOLDS_PER_UNIT)))
  n_left = int(math.ceil(2 * _DOUBLE_BUFFER * THRESHOLDS_PER_UNIT))
  left = np.linspace(right - width - _DOUBLE_BUFFER, right - width + _DOUBLE_BUFFER, n_left, axis=1)
  left = left.reshape(-1)
  right = np.repeat(right, n_left)
  fnr = (len(pos) - _count_between(np.sort(pos), left, right)) / len(pos)
  fpr = _count_between(np.sort(neg), left, right) / len(neg)
  return fpr, fnr


def _threshold_epsilons(fpr: np.ndarray, fnr: np.ndarray, delta: float) -> np.ndarray:
  """ε of each decision rule: inf where it separates perfectly, nan where it is discarded."""
  with np.errstate(divide="ignore", invalid="ignore"):
    a = np.log(1.0 - delta - fpr) - np.log(fnr)
    b = np.log(1.0 - delta - fnr) - np.log(fpr)
  # fmax ignores one nan (the log of a negative number when a rate is 1); two nans stay nan, and
  # the rule is discarded.
  eps = np.maximum(np.fmax(a, b), 0.0)
  both_zero = (fpr == 0) & (fnr == 0)
  # One error rate zero but not the other: metric.py reads this as too few models to estimate the
  # zero rate and discards the rule.
  eps = np.where((fpr * fnr == 0) & ~both_zero, np.nan, eps)
  return np.where(both_zero, np.inf, eps)


def example_epsilon(unlearned, retrained, delta: float = DELTA) -> float:
  """The competition's ε for one forget example, from its φ under unlearned and retrained models.

  Steps of google-deepmind/unlearning_evaluation@ffae0ff:metric.py (``_get_epsilons``):

  1. If the range of one sample is under 1% of the other's, one distribution is a spike and ε is the
     cap (50). When both samples are constant (a case the public code does not handle), ε is 0 if
     they are equal and the cap if not.
  2. The positive sample is the one with the larger median (the unlearned one on a tie).
  3. Decision rules: a single threshold, positive when φ ≥ t, for t on an even grid of 100 points
     per unit of φ from the smallest to the largest φ; and a double threshold, positive when
     left ≤ φ ≤ right, on the grid of :func:`_double_threshold_rates`.
  4. For each rule, FPR and FNR over the models and
     ε = max(log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR), clipped at 0; a rule with
     FPR = FNR = 0 gives ∞; a rule with exactly one of them 0 is discarded.
  5. ε of the example: the largest over the rules, capped at 50. Where every rule is discarded the
     public code stops with an assertion; here ε is the cap, since then no rule on the grid leaves
     both error rates measurable, which happens when the samples are separated up to the grid's
     resolution.

  Error rates are computed from sorted samples by counting (``np.searchsorted``) instead of by
  comparing every model with every threshold, which gives the same counts in float64.

  Args:
    unlearned: [N_u] φ of the example under each unlearned model.
    retrained: [N_r] φ under each retrained model.
    delta: δ of the (ε, δ) guarantee.

  Returns:
    ε in [0, 50].
  """
  u = _sample(unlearned, "unlearned")
  r = _sample(retrained, "retrained")
  range_u, range_r = np.ptp(u), np.ptp(r)
  largest, smallest = max(range_u, range_r), min(range_u, range_r)
  if largest == 0:
    return 0.0 if u[0] == r[0] else EPSILON_CAP
  if smallest / largest < _PEAKY_RATIO:
    return EPSILON_CAP
  pos, neg = (r, u) if np.median(r) > np.median(u) else (u, r)
  fpr_s, fnr_s = _single_threshold_rates(pos, neg)
  fpr_d, fnr_d = _double_threshold_rates(pos, neg)
  eps = _threshold_epsilons(np.r_[fpr_d, fpr_s], np.r_[fnr_d, fnr_s], delta)
  kept = eps[~np.isnan(eps)]
  if kept.size == 0:
    return EPSILON_CAP
  return float(min(kept.max(), EPSILON_CAP))


def _confidence_matrix(values, name: str) -> np.ndarray:
  x = np.asarray(values, dtype=np.float64)
  if x.ndim != 2 or 0 in x.shape:
    raise ValueError(f"{name} must have shape [models, examples], got {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} holds {int(np.sum(~np.isfinite(x)))} non-finite values (nan or inf)")
  return x


def epsilon_points(epsilons, num_models: int) -> np.ndarray:
  """Points of each example's ε: 2^(−k) in the k-th bucket of width 0.5, 0 past the last bucket.

  The buckets start at 0, 0.5, 1, ... and the last one ends at or below ⌈ln(N − 1)⌉ (metric.py's
  estimate of the largest ε that N models per side can show), so with N = 512 there are 14 buckets
  and an ε of 7 or more scores 0.

  Args:
    epsilons: [E] per-example ε.
    num_models: N, the number of models per side.

  Returns:
    [E] points in {0} ∪ {2^(−k)}.
  """
  if num_models < 3:
    raise ValueError(f"the forget score needs at least 3 models per side (ln(N − 1) > 0), got "
                     f"{num_models}")
  eps = np.asarray(epsilons, dtype=np.float64)
  n_buckets = int(math.floor(math.ceil(math.log(num_models - 1)) / _BUCKET_WIDTH))
  k = np.floor(eps / _BUCKET_WIDTH)
  return np.where(k < n_buckets, 0.5 ** np.minimum(k, n_buckets), 0.0)


def forget_score(unlearned_confs, retrained_confs, delta: float = DELTA) -> dict[str, Any]:
  """The competition's forget score F from φ of the forget examples under both populations.

  ``compute_forget_score_from_confs`` of google-deepmind/unlearning_evaluation@ffae0ff:metric.py:
  ε per example (:func:`example_epsilon`), then the mean over examples of its bucket points
  (:func:`epsilon_points`). N for the buckets is the smaller of the two model counts (the
  competition used 512 of each).

  Args:
    unlearned_confs: [N_u, E] φ of each forget example under each unlearned model.
    retrained_confs: [N_r, E] φ under each retrained model.
    delta: δ.

  Returns:
    ``{"forget_score": F in [0, 1] (1: indistinguishable from retraining), "epsilons": [E],
    "num_models": N}``.
  """
  u = _confidence_matrix(unlearned_confs, "unlearned_confs")
  r = _confidence_matrix(retrained_confs, "retrained_confs")
  if u.shape[1] != r.shape[1]:
    raise ValueError(f"unlearned_confs has {u.shape[1]} examples but retrained_confs has "
                     f"{r.shape[1]}; both must hold the same forget examples in the same order")
  n = min(u.shape[0], r.shape[0])
  eps = np.array([example_epsilon(u[:, i], r[:, i], delta) for i in range(u.shape[1])])
  return {"forget_score": float(np.mean(epsilon_points(eps, n))), "epsilons": eps, "num_models": n}


def _mean_accuracy(values, name: str) -> float:
  x = np.asarray(values, dtype=np.float64).reshape(-1)
  if x.size == 0:
    raise ValueError(f"{name} is empty")
  if np.any((x < 0) | (x > 1)):
    raise ValueError(f"{name} must be accuracies as fractions in [0, 1], got values in "
                     f"[{np.nanmin(x)}, {np.nanmax(x)}]")
  return float(np.mean(x))


def neurips_score(forget_score_value: float, retain_acc, retrained_retain_acc, test_acc,
                  retrained_test_acc) -> float:
  """The competition's final score: F · (retain acc / retrained's) · (test acc / retrained's).

  As in google-deepmind/unlearning_evaluation@ffae0ff:main.py, each accuracy is the mean over its
  population's models.

  Args:
    forget_score_value: F from :func:`forget_score`.
    retain_acc, test_acc: accuracies (fractions) of the unlearned models, one or one per model.
    retrained_retain_acc, retrained_test_acc: the same for the retrained models.

  Returns:
    The final score (≥ 0; above F when the method beats retraining on utility).
  """
  accs = [_mean_accuracy(v, k) for v, k in ((retain_acc, "retain_acc"),
                                            (retrained_retain_acc, "retrained_retain_acc"),
                                            (test_acc, "test_acc"),
                                            (retrained_test_acc, "retrained_test_acc"))]
  if accs[1] == 0 or accs[3] == 0:
    raise ValueError("the retrained models' retain and test accuracies must be above 0")
  return float(forget_score_value) * (accs[0] / accs[1]) * (accs[2] / accs[3])


def retrained_ceiling(retrained_confs, *, retain_acc=None, test_acc=None, seed: int = 0,
                      delta: float = DELTA) -> dict[str, Any]:
  """The forget score of the retrained row: two disjoint halves of one retrained population.

  A method that retrained exactly would be compared with the retrained population by a population
  of its own; with N models per side the score such a method gets is below 1 because the ε estimate
  sees sampling noise. Splitting the K retrained models at random into halves of ⌊K/2⌋ and ⌈K/2⌉
  and scoring one against the other measures that ceiling at N = ⌊K/2⌋.

  Args:
    retrained_confs: [K, E] φ of the forget examples under the K retrained models (K ≥ 6).
    retain_acc, test_acc: optional [K] accuracies of the retrained models; with both, the final
      score of the halves is returned too.
    seed: seed of the random split.
    delta: δ.

  Returns:
    ``{"forget_score", "epsilons", "num_models", "halves": ([K/2] indices, [K/2] indices)}`` and,
    with the accuracies, ``"neurips_score"``.
  """
  r = _confidence_matrix(retrained_confs, "retrained_confs")
  k = r.shape[0]
  if k < 6:
    raise ValueError(f"the ceiling needs at least 6 retrained models (3 per half), got {k}")
  order = np.random.default_rng(seed).permutation(k)
  a, b = np.sort(order[:k // 2]), np.sort(order[k // 2:])
  out = forget_score(r[a], r[b], delta)
  out["halves"] = (a, b)
  if (retain_acc is None) != (test_acc is None):
    raise ValueError("give both retain_acc and test_acc, or neither")
  if retain_acc is not None:
    ra, ta = np.asarray(retain_acc, np.float64), np.asarray(test_acc, np.float64)
    for v, name in ((ra, "retain_acc"), (ta, "test_acc")):
      if v.shape != (k,):
        raise ValueError(f"{name} must have one accuracy per retrained model, shape ({k},), got "
                         f"{v.shape}")
    out["neurips_score"] = neurips_score(out["forget_score"], ra[a], ra[b], ta[a], ta[b])
  return out


# ---------------------------------------------------------------------------------------------
# Identity-level U-LiRA.


def _loo_gaussians(confs: np.ndarray, member_in: np.ndarray):
  """Leave-one-out Gaussian fits per (target member, image) for the members with ``member_in`` set.

  For each target t and image i, the mean and (maximum-likelihood, ddof = 0) variance of
  ``confs[s, i]`` over the shadows s ≠ t with ``member_in[s, i]``, and their count. Sums over all
  members minus the target's own term give every target's fit at once; φ is centred per image first
  so that the second moment does not cancel catastrophically.
  """
  centre = confs.mean(axis=0, keepdims=True)
  x = confs - centre
  w = member_in.astype(np.float64)
  n = w.sum(axis=0, keepdims=True) - w
  s1 = (w * x).sum(axis=0, keepdims=True) - w * x
  s2 = (w * x * x).sum(axis=0, keepdims=True) - w * x * x
  with np.errstate(divide="ignore", invalid="ignore"):
    mean = s1 / n
    var = np.maximum(s2 / n - mean * mean, 0.0)
  return mean + centre, var, n


def _gaussian_logpdf(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
  return -0.5 * (np.log(2 * np.pi * var) + (x - mean) ** 2 / var)


def ulira_log_ratios(confs, unlearned, groups, *, variance: str = "per_image",
                     min_shadows: int = 2) -> np.ndarray:
  """Per image and target member, the log likelihood ratio "unlearned" vs "never trained".

  Leave-one-out, as in U-LiRA: each member in turn is the target and all others are its shadows.
  For target t and image i of group (person) g, the shadows with ``unlearned[s, g] = 1`` give a
  Gaussian N(μ_in, σ_in²) of φ and those with 0 give N(μ_out, σ_out²) (maximum-likelihood fits, as
  ``scipy.stats.norm.fit``); the score is log N(φ_t,i; μ_in, σ_in²) − log N(φ_t,i; μ_out, σ_out²).

  Args:
    confs: [M, I] φ of each image under each member (:func:`logit_scaled_confidence`).
    unlearned: [M, G] 0/1: 1 when the member trained on group g and then unlearned it, 0 when it
      never trained on it.
    groups: [I] the group (column of ``unlearned``) of each image.
    variance: "per_image" (a variance per image and side, LiRA's online attack) or "global" (per
      target and side, the mean of the per-image variances; steadier with few shadows, as Carlini et
      al. advise for fewer than 64 shadow models).
    min_shadows: the fewest shadows a side may have for a fit. With random halves some person is
      now and then unlearned by very few members; the pairs (target, image) it leaves short are
      given nan and left out of every statistic instead of stopping the evaluation.

  Returns:
    [M, I] log ratios (> 0: more likely unlearned); nan where a side has fewer than ``min_shadows``.
  """
  x = _confidence_matrix(confs, "confs")
  m, n_images = x.shape
  u = np.asarray(unlearned)
  if u.ndim != 2 or u.shape[0] != m:
    raise ValueError(f"unlearned must have shape [{m} members, groups], got {u.shape}")
  if not np.all((u == 0) | (u == 1)):
    raise ValueError("unlearned must hold only 0 (never trained) and 1 (unlearned)")
  g = np.asarray(groups)
  if g.shape != (n_images,):
    raise ValueError(f"groups must give one group per image, shape ({n_images},), got {g.shape}")
  if n_images and (not np.issubdtype(g.dtype, np.integer) or g.min() < 0 or g.max() >= u.shape[1]):
    raise ValueError(f"groups must be integer column indices of unlearned, in [0, {u.shape[1]})")
  if variance not in ("per_image", "global"):
    raise ValueError(f"variance must be 'per_image' or 'global', got {variance!r}")
  if min_shadows < 2:
    raise ValueError(f"min_shadows must be at least 2 (a variance needs two values), got "
                     f"{min_shadows}")
  member_in = u[:, g].astype(bool)
  mean_in, var_in, n_in = _loo_gaussians(x, member_in)
  mean_out, var_out, n_out = _loo_gaussians(x, ~member_in)
  short = (n_in < min_shadows) | (n_out < min_shadows)
  if np.all(short):
    raise ValueError(f"no (target member, image) pair has {min_shadows} shadows on each side: "
                     f"every group is unlearned by too few or too many of the {m} members")
  if variance == "global":
    # One variance per target and side: the mean over the target's images that have a fit.
    kept = np.maximum((~short).sum(axis=1, keepdims=True), 1)
    for v in (var_in, var_out):
      v[:] = np.where(short, 0.0, v).sum(axis=1, keepdims=True) / kept
  var_in, var_out = np.maximum(var_in, _MIN_VARIANCE), np.maximum(var_out, _MIN_VARIANCE)
  with np.errstate(invalid="ignore"):
    ratios = _gaussian_logpdf(x, mean_in, var_in) - _gaussian_logpdf(x, mean_out, var_out)
  return np.where(short, np.nan, ratios)


def _balanced(members: np.ndarray, nonmembers: np.ndarray, rng: np.random.Generator):
  k = min(len(members), len(nonmembers))
  return (rng.choice(members, k, replace=False) if len(members) > k else members,
          rng.choice(nonmembers, k, replace=False) if len(nonmembers) > k else nonmembers)


def ulira(confs, unlearned, persons, *, example_level: bool = False, variance: str = "per_image",
          min_shadows: int = 2, fprs: Sequence[float] = (0.01, 0.05), n_bootstrap: int = 200,
          seed: int = 0) -> dict[str, Any]:
  """Identity-level U-LiRA (mu_jax's adaptation of Hayes et al., arXiv 2403.01218, to persons).

  For each target member t (leave-one-out, :func:`ulira_log_ratios`), the score of a pool person is
  the mean of the per-image log likelihood ratios over that person's images (the images treated as
  independent draws, as LiRA combines several queries of one example). The target's unlearned and
  never-trained persons are balanced by subsampling the larger side at random; then

  - accuracy: the share of those persons the likelihood-ratio test gets right when it says
    "unlearned" for a ratio above 1 (mean log ratio above 0; equal priors after balancing, so no
    threshold is tuned on the target; a ratio of exactly 1 counts one half);
  - AUROC of the person scores, unlearned as positives (:func:`mu_jax.evaluation.attacks.auroc`).

  Both are averaged over targets, with a 95% percentile-bootstrap interval over targets. The TPR at
  low FPR is computed over images, pooled over targets (person counts are too small for a 1% FPR),
  with the convention of :func:`mu_jax.evaluation.attacks.tpr_at_fpr`. A perfect method (exact
  retraining) gives accuracy and AUROC near 0.5 and TPR near the FPR.

  Args:
    confs: [M, I] φ of each pool image under each member.
    unlearned: [M, P] 0/1, 1 when the member unlearned pool person p, 0 when it never trained on
      them; with ``example_level``, [M, I] over images instead.
    persons: [I] the person (column of ``unlearned``) of each image; ignored with ``example_level``.
    example_level: the paper's unit: each image is its own unit (its own column of ``unlearned``).
    variance: "per_image" or "global" (:func:`ulira_log_ratios`).
    min_shadows: the fewest shadows per side (:func:`ulira_log_ratios`).
    fprs: false-positive rates for the image-level TPR; each gives the key
      ``ulira_tpr_at_{100·fpr:g}pct_fpr``.
    n_bootstrap: bootstrap replicates over targets (0: no interval).
    seed: seed of the balancing and the bootstrap.

  Returns:
    ``{"ulira_acc", "ulira_auc", their "_ci_low"/"_ci_high", "ulira_tpr_at_1pct_fpr",
    "ulira_tpr_at_5pct_fpr", "ulira_targets" (targets with both kinds of unit), "ulira_level"
    ("person" or "example"), "ulira_pairs_left_out" ((target, image) pairs with too few shadows,
    :func:`ulira_log_ratios`), "per_target_acc", "per_target_auc", "per_target_units" (units scored
    after balancing), "log_ratios" [M, I]}``.
  """
  x = _confidence_matrix(confs, "confs")
  groups = np.arange(x.shape[1]) if example_level else np.asarray(persons)
  ratios = ulira_log_ratios(x, unlearned, groups, variance=variance, min_shadows=min_shadows)
  u = np.asarray(unlearned).astype(bool)
  n_groups = u.shape[1]
  counts = np.bincount(groups, minlength=n_groups)
  if np.any(counts == 0):
    raise ValueError(f"unit {int(np.argmin(counts))} of unlearned has no image; every column needs "
                     f"at least one image")
  # Mean log ratio per (target, unit) over the images that have a ratio; nan where none has.
  valid = ~np.isnan(ratios)
  sums = np.stack([np.bincount(groups, weights=row, minlength=n_groups)
                   for row in np.where(valid, ratios, 0.0)])
  used = np.stack([np.bincount(groups, weights=row, minlength=n_groups) for row in valid * 1.0])
  with np.errstate(invalid="ignore"):
    unit_scores = sums / used
  rng = np.random.default_rng(seed)
  accs, aucs, units = [], [], []
  for t in range(u.shape[0]):
    scored = used[t] > 0
    pos, neg = unit_scores[t, u[t] & scored], unit_scores[t, ~u[t] & scored]
    if len(pos) == 0 or len(neg) == 0:
      continue
    pos, neg = _balanced(pos, neg, rng)
    correct = np.sum(pos > 0) + np.sum(neg < 0) + 0.5 * (np.sum(pos == 0) + np.sum(neg == 0))
    accs.append(correct / (len(pos) + len(neg)))
    units.append(len(pos) + len(neg))
    aucs.append(attacks.auroc(pos, neg))
  if not accs:
    raise ValueError("no target member has both unlearned and never-trained units")
  accs, aucs = np.asarray(accs), np.asarray(aucs)
  out: dict[str, Any] = {"ulira_acc": float(accs.mean()), "ulira_auc": float(aucs.mean())}
  if n_bootstrap:
    draws = rng.integers(0, len(accs), (n_bootstrap, len(accs)))
    for key, v in (("ulira_acc", accs), ("ulira_auc", aucs)):
      low, high = np.percentile(v[draws].mean(axis=1), [2.5, 97.5])
      out[f"{key}_ci_low"], out[f"{key}_ci_high"] = float(low), float(high)
  member_in = u[:, groups]
  for f in fprs:
    out[f"ulira_tpr_at_{f * 100:g}pct_fpr"] = attacks.tpr_at_fpr(ratios[member_in & valid],
                                                                 ratios[~member_in & valid], f)
  out.update(ulira_targets=len(accs), ulira_level="example" if example_level else "person",
             ulira_pairs_left_out=int(np.sum(~valid)), per_target_acc=accs, per_target_auc=aucs,
             per_target_units=np.asarray(units), log_ratios=ratios)
  return out


# ---------------------------------------------------------------------------------------------
# Tug of war.


def tow(forget_acc: float, retain_acc: float, test_acc: float, retrained_forget_acc: float,
        retrained_retain_acc: float, retrained_test_acc: float) -> float:
  """Tug of war: (1 − |ΔF|)·(1 − |ΔR|)·(1 − |ΔT|), Δ the accuracy gaps to the retrained model.

  Zhao et al., "What makes unlearning hard and what to do about it", NeurIPS 2024, arXiv 2406.01257.
  F, R, T are the forget, retain and test sets. The formula was confirmed in the authors' code,
  kairanzhao/RUM@fe2df07:surgical_plugins/analysis.py (``df['tow']``, the product of
  ``1 - |acc - acc_retrained| / 100`` over forget, retain and test, accuracies there in percent);
  the paper's own statement of it could not be read here. 1 is best
  (every accuracy equals the retrained model's); a gap on any one set pulls it down, so a method
  cannot win by trading forgetting against utility.

  Args:
    forget_acc, retain_acc, test_acc: accuracies of the row's model, as fractions in [0, 1].
    retrained_forget_acc, retrained_retain_acc, retrained_test_acc: the retrained model's.

  Returns:
    ToW in [0, 1]; nan when an accuracy is nan (an empty split).
  """
  values = (forget_acc, retain_acc, test_acc, retrained_forget_acc, retrained_retain_acc,
            retrained_test_acc)
  names = ("forget_acc", "retain_acc", "test_acc", "retrained_forget_acc", "retrained_retain_acc",
           "retrained_test_acc")
  for v, name in zip(values, names):
    if not np.isnan(v) and not 0.0 <= v <= 1.0:
      raise ValueError(f"{name} must be a fraction in [0, 1] (not a percentage), got {v}")
  f, r, t, rf, rr, rt = (float(v) for v in values)
  return (1.0 - abs(f - rf)) * (1.0 - abs(r - rr)) * (1.0 - abs(t - rt))


def tow_from_rows(row: Mapping[str, Any], retrained_row: Mapping[str, Any]) -> float:
  """:func:`tow` from two result rows' ``forget_acc``, ``retain_acc`` and ``test_acc``."""
  keys = ("forget_acc", "retain_acc", "test_acc")
  for name, r in (("row", row), ("retrained_row", retrained_row)):
    missing = [k for k in keys if k not in r]
    if missing:
      raise KeyError(f"{name} ({r.get('model', '?')}) lacks {missing}")
  return tow(*(row[k] for k in keys), *(retrained_row[k] for k in keys))
