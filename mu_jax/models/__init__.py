"""Models: a torchvision-equivalent ResNet-18, a small CNN for fast tests, and their heads.

:func:`from_torch`, :func:`to_torch`, :func:`load_torch_checkpoint` and :func:`save_torch_checkpoint` move ResNet-18 weights between
torchvision ``state_dict`` files and mu_jax's flax variables (:mod:`mu_jax.models.torch_io`).
"""

from mu_jax.models.resnet import ResNet, resnet18
from mu_jax.models.small import SmallCNN
from mu_jax.models.registry import block_names, check_contract, create_model, register_model
from mu_jax.models.torch_io import (TorchCheckpointError, from_torch, load_torch_checkpoint,
                                    save_torch_checkpoint, to_torch)
