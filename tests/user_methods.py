"""A user's own unlearning methods, outside mu_jax, for tests/test_experiment.py."""

import mu_jax.methods


def my_method(**hparams):
  """Fine-tuning under another name: its rows and stages must never be taken for finetune's."""
  return mu_jax.methods.finetune(**hparams)


def renamed_finetune(lr: float = 0.002, epochs: int = 1):
  """A user factory with named defaults (pre-filled, validated and recorded like built-ins)."""
  return mu_jax.methods.finetune(lr=lr, epochs=epochs)
