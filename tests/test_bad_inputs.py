"""Bad inputs are refused with an error that names them, before anything is written.

Covers what the reader and method tests do not: config values out of range and data requests
that cannot be served, through ``experiment.Experiment.create`` (what every experiment script calls
first), on a new workdir (nothing may be created in it) and on an existing one (nothing may
change); an unknown method name through ``experiments.benchmark``; a corrupt image in a MUFAC copy
through ``experiments.inspect_data``. BUILD_NOTES.md ("Reliability: processes, crashes, full
disks, bad inputs") summarises the rest.
"""

import hashlib
import os
import subprocess
import sys

import pytest

from mu_jax import experiment
from mu_jax.data import loader
from mu_jax.data.splits import DataError
from mu_jax.methods import registry
from tests import fixtures, helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**over):
  """The tiny synthetic config with ``section__key=value`` (``forget__key`` for data.forget)."""
  c = helpers.tiny_config()
  for key, value in over.items():
    section, name = key.split("__")
    target = {"top": c, "forget": c["data"]["forget"]}.get(section, c.get(section))
    target[name] = value
  return c


def _train_persons():
  return len(loader.load_dataset(_config()["data"]).manifest.identities("train"))


# (overrides, error type, a regular expression the message must match)
BAD = {
    "negative lr": (dict(train__lr=-0.1), ValueError, r"train\.lr must be positive, got -0\.1"),
    "zero epochs": (dict(train__epochs=0), ValueError, r"train\.epochs must be positive, got 0"),
    "batch size 0": (dict(train__batch_size=0), ValueError, r"train\.batch_size must be positive"),
    "batch size not a multiple of the devices": (
        dict(train__batch_size=6), ValueError,
        r"train\.batch_size=6 is not divisible by the 4 devices"),
    "negative lr of the retrained model only": (
        dict(retrain__lr=-1.0), ValueError, r"config\.retrain: train\.lr must be positive"),
    "misspelt train field": (
        dict(train__epohcs=3), ValueError, r"unknown train config fields \['epohcs'\]"),
    "eval batch size 0": (
        dict(train__eval_batch_size=0), ValueError, r"eval_batch_size must be positive"),
    "negative seed": (
        dict(top__seed=-1), ValueError, r"seed must be a non-negative integer, got -1"),
    "unknown model": (dict(model__name="resnet9"), ValueError, r"unknown model 'resnet9'"),
    "model width 0": (
        dict(model__width=0), ValueError, r"model\.width must be a positive integer, got 0"),
    "unlearn batch size 0": (
        dict(unlearn__batch_size=0), ValueError, r"unlearn\.batch_size .* got 0"),
    "empty forget set": (dict(forget__count=0), DataError, r"selects no identity \(count=0"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_config_is_refused_before_the_workdir_is_made(case, tmp_path):
  over, error, match = BAD[case]
  wd = tmp_path / "wd"
  with pytest.raises(error, match=match):
    experiment.Experiment.create(_config(**over), str(wd))
  assert not wd.exists(), sorted(os.listdir(wd))


def test_forgetting_every_training_person_is_refused(tmp_path):
  n = _train_persons()
  with pytest.raises(DataError, match=f"takes {n} of {n} train identities: nothing would be "
                     "retained"):
    experiment.Experiment.create(_config(forget__count=n), str(tmp_path / "wd"))
  assert not (tmp_path / "wd").exists()


def _snapshot(root):
  out = {}
  for folder, _, files in os.walk(root):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def test_a_refused_run_leaves_an_existing_workdir_byte_identical(tmp_path):
  wd = str(tmp_path / "wd")
  experiment.Experiment.create(_config(), wd)
  before = _snapshot(wd)
  assert set(before) == {"config.json", "manifest.json", "workdir.json"}
  for case in ("negative lr", "unknown model", "unlearn batch size 0", "empty forget set"):
    over, error, match = BAD[case]
    with pytest.raises(error, match=match):
      experiment.Experiment.create(_config(**over), wd, overwrite=True)  # not even with --overwrite
    assert _snapshot(wd) == before, case


def _run(args):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  res = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
  return res.returncode, res.stdout + res.stderr


def test_an_unknown_method_is_refused_before_anything_runs(tmp_path):
  with pytest.raises(KeyError, match="unknown method 'scurb'"):
    registry.parse_methods("finetune,scurb")
  wd = tmp_path / "wd"
  rc, out = _run(["experiments.benchmark", "--config=experiments/configs/synthetic.py:runlocal",
                  f"--workdir={wd}", "--methods=finetune,scurb"])
  assert rc == 2 and "unknown method 'scurb'; methods are: all, finetune" in out, out[-2000:]
  assert not wd.exists()


def test_a_corrupt_image_is_named_by_inspect_data(tmp_path):
  root = fixtures.write_mufac(tmp_path / "mufac")
  bad = root / "train_images" / "F0002_AGE_M_40_e2.jpg"
  bad.write_bytes(bad.read_bytes()[:40])  # a JPEG cut short, as an interrupted download leaves
  before = _snapshot(root)
  rc, out = _run(["experiments.inspect_data", "--config=experiments/configs/mufac.py",
                  f"--config.data.data_dir={root}", "--config.data.image_size=8",
                  "--config.data.forget.paper_rows=6"])
  assert rc != 0, out[-2000:]
  # The CSV, its line and the file: what someone fixing the copy needs.
  assert "custom_train_dataset.csv line 7: " in out, out[-2000:]
  assert "F0002_AGE_M_40_e2.jpg: unreadable" in out, out[-2000:]
  assert _snapshot(root) == before
