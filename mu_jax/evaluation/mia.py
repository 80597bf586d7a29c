"""The MUFAC/MUCAC reference membership-inference attack and the NoMUS score.

:func:`reference_mia` reproduces ``cal_mia`` from ndb796/MachineUnlearning@9813cd7:01_MUFAC/
Machine_Unlearning_MUFAC_Base_Models.ipynb cell 27 (docs/metrics.md#mia_attack_acc; the
same function in every MUFAC and MUCAC notebook) step for step, so that a number computed here can be
put beside the result tables of the reference README (ndb796/MachineUnlearning@9813cd7:README.md,
"Models Performance"):

1. ``set_seed(42)`` and then ``np.random.shuffle(forget_losses)``;
2. the forget losses are truncated to ``len(unseen_losses)`` (only the forget side is cut);
3. features = the scalar loss, shape (N, 1), ordered unseen first, then forget, with labels
   0 = unseen (non-member) and 1 = forget (member);
4. ``LogisticRegression()`` with scikit-learn's defaults, scored by
   ``cross_val_score(cv=StratifiedShuffleSplit(n_splits=10, random_state=0), scoring="accuracy")``
   (default test_size 0.1);
5. attack accuracy = the mean of the 10 fold accuracies, forgetting score = |accuracy − 0.5|.

The README's "MIA" column is the forgetting score, not the attack accuracy (recomputing its NoMUS
column from test accuracy and this score gives the printed values); both are returned
under explicit names so the two are never confused.

:func:`nomus` is the README's "Final Score".
"""

from __future__ import annotations

import copy
import functools

import numpy as np
from sklearn import linear_model, model_selection

# StratifiedShuffleSplit(n_splits=10, random_state=0) with the default test_size=0.1: the reference's.
_N_SPLITS = 10
_CV_RANDOM_STATE = 0


def _losses(values, name: str) -> np.ndarray:
  """Returns per-example losses as a float64 vector; refuses empty or non-finite input."""
  x = np.asarray(values, dtype=np.float64)
  if x.ndim == 2 and x.shape[1] == 1:
    x = x[:, 0]
  if x.ndim != 1:
    raise ValueError(f"{name} must be a vector of per-example losses, got shape {x.shape}; "
                     "average multi-label losses over attributes first")
  if x.size == 0:
    raise ValueError(f"{name} is empty: the attack needs at least one loss per class")
  if not np.all(np.isfinite(x)):
    bad = int(np.sum(~np.isfinite(x)))
    raise ValueError(f"{name} holds {bad} non-finite values (nan or inf)")
  return x


def reference_mia(forget_losses, unseen_losses, seed: int = 42) -> dict:
  """The MUFAC ``cal_mia`` attack: logistic regression on the per-example loss.

  The reference calls ``set_seed(42)`` (which runs ``np.random.seed(42)``) and then
  ``np.random.shuffle(forget_losses)``. ``np.random.seed(n)`` re-seeds numpy's global legacy
  ``RandomState`` exactly as ``np.random.RandomState(n)`` seeds a fresh one, and nothing between the
  two calls draws from numpy's generator (the losses come from torch), so shuffling a copy with
  ``np.random.RandomState(seed).shuffle`` gives the same permutation without touching the global
  state. A test checks the equality against the global-state version.

  The arrays are concatenated unseen first, then forget, as the reference does. The order of the two
  blocks does not change which losses land in which fold (StratifiedShuffleSplit permutes the indices
  within each class), but the order within the forget block does, which is why the shuffle matters.

  Args:
    forget_losses: [N_f] per-example losses on D_forget (members, label 1): CE for a class task,
      BCE-with-logits averaged over attributes for a multi-label task.
    unseen_losses: [N_u] per-example losses on D_unseen (non-members, label 0).
    seed: the seed of the shuffle before truncation (the reference's 42).

  Returns:
    ``{"mia_attack_acc": mean fold accuracy, "mia_forgetting_score": |acc − 0.5| (the README's
    "MIA" column), "mia_fold_accs": the 10 fold accuracies, "n_forget": forget losses used (after
    truncation to N_u), "n_forget_total": N_f, "n_unseen": N_u}``.

  Raises:
    ValueError: an input is empty, not a vector, or holds nan/inf (the message names it).
  """
  forget = _losses(forget_losses, "forget_losses")
  unseen = _losses(unseen_losses, "unseen_losses")
  return copy.deepcopy(_reference_mia(forget.tobytes(), unseen.tobytes(), seed))


# A stage's attack is computed for its log line and again for the table, in the same process:
# ten logistic regressions each time, for the same losses.
@functools.lru_cache(maxsize=256)
def _reference_mia(forget_bytes: bytes, unseen_bytes: bytes, seed: int) -> dict:
  forget = np.frombuffer(forget_bytes, np.float64).copy()
  unseen = np.frombuffer(unseen_bytes, np.float64)
  n_forget_total = len(forget)
  np.random.RandomState(seed).shuffle(forget)
  forget = forget[:len(unseen)]
  features = np.concatenate([unseen, forget]).reshape(-1, 1)
  labels = np.array([0] * len(unseen) + [1] * len(forget))
  cv = model_selection.StratifiedShuffleSplit(n_splits=_N_SPLITS, random_state=_CV_RANDOM_STATE)
  folds = model_selection.cross_val_score(linear_model.LogisticRegression(), features, labels, cv=cv,
                                          scoring="accuracy")
  acc = float(np.mean(folds))
  return {
      "mia_attack_acc": acc,
      "mia_forgetting_score": abs(acc - 0.5),
      "mia_fold_accs": [float(a) for a in folds],
      "n_forget": int(len(forget)),
      "n_forget_total": int(n_forget_total),
      "n_unseen": int(len(unseen)),
  }


def nomus(test_acc: float, attack_acc: float, lam: float = 0.5) -> float:
  """NoMUS, the MUFAC/MUCAC "Final Score": utility and forgetting in one number in [0, 1].

  NoMUS = λ·test_acc + (1 − λ)·(1 − 2·|attack_acc − 0.5|). The second term is 1 when the reference
  attack is at chance (0.5) and 0 when it is always right or always wrong; the README uses λ = 0.5.

  Args:
    test_acc: top-1 test accuracy in [0, 1] (mean per-attribute accuracy for a multi-label task).
    attack_acc: the raw attack accuracy of :func:`reference_mia` in [0, 1], not the forgetting score.
    lam: the weight λ of accuracy, in [0, 1].

  Returns:
    The score; higher is better.
  """
  for name, v in (("test_acc", test_acc), ("attack_acc", attack_acc), ("lam", lam)):
    if not np.isfinite(v) or not 0.0 <= v <= 1.0:
      raise ValueError(f"{name} must be a number in [0, 1], got {v}")
  return float(lam * test_acc + (1.0 - lam) * (1.0 - 2.0 * abs(attack_acc - 0.5)))
