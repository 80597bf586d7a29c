"""Pieces shared by the experiment configs."""

from __future__ import annotations

import ml_collections

from mu_jax.methods import registry


def parse_args(arg: str | None) -> dict[str, str]:
  """'protocol=paper,runlocal' -> {'protocol': 'paper', 'runlocal': ''}."""
  out = {}
  for part in (arg or "").split(","):
    part = part.strip()
    if part:
      k, _, v = part.partition("=")
      out[k.strip()] = v.strip()
  return out


def method_hparams(methods: registry.Registry) -> ml_collections.ConfigDict:
  """name -> {hyperparameter: factory default} for every method of a registry."""
  return ml_collections.ConfigDict(methods.defaults())


# Sweep candidates: each method's learning rate from 0.3 to 30 times its default in half-decade
# steps. Learning rate is the one hyperparameter every method has, and one program serves every
# value (it lives in the optimizer state). The range leans upward: the reference defaults (1e-3,
# set for MUFAC's 134 steps per epoch) leave most methods near the original on smaller data, and a
# grid from 0.1 to 10 times chose its largest value for all four README methods on the synthetic
# default (BUILD_NOTES "Measured: tuning").
LR_FACTORS = (0.3, 1.0, 3.0, 10.0, 30.0)


def sweep_grid(methods: registry.Registry) -> ml_collections.ConfigDict:
  """name -> {"lr": candidates} for every method of a registry with a float ``lr``."""
  return ml_collections.ConfigDict({
      name: {"lr": tuple(float(f"{d['lr'] * f:.3g}") for f in LR_FACTORS)}
      for name, d in methods.defaults().items() if isinstance(d.get("lr"), float)})


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict()
  # checkpoint: a torchvision ResNet-18 state_dict (.pth, .safetensors, .npz) to import as the
  # original model instead of training one (model.width 64, model.stem "imagenet").
  c.model = ml_collections.ConfigDict({"name": "resnet18", "width": 64, "stem": "imagenet",
                                       "dtype": "float32", "checkpoint": ""})
  # The MUFAC original recipe (docs/datasets.md#training-recipes): SGD momentum 0.9, lr 0.01, ÷10 at
  # 10 and 20.
  c.train = ml_collections.ConfigDict({
      "epochs": 30, "batch_size": 64, "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0,
      "lr_boundaries": (10, 20), "lr_decay": 0.1, "augment": True, "eval_batch_size": 256})
  # Overrides of `train` for the retrained model (MUCAC's retrained recipes differ from the original).
  c.retrain = ml_collections.ConfigDict()
  # Unlearning: the reference runs every method with SGD lr 0.001, no momentum, batch 64, after
  # set_seed(42). Every method's hyperparameters, pre-filled with its factory's defaults, so each
  # can be set from the command line (--config.unlearn.hparams.scrub.lr=0.01) and is recorded.
  c.unlearn = ml_collections.ConfigDict({
      "batch_size": 64, "seed": 42, "methods": "all",
      "hparams": method_hparams(registry.METHODS)})
  # SISA (experiments.sisa): shard by person so a request touches one shard; the official SISA
  # batch of 16; "auto" trains the shard models stacked (vmap) when they fit.
  c.sisa = ml_collections.ConfigDict({"partition": "identity", "aggregation": "vote", "mode": "auto",
                                      "batch_size": 16})
  # experiments.sweep (mu_jax/pipelines/sweep.py): candidates scored on validation persons drawn
  # from retain (None: as many as the forget set has) against a model retrained without them.
  c.sweep = ml_collections.ConfigDict({
      "grid": sweep_grid(registry.METHODS), "validation_persons": None, "seed": 0,
      "criterion": "distance"})
  c.eval = ml_collections.ConfigDict({"nomus_lambda": 0.5, "bootstrap": 200})
  return c
