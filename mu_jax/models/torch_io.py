"""PyTorch ResNet-18 checkpoints in and out: torchvision's ``state_dict`` <-> flax variables.

:func:`from_torch` turns the ``state_dict`` of ``torchvision.models.resnet18(num_classes=N)`` into the
variables ``{"params", "batch_stats"}`` of ``create_model("resnet18", N, width=64, stem="imagenet")``;
:func:`to_torch` turns variables of that model back into a ``state_dict`` that
``model.load_state_dict(..., strict=True)`` accepts. Both directions only transpose and rename, so a
round trip is bit for bit, and the imported model's eval-mode logits on NHWC images in [0, 1] equal
torch's on the same images as NCHW (``tests/test_torch_io.py`` checks both against real torch).

The layout (torchvision's ``torchvision/models/resnet.py``; He et al., "Deep Residual Learning for
Image Recognition", CVPR 2016)::

  torch key                          flax variable                              transform
  conv1.weight                       params/conv1/kernel                        OIHW -> HWIO
  bn1.weight / bn1.bias              params/bn1/scale / params/bn1/bias
  bn1.running_mean / running_var     batch_stats/bn1/mean / batch_stats/bn1/var
  bn1.num_batches_tracked            (none)                                     ignored / written as 0
  layer{s}.{b}.conv1 .. bn2          params/layer{s}/block{b}/conv1 .. bn2
  layer{s}.{b}.downsample.0 / .1     params/layer{s}/block{b}/downsample_conv / downsample_bn
  fc.weight / fc.bias                params/fc/Dense_0/kernel / bias            [out, in] -> [in, out]

Any key of the checkpoint that maps to nothing, any variable the checkpoint lacks and any shape that
differs from the model's is an error naming the key. ``num_batches_tracked`` only matters to a torch
BatchNorm built with ``momentum=None`` (torchvision uses 0.1), so it is dropped on import and written
as a 0-d int64 (the value given to :func:`to_torch`, 0 by default) on export.

:func:`load_torch_checkpoint` reads a ``state_dict`` from ``.pth``/``.pt`` (``torch.load``, needs the
optional ``torch`` extra: ``pip install 'mu_jax[torch]'``), ``.safetensors`` (the ``safetensors``
package's numpy API, no torch) or ``.npz`` (numpy only). It accepts a checkpoint wrapped as
``{"state_dict": ...}`` (or ``{"model_state_dict": ...}``, PyTorch's tutorial convention) and strips
the ``module.`` prefix that ``torch.nn.DataParallel`` / ``DistributedDataParallel`` add.

Example, import -> unlearn -> export::

  sd = models.load_torch_checkpoint("resnet18_mufac.pth")
  variables = models.from_torch(sd, num_classes=8)
  ...  # unlearn with mu_jax
  torch_model.load_state_dict(models.to_torch(variables, as_torch=True))
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mu_jax.models.registry import create_model

MODELS = ("resnet18",)
SUFFIXES = (".pth", ".pt", ".safetensors", ".npz")
_WRAPPERS = ("state_dict", "model_state_dict")
_PREFIX = "module."

# Flax module name -> torch module name, one path component at a time.
_MODULE_NAMES = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}
# Order of modules inside a torchvision ResNet and BasicBlock (state_dict order), so the export
# lists keys as ``torchvision.models.resnet18().state_dict()`` does whatever order the variables
# dicts have (jax.tree operations return dicts with sorted keys).
_MODULE_RANK = {"conv1": 0, "bn1": 1, "conv2": 2, "bn2": 3, "downsample_conv": 4, "downsample_bn": 5,
                "layer1": 11, "layer2": 12, "layer3": 13, "layer4": 14, "fc": 20, "Dense_0": 0}
_BLOCK = re.compile(r"block(\d+)$")


class TorchCheckpointError(ValueError):
  """A checkpoint that does not fit the model: the message names the key(s) and the file."""


def _module_rank(name: str) -> tuple[int, int]:
  m = _BLOCK.match(name)
  if m:
    return (0, int(m.group(1)))
  if name not in _MODULE_RANK:
    raise TorchCheckpointError(f"variables hold a module {name!r} that has no torchvision name; "
                               "to_torch converts the variables of create_model('resnet18', ...)")
  return (_MODULE_RANK[name], 0)


def _torch_module(path: tuple[str, ...]) -> str:
  """Flax module path ("layer1", "block0", "downsample_conv") -> torch prefix "layer1.0.downsample.0"."""
  parts = []
  for name in path:
    m = _BLOCK.match(name)
    if m:
      parts.append(m.group(1))
    elif name == "Dense_0":  # fc is a Linear wrapping one nn.Dense: torch has no such level.
      continue
    else:
      parts.append(_MODULE_NAMES.get(name, name))
  return ".".join(parts)


# (collection, flax leaf name, array rank) -> torch parameter name.
_LEAF_NAMES = {("params", "kernel", 4): "weight", ("params", "kernel", 2): "weight",
               ("params", "scale", 1): "weight", ("params", "bias", 1): "bias",
               ("batch_stats", "mean", 1): "running_mean", ("batch_stats", "var", 1): "running_var"}


def _to_torch_layout(x: np.ndarray) -> np.ndarray:
  if x.ndim == 4:
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # HWIO -> OIHW
  if x.ndim == 2:
    return np.ascontiguousarray(x.T)  # [in, out] -> [out, in]
  return x


def _to_flax_layout(x: np.ndarray) -> np.ndarray:
  if x.ndim == 4:
    return np.ascontiguousarray(x.transpose(2, 3, 1, 0))  # OIHW -> HWIO
  if x.ndim == 2:
    return np.ascontiguousarray(x.T)
  return x


def _mapping(variables: Mapping[str, Any]) -> list[tuple[str, tuple[str, ...], tuple[str, ...], Any]]:
  """[(torch key, collection path, flax module path, leaf)] in torchvision's state_dict order.

  ``leaf`` is the array (or ShapeDtypeStruct) of the variables; each BatchNorm's running statistics
  follow its weight and bias, as in torch, where they sit in one module.
  """
  params = variables.get("params")
  stats = variables.get("batch_stats", {})
  if not isinstance(params, Mapping):
    raise TorchCheckpointError("variables need a 'params' collection (and 'batch_stats'), as "
                               "model.init returns; got keys " + str(sorted(variables)))
  extra = sorted(set(variables) - {"params", "batch_stats"})
  if extra:
    raise TorchCheckpointError(f"variables hold collections {extra} that a torch state_dict has no "
                               "place for; expected only 'params' and 'batch_stats'")
  rows = []

  def leaf_rows(collection: str, tree: Mapping[str, Any], path: tuple[str, ...]):
    for leaf in ("kernel", "scale", "bias", "mean", "var"):
      if leaf in tree:
        x = tree[leaf]
        name = _LEAF_NAMES.get((collection, leaf, len(x.shape)))
        if name is None:
          raise TorchCheckpointError(f"{collection}/{'/'.join(path)}/{leaf} of shape {x.shape} has "
                                     "no torchvision counterpart")
        rows.append((f"{_torch_module(path)}.{name}", collection, path + (leaf,), x))
    unknown = sorted(k for k in tree if k not in ("kernel", "scale", "bias", "mean", "var")
                     and not isinstance(tree[k], Mapping))
    if unknown:
      raise TorchCheckpointError(f"{collection}/{'/'.join(path)} holds {unknown}, which have no "
                                 "torchvision counterpart")

  def walk(p: Mapping[str, Any], s: Mapping[str, Any], path: tuple[str, ...]):
    leaf_rows("params", p, path)
    if path and isinstance(s, Mapping) and any(not isinstance(v, Mapping) for v in s.values()):
      leaf_rows("batch_stats", s, path)
    children = sorted((k for k in p if isinstance(p[k], Mapping)), key=_module_rank)
    for k in children:
      walk(p[k], s.get(k, {}) if isinstance(s, Mapping) else {}, path + (k,))

  walk(params, stats, ())
  listed = {(c, path) for _, c, path, _ in rows}
  for path, _ in jax.tree_util.tree_flatten_with_path(stats)[0]:
    names = tuple(str(getattr(k, "key", k)) for k in path)
    if ("batch_stats", names) not in listed:
      raise TorchCheckpointError(f"batch_stats/{'/'.join(names)} belongs to no module of params")
  return rows


def _as_numpy(value: Any, key: str, where: str) -> np.ndarray:
  """A torch tensor or array-like as a numpy array (bfloat16 widened to float32, exactly)."""
  if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor, without importing torch
    value = value.detach().cpu()
    if str(value.dtype) == "torch.bfloat16":
      value = value.float()
    value = value.numpy()
  try:
    return np.asarray(value)
  except Exception as e:  # noqa: BLE001  (any unconvertible object: say which key holds it)
    raise TorchCheckpointError(f"{where}key {key!r}: value of type {type(value).__name__} is not an "
                               f"array ({e})") from None


def unwrap_state_dict(checkpoint: Mapping[str, Any], where: str = "") -> dict[str, Any]:
  """The flat ``state_dict`` of a checkpoint: unwrapped and without DataParallel's ``module.``.

  Args:
    checkpoint: a ``state_dict``, or a dict holding one under ``"state_dict"`` or
      ``"model_state_dict"`` (next to e.g. an epoch counter or optimizer state).
    where: prefix for error messages (the file name).

  Returns:
    {key: value} with the ``module.`` prefix removed when every key carries it.

  Raises:
    TorchCheckpointError: not a mapping, or keys that are not strings.
  """
  if not isinstance(checkpoint, Mapping):
    raise TorchCheckpointError(f"{where}expected a state_dict (a mapping of names to tensors), got "
                               f"{type(checkpoint).__name__}")
  for wrapper in _WRAPPERS:
    if isinstance(checkpoint.get(wrapper), Mapping):
      checkpoint = checkpoint[wrapper]
      break
  bad = [k for k in checkpoint if not isinstance(k, str)]
  if bad:
    raise TorchCheckpointError(f"{where}state_dict keys must be strings; found {bad[:5]}")
  if checkpoint and all(k.startswith(_PREFIX) for k in checkpoint):
    checkpoint = {k[len(_PREFIX):]: v for k, v in checkpoint.items()}
  return dict(checkpoint)


def from_torch(state_dict: Mapping[str, Any], model: str = "resnet18", num_classes: int | None = None,
               *, where: str = "") -> dict[str, dict[str, Any]]:
  """Flax variables of ``create_model(model, num_classes)`` from a torchvision ``state_dict``.

  Args:
    state_dict: ``torchvision.models.resnet18(num_classes=N).state_dict()`` or the same as numpy
      arrays (e.g. from :func:`load_torch_checkpoint`); wrapped or ``module.``-prefixed is fine.
    model: the mu_jax model; "resnet18" (width 64, ImageNet stem: torchvision's) is supported.
    num_classes: head size N; None takes it from ``fc.weight``.
    where: prefix for error messages (e.g. the checkpoint's file name).

  Returns:
    {"params": ..., "batch_stats": ...} of float32 jax arrays, which
    ``create_model("resnet18", N, width=64, stem="imagenet").apply(variables, x, train=False)``
    accepts (x: float32 NHWC in [0, 1], the same images torch sees as NCHW).

  Raises:
    TorchCheckpointError: an unknown model, a key that maps to no variable, a variable the
      checkpoint lacks, a shape that differs from the model's, or a non-float value (each named).
  """
  if model not in MODELS:
    raise TorchCheckpointError(f"from_torch converts {list(MODELS)}, not {model!r}")
  sd = unwrap_state_dict(state_dict, where)
  if num_classes is None:
    if "fc.weight" not in sd:
      raise TorchCheckpointError(f"{where}missing key 'fc.weight': give num_classes or a checkpoint "
                                 "with the linear head")
    num_classes = int(np.shape(_as_numpy(sd["fc.weight"], "fc.weight", where))[0])
  net = create_model(model, num_classes, width=64, stem="imagenet")
  # Shapes only: no parameter is initialised, so an import costs no random draw or compile.
  spec = jax.eval_shape(lambda: net.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  rows = _mapping(spec)
  expected = {key for key, _, _, _ in rows}
  # Each BatchNorm's counter is accepted (and dropped); one of a module the model lacks is not.
  counters = {k[:-len("running_var")] + "num_batches_tracked" for k in expected
              if k.endswith(".running_var")}
  unmapped = sorted(k for k in sd if k not in expected and k not in counters)
  missing = [key for key, _, _, _ in rows if key not in sd]
  problems = []
  if unmapped:
    problems.append(f"unmapped keys {unmapped[:10]}{' ...' if len(unmapped) > 10 else ''}")
  if missing:
    problems.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
  if problems:
    raise TorchCheckpointError(f"{where}state_dict does not fit {model} with {num_classes} classes: "
                               + "; ".join(problems))
  out: dict[str, dict[str, Any]] = {"params": {}, "batch_stats": {}}
  for key, collection, path, leaf in rows:
    x = _as_numpy(sd[key], key, where)
    if not np.issubdtype(x.dtype, np.floating):
      raise TorchCheckpointError(f"{where}key {key!r}: dtype {x.dtype}, expected floating point")
    torch_shape = _to_torch_layout(np.empty(leaf.shape, np.uint8)).shape
    if x.shape != torch_shape:
      raise TorchCheckpointError(f"{where}key {key!r}: shape {tuple(x.shape)}, but {model} with "
                                 f"{num_classes} classes needs {tuple(torch_shape)}")
    node = out[collection]
    for name in path[:-1]:
      node = node.setdefault(name, {})
    # float16 and bfloat16 widen to float32 exactly; float64 rounds (torch's default is float32).
    node[path[-1]] = jnp.asarray(_to_flax_layout(x.astype(np.float32, copy=False)))
  return out


def to_torch(variables: Mapping[str, Any], *, as_torch: bool = False,
             num_batches_tracked: int = 0) -> dict[str, Any]:
  """The torchvision ``state_dict`` of ResNet-18 variables (the inverse of :func:`from_torch`).

  Args:
    variables: {"params", "batch_stats"} of ``create_model("resnet18", ...)`` (any width; torch's
      model must then have the same widths).
    as_torch: return ``torch.Tensor`` values (needs torch) instead of numpy arrays.
    num_batches_tracked: the value written for every BatchNorm's ``num_batches_tracked`` (a 0-d
      int64, as torch stores it).

  Returns:
    {torch key: array} in torchvision's state_dict order, float32 weights and statistics.

  Raises:
    TorchCheckpointError: variables that are not a ResNet's (a module or leaf without a torch name).
    ImportError: ``as_torch`` without torch installed.
  """
  torch = None
  if as_torch:
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ImportError("to_torch(..., as_torch=True) needs PyTorch: pip install 'mu_jax[torch]' "
                        "(or leave as_torch False for numpy arrays)") from None
  sd: dict[str, Any] = {}
  for key, _, _, leaf in _mapping(variables):
    sd[key] = _to_torch_layout(np.asarray(leaf))
    if key.endswith(".running_var"):
      sd[key[:-len("running_var")] + "num_batches_tracked"] = np.asarray(num_batches_tracked, np.int64)
  if torch is not None:
    sd = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
  return sd


def load_torch_checkpoint(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
  """Reads a ResNet ``state_dict`` from ``.pth``/``.pt``, ``.safetensors`` or ``.npz``.

  Args:
    path: the file. ``.pth``/``.pt`` are read with ``torch.load(weights_only=True)`` (needs torch);
      ``.safetensors`` with ``safetensors.numpy``; ``.npz`` with numpy (one array per key).

  Returns:
    {key: numpy array}, unwrapped from ``{"state_dict": ...}`` and without a ``module.`` prefix;
    pass it to :func:`from_torch`.

  Raises:
    TorchCheckpointError: a missing file, an unknown suffix, or content that is not a state_dict.
    ImportError: torch (for .pth/.pt) or safetensors (for .safetensors) is not installed.
  """
  path = os.fspath(path)
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in SUFFIXES:
    raise TorchCheckpointError(f"{path}: unknown checkpoint type {suffix!r}; expected one of "
                               f"{list(SUFFIXES)}")
  if not os.path.isfile(path):
    raise TorchCheckpointError(f"{path}: checkpoint not found")
  where = f"{path}: "
  if suffix in (".pth", ".pt"):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ImportError(f"{path}: reading a .pth/.pt checkpoint needs PyTorch: pip install "
                        "'mu_jax[torch]'; or save the state_dict as .safetensors or .npz, which "
                        "need no torch") from None
    try:
      # weights_only: tensors and plain containers only, never arbitrary pickled code.
      raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises many types for a bad file: name the file)
      raise TorchCheckpointError(f"{path}: torch.load failed: {e}") from None
  elif suffix == ".safetensors":
    try:
      from safetensors import numpy as st_numpy  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ImportError(f"{path}: reading .safetensors needs the safetensors package: pip install "
                        "'mu_jax[torch]' (or pip install safetensors)") from None
    try:
      raw = st_numpy.load_file(path)
    except Exception as e:  # noqa: BLE001
      raise TorchCheckpointError(f"{path}: not a readable safetensors file: {e}") from None
  else:
    try:
      with np.load(path, allow_pickle=False) as z:
        raw = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001
      raise TorchCheckpointError(f"{path}: not a readable .npz file: {e}") from None
  sd = unwrap_state_dict(raw, where)
  return {k: _as_numpy(v, k, where) for k, v in sd.items()}


def save_torch_checkpoint(path: str | os.PathLike[str], variables: Mapping[str, Any]) -> str:
  """Writes ResNet-18 variables as a torchvision ``state_dict`` file (the inverse of reading one).

  Args:
    path: ``.pth``/``.pt`` (``torch.save``, needs torch), ``.safetensors`` (needs safetensors) or
      ``.npz`` (numpy only). Written to a temporary name and renamed: never half a file.
    variables: {"params", "batch_stats"} of ``create_model("resnet18", N, width=64,
      stem="imagenet")``.

  Returns:
    ``path``.

  Raises:
    TorchCheckpointError: an unknown suffix.
  """
  from mu_jax import checkpoints  # pylint: disable=import-outside-toplevel
  path = os.fspath(path)
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in SUFFIXES:
    raise TorchCheckpointError(f"{path}: unknown checkpoint type {suffix!r}; expected one of "
                               f"{list(SUFFIXES)}")
  sd = to_torch(variables, as_torch=suffix in (".pth", ".pt"))
  with checkpoints.atomic_write(path, "wb") as f:
    if suffix in (".pth", ".pt"):
      import torch  # pylint: disable=import-outside-toplevel
      torch.save(sd, f)
    elif suffix == ".safetensors":
      from safetensors import numpy as st_numpy  # pylint: disable=import-outside-toplevel
      f.write(st_numpy.save({k: np.ascontiguousarray(v) for k, v in sd.items()}))
    else:
      np.savez(f, **sd)
  return path
