"""PyTorch ResNet-18 checkpoints in and out, against real torch (and torchvision when it imports)."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mu_jax import models
from mu_jax.models import torch_io

NUM_CLASSES = 8


def _torch_resnet18(num_classes):
  """torchvision.models.resnet18(num_classes=...) if torchvision imports, else the same in plain torch.

  The plain version has torchvision's module names (conv1, bn1, layer1.0.conv1, ...,
  layer2.0.downsample.0/1, fc), so its state_dict has exactly torchvision's keys and shapes.
  """
  torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'mu_jax[torch]')")
  try:
    import torchvision  # pylint: disable=import-outside-toplevel
    return torchvision.models.resnet18(num_classes=num_classes)
  except Exception:  # noqa: BLE001  (absent, or built for another torch: its C ops fail to register)
    pass
  nn = torch.nn

  class BasicBlock(nn.Module):

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.downsample = None
      if stride != 1 or cin != cout:
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
      shortcut = x if self.downsample is None else self.downsample(x)
      y = torch.relu(self.bn1(self.conv1(x)))
      return torch.relu(self.bn2(self.conv2(y)) + shortcut)

  class ResNet18(nn.Module):

    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(64)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      cin = 64
      for i, cout in enumerate((64, 128, 256, 512)):
        stride = 1 if i == 0 else 2
        stage = nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1))
        setattr(self, f"layer{i + 1}", stage)
        cin = cout
      self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
      x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      return self.fc(torch.flatten(x.mean((2, 3)), 1))

  return ResNet18()


def _trained_looking(model, seed=0):
  """Random BN affine parameters and running statistics, so a swapped mean/var or weight/bias shows."""
  import torch  # pylint: disable=import-outside-toplevel
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        n = m.num_features
        m.weight.copy_(0.5 + torch.rand(n, generator=g))
        m.bias.copy_(0.2 * torch.randn(n, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
        m.running_var.copy_(0.5 + torch.rand(n, generator=g))
        m.num_batches_tracked.fill_(7)
  return model.eval()


@pytest.fixture(scope="module")
def torch_model():
  torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'mu_jax[torch]')")
  torch.manual_seed(0)
  return _trained_looking(_torch_resnet18(NUM_CLASSES))


@pytest.fixture(scope="module")
def apply_fn():
  net = models.create_model("resnet18", NUM_CLASSES, width=64, stem="imagenet")
  return jax.jit(lambda v, x: net.apply(v, x, train=False))


@pytest.mark.parametrize("size", [64, 128])
def test_imported_logits_equal_torch(torch_model, apply_fn, size):
  import torch  # pylint: disable=import-outside-toplevel
  x = np.random.default_rng(size).uniform(0, 1, (2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(x)).numpy()
  variables = models.from_torch(torch_model.state_dict(), "resnet18", num_classes=NUM_CLASSES)
  got = np.asarray(apply_fn(variables, jnp.asarray(x.transpose(0, 2, 3, 1))))
  assert got.shape == expected.shape == (2, NUM_CLASSES)
  rel = np.abs(got - expected).max() / np.abs(expected).max()
  print(f"{size}x{size}: max |jax - torch| / max |torch| = {rel:.2e}")
  assert rel < 1e-5, f"max |jax - torch| / max |torch| = {rel:.2e}"


def test_pth_import_and_exact_export(torch_model, tmp_path):
  import torch  # pylint: disable=import-outside-toplevel
  path = tmp_path / "resnet18.pth"
  torch.save(torch_model.state_dict(), path)
  variables = models.from_torch(models.load_torch_checkpoint(path), num_classes=NUM_CLASSES)
  # An unlearning method updates the parameters with jax.tree operations (dicts come back sorted).
  variables = jax.tree.map(lambda a: a, variables)
  back = models.to_torch(variables, as_torch=True)
  original = torch_model.state_dict()
  assert list(back) == list(original)
  for key, value in original.items():
    if key.endswith("num_batches_tracked"):
      assert back[key].dtype == torch.int64 and back[key].shape == () and int(back[key]) == 0, key
    else:
      assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
  fresh = _torch_resnet18(NUM_CLASSES)
  fresh.load_state_dict(back, strict=True)
  numpy_back = models.to_torch(variables, num_batches_tracked=5)
  assert isinstance(numpy_back["fc.weight"], np.ndarray)
  assert numpy_back["bn1.num_batches_tracked"].dtype == np.int64
  assert int(numpy_back["layer3.0.downsample.1.num_batches_tracked"]) == 5


def test_wrapped_and_data_parallel_checkpoints(torch_model, tmp_path):
  import torch  # pylint: disable=import-outside-toplevel
  sd = torch_model.state_dict()
  want = models.from_torch(sd)
  wrapped = tmp_path / "wrapped.pt"
  torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, wrapped)
  got = models.from_torch(models.load_torch_checkpoint(wrapped))
  jax.tree.map(np.testing.assert_array_equal, got, want)
  # from_torch unwraps too, and takes the head size from fc.weight.
  got = models.from_torch({"model_state_dict": {f"module.{k}": v for k, v in sd.items()}})
  assert got["params"]["fc"]["Dense_0"]["kernel"].shape == (512, NUM_CLASSES)


def _numpy_state_dict():
  """Variables of a 3-class ResNet-18 (random values, no forward pass) and their state_dict."""
  net = models.create_model("resnet18", 3)
  shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
  rng = np.random.default_rng(1)
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
  return variables, models.to_torch(variables)


def test_bad_keys_and_shapes_name_the_key():
  _, sd = _numpy_state_dict()
  with pytest.raises(torch_io.TorchCheckpointError, match=r"unmapped keys \['fc2.weight'\]"):
    models.from_torch({**sd, "fc2.weight": sd["fc.weight"]}, num_classes=3)
  with pytest.raises(torch_io.TorchCheckpointError,
                     match=r"unmapped keys \['layer5.0.bn1.num_batches_tracked'\]"):
    models.from_torch({**sd, "layer5.0.bn1.num_batches_tracked": np.asarray(3)}, num_classes=3)
  short = {k: v for k, v in sd.items() if k != "layer3.1.bn2.running_var"}
  with pytest.raises(torch_io.TorchCheckpointError, match=r"missing keys \['layer3.1.bn2.running_var'\]"):
    models.from_torch(short, num_classes=3)
  bad = dict(sd, **{"layer2.0.conv1.weight": sd["layer2.0.conv1.weight"][:, :, :2]})
  with pytest.raises(torch_io.TorchCheckpointError,
                     match=r"'layer2.0.conv1.weight': shape \(128, 64, 2, 3\)"):
    models.from_torch(bad, num_classes=3)
  with pytest.raises(torch_io.TorchCheckpointError, match=r"'fc.weight': shape \(3, 512\).*\(8, 512\)"):
    models.from_torch(sd, num_classes=8)
  with pytest.raises(torch_io.TorchCheckpointError, match="'bn1.weight': dtype int32"):
    models.from_torch(dict(sd, **{"bn1.weight": sd["bn1.weight"].astype(np.int32)}))
  with pytest.raises(torch_io.TorchCheckpointError, match="not 'vgg'"):
    models.from_torch(sd, "vgg")
  with pytest.raises(torch_io.TorchCheckpointError, match="'head'"):
    models.to_torch({"params": {"head": {"kernel": np.zeros((4, 2))}}, "batch_stats": {}})


def test_safetensors_and_npz_need_no_torch(tmp_path, monkeypatch):
  variables, sd = _numpy_state_dict()
  np.savez(tmp_path / "sd.npz", **{f"module.{k}": v for k, v in sd.items()})
  # Importing torch from here on fails, as on an install without it.
  monkeypatch.setitem(sys.modules, "torch", None)
  paths = [tmp_path / "sd.npz"]
  try:
    from safetensors import numpy as st_numpy  # pylint: disable=import-outside-toplevel
    st_numpy.save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp_path / "sd.safetensors"))
    paths.append(tmp_path / "sd.safetensors")
  except ImportError:
    pass  # safetensors is optional; the .npz path is still checked
  for path in paths:
    got = models.from_torch(models.load_torch_checkpoint(path))
    jax.tree.map(np.testing.assert_array_equal, got, variables)
  (tmp_path / "m.pth").write_bytes(b"not read")
  with pytest.raises(ImportError,
                     match=r"m.pth: reading a .pth/.pt checkpoint needs PyTorch.*mu_jax\[torch\]"):
    models.load_torch_checkpoint(tmp_path / "m.pth")
  with pytest.raises(ImportError, match="as_torch=True"):
    models.to_torch(variables, as_torch=True)


def test_bad_files(tmp_path):
  with pytest.raises(torch_io.TorchCheckpointError, match="unknown checkpoint type '.ckpt'"):
    models.load_torch_checkpoint(tmp_path / "m.ckpt")
  with pytest.raises(torch_io.TorchCheckpointError, match="m.npz: checkpoint not found"):
    models.load_torch_checkpoint(tmp_path / "m.npz")
  (tmp_path / "bad.npz").write_bytes(b"garbage")
  with pytest.raises(torch_io.TorchCheckpointError, match="bad.npz: not a readable .npz"):
    models.load_torch_checkpoint(tmp_path / "bad.npz")
