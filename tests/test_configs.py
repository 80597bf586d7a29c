"""The experiment configs that carry a claim in their docstring."""

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
