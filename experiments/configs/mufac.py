"""MUFAC: 8-class age classification on Korean family faces (Choi & Na 2023), 128×128.

Run (after downloading custom_korean_family_dataset_resolution_128.zip and unzipping it):
  python -m experiments.inspect_data --config=experiments/configs/mufac.py --config.data.data_dir=DIR
  python -m experiments.benchmark --config=experiments/configs/mufac.py --config.data.data_dir=DIR \
      --workdir=/tmp/mu_mufac

Variants: ``protocol=paper`` (default; forget = the first 1,500 train rows, as the reference code,
which shares the person F0046_D with retain: reported, not hidden) or ``protocol=identity`` (whole
persons, 15% of train persons, seeded). ``runlocal``: 2 epochs at 32×32, small CNN (a smoke test).
``population`` (for a GPU; implies ``protocol=identity``, as U-LiRA's pool persons must have no
retain images): three populations of 16 ResNet-18s on the full recipe beside the single models,
for identity-level U-LiRA and the NeurIPS 2023 forget score on every row (docs/metrics.md). It
trains 48 models (16 U-LiRA shadows on retain plus half the forget and unseen persons, 16
originals, 16 retrained), each 30 epochs over 8,000-10,000 images, about 48 times the original
model's training, and runs 32 unlearning runs per method; it prints this plan with an estimate
from the single models' times before the populations start. Its wall time has not been measured on
any machine; on several GPUs, ``--config.population.member_shards`` splits the members over them.

The recipe is the reference's (docs/datasets.md#training-recipes): ResNet-18 from scratch, SGD
momentum 0.9, lr 0.01 ÷10 at epochs 10 and 20, 30 epochs, batch 64, the reference augmentation.
inspect_data prints 10,025 / 1,539 / 1,504 train / test / unseen images and the leak check
(docs/datasets.md, "Known quirks of the real data"). The benchmark prints the result table
(docs/metrics.md); the reference's published original model reaches test accuracy 0.5952. Cost: not
measured; no end-to-end MUFAC run has been timed on any machine yet.

Reference behaviours it reproduces (ndb796/MachineUnlearning; docs/methods.md has the sources):
  * the reference attack (logistic regression on per-example losses, forget vs unseen, the forget
    set truncated to the unseen count) and NoMUS exactly;
  * fine-tuning and UNSIR with BatchNorm in eval mode (the notebooks call ``model.eval()`` before
    their loops and never switch back); CF-k, NegGrad, NegGrad+ and SCRUB in train mode;
  * torch's BatchNorm running-variance update (unbiased batch variance) in ResNet-18;
  * partial batches as each loop runs them: fine-tuning, CF-k, the UNSIR repair and both SCRUB
    passes keep the last partial batch (134 retain steps per epoch, 24 forget steps with 28 images
    in the last); NegGrad and NegGrad+ skip pairs that are not full (128 then 127 steps);
  * the training augmentation as torchvision computes it on PIL images (nearest-neighbour affine,
    uint8 colour jitter in random order);
  * the paper protocol's forget set (the first 1,500 train rows, person F0046_D cut in two).
Both protocols run the same algorithms. Not reproduced: the original model's training drops its
last partial batch (the reference keeps it: 157 steps per epoch, the last with 41 images).
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  args = common.parse_args(arg)
  c = common.base_config()
  c.data.name = "mufac"
  c.data.data_dir = ""
  c.data.image_size = 128
  c.data.task = "age"
  protocol = args.get("protocol", "identity" if "population" in args else "paper")
  if protocol not in ("paper", "identity"):
    raise ValueError(f"mufac protocol must be 'paper' or 'identity', got {protocol!r}")
  if "population" in args and protocol != "identity":
    raise ValueError("mufac population needs protocol=identity: U-LiRA's pool persons (forget and "
                     "unseen) must have no retain images, and the paper protocol cuts one in two")
  c.data.forget = {"mode": protocol, "count": None, "fraction": 0.15 if protocol == "identity" else None,
                   "identities": (), "seed": 0, "paper_rows": 1500}
  if "runlocal" in args:
    c.data.image_size = 32
    c.model.name = "small_cnn"
    c.model.width = 8
    c.train.epochs = 2
  if "population" in args:
    c.population = {"members": 16, "seed": 1000, "variance": "global", "example_level": False,
                    "convolution": "auto", "member_shards": 1}
  return c
