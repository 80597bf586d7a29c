"""ResNet-18 training speed on an accelerator: mu_jax against PyTorch, and against the floor.

  python benchmarks/accelerator.py --size=128 --batches=64,128,256,512,1024,2048 --bf16 \
      --out=accelerator.json

For each batch size and dtype it times mu_jax's jitted data-parallel training step (the step every
mu_jax stage trains with: SGD momentum 0.9, softmax cross-entropy, uint8 images converted on the
device) and the same network in PyTorch on the same device (``train_step.torch_resnet18``,
channels-last, ``cudnn.benchmark``), each as ``--inner`` steps run back to back and then
synchronised, the median over ``--reps`` such runs after ``--warmup`` steps. "bfloat16" is bf16
compute with float32 parameters, optimizer state and BatchNorm statistics in both (mu_jax's
``dtype="bfloat16"``, PyTorch's ``autocast``). A batch that does not fit is reported as out of
memory and ends that framework's sweep: the largest batch that ran is the last row it has.

The floor of a step (METHOD.md of the device tool): XLA's cost analysis of the compiled step gives
its floating-point operations and the bytes its fusions read and write; the device's measured
matmul rate (a ``--matmul-n``³ product in the step's dtype at JAX's default precision, so float32
products may run as TF32, as the step's do) and copy bandwidth (a ``--copy-gib`` GiB array read
and written once) turn them into a compute time and a memory time, and the larger is the floor.
The compute time is a true lower bound; the memory time is that of XLA's own fusion plan (every
fusion's operands and results once, as if nothing stayed in cache), not the least traffic the step
could have, so on a cache-rich CPU the step can beat it. ``step/floor`` says how far the step is
from the floor.

On the CPU (small ``--size``, ``--matmul-n`` and ``--copy-gib``) it checks itself; PyTorch then runs
on the CPU too. PyTorch is the ``bench`` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_step as cpu_bench  # noqa: E402  (the two networks, shared with the CPU benchmark)

NUM_CLASSES = cpu_bench.NUM_CLASSES


def _median_time(run, inner: int, reps: int, warmup: int) -> float:
  """Median seconds per call of ``run(n)`` (n calls, then a synchronisation) over ``reps``."""
  run(warmup)
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    run(inner)
    times.append((time.perf_counter() - t) / inner)
  return statistics.median(times)


def matmul_rate(n: int, dtype: str, reps: int = 5) -> float:
  """FLOP/s of an n×n×n product on the default device (random inputs, JAX's default precision)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(jnp.matmul)

  def run(k):
    for _ in range(k):
      out = f(a, b)
    jax.block_until_ready(out)

  return 2 * n ** 3 / _median_time(run, 3, reps, 1)


def copy_bandwidth(gib: float, reps: int = 5) -> float:
  """Bytes/s of reading and writing a ``gib`` GiB float32 array once (``x * 2``)."""
  x = jax.random.uniform(jax.random.key(2), (int(gib * 2 ** 28),), jnp.float32)
  f = jax.jit(lambda v: v * 2)

  def run(k):
    for _ in range(k):
      out = f(x)
    jax.block_until_ready(out)

  return 2 * x.nbytes / _median_time(run, 3, reps, 1)


def _is_oom(e: BaseException) -> bool:
  text = f"{type(e).__name__} {e}".lower()
  return "resource_exhausted" in text or "out of memory" in text or "outofmemory" in text


def jax_step(size: int, batch: int, dtype: str, seed: int = 0):
  """(run(n), cost analysis) for mu_jax's compiled train step on one fixed batch."""
  fn, state, data, key = cpu_bench.jax_step_parts(size, batch, seed, dtype)
  compiled = fn.lower(state, data, key).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  holder = {"state": state}

  def run(k):
    for _ in range(k):
      holder["state"], metrics = compiled(holder["state"], data, key)
    jax.block_until_ready(metrics)

  return run, {"flops": float(cost.get("flops", 0.0)),
               "bytes": float(cost.get("bytes accessed", 0.0))}


def torch_step(size: int, batch: int, dtype: str, seed: int = 0):
  """run(n) for the same network and step in PyTorch on its default device."""
  import torch
  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  torch.backends.cudnn.benchmark = True
  model, opt, images, labels, loss_fn = cpu_bench.torch_step_parts(size, batch, seed, device,
                                                                   channels_last=True)
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

  def run(k):
    for _ in range(k):
      x = (images.float() / 255.0).contiguous(memory_format=torch.channels_last)
      opt.zero_grad(set_to_none=True)
      with autocast:
        logits = model(x)
        loss = loss_fn(logits.float(), labels)
      loss.backward()
      opt.step()
      acc = (logits.argmax(-1) == labels).float().mean()
    _ = (loss.item(), acc.item())  # waits for the device

  return run


def sweep(args) -> list[dict]:
  rows = []
  for dtype in args.dtypes:
    rate = matmul_rate(args.matmul_n, dtype)
    done = {"mu_jax": False, "pytorch": False}
    for batch in args.batches:
      row = {"size": args.size, "batch": batch, "dtype": dtype, "matmul_flops_per_s": rate}
      for name in ("mu_jax", "pytorch"):
        if done[name]:
          continue
        try:
          if name == "mu_jax":
            run, cost = jax_step(args.size, batch, dtype)
            row.update(cost)
          else:
            run = torch_step(args.size, batch, dtype)
          t = _median_time(run, args.inner, args.reps, args.warmup)
          row[f"{name}_step_s"] = t
          row[f"{name}_images_per_s"] = batch / t
        except Exception as e:  # noqa: BLE001  (out of memory ends this framework's sweep)
          if not _is_oom(e):
            raise
          row[f"{name}_error"] = "out of memory"
          done[name] = True
        finally:
          run = None
          _release()
      rows.append(row)
      if all(done.values()):
        break
  return rows


def _release() -> None:
  """Frees what the last candidate left on the device before the next one allocates."""
  import gc
  gc.collect()
  jax.clear_caches()
  try:
    import torch
    if torch.cuda.is_available():
      torch.cuda.empty_cache()
  except ImportError:
    pass


def add_floor(rows: list[dict], bandwidth: float) -> None:
  for row in rows:
    if "flops" in row:
      row["floor_compute_s"] = row["flops"] / row["matmul_flops_per_s"]
      row["floor_memory_s"] = row["bytes"] / bandwidth
      row["floor_s"] = max(row["floor_compute_s"], row["floor_memory_s"])
      if "mu_jax_step_s" in row:
        row["mu_jax_over_floor"] = row["mu_jax_step_s"] / row["floor_s"]


def print_table(rows: list[dict], bandwidth: float) -> None:
  print(f"\ncopy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write); images/s are medians; "
        "floor = max(compute: flops / matmul rate, memory: bytes of XLA's fusions / bandwidth)")
  print("| size | batch | dtype | mu_jax img/s | PyTorch img/s | mu_jax/PyTorch | mu_jax step ms | "
        "floor ms (compute, memory) | step/floor |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    ours = f"{r['mu_jax_images_per_s']:.0f}" if "mu_jax_images_per_s" in r else r.get("mu_jax_error", "-")
    theirs = f"{r['pytorch_images_per_s']:.0f}" if "pytorch_images_per_s" in r else r.get("pytorch_error", "-")
    ratio = (f"{r['mu_jax_images_per_s'] / r['pytorch_images_per_s']:.2f}"
             if "mu_jax_images_per_s" in r and "pytorch_images_per_s" in r else "-")
    step = f"{r['mu_jax_step_s'] * 1e3:.2f}" if "mu_jax_step_s" in r else "-"
    floor = (f"{r['floor_s'] * 1e3:.2f} ({r['floor_compute_s'] * 1e3:.2f}, {r['floor_memory_s'] * 1e3:.2f})"
             if "floor_s" in r else "-")
    over = f"{r['mu_jax_over_floor']:.1f}" if "mu_jax_over_floor" in r else "-"
    print(f"| {r['size']} | {r['batch']} | {r['dtype']} | {ours} | {theirs} | {ratio} | {step} | "
          f"{floor} | {over} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--size", type=int, default=128, help="input resolution")
  parser.add_argument("--batches", default="64,128,256,512,1024,2048",
                      help="comma-separated batch sizes, ascending")
  parser.add_argument("--bf16", action="store_true", help="also time bfloat16 compute")
  parser.add_argument("--reps", type=int, default=7, help="timed runs per candidate")
  parser.add_argument("--inner", type=int, default=10, help="steps per timed run")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
  parser.add_argument("--matmul-n", type=int, default=8192, help="matmul size for the rate")
  parser.add_argument("--copy-gib", type=float, default=1.0, help="array size for the bandwidth")
  parser.add_argument("--out", default=None, help="write the results as JSON here")
  args = parser.parse_args()
  args.batches = [int(b) for b in args.batches.split(",")]
  if args.batches != sorted(args.batches):
    parser.error("--batches must be ascending (the sweep stops at the first that does not fit)")
  args.dtypes = ["float32"] + (["bfloat16"] if args.bf16 else [])
  import torch
  device = jax.devices()[0]
  info = {"jax": jax.__version__, "torch": torch.__version__, "backend": jax.default_backend(),
          "device": getattr(device, "device_kind", str(device)), "devices": jax.device_count(),
          "torch_device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
          "host": platform.node(), "args": {k: v for k, v in vars(args).items()}}
  print(json.dumps(info))
  bandwidth = copy_bandwidth(args.copy_gib)
  rows = sweep(args)
  add_floor(rows, bandwidth)
  print_table(rows, bandwidth)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"info": info, "copy_bytes_per_s": bandwidth, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
