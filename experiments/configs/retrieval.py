"""Face-retrieval identity unlearning: embedding models with a margin head, six methods, one table.

Run:
  python -m experiments.retrieval --config=experiments/configs/retrieval.py:runlocal --workdir=/tmp/mu_ret
  python -m experiments.retrieval --config=experiments/configs/retrieval.py --workdir=/tmp/mu_ret_full
  python -m experiments.retrieval --config=experiments/configs/retrieval.py:data=folder,runlocal \
      --config.data.data_dir=/path/to/one_folder_per_person --workdir=/tmp/mu_ret_faces

Variants (comma-separated after the colon):
  runlocal     40 synthetic persons × 10 images at 32×32 (28 train persons, 8 forgotten), the small
               CNN trunk (width 16, 128-d embedding), 80 epochs per model. Measured: 4.7 min wall,
               2.7 min CPU for both models and all six methods on the 2-core AMD EPYC (Zen 5)
               development machine, shared with other jobs (about a third of it compiling); a
               second run with the same flags only rebuilds the table.
  data=folder  one folder per person (VGGFace2/LFW/ORL layout) from --config.data.data_dir, at
               ``image_size`` 32, 20 % of the train persons forgotten, training with the reference
               augmentation (real photos lack the synthetic nuisances).
  head=arcface ArcFace (m = 0.5) instead of CosFace (m = 0.35).

Default: 60 synthetic persons × 10 images (42 train persons, 8 forgotten), ResNet-18 trunk at width
16 with the CIFAR stem and a 512-d embedding, CosFace s = 16, 80 epochs (÷10 at 60). A train step
takes about 0.3 s on the same 2 CPU cores (30 s to compile), so expect 20-30 minutes there for
everything (an estimate from step times: the default has not been run end to end).

Data: "synthetic_identities" (:mod:`mu_jax.retrieval.data`): per-image background, colour cast,
geometry, age and shift, so that a person is recognisable only to a model that trained on them
(raw-pixel mAP 0.08-0.15); the plain synthetic faces are retrievable from pixels and make every model,
retrained or not, find every person.

It prints the results table (also in WORKDIR/results/retrieval.md): forget/retain mAP and Rank-1,
compactness, forget identifiability, retain TAR@FAR=1e-3, held-out mAP and cost, with the original
and retrained models as reference rows. Expect the original to retrieve forget persons as well as
retained ones, the retrained model to fail on them (close to its held-out level), and ``dispersion``
to bring forget Rank-1 near the retrained model while keeping retain mAP within a few points.
runlocal printed: original forget/retain mAP 1.00/1.00; retrained forget mAP 0.39, R@1 0.62;
dispersion forget mAP 0.17, R@1 0.38, retain mAP 0.98 (8 forget queries, so R@1 moves in eighths).
"""

import ml_collections

from experiments.configs import common
from mu_jax.retrieval import methods


def get_config(arg: str | None = None):
  args = common.parse_args(arg)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict({
      "name": "synthetic_identities", "data_dir": "", "num_identities": 60,
      "images_per_identity": 10, "image_size": 32, "seed": 0, "nuisance": 0.6,
      "texture_gain": 2.0, "max_shift": 2, "probe_fraction": 0.3, "probe_seed": 0,
      "forget": {"mode": "identity", "count": None, "fraction": 0.2, "identities": (), "seed": 0,
                 "paper_rows": None}})
  c.model = ml_collections.ConfigDict({
      "trunk": "resnet18", "width": 16, "stem": "cifar", "dtype": "float32", "embed_dim": 512,
      "head": "cosface", "scale": 16.0, "margin": 0.35})
  c.train = ml_collections.ConfigDict({
      "epochs": 80, "batch_size": 32, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
      "lr_boundaries": (60,), "lr_decay": 0.1, "augment": False, "eval_batch_size": 256})
  c.retrain = ml_collections.ConfigDict()
  # Each method's hyperparameters at their factory defaults, settable from the command line
  # (--config.unlearn.hparams.dispersion.lr=0.05) and recorded with the results.
  c.unlearn = ml_collections.ConfigDict({"batch_size": 32, "seed": 0, "methods": "all",
                                         "hparams": common.method_hparams(methods.METHODS)})
  c.eval = ml_collections.ConfigDict({"seed": 0, "plot": True})
  if args.get("head") == "arcface":
    c.model.head, c.model.margin = "arcface", 0.5
  if args.get("data") == "folder":
    c.data = ml_collections.ConfigDict({
        "name": "identity_folder", "data_dir": "", "image_size": 32, "probe_fraction": 0.3,
        "probe_seed": 0,
        "forget": {"mode": "identity", "count": None, "fraction": 0.2, "identities": (), "seed": 0,
                   "paper_rows": None}})
    c.train.augment = True
    for name in methods.names():
      c.unlearn.hparams[name].augment = True
  if "generalise" in args and c.data.name == "synthetic_identities":
    # Enough persons that the trunk learns what makes any face recognisable, not just these ones.
    c.data.num_identities = 400
    c.data.forget.count = 10
    c.model.trunk, c.model.width, c.model.stem, c.model.embed_dim = "small_cnn", 16, "imagenet", 128
    c.train.epochs, c.train.lr_boundaries = 30, (22,)
  if "runlocal" in args:
    if c.data.name == "synthetic_identities":
      # 28 train persons, 8 of them forgotten: enough forget queries for Rank-1 to mean something.
      c.data.num_identities = 40
      c.data.forget.fraction = 0.3
    c.model.trunk, c.model.width, c.model.stem, c.model.embed_dim = "small_cnn", 16, "imagenet", 128
  return c
