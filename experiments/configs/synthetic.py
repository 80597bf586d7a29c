"""The embedded synthetic faces: the default benchmark, offline, on a laptop.

Run:
  python -m experiments.benchmark --config=experiments/configs/synthetic.py --workdir=/tmp/mu_synth
  python -m experiments.train --config=experiments/configs/synthetic.py:runlocal --workdir=/tmp/mu_rl

Variants (comma-separated after the colon):
  runlocal        tiny: 40 persons × 8 images at 16×16, a small CNN, 4 epochs; about a minute on
                  2 CPU cores for original + retrained.
  protocol=paper  forget the first rows of train (like MUFAC's first 1,500) instead of whole persons.

Default: 120 persons × 10 images at 32×32 (840 train images, 130 of 13 persons forgotten), ResNet-18
at width 16 with torchvision's stem, 20 epochs with ÷10 at 10 and 15. It prints the benchmark table
(see README.md for a real one).
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  args = common.parse_args(arg)
  c = common.base_config()
  c.data.name = "synthetic"
  c.data.data_dir = ""
  c.data.num_identities = 120
  c.data.images_per_identity = 10
  c.data.image_size = 32
  c.data.task = "age"
  c.data.seed = 0
  c.data.forget = {"mode": "identity", "count": None, "fraction": 0.15, "identities": (),
                   "seed": 0, "paper_rows": None}
  c.model.name = "resnet18"
  c.model.width = 16
  c.train.epochs = 20
  c.train.lr_boundaries = (10, 15)
  if args.get("protocol") == "paper":
    c.data.forget.mode = "paper"
  if "runlocal" in args:
    c.data.num_identities = 40
    c.data.images_per_identity = 8
    c.data.image_size = 16
    c.model.name = "small_cnn"
    c.model.width = 8
    c.train.epochs = 4
    c.train.batch_size = 32
    c.train.lr_boundaries = (3,)
    c.unlearn.batch_size = 32
  return c
