"""Times mu_jax's ResNet-18 training step against the same network in PyTorch, on the CPU.

Three candidates run interleaved in one process (so background load hits them alike): mu_jax's
jitted data-parallel train step with the default lowering ("fast": the per-pass convolution
plan and slice max-pool of :mod:`mu_jax.ops.conv` on CPU), the same step traced with plain
``lax.conv_general_dilated``/``reduce_window`` ("xla", left out with ``--no-xla``), and
torchvision's ResNet-18 written with ``torch.nn`` (no torchvision dependency). The process-wide
settings of :mod:`mu_jax.runtime` (XLA's convolutions on Eigen; freed memory kept by malloc, which
this script turns on unless ``MU_JAX_KEEP_FREED_MEMORY=0``) apply to every candidate, PyTorch
included; run with ``MU_JAX_CPU_TUNING=0`` to time all three without either. Same batch,
resolution, initialisation scheme, SGD with momentum 0.9 and lr 0.01, softmax cross-entropy; every
step converts uint8 images to float and computes the accuracy in both frameworks. PyTorch runs
with as many intra-op threads as XLA's CPU client uses (one per core this process may run on).
Besides the ratio of medians, the table gives the median of the per-round ratios of the fast step
and PyTorch's with a 95% bootstrap interval over rounds, the figure to quote for "faster or not".

``--layers`` times every ResNet-18 convolution shape instead (forward, input gradient and weight
gradient separately, each lowering and PyTorch: XLA, im2col, the direct kernels of
:mod:`mu_jax.ops.native` where they apply, Winograd's forward for 3×3 stride-1 shapes; and the
lowering the plan picks), plus the max-pool.
Single layers mislead about the plan: inside a whole step XLA fuses operand producers into a
convolution's transposes (see ``mu_jax.ops.conv.plan_for``), so the plan was chosen on steps.

Usage:
  python benchmarks/train_step.py --sizes=128,64,32 --reps=7 --out=train_step.json
  python benchmarks/train_step.py --sizes=128,64 --plans=no-winograd,xla-dw,matmul-dw,matmul-dx
  python benchmarks/train_step.py --sizes=128,64 --reps=15 --no-xla --plans=no-direct
  python benchmarks/train_step.py --layers --sizes=128,64,32 --out=layers.json

In the per-layer table "dx" of the max-pool is its backward including the forward it needs (the
slice version recomputes the arg-max; select_and_scatter reads the input directly).

PyTorch is an optional extra: ``pip install torch`` (the ``bench`` extra of setup.cfg).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import time

# Large training steps are what this script measures, the case mu_jax.runtime's opt-in malloc
# setting is for; it must be set before mu_jax is imported. MU_JAX_KEEP_FREED_MEMORY=0 compares.
os.environ.setdefault("MU_JAX_KEEP_FREED_MEMORY", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mu_jax import parallel, runtime  # noqa: E402

runtime.configure_cpu()  # the settings the experiment scripts make, before XLA starts
from mu_jax.models import create_model  # noqa: E402
from mu_jax.ops import conv as conv_ops, native  # noqa: E402
from mu_jax.training import fit, steps  # noqa: E402

NUM_CLASSES = 8
PAUSE_S = 0.05


def cpu_threads() -> int:
  """Cores this process may use: XLA's CPU thread pool is sized to this, torch is set to it."""
  return len(os.sched_getaffinity(0))


# ----------------------------------------------------------------------------------------------
# PyTorch: torchvision.models.resnet18 rebuilt with torch.nn.


def torch_resnet18(num_classes: int):
  """torchvision's ResNet-18 (BasicBlock, [2, 2, 2, 2], 7×7/2 stem, 3×3/2 max-pool)."""
  import torch
  from torch import nn

  class BasicBlock(nn.Module):

    def __init__(self, cin: int, cout: int, stride: int):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.relu = nn.ReLU(inplace=True)
      self.downsample = None
      if stride != 1 or cin != cout:
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                        nn.BatchNorm2d(cout))

    def forward(self, x):
      identity = x if self.downsample is None else self.downsample(x)
      out = self.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      return self.relu(out + identity)

  class ResNet18(nn.Module):

    def __init__(self):
      super().__init__()
      self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
      self.bn1 = nn.BatchNorm2d(64)
      self.relu = nn.ReLU(inplace=True)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
      layers, cin = [], 64
      for i, cout in enumerate((64, 128, 256, 512)):
        stride = 1 if i == 0 else 2
        layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
        cin = cout
      self.layer1, self.layer2, self.layer3, self.layer4 = layers
      self.avgpool = nn.AdaptiveAvgPool2d(1)
      self.fc = nn.Linear(512, num_classes)
      for m in self.modules():  # torchvision's initialisation
        if isinstance(m, nn.Conv2d):
          nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
      x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
      x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
      return self.fc(torch.flatten(self.avgpool(x), 1))

  return ResNet18()


def torch_step_parts(size: int, batch: int, seed: int, device: str = "cpu",
                     channels_last: bool = False):
  """(model, optimizer, images, labels, loss): PyTorch's side of the step, on ``device``."""
  import torch
  torch.manual_seed(seed)
  model = torch_resnet18(NUM_CLASSES)
  model = model.to(device, memory_format=torch.channels_last) if channels_last else model.to(device)
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
  rng = np.random.default_rng(seed)
  images = torch.from_numpy(rng.integers(0, 256, (batch, 3, size, size), dtype=np.uint8)).to(device)
  labels = torch.from_numpy(rng.integers(0, NUM_CLASSES, batch).astype(np.int64)).to(device)
  return model.train(), opt, images, labels, torch.nn.CrossEntropyLoss()


def make_torch_step(size: int, batch: int, seed: int):
  """A closure running one PyTorch training step on a fixed uint8 batch."""
  model, opt, images, labels, loss_fn = torch_step_parts(size, batch, seed)

  def step():
    x = images.float() / 255.0
    opt.zero_grad(set_to_none=True)
    logits = model(x)
    loss = loss_fn(logits, labels)
    loss.backward()
    opt.step()
    acc = (logits.argmax(-1) == labels).float().mean()
    return loss.item(), acc.item()

  return step


# ----------------------------------------------------------------------------------------------
# mu_jax.


# Alternative per-pass plans for ``--plans`` (see mu_jax.ops.conv.plan_for), each the default
# plan with one change; tiny maps and the stem keep the default.
_DEFAULT_PLAN = conv_ops.plan_for


def _alt_plan(change):
  def plan(x_shape, kernel_shape, stride, eigen_convolutions=None, direct=None):
    default = _DEFAULT_PLAN(x_shape, kernel_shape, stride, eigen_convolutions, direct)
    tiny = conv_ops._tiny(x_shape, kernel_shape)  # pylint: disable=protected-access
    if tiny or x_shape[3] < 16:
      return default
    return change(default, stride)
  return plan


ALT_PLANS = {
    # The plan without the direct kernels of mu_jax.ops.native (XLA, Winograd and im2col only).
    "no-direct": lambda x_shape, kernel_shape, stride, eigen_convolutions=None, direct=None:
        _DEFAULT_PLAN(x_shape, kernel_shape, stride, eigen_convolutions, False),
    # im2col for every pass of every layer past the stem.
    "matmul": _alt_plan(lambda plan, stride: conv_ops.ALL_MATMUL),
    # XLA's convolution for the forward where the default runs Winograd's.
    "no-winograd": _alt_plan(lambda plan, stride: ("xla",) + plan[1:]),
    # XLA's convolution also for every weight gradient (transposed activations).
    "xla-dw": _alt_plan(lambda plan, stride: plan[:2] + ("xla",)),
    # patches^T @ dy for the weight gradient on every map.
    "matmul-dw": _alt_plan(lambda plan, stride: plan[:2] + ("matmul",)),
    # col2im for the input gradient at stride 1 as well.
    "matmul-dx": _alt_plan(lambda plan, stride: (plan[0], "matmul", plan[2])),
}


def jax_step_parts(size: int, batch: int, seed: int, dtype: str = "float32"):
  """(step, state, batch, key): mu_jax's data-parallel train step, not yet traced, and its inputs.

  A fresh jit per call (steps.compiled_train_step is cached per task): the convolution lowering
  is picked while tracing, so each candidate can be traced under its own setting.
  """
  model = create_model("resnet18", NUM_CLASSES, dtype=dtype)
  cfg = fit.TrainConfig(epochs=1, batch_size=batch, lr=0.01, momentum=0.9, lr_boundaries=(),
                        augment=False)
  state = parallel.replicate(fit.new_state(model, jax.random.key(seed), (size, size, 3), cfg, 1))
  rng = np.random.default_rng(seed)
  data = parallel.shard({
      "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
      "label": rng.integers(0, NUM_CLASSES, batch).astype(np.int32)})
  fn = parallel.data_parallel(
      functools.partial(steps.train_step, task="multiclass", augment=False),
      in_specs=(parallel.REPLICATED, parallel.SHARDED, parallel.REPLICATED),
      out_specs=(parallel.REPLICATED, parallel.REPLICATED), donate_argnums=(0,))
  return fn, state, data, jax.random.key(seed + 1)


def make_jax_step(size: int, batch: int, seed: int, impl: str, plan=None):
  """A closure running one mu_jax training step, traced with conv lowering ``impl``.

  ``plan`` (a function like ``conv_ops.plan_for``) replaces the per-pass plan while tracing.
  """
  fn, state, data, key = jax_step_parts(size, batch, seed)
  holder = {"state": state}
  previous, previous_plan = conv_ops.get_impl(), conv_ops.plan_for
  conv_ops.set_impl(impl)
  conv_ops.plan_for = plan or previous_plan
  try:
    holder["state"], _ = fn(holder["state"], data, key)  # compiles under this lowering
    jax.block_until_ready(holder["state"])
  finally:
    conv_ops.set_impl(previous)
    conv_ops.plan_for = previous_plan

  def step():
    holder["state"], metrics = fn(holder["state"], data, key)
    jax.block_until_ready(holder["state"])
    return float(metrics["loss"]), float(metrics["accuracy"])

  return step


def timed(fn) -> tuple[float, int]:
  """Wall seconds of one call and the minor page faults it caused (fresh memory touched)."""
  f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0


def interleave(candidates: dict, reps: int, warmup: int, faults: dict | None = None) -> dict:
  """Runs every candidate once per round, rotating the order, and returns all times (s).

  If ``faults`` is given, it receives each candidate's page-fault counts per call.
  """
  names = list(candidates)
  for _ in range(warmup):
    for name in names:
      candidates[name]()
  times = {name: [] for name in names}
  for r in range(reps):
    order = names[r % len(names):] + names[:r % len(names)]
    for name in order:
      # XLA's worker threads spin for a while after a computation and so do torch's OpenMP
      # threads: a torch call right after a JAX one measured +30 ms. Let them go idle first.
      time.sleep(PAUSE_S)
      dt, nf = timed(candidates[name])
      times[name].append(dt)
      if faults is not None:
        faults.setdefault(name, []).append(nf)
  return times


def paired_ratio(new_s: list[float], old_s: list[float], draws: int = 2000
                 ) -> tuple[float, float, float]:
  """Speed of one candidate over another per round, and a 95% bootstrap interval of its median.

  The steps of one round ran back to back under the same background load, so the per-round ratio
  ``old_s / new_s`` varies less than a ratio of two medians taken over the whole run.

  Returns:
    (median, lower, upper) of the per-round ratios; > 1 means ``new`` is faster.
  """
  r = np.asarray(old_s) / np.asarray(new_s)
  boot = np.median(np.random.default_rng(0).choice(r, size=(draws, len(r))), axis=1)
  lo, hi = np.percentile(boot, [2.5, 97.5])
  return float(np.median(r)), float(lo), float(hi)


def bench_steps(args) -> dict:
  import torch
  rows = []
  xla = [] if args.no_xla else ["jax_xla"]
  jax_names = ["jax_fast", *xla] + [f"plan:{name}" for name in args.plans]
  labels = ["JAX fast", *(["JAX plain XLA"] if xla else [])] + [f"plan {name}" for name in args.plans]
  candidates = {}
  for size in args.sizes:
    candidates[(size, "jax_fast")] = make_jax_step(size, args.batch, args.seed, "auto")
    if xla:
      candidates[(size, "jax_xla")] = make_jax_step(size, args.batch, args.seed, "xla")
    for name in args.plans:
      candidates[(size, f"plan:{name}")] = make_jax_step(size, args.batch, args.seed, "auto",
                                                         ALT_PLANS[name])
    candidates[(size, "torch")] = make_torch_step(size, args.batch, args.seed)
  faults: dict = {}
  times = interleave(candidates, args.reps, args.warmup, faults)
  print(f"\nbatch {args.batch}, median of {args.reps} interleaved steps, images/s "
        f"(XLA CPU threads = torch threads = {torch.get_num_threads()}); "
        f"page faults per step in brackets; ratios are JAX/PyTorch; the last column is the "
        f"median of the per-round ratios of JAX fast and PyTorch with a 95% bootstrap interval")
  print("| input | " + " | ".join(labels) + " | PyTorch | " + " | ".join(f"{l}/PyTorch" for l in labels)
        + " | fast/PyTorch per round |")
  print("|---" * (2 * len(labels) + 3) + "|")
  for size in args.sizes:
    names = jax_names + ["torch"]
    med = {impl: statistics.median(times[(size, impl)]) for impl in names}
    ips = {impl: args.batch / m for impl, m in med.items()}
    nf = {impl: int(statistics.median(faults[(size, impl)])) for impl in names}
    row = {"size": size, "median_s": med, "images_per_s": ips,
           "all_s": {impl: times[(size, impl)] for impl in names}, "page_faults": nf,
           "over_torch": {impl: ips[impl] / ips["torch"] for impl in jax_names},
           "fast_over_torch": ips["jax_fast"] / ips["torch"]}
    if xla:
      row["xla_over_torch"] = ips["jax_xla"] / ips["torch"]
    mid, lo, hi = paired_ratio(times[(size, "jax_fast")], times[(size, "torch")])
    row["fast_over_torch_per_round"] = {"median": mid, "ci95": [lo, hi]}
    rows.append(row)
    # Each alternative plan against the default, per round: the A/B figure for a plan change.
    row["plan_over_fast_per_round"] = {}
    for name in args.plans:
      p_mid, p_lo, p_hi = paired_ratio(times[(size, f"plan:{name}")], times[(size, "jax_fast")])
      row["plan_over_fast_per_round"][name] = {"median": p_mid, "ci95": [p_lo, p_hi]}
    cells = " | ".join(f"{ips[i]:.1f} [{nf[i] // 1000}k]" for i in names)
    ratios = " | ".join(f"{row['over_torch'][i]:.2f}" for i in jax_names)
    print(f"| {size}×{size} | {cells} | {ratios} | {mid:.2f} [{lo:.2f}, {hi:.2f}] |")
  for row in rows:
    for name, r in row["plan_over_fast_per_round"].items():
      print(f"{row['size']}×{row['size']}: plan {name} / fast per round {r['median']:.3f} "
            f"[{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]")
  return {"steps": rows}


# ----------------------------------------------------------------------------------------------
# Per layer.


def resnet18_convs(size: int) -> list[tuple[str, int, int, int, int, int, int]]:
  """(name, H_in, C_in, C_out, kernel, stride, count in the net) of ResNet-18 at ``size``."""
  s4, s8, s16 = -(-size // 4), -(-size // 8), -(-size // 16)
  s32 = -(-size // 32)
  return [
      ("stem", size, 3, 64, 7, 2, 1),
      ("layer1 3x3", s4, 64, 64, 3, 1, 4),
      ("layer2 3x3/2", s4, 64, 128, 3, 2, 1),
      ("layer2 1x1/2", s4, 64, 128, 1, 2, 1),
      ("layer2 3x3", s8, 128, 128, 3, 1, 3),
      ("layer3 3x3/2", s8, 128, 256, 3, 2, 1),
      ("layer3 1x1/2", s8, 128, 256, 1, 2, 1),
      ("layer3 3x3", s16, 256, 256, 3, 1, 3),
      ("layer4 3x3/2", s16, 256, 512, 3, 2, 1),
      ("layer4 1x1/2", s16, 256, 512, 1, 2, 1),
      ("layer4 3x3", s32, 512, 512, 3, 1, 3),
  ]


def _jax_layer_fns(conv, stride, pad):
  p = ((pad, pad), (pad, pad))
  fwd = jax.jit(lambda x, w, g: conv(x, w, stride, p))
  dx = jax.jit(lambda x, w, g: jax.vjp(lambda v: conv(v, w, stride, p), x)[1](g)[0])
  dw = jax.jit(lambda x, w, g: jax.vjp(lambda v: conv(x, v, stride, p), w)[1](g)[0])
  return {"fwd": fwd, "dx": dx, "dw": dw}


def bench_layers(args) -> dict:
  import torch
  import torch.nn.functional as F
  rng = np.random.default_rng(args.seed)
  rows = []
  print(f"\nper layer, batch {args.batch}, median ms of {args.reps} interleaved runs "
        f"(xla = lax.conv_general_dilated, im2col = mu_jax's matmul lowering, torch = PyTorch; "
        f"max-pool: im2col column = mu_jax's slice max-pool)")
  print("| input | layer | ×n | fwd xla / im2col / direct / torch | fwd winograd | "
        "dx xla / im2col / direct / torch | dw xla / im2col / direct / torch | plan fwd/dx/dw |")
  print("|---|---|---|---|---|---|---|---|")
  for size in args.sizes:
    for name, h, ci, co, k, s, count in resnet18_convs(size):
      pad = k // 2
      ho = (h + 2 * pad - k) // s + 1
      x = rng.standard_normal((args.batch, h, h, ci), np.float32)
      w = rng.standard_normal((k, k, ci, co), np.float32) * 0.05
      g = rng.standard_normal((args.batch, ho, ho, co), np.float32)
      jx, jw, jg = jnp.asarray(x), jnp.asarray(w), jnp.asarray(g)
      tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
      tw = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
      tg = torch.from_numpy(g.transpose(0, 3, 1, 2).copy())
      cands = {}
      can = conv_ops.direct_passes(x.shape, w.shape, s, x.dtype)
      if not native.available():
        can = (False, False, False)
      direct_plan = tuple("direct" if ok else "xla" for ok in can)
      impls = (("xla", conv_ops.conv2d_xla, (True,) * 3),
               ("im2col", conv_ops.conv2d_im2col, (True,) * 3),
               ("direct", functools.partial(conv_ops.conv2d_im2col, plan=direct_plan), can))
      for impl, conv, runs in impls:
        for (part, fn), ok in zip(_jax_layer_fns(conv, s, pad).items(), runs):
          if not ok or (name == "stem" and part == "dx"):
            continue  # the image needs no gradient
          cands[(part, impl)] = functools.partial(
              lambda f: jax.block_until_ready(f(jx, jw, jg)), fn)
      if k == 3 and s == 1:
        wino = jax.jit(lambda a, b: conv_ops.conv2d_winograd(a, b))
        cands[("fwd", "winograd")] = lambda: jax.block_until_ready(wino(jx, jw))
      with torch.no_grad():
        cands[("fwd", "torch")] = lambda: F.conv2d(tx, tw, None, s, pad)
        if name != "stem":
          cands[("dx", "torch")] = lambda: torch.nn.grad.conv2d_input(tx.shape, tw, tg, s, pad)
        cands[("dw", "torch")] = lambda: torch.nn.grad.conv2d_weight(tx, tw.shape, tg, s, pad)
      times = interleave(cands, args.reps, 1)
      med = {key: 1e3 * statistics.median(v) for key, v in times.items()}
      plan = conv_ops.plan_for(x.shape, w.shape, s)
      rows.append({"size": size, "layer": name, "h": h, "cin": ci, "cout": co, "k": k, "stride": s,
                   "count": count, "plan": plan,
                   "median_ms": {f"{a}_{b}": v for (a, b), v in med.items()}})
      cells = []
      for part in ("fwd", "dx", "dw"):
        vals = [med.get((part, impl)) for impl in ("xla", "im2col", "direct", "torch")]
        cells.append(" / ".join("-" if v is None else f"{v:.1f}" for v in vals))
        if part == "fwd":
          cells.append(f"{med[('fwd', 'winograd')]:.1f}" if ("fwd", "winograd") in med else "-")
      cells.append("/".join({"matmul": "mm", "winograd": "wg", "direct": "dc"}.get(p, p)
                            for p in plan))
      print(f"| {size} | {name} {h}×{h} {ci}→{co} | {count} | " + " | ".join(cells) + " |", flush=True)
    # The stem max-pool: 3×3/2, padding 1, on the stem output.
    hp = -(-size // 2)
    x = rng.standard_normal((args.batch, hp, hp, 64), np.float32)
    jx = jnp.asarray(x)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    jy = conv_ops.max_pool_xla(jx, 3, 2, 1)
    jg = jnp.asarray(rng.standard_normal(jy.shape, np.float32))
    tg = torch.from_numpy(np.asarray(jg).transpose(0, 3, 1, 2).copy())
    _, t_idx = F.max_pool2d(tx, 3, 2, 1, return_indices=True)
    pools = {"xla": conv_ops.max_pool_xla, "im2col": conv_ops._max_pool_slices}  # pylint: disable=protected-access
    cands = {}
    for impl, pool in pools.items():
      fwd = jax.jit(lambda v, pool=pool: pool(v, 3, 2, 1))
      bwd = jax.jit(lambda v, gg, pool=pool: jax.vjp(lambda u: pool(u, 3, 2, 1), v)[1](gg)[0])
      cands[("fwd", impl)] = functools.partial(lambda f: jax.block_until_ready(f(jx)), fwd)
      cands[("dx", impl)] = functools.partial(lambda f: jax.block_until_ready(f(jx, jg)), bwd)
    with torch.no_grad():
      cands[("fwd", "torch")] = lambda: F.max_pool2d(tx, 3, 2, 1)
      cands[("dx", "torch")] = lambda: torch.ops.aten.max_pool2d_with_indices_backward(
          tg, tx, [3, 3], [2, 2], [1, 1], [1, 1], False, t_idx)
    times = interleave(cands, args.reps, 1)
    med = {key: 1e3 * statistics.median(v) for key, v in times.items()}
    rows.append({"size": size, "layer": "max-pool 3x3/2", "h": hp, "cin": 64, "cout": 64, "k": 3,
                 "stride": 2, "count": 1, "median_ms": {f"{a}_{b}": v for (a, b), v in med.items()}})
    cells = [" / ".join(f"{med[(part, impl)]:.1f}" for impl in ("xla", "im2col", "torch"))
             for part in ("fwd", "dx")]
    print(f"| {size} | max-pool 3×3/2 {hp}×{hp}×64 | 1 | {cells[0]} | - | {cells[1]} | - | slices |",
          flush=True)
  return {"layers": rows}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="128,64,32", help="comma-separated input resolutions")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--reps", type=int, default=5, help="timed repetitions per candidate")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps per candidate")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--layers", action="store_true", help="time single layers instead")
  parser.add_argument("--plans", default="", help="comma-separated alternative per-pass plans "
                      f"to time beside the default: {', '.join(ALT_PLANS)}")
  parser.add_argument("--no-xla", action="store_true", help="leave out the plain-XLA candidate "
                      "(its steps take 3 s at 64×64: more rounds of the others fit in the time)")
  parser.add_argument("--out", default=None, help="write the results as JSON here")
  args = parser.parse_args()
  args.sizes = [int(s) for s in args.sizes.split(",")]
  args.plans = [p for p in args.plans.split(",") if p]
  unknown = sorted(set(args.plans) - set(ALT_PLANS))
  if unknown:
    parser.error(f"unknown --plans {unknown}; choose from {sorted(ALT_PLANS)}")
  if jax.default_backend() != "cpu":
    print(f"note: the JAX backend is {jax.default_backend()}; torch runs on the CPU")
  import torch  # the optional `bench` extra
  torch.set_num_threads(cpu_threads())
  info = {"jax": jax.__version__, "torch": torch.__version__, "backend": jax.default_backend(),
          "threads": cpu_threads(), "torch_threads": torch.get_num_threads(),
          "cpu": platform.processor() or platform.machine(), "batch": args.batch,
          "reps": args.reps, "loadavg_start": os.getloadavg(),
          "eigen_convolutions": runtime.EIGEN_CONVOLUTIONS,
          "freed_memory_kept": runtime.FREED_MEMORY_KEPT}
  print(json.dumps(info))
  result = bench_layers(args) if args.layers else bench_steps(args)
  info["loadavg_end"] = os.getloadavg()
  print(f"load average at start {info['loadavg_start']}, at end {info['loadavg_end']}")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"info": info, **result}, f, indent=1)


if __name__ == "__main__":
  main()
