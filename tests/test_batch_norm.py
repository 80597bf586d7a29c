"""mu_jax's BatchNorm against torch's, and its masked (padded-batch) statistics over devices."""

import jax
import numpy as np
import pytest
import torch

from mu_jax import parallel
from mu_jax.models import layers, resnet
from tests.helpers import lax_convolutions  # noqa: F401  (fast XLA convolutions here)

R, S = parallel.REPLICATED, parallel.SHARDED


def _x(n=6, h=5, w=4, c=3, seed=0):
  return np.random.default_rng(seed).normal(1.5, 2.0, (n, h, w, c)).astype(np.float32)


def _apply_train(bn, variables, x, mask=None):
  y, upd = bn.apply(variables, x, mask, mutable=["batch_stats"])
  return np.asarray(y), jax.tree.map(np.asarray, upd["batch_stats"])


@pytest.mark.parametrize("unbiased", [True, False])
def test_one_train_step_matches_torch_batchnorm2d_running_statistics(unbiased):
  x = _x()
  bn = layers.BatchNorm(axis_name=None, unbiased_running_var=unbiased)
  variables = bn.init(jax.random.key(0), x)
  y, stats = _apply_train(bn, variables, x)

  tbn = torch.nn.BatchNorm2d(3)  # momentum 0.1, eps 1e-5, weight 1, bias 0
  tbn.train()
  ty = tbn(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
  np.testing.assert_allclose(y, ty, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(stats["mean"], tbn.running_mean.numpy(), rtol=1e-6, atol=1e-6)
  if unbiased:
    np.testing.assert_allclose(stats["var"], tbn.running_var.numpy(), rtol=1e-5)
  else:
    # flax's update (biased batch variance) is off by the factor n/(n-1) of the new term.
    n = x.shape[0] * x.shape[1] * x.shape[2]
    assert not np.allclose(stats["var"], tbn.running_var.numpy(), rtol=1e-4)
    np.testing.assert_allclose((tbn.running_var.numpy() - 0.9) / (stats["var"] - 0.9), n / (n - 1),
                               rtol=1e-4)


def test_eval_mode_uses_the_running_statistics_like_torch():
  x = _x(seed=1)
  bn = layers.BatchNorm(use_running_average=True, axis_name=None)
  variables = bn.init(jax.random.key(0), x)
  mean, var = np.array([0.5, -1.0, 2.0], np.float32), np.array([0.25, 4.0, 1.5], np.float32)
  variables = {"params": variables["params"], "batch_stats": {"mean": mean, "var": var}}
  tbn = torch.nn.BatchNorm2d(3).eval()
  tbn.running_mean.copy_(torch.from_numpy(mean))
  tbn.running_var.copy_(torch.from_numpy(var))
  ty = tbn(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
  np.testing.assert_allclose(np.asarray(bn.apply(variables, x)), ty, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("devices", [1, 4])
def test_masked_statistics_equal_those_of_the_unpadded_batch(devices):
  """5 real rows padded to 8 with garbage: on 4 devices the last shard (rows 6-7) is all padding."""
  real = _x(n=5, seed=2)
  garbage = np.full((3,) + real.shape[1:], 1e3, np.float32)
  padded = np.concatenate([real, garbage])
  mask = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
  bn = layers.BatchNorm(axis_name=parallel.AXIS, unbiased_running_var=True)
  variables = layers.BatchNorm(axis_name=None).init(jax.random.key(0), real)

  def run(x, m):
    y, upd = bn.apply(variables, x, m, mutable=["batch_stats"])
    return y, upd["batch_stats"]

  devs = jax.devices()[:devices]
  fn = parallel.data_parallel(run, in_specs=(S, S), out_specs=(S, R), devices=devs)
  y, stats = parallel.to_host(fn(parallel.shard(padded, devs), parallel.shard(mask, devs)))
  ref_y, ref_stats = _apply_train(layers.BatchNorm(axis_name=None, unbiased_running_var=True),
                                  variables, real)
  np.testing.assert_allclose(y[:5], ref_y, rtol=1e-5, atol=1e-5)
  for k in ("mean", "var"):
    np.testing.assert_allclose(stats[k], ref_stats[k], rtol=1e-5, atol=1e-6)
  # Without the mask the garbage rows dominate: the test would see them.
  _, unmasked = parallel.to_host(fn(parallel.shard(padded, devs),
                                    parallel.shard(np.ones(8, np.float32), devs)))
  assert not np.allclose(unmasked["mean"], ref_stats["mean"], atol=1.0)


def test_resnet_updates_running_variances_with_the_unbiased_batch_variance():
  x = _x(n=4, h=8, w=8, c=3, seed=3)
  # Default resnet18 (torchvision's) vs the same network with flax's biased update.
  torch_like = resnet.resnet18(5, width=4, stem="cifar")
  assert torch_like.unbiased_bn
  biased = resnet.resnet18(5, width=4, stem="cifar", unbiased_bn=False)
  variables = torch_like.init(jax.random.key(0), x, train=False)

  devs = jax.devices()[:1]

  def stats(model):
    fn = parallel.data_parallel(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])[1]["batch_stats"],
        in_specs=(R, S), out_specs=R, devices=devs)
    return parallel.to_host(fn(parallel.replicate(variables, devs), parallel.shard(x, devs)))

  su, sb = stats(torch_like), stats(biased)
  # The stem's BN sees 4 x 8 x 8 values per channel (3x3/1 stem, no pooling): factor 256/255.
  n = 4 * 8 * 8
  np.testing.assert_allclose(su["bn1"]["mean"], sb["bn1"]["mean"], rtol=1e-6)
  np.testing.assert_allclose((su["bn1"]["var"] - 0.9) / (sb["bn1"]["var"] - 0.9), n / (n - 1),
                             rtol=1e-4)
  # A block's BN after the stride-2 stage: 4 x 4 x 4 values per channel.
  m = 4 * 4 * 4
  np.testing.assert_allclose(
      (su["layer2"]["block0"]["bn1"]["var"] - 0.9) / (sb["layer2"]["block0"]["bn1"]["var"] - 0.9),
      m / (m - 1), rtol=1e-3)
