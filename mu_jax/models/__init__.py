"""Models: a torchvision-equivalent ResNet-18, a small CNN for fast tests, and their heads."""

from mu_jax.models.resnet import ResNet, resnet18
from mu_jax.models.small import SmallCNN
from mu_jax.models.registry import block_names, create_model
