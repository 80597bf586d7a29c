"""ResNet-18 equals torchvision's architecture; output shapes; the small net."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mu_jax.models import create_model
from mu_jax.models.registry import last_blocks


def _count(params):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("num_classes,expected", [
    # torchvision.models.resnet18(num_classes=C): 11,689,512 for C=1000; the fc is 512*C + C.
    (1000, 11_689_512), (8, 11_689_512 - 513 * 1000 + 513 * 8), (3, 11_689_512 - 513 * 997)])
def test_resnet18_parameter_count_equals_torchvision(num_classes, expected):
  model = create_model("resnet18", num_classes)
  v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 128, 128, 3)), train=False))
  assert _count(v["params"]) == expected


def test_resnet18_shapes_and_feature_map_sizes():
  model = create_model("resnet18", 8, width=8)
  x = jnp.zeros((2, 64, 64, 3))
  v = model.init(jax.random.key(0), x, train=False)
  logits, feats = model.apply(v, x, train=False, features=True)
  chex.assert_shape(logits, (2, 8))
  chex.assert_shape(feats, (2, 64))
  # torchvision layout: stem conv 7x7 HWIO, stage widths w, 2w, 4w, 8w, projection in stage 2.
  p = v["params"]
  chex.assert_shape(p["conv1"]["kernel"], (7, 7, 3, 8))
  chex.assert_shape(p["layer2"]["block0"]["downsample_conv"]["kernel"], (1, 1, 8, 16))
  assert "downsample_conv" not in p["layer1"]["block0"]
  chex.assert_shape(p["fc"]["Dense_0"]["kernel"], (64, 8))


def test_resnet18_init_statistics_match_torchvision():
  model = create_model("resnet18", 8)
  v = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  k = np.asarray(v["params"]["layer4"]["block0"]["conv2"]["kernel"])  # 3x3x512x512
  # kaiming_normal(fan_out, relu): std = sqrt(2 / (512 * 9)).
  assert abs(k.std() / np.sqrt(2 / (512 * 9)) - 1) < 0.02
  fc = np.asarray(v["params"]["fc"]["Dense_0"]["kernel"])
  assert np.abs(fc).max() <= 1 / np.sqrt(512) + 1e-7  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  np.testing.assert_array_equal(v["params"]["bn1"]["scale"], 1.0)
  np.testing.assert_array_equal(v["batch_stats"]["bn1"]["var"], 1.0)


def test_last_blocks():
  assert last_blocks(create_model("resnet18", 8), 3) == ("layer3", "layer4", "fc")
  assert last_blocks(create_model("small_cnn", 8), 1) == ("fc",)
  with pytest.raises(ValueError, match="k must be"):
    last_blocks(create_model("small_cnn", 8), 9)


def test_unknown_model_and_dtype():
  with pytest.raises(ValueError, match="unknown model"):
    create_model("vgg", 8)
  with pytest.raises(ValueError, match="dtype"):
    create_model("resnet18", 8, dtype="float16")
