"""The embedded synthetic faces: the default benchmark, offline, on a laptop.

Run:
  python -m experiments.benchmark --config=experiments/configs/synthetic.py --workdir=/tmp/mu_synth
  python -m experiments.train --config=experiments/configs/synthetic.py:runlocal --workdir=/tmp/mu_rl
  python -m experiments.sweep --config=experiments/configs/synthetic.py --workdir=/tmp/mu_synth \
      --methods=finetune,scrub,neggrad_plus,salun

experiments.sweep tunes each method's learning rate (5 candidates, config.sweep) on 22 validation
persons drawn from retain and runs the chosen values as "<name> (tuned)" stages;
experiments.benchmark on the same workdir then prints default and tuned rows side by side. On a 2-core AMD EPYC without
AVX-512, from an empty workdir and compilation cache, the sweep command took 8 min 57 s (both
models, the validation reference, 20 candidates, 4 tuned runs; peak RSS 3.0 GB); with :runlocal
2 min 11 s.

Variants (comma-separated after the colon):
  runlocal        tiny: 60 persons × 6 images at 16×16, a small CNN, 8 epochs (a smoke test: its
                  numbers mean little). experiments.benchmark with all 16 methods, on a 2-core
                  AMD EPYC (no AVX-512): 125 s from an empty compilation cache, 58 s with it
                  filled (BUILD_NOTES.md).
  protocol=paper  forget the first rows of train (like MUFAC's first 1,500) instead of whole persons.
  torchvision     torchvision's ResNet-18 (width 64, ImageNet stem, 8 classes) at 32×32, the shape
                  a PyTorch checkpoint imports into: add --config.model.checkpoint=original.pth
                  (or .npz / .safetensors; experiments.export_torch writes one from any stage) and
                  every method runs from the imported original. Measured with
                  ``runlocal,torchvision`` (60 persons at 16×16): experiments.train --stages=original
                  20 s, export_torch, then experiments.benchmark with the .pth checkpoint (import,
                  retrain, all 16 methods, evaluation) 9 min 50 s wall, peak RSS 4.5 GB, on a 2-core
                  Intel Xeon (AVX-512) partly shared with another job.
  population      runlocal plus three populations of 16 small CNNs (U-LiRA shadows over a pool of
                  forget and unseen persons, originals, retrained models): every row gains
                  identity-level U-LiRA (ulira_auc, ulira_acc, ulira_tpr_at_1pct_fpr), the NeurIPS
                  2023 forget score and final score (forget_score, neurips_score) beside ToW. It
                  trains 51 models and runs 32 unlearning runs per method; it prints the plan and
                  an estimate before the populations start. Measured on a 2-core AMD EPYC (no
                  AVX-512), empty compilation cache: 14 min 51 s wall for all 16 methods, peak
                  RSS 3.0 GB; README.md shows the rows.
  mufac_size      MUFAC's scale and recipe on synthetic faces, for timing on an accelerator: 2,228
                  persons × 6 images at 128×128 (10,026 train images; MUFAC has 10,025), the full
                  ResNet-18, lr 0.01 ÷10 at epochs 10 and 20, 30 epochs, batch 64. Not measured
                  end to end yet (no accelerator run so far).

Default: 200 persons × 6 images at 32×32 (900 train images of 150 persons; 22 persons, 132 images,
forgotten; 30 test and 20 unseen persons), ResNet-18 at width 16 with torchvision's stem, SGD
momentum 0.9, lr 0.05 ÷10 at epochs 20 and 25, 30 epochs, batch 32. It prints the benchmark table
(models as rows: accuracies, the reference attack, NoMUS, AUROC, KL to the retrained model, wall
seconds; README.md shows one). Measured on a 2-core AMD EPYC (no AVX-512), empty compilation
cache: 8 min 45 s wall for both models and all 16 methods (279 s of it compiling); 4 min 23 s
with the cache filled. That run printed test accuracy 0.450 and reference-attack accuracy 0.708 for
the original (chance 0.125 and 0.5), 0.383 and 0.567 for the retrained model; the attack accuracies move by
several points with the machine and the order of operations of the code version (BUILD_NOTES.md,
"Measured: the main job on the synthetic faces").
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  args = common.parse_args(arg)
  c = common.base_config()
  c.data.name = "synthetic"
  c.data.data_dir = ""
  c.data.num_identities = 200
  c.data.images_per_identity = 6
  c.data.image_size = 32
  c.data.task = "age"
  # Fewer unseen than forget images, so that the reference attack's truncation of forget to the
  # unseen count gives balanced classes (as MUFAC's 1,500 forget / 1,504 unseen nearly do).
  c.data.test_fraction = 0.15
  c.data.unseen_fraction = 0.1
  c.data.seed = 0
  c.data.forget = {"mode": "identity", "count": None, "fraction": 0.15, "identities": (),
                   "seed": 0, "paper_rows": None}
  c.model.name = "resnet18"
  c.model.width = 16
  c.train.epochs = 30
  c.train.batch_size = 32
  c.train.lr = 0.05
  c.train.lr_boundaries = (20, 25)
  c.unlearn.batch_size = 32
  if args.get("protocol") == "paper":
    c.data.forget.mode = "paper"
  if "mufac_size" in args:
    base = common.base_config()
    c.data.num_identities = 2228
    c.data.image_size = 128
    c.model.width = base.model.width
    c.train = base.train
    c.unlearn.batch_size = base.unlearn.batch_size
  if "runlocal" in args or "population" in args:
    c.data.num_identities = 60
    c.data.images_per_identity = 6
    c.data.image_size = 16
    c.model.name = "small_cnn"
    c.model.width = 16
    c.train.epochs = 8
    c.train.lr_boundaries = (6,)
  if "population" in args:
    c.population = {"members": 16, "seed": 1000, "variance": "global", "example_level": False,
                    "convolution": "auto", "member_shards": 1}
  if "torchvision" in args:
    # torchvision's ResNet-18 (width 64, ImageNet stem, 8 classes): the shape a PyTorch checkpoint
    # imports into (--config.model.checkpoint=...); after runlocal, which would pick a small CNN.
    c.model.name = "resnet18"
    c.model.width = 64
    c.model.stem = "imagenet"
  return c
