"""Tests of the reference MIA (MUFAC cal_mia) and NoMUS against sklearn and the README tables."""

import math

import numpy as np
import pytest
from sklearn import linear_model, model_selection

from mu_jax.evaluation import mia


def test_separable_losses_give_perfect_attack():
  rng = np.random.default_rng(0)
  forget = rng.uniform(0.0, 0.1, size=200)   # members: fitted, tiny losses
  unseen = rng.uniform(5.0, 6.0, size=200)
  out = mia.reference_mia(forget, unseen)
  assert out["mia_attack_acc"] == 1.0
  assert out["mia_forgetting_score"] == 0.5
  assert out["mia_fold_accs"] == [1.0] * 10


def test_identical_distributions_give_chance():
  rng = np.random.default_rng(1)
  forget = rng.normal(1.0, 0.3, size=1500)
  unseen = rng.normal(1.0, 0.3, size=1500)
  out = mia.reference_mia(forget, unseen)
  # Each fold tests 300 points (sd of one fold's accuracy ~0.029); 0.05 is several sd of the mean.
  assert abs(out["mia_attack_acc"] - 0.5) < 0.05
  assert out["mia_forgetting_score"] < 0.05


def test_equals_direct_sklearn_computation_of_the_reference():
  rng = np.random.default_rng(2)
  forget = rng.gamma(1.0, 0.5, size=700).astype(np.float32)
  unseen = rng.gamma(1.5, 0.6, size=500).astype(np.float32)

  # The reference, written out: set_seed(42); np.random.shuffle; truncate; unseen first.
  saved = np.random.get_state()
  try:
    np.random.seed(42)
    f = forget.copy()
    np.random.shuffle(f)
  finally:
    np.random.set_state(saved)
  f = f[:len(unseen)]
  x = np.concatenate((unseen, f)).reshape((-1, 1))
  y = [0] * len(unseen) + [1] * len(f)
  cv = model_selection.StratifiedShuffleSplit(n_splits=10, random_state=0)
  expected = model_selection.cross_val_score(linear_model.LogisticRegression(), x, y, cv=cv,
                                             scoring="accuracy")

  forget_before = forget.copy()
  global_before = np.random.get_state()[1].copy()
  out = mia.reference_mia(forget, unseen)
  assert out["mia_fold_accs"] == pytest.approx(expected.tolist(), abs=0)
  assert out["mia_attack_acc"] == pytest.approx(expected.mean(), abs=1e-15)
  assert out["mia_forgetting_score"] == pytest.approx(abs(0.5 - expected.mean()), abs=1e-15)
  assert (out["n_forget"], out["n_forget_total"], out["n_unseen"]) == (500, 700, 500)
  # The input is not shuffled in place, and numpy's global generator is not touched.
  assert np.array_equal(forget, forget_before)
  assert np.array_equal(np.random.get_state()[1], global_before)


def test_shuffle_seed_matters():
  # Truncation keeps a different subset under another seed: the seed is really used.
  rng = np.random.default_rng(3)
  forget = np.concatenate([rng.uniform(0, 0.1, 300), rng.uniform(2, 3, 300)])
  unseen = rng.uniform(1.0, 4.0, size=100)
  a = mia.reference_mia(forget, unseen, seed=42)
  b = mia.reference_mia(forget, unseen, seed=7)
  assert a["mia_fold_accs"] != b["mia_fold_accs"]


@pytest.mark.parametrize("bad, match", [
    (dict(forget_losses=[], unseen_losses=[1.0, 2.0]), "forget_losses"),
    (dict(forget_losses=[1.0, 2.0], unseen_losses=[]), "unseen_losses"),
    (dict(forget_losses=[1.0, np.nan], unseen_losses=[1.0, 2.0]), "forget_losses"),
    (dict(forget_losses=[1.0, 2.0], unseen_losses=[np.inf, 2.0]), "unseen_losses"),
    (dict(forget_losses=np.ones((4, 3)), unseen_losses=[1.0, 2.0]), "forget_losses"),
])
def test_rejects_bad_input(bad, match):
  with pytest.raises(ValueError, match=match):
    mia.reference_mia(**bad)


def _truncated(x: float) -> float:
  """The README truncates the 4th decimal (see README_ROWS); 1e-9 absorbs binary rounding."""
  return math.floor(x * 1e4 + 1e-9) / 1e4


# ndb796/MachineUnlearning@9813cd7:README.md ("Models Performance"): (test acc, README "MIA" =
# forgetting score, README Final, printed precise Final). Precise values are the prints of
# ndb796/MachineUnlearning@14a106c:01_MUFAC/Machine_Unlearning_MUFAC_Full_Experiments.ipynb
# cells 36, 47, 51, given to 5 decimals.
README_ROWS = {
    "mufac_original": (0.5951, 0.2136, 0.5839, None),
    "mufac_finetune": (0.60559, 0.21296, 0.5898, 0.58984),
    "mufac_neggrad": (0.40481, 0.04850, 0.6539, 0.65390),
    "mufac_adv_neggrad": (0.56335, 0.09535, 0.6863, 0.68633),
    "mucac_multilabel_original": (0.8852, 0.0568, 0.8858, None),
}


@pytest.mark.parametrize("row", sorted(README_ROWS))
def test_nomus_reproduces_readme(row):
  acc, forgetting, final, precise = README_ROWS[row]
  # The README gives |attack − 0.5|, so the attack accuracy may sit on either side of chance.
  for attack in (0.5 + forgetting, 0.5 - forgetting):
    score = mia.nomus(acc, attack)
    assert _truncated(score) == final
    if precise is not None:
      # Inputs and output were printed to 5 decimals: 0.5·5e-6 + 0.5·2·5e-6 + 5e-6 < 1.5e-5.
      assert abs(score - precise) < 1.5e-5


def test_nomus_lambda_ends_and_validation():
  assert mia.nomus(0.7, 0.9, lam=1.0) == pytest.approx(0.7)
  assert mia.nomus(0.7, 0.9, lam=0.0) == pytest.approx(1 - 2 * 0.4)
  assert mia.nomus(0.7, 0.5, lam=0.0) == 1.0
  with pytest.raises(ValueError, match="lam"):
    mia.nomus(0.7, 0.5, lam=1.5)
  with pytest.raises(ValueError, match="lam"):
    mia.nomus(0.7, 0.5, lam=-0.1)
  with pytest.raises(ValueError, match="attack_acc"):
    mia.nomus(0.7, float("nan"))
