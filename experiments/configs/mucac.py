"""MUCAC: CelebA-HQ attributes (Male, Smiling, Young), identity-range splits 190/1250/4855.

Run (DIR holds CelebA-HQ-identity.txt, CelebA-HQ-attribute.txt and CelebA-HQ-img/):
  python -m experiments.benchmark --config=experiments/configs/mucac.py --config.data.data_dir=DIR \
      --workdir=/tmp/mu_mucac
  python -m experiments.benchmark --config=experiments/configs/mucac.py:task=binary:Male ...

Variants: ``task=multilabel`` (default; 3 sigmoid logits, BCE, SGD lr 0.01 without momentum,
8 epochs, constant lr) or ``task=binary:Male|Smiling|Young`` (2-way CE, SGD lr 0.01 momentum 0.9,
10 epochs), as the reference notebooks (docs/datasets.md#training-recipes). ``runlocal``: 2 epochs
at 32×32 with a small CNN.
Counts on the full 30k copy: train 25,933, test 2,065, forget 10,183, retain 15,750, unseen 2,002.
The reference's multi-label original reaches mean attribute accuracy 0.8852. The benchmark prints
the result table (docs/metrics.md). Cost: not measured; no MUCAC run has been timed yet.
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  args = common.parse_args(arg)
  c = common.base_config()
  c.data.name = "mucac"
  c.data.data_dir = ""
  c.data.image_size = 128
  c.data.task = args.get("task", "multilabel")
  c.data.forget = {"mode": "range", "count": None, "fraction": None, "identities": (), "seed": 0,
                   "paper_rows": None}
  c.train.lr_boundaries = ()
  # MUCAC's unlearning notebooks load a fresh model (train mode), unlike MUFAC's fine-tuning and
  # UNSIR runs, which evaluate the model first and never switch back (docs/methods.md).
  c.unlearn.hparams.finetune.bn_mode = "train"
  c.unlearn.hparams.unsir.train_mode = True
  if c.data.task == "multilabel":
    c.train.momentum = 0.0
    c.train.epochs = 8
    c.retrain = {"epochs": 7}
    # The multi-label NegGrad notebook loops over the forget loader alone (159 steps per epoch) and
    # its Advanced NegGrad over zip(forget, retain), stopping at the shorter
    # [ndb796/MachineUnlearning@7275986, 02_MUCAC multi-label NegGrad notebook, cells 37 and 41].
    c.unlearn.hparams.neggrad.stream = "forget"
    c.unlearn.hparams.neggrad_plus.stream = "zip"
  else:
    c.train.epochs = 10
    c.retrain = {"lr": 0.001, "momentum": 0.0}
    # SCRUB on the binary tasks: lr 1e-4 for one epoch (the binary MUCAC SCRUB notebooks).
    c.unlearn.hparams.scrub.lr = 1e-4
    c.unlearn.hparams.scrub.epochs = 1
  if "runlocal" in args:
    c.data.image_size = 32
    c.model.name = "small_cnn"
    c.model.width = 8
    c.train.epochs = 2
    c.retrain = {k: v for k, v in c.retrain.items() if k != "epochs"}
  return c
