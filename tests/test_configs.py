"""The experiment configs that carry a claim in their docstring."""

import pytest

from experiments.configs import mufac, synthetic
from mu_jax.data import loader


def test_the_mufac_size_synthetic_config_has_mufacs_scale_and_recipe():
  c = synthetic.get_config("mufac_size").to_dict()
  real = mufac.get_config().to_dict()
  assert c["train"] == real["train"] and c["model"] == real["model"]
  assert c["unlearn"]["batch_size"] == real["unlearn"]["batch_size"]
  assert c["data"]["image_size"] == real["data"]["image_size"] == 128
  # The split is by person and does not depend on the resolution: count it on 8×8 images.
  ds = loader.load_dataset(dict(c["data"], image_size=8))
  sizes = {s: len(ds.split(s)) for s in ("train", "retain", "forget", "test", "unseen")}
  assert sizes == {"train": 10026, "retain": 8520, "forget": 1506, "test": 2004, "unseen": 1338}


def test_the_reference_settings_of_each_dataset_are_in_its_config():
  """MUFAC fine-tunes and runs UNSIR with BatchNorm in eval mode (both protocols); MUCAC loads a
  fresh model (train mode), loops NegGrad over forget alone and NegGrad+ over zip(forget, retain)
  for multi-label, and runs SCRUB at lr 1e-4 for one epoch on the binary tasks."""
  from experiments.configs import mucac
  for protocol in ("paper", "identity"):
    hp = mufac.get_config(f"protocol={protocol}").unlearn.hparams
    assert (hp.finetune.bn_mode, hp.unsir.train_mode, hp.cf_k.bn_mode) == ("eval", False, "train")
    assert (hp.neggrad.stream, hp.neggrad_plus.stream) == ("paired", "paired")
  ml = mucac.get_config().unlearn.hparams
  from mu_jax.methods import registry
  registry.resolve("all", ml.to_dict())  # every value is one its factory takes
  [unsir] = registry.resolve("unsir", ml.to_dict())
  unsir.create()
  assert (ml.finetune.bn_mode, ml.unsir.train_mode) == ("train", True)
  assert (ml.neggrad.stream, ml.neggrad_plus.stream) == ("forget", "zip")
  assert (ml.scrub.lr, ml.scrub.epochs) == (0.001, 2)
  binary = mucac.get_config("task=binary:Male").unlearn.hparams
  assert (binary.scrub.lr, binary.scrub.epochs, binary.finetune.bn_mode) == (1e-4, 1, "train")


def test_the_mufac_population_variant_forgets_whole_persons_and_states_its_models():
  from mu_jax.pipelines import population
  c = mufac.get_config("population").to_dict()
  assert c["data"]["forget"]["mode"] == "identity"
  assert c["train"] == mufac.get_config().to_dict()["train"]  # the full recipe
  settings = population.Settings.from_config(c)
  assert settings.members == 16 and "48 models" in mufac.__doc__
  with pytest.raises(ValueError, match="protocol=identity"):
    mufac.get_config("population,protocol=paper")
