"""Membership-inference attacks stronger than the reference one, run on the host.

Two families, both reading per-example outputs that the device code already wrote:

**Threshold attacks on a score** (:func:`roc_curve_scores`, :func:`auroc`, :func:`tpr_at_fpr`,
:func:`loss_attack`). Members should score higher than non-members; for the loss attack the score is
−loss, since a model fits the examples it was trained on. Besides the AUROC, the true-positive rate
at a low false-positive rate is reported, because an attack that is confident on a few examples is a
privacy risk even when its average accuracy is near chance (Carlini et al., "Membership Inference
Attacks From First Principles", IEEE S&P 2022, arXiv 2112.03570). Percentile-bootstrap intervals
resample members and non-members independently, since the two sets are drawn independently. The
statistics are exact for the empirical ROC (no smoothing, no interpolation), following how
jax_privacy audits on the host (google-deepmind/jax_privacy@3740a65:jax_privacy/auditing.py).
Columns: docs/metrics.md.

**SVC-MIA** (:func:`svc_mia`, :func:`svc_mia_all`, :func:`svc_mia_forget_efficacy`), the attack used
by SalUn and ℓ1-sparse unlearning (OPTML-Group/Unlearn-Sparse@16a2dbc:evaluation/SVC_MIA.py,
``SVC_MIA_forget_efficacy`` in its main_forget.py; docs/metrics.md#svc_mia_confidence): an RBF
support-vector classifier (``SVC(C=3, gamma="auto")``) is fit on shadow members (the first |D_test|
retain examples) against shadow non-members (D_test), one classifier per feature, and MIA-efficacy
is the fraction of D_forget it calls non-member (higher = more forgotten). Features are built from
softmax probabilities and the
label: correctness, confidence p_y, entropy, modified entropy and the whole probability vector.

The modified entropy follows Song & Mittal ("Systematic Evaluation of Privacy Risks of Machine
Learning Models", USENIX Security 2021, arXiv 2003.10595):

    Mentr(p, y) = −(1 − p_y)·log(p_y) − Σ_{i≠y} p_i·log(1 − p_i).

The copy in the SalUn / Unlearn-Sparse code takes ``log(p)`` where the formula has ``log(1 − p_i)``
and overwrites whole label columns (``[:, labels]``) instead of each row's own label, so its numbers
are not the paper's; this module implements the formula above.

SVC-MIA needs a single-label task (a true class with probability p_y); multi-label heads are refused
with a ValueError. The loss attack works for both kinds of task.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.svm import SVC

# The SVC-MIA features, named as in the SalUn / Unlearn-Sparse result dicts.
SVC_FEATURES = ("correctness", "confidence", "entropy", "m_entropy", "prob")

# log(0) is replaced by log(1e-30) (about −69), as the reference code does, so that a probability of
# exactly 0 or 1 gives a large but finite feature the SVC can use.
_LOG_FLOOR = 1e-30


def _scores(values, name: str) -> np.ndarray:
  """Returns a finite, non-empty float64 score vector, or raises naming the argument."""
  x = np.asarray(values, dtype=np.float64)
  if x.ndim != 1:
    raise ValueError(f"{name} must be a vector of per-example scores, got shape {x.shape}")
  if x.size == 0:
    raise ValueError(f"{name} is empty")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} holds {int(np.sum(~np.isfinite(x)))} non-finite values (nan or inf)")
  return x


def _roc_counts(member: np.ndarray, nonmember: np.ndarray):
  """Empirical ROC as counts: (false positives, true positives, thresholds), one point per distinct score.

  The attack says "member" when score ≥ threshold. Points are ordered by decreasing threshold and
  start at (0, 0) for threshold +inf; tied scores enter together, so the curve never splits a tie.
  """
  scores = np.concatenate([member, nonmember])
  is_member = np.concatenate([np.ones(len(member)), np.zeros(len(nonmember))])
  order = np.argsort(-scores, kind="stable")
  scores, is_member = scores[order], is_member[order]
  tp = np.cumsum(is_member)
  fp = np.cumsum(1.0 - is_member)
  # The last position of each run of equal scores is where that threshold's counts are complete.
  last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
  return np.r_[0.0, fp[last]], np.r_[0.0, tp[last]], np.r_[np.inf, scores[last]]


def roc_curve_scores(member_scores, nonmember_scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Empirical ROC of the threshold attack "member if score ≥ t".

  Args:
    member_scores: [N_m] attack scores of members (higher = more member-like).
    nonmember_scores: [N_n] attack scores of non-members.

  Returns:
    ``(fpr, tpr, thresholds)``, each of length (number of distinct scores + 1), ordered by decreasing
    threshold; the first point is (0, 0) at threshold +inf and the last is (1, 1).
  """
  m = _scores(member_scores, "member_scores")
  n = _scores(nonmember_scores, "nonmember_scores")
  fp, tp, thr = _roc_counts(m, n)
  return fp / len(n), tp / len(m), thr


def _auroc_from_counts(fp: np.ndarray, tp: np.ndarray) -> float:
  # Trapezoids on the empirical ROC: a tie between a member and a non-member adds a diagonal segment
  # worth one half, which is the Mann-Whitney U statistic with ties counted 1/2. Summing in counts
  # (twice the area is an integer) and dividing once keeps 0, 1/2 and 1 exact.
  twice_area = np.sum(np.diff(fp) * (tp[1:] + tp[:-1]))
  return float(twice_area / (2.0 * fp[-1] * tp[-1]))


def auroc(member_scores, nonmember_scores) -> float:
  """Area under the empirical ROC: P(member score > non-member score) + ½·P(equal).

  Args:
    member_scores: [N_m] attack scores of members (higher = more member-like).
    nonmember_scores: [N_n] attack scores of non-members.

  Returns:
    The AUROC in [0, 1]; 0.5 is chance.
  """
  fp, tp, _ = _roc_counts(_scores(member_scores, "member_scores"),
                          _scores(nonmember_scores, "nonmember_scores"))
  return _auroc_from_counts(fp, tp)


def _tpr_at_fpr_counts(fp: np.ndarray, tp: np.ndarray, fpr: float) -> float:
  # Counting false positives avoids comparing k/N with the target in floating point.
  allowed = np.floor(fpr * fp[-1] + 1e-9)
  return float(np.max(tp[fp <= allowed]) / tp[-1])


def tpr_at_fpr(member_scores, nonmember_scores, fpr: float) -> float:
  """True-positive rate of the best single threshold whose false-positive rate is at most ``fpr``.

  Convention: the largest TPR among the points of the empirical ROC with FPR ≤ ``fpr``, with no
  interpolation between points (no randomised thresholds). With fewer than 1/``fpr`` non-members
  the only admissible points have FPR = 0, so the value is the TPR at zero false positives.

  Args:
    member_scores: [N_m] attack scores of members (higher = more member-like).
    nonmember_scores: [N_n] attack scores of non-members.
    fpr: the target false-positive rate in [0, 1].

  Returns:
    The TPR in [0, 1].
  """
  if not 0.0 <= fpr <= 1.0:
    raise ValueError(f"fpr must be in [0, 1], got {fpr}")
  fp, tp, _ = _roc_counts(_scores(member_scores, "member_scores"),
                          _scores(nonmember_scores, "nonmember_scores"))
  return _tpr_at_fpr_counts(fp, tp, fpr)


def _fpr_key(fpr: float) -> str:
  """0.01 -> "tpr_at_1pct_fpr", 0.001 -> "tpr_at_0.1pct_fpr"."""
  return f"tpr_at_{fpr * 100:g}pct_fpr"


def loss_attack(member_losses, nonmember_losses, fprs: Sequence[float] = (0.01, 0.001),
                n_bootstrap: int = 200, seed: int = 0) -> dict:
  """Loss-threshold attack: AUROC and TPR at low FPR, with percentile-bootstrap 95% intervals.

  The attack score is −loss (members are fit better, so their loss is lower).

  Args:
    member_losses: [N_m] per-example losses of members (e.g. D_forget for an unlearned model).
    nonmember_losses: [N_n] per-example losses of non-members (e.g. D_unseen or D_test).
    fprs: target false-positive rates; each gives a key ``tpr_at_{100·fpr:g}pct_fpr``.
    n_bootstrap: bootstrap replicates. Each resamples members and non-members independently with
      replacement and recomputes every statistic; 0 skips the intervals.
    seed: seed of the bootstrap generator.

  Returns:
    ``{"auroc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"`` (for the default ``fprs``)``, each with
    "<key>_ci_low" and "<key>_ci_high" (2.5th and 97.5th percentiles; absent when n_bootstrap=0),
    "n_member", "n_nonmember", "n_bootstrap"}``.
  """
  members = -_scores(member_losses, "member_losses")
  nonmembers = -_scores(nonmember_losses, "nonmember_losses")
  for f in fprs:
    if not 0.0 <= f <= 1.0:
      raise ValueError(f"fprs must lie in [0, 1], got {f}")
  if n_bootstrap < 0:
    raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")

  def stats(m: np.ndarray, n: np.ndarray) -> dict[str, float]:
    fp, tp, _ = _roc_counts(m, n)
    out = {"auroc": _auroc_from_counts(fp, tp)}
    for f in fprs:
      out[_fpr_key(f)] = _tpr_at_fpr_counts(fp, tp, f)
    return out

  result: dict = stats(members, nonmembers)
  if n_bootstrap:
    rng = np.random.default_rng(seed)
    draws = {k: np.empty(n_bootstrap) for k in result}
    for b in range(n_bootstrap):
      m = members[rng.integers(0, len(members), len(members))]
      n = nonmembers[rng.integers(0, len(nonmembers), len(nonmembers))]
      for k, v in stats(m, n).items():
        draws[k][b] = v
    for k, v in draws.items():
      low, high = np.percentile(v, [2.5, 97.5])
      result[f"{k}_ci_low"], result[f"{k}_ci_high"] = float(low), float(high)
  result.update(n_member=len(members), n_nonmember=len(nonmembers), n_bootstrap=int(n_bootstrap))
  return result


def _probs_and_labels(probs, labels, prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
  """Checks softmax outputs and class labels for SVC-MIA; refuses multi-label tasks.

  ``prefix`` names the arguments in error messages ("shadow_train_" -> "shadow_train_probs").
  """
  p = np.asarray(probs, dtype=np.float64)
  y = np.asarray(labels)
  if y.ndim == 2:
    raise ValueError(f"{prefix}labels has shape {y.shape}: SVC-MIA needs a single-label task "
                     "(a class index per example); use loss_attack for multi-label tasks")
  if p.ndim != 2 or y.shape != (p.shape[0],):
    raise ValueError(f"{prefix}probs must be [N, C] and {prefix}labels [N], got {p.shape} and {y.shape}")
  if p.shape[0] == 0:
    raise ValueError(f"{prefix}probs is empty")
  if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
    raise ValueError(f"{prefix}probs must be finite probabilities in [0, 1]")
  if not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
    raise ValueError(f"{prefix}probs rows do not sum to 1: SVC-MIA needs softmax probabilities of a "
                     "single-label task (pass probabilities(logits), not logits or sigmoids)")
  if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]:
    raise ValueError(f"{prefix}labels must be integer class indices in [0, {p.shape[1]})")
  return p, y.astype(np.int64)


def _modified_entropy(p: np.ndarray, y: np.ndarray) -> np.ndarray:
  rows = np.arange(len(y))
  p_y = p[rows, y]
  others = p * np.log(np.maximum(1.0 - p, _LOG_FLOOR))
  others[rows, y] = 0.0  # The true class enters through the first term only.
  return -(1.0 - p_y) * np.log(np.maximum(p_y, _LOG_FLOOR)) - np.sum(others, axis=1)


def modified_entropy(probs, labels) -> np.ndarray:
  """Song & Mittal's modified entropy, −(1−p_y)·log p_y − Σ_{i≠y} p_i·log(1−p_i), per example.

  It is 0 for a confident correct prediction and grows both with uncertainty and with confident
  mistakes, unlike the plain entropy, which is also 0 for a confident mistake.

  Args:
    probs: [N, C] softmax probabilities.
    labels: [N] class indices.

  Returns:
    float64 [N]; logs of 0 are floored at log(1e-30).
  """
  return _modified_entropy(*_probs_and_labels(probs, labels))


def _features(p: np.ndarray, y: np.ndarray, feature: str) -> np.ndarray:
  if feature == "correctness":
    return (np.argmax(p, axis=1) == y).astype(np.float64)[:, None]
  if feature == "confidence":
    return p[np.arange(len(y)), y][:, None]
  if feature == "entropy":
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -np.sum(plogp, axis=1)[:, None]
  if feature == "m_entropy":
    return _modified_entropy(p, y)[:, None]
  return p


def _check_feature(feature: str) -> None:
  if feature not in SVC_FEATURES:
    raise ValueError(f"feature must be one of {SVC_FEATURES}, got {feature!r}")


def svc_features(probs, labels, feature: str) -> np.ndarray:
  """One SVC-MIA feature per example.

  Args:
    probs: [N, C] softmax probabilities.
    labels: [N] class indices.
    feature: one of :data:`SVC_FEATURES`: "correctness" (argmax == label, as 0/1), "confidence"
      (p_y), "entropy" (−Σ p·log p with 0·log 0 = 0), "m_entropy" (:func:`modified_entropy`) or
      "prob" (the whole vector).

  Returns:
    float64 [N, 1], or [N, C] for "prob".
  """
  _check_feature(feature)
  return _features(*_probs_and_labels(probs, labels), feature)


def svc_mia(shadow_train_probs, shadow_train_labels, shadow_test_probs, shadow_test_labels,
            target_probs, target_labels, feature: str = "confidence") -> float:
  """SVC-MIA on one feature: the fraction of target examples predicted non-member.

  An ``SVC(C=3, gamma="auto", kernel="rbf")`` is fit on the shadow members (label 1) against the
  shadow non-members (label 0) and applied to the targets. For an unlearned model the targets are
  D_forget and the result is MIA-efficacy: higher means the forget set looks more like unseen data.
  The SVC's cost grows about quadratically with the shadow set; a few thousand examples take seconds.

  Args:
    shadow_train_probs: [N_s, C] softmax probabilities of the shadow members (training examples).
    shadow_train_labels: [N_s] their class indices.
    shadow_test_probs: [N_t, C] softmax probabilities of the shadow non-members.
    shadow_test_labels: [N_t] their class indices.
    target_probs: [N, C] softmax probabilities of the examples to classify.
    target_labels: [N] their class indices.
    feature: one of :data:`SVC_FEATURES`.

  Returns:
    The fraction of targets classified as non-member, in [0, 1].
  """
  _check_feature(feature)
  sets = [_probs_and_labels(p, y, prefix) for p, y, prefix in (
      (shadow_train_probs, shadow_train_labels, "shadow_train_"),
      (shadow_test_probs, shadow_test_labels, "shadow_test_"),
      (target_probs, target_labels, "target_"))]
  widths = [p.shape[1] for p, _ in sets]
  if len(set(widths)) != 1:
    raise ValueError(f"shadow_train_probs, shadow_test_probs and target_probs must have the same "
                     f"number of classes, got {widths}")
  x_in, x_out, x_target = (_features(p, y, feature) for p, y in sets)
  x = np.concatenate([x_in, x_out])
  y = np.concatenate([np.ones(len(x_in), np.int64), np.zeros(len(x_out), np.int64)])
  clf = SVC(C=3, gamma="auto", kernel="rbf")
  clf.fit(x, y)
  return float(1.0 - np.mean(clf.predict(x_target)))


def svc_mia_all(shadow_train_probs, shadow_train_labels, shadow_test_probs, shadow_test_labels,
                target_probs, target_labels, features: Sequence[str] = SVC_FEATURES) -> dict:
  """:func:`svc_mia` for each feature.

  Args:
    shadow_train_probs, shadow_train_labels, shadow_test_probs, shadow_test_labels, target_probs,
      target_labels: as for :func:`svc_mia`.
    features: the features to evaluate, by default all five.

  Returns:
    ``{feature: fraction of targets predicted non-member}``.
  """
  return {f: svc_mia(shadow_train_probs, shadow_train_labels, shadow_test_probs, shadow_test_labels,
                     target_probs, target_labels, f) for f in features}


def svc_mia_forget_efficacy(retain_probs, retain_labels, test_probs, test_labels, forget_probs,
                            forget_labels, features: Sequence[str] = SVC_FEATURES) -> dict:
  """MIA-efficacy on D_forget with the reference's shadow sets.

  As in Unlearn-Sparse's ``SVC_MIA_forget_efficacy``, the shadow members are the first |D_test|
  retain examples (in the order given, so pass them in manifest order) and the shadow non-members are
  D_test, which balances the two shadow classes.

  Args:
    retain_probs: [N_r, C] softmax probabilities on D_retain; N_r must be at least N_test.
    retain_labels: [N_r] class indices.
    test_probs: [N_test, C] softmax probabilities on D_test.
    test_labels: [N_test] class indices.
    forget_probs: [N_f, C] softmax probabilities on D_forget.
    forget_labels: [N_f] class indices.
    features: the features to evaluate, by default all five.

  Returns:
    ``{feature: fraction of D_forget predicted non-member}`` (SalUn reports "confidence" ×100).
  """
  n_test = len(np.asarray(test_labels))
  if len(np.asarray(retain_labels)) < n_test:
    raise ValueError(f"retain_labels has {len(np.asarray(retain_labels))} examples but the shadow "
                     f"members must be the first {n_test} (= len(test)) retain examples")
  return svc_mia_all(np.asarray(retain_probs)[:n_test], np.asarray(retain_labels)[:n_test],
                     test_probs, test_labels, forget_probs, forget_labels, features)
