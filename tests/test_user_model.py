"""A user's own flax module that meets the model contract runs through the whole benchmark."""

import json
import os

import numpy as np
import pytest

from mu_jax import experiment
from mu_jax.models import create_model
from mu_jax.pipelines import benchmark
from tests import helpers


def test_a_user_model_named_on_the_command_line_runs_through_the_benchmark(tmp_path):
  cfg = helpers.tiny_config({"model.name": "tests.user_models:build",
                             "unlearn.hparams.cf_k.k": 1, "unlearn.hparams.finetune.epochs": 1,
                             "unlearn.hparams.cf_k.epochs": 1})
  wd = str(tmp_path)
  out = benchmark.run_benchmark(cfg, wd, "finetune,cf_k", progress=False, log=lambda _: None)
  rows = json.load(open(os.path.join(wd, "results", "results.json")))["rows"]
  assert [r["model"] for r in rows] == ["original", "retrained", "finetune", "cf_k"]
  assert all(0 <= r["test_acc"] <= 1 for r in rows) and "cf_k" in out["table"]
  # CF-1 trained only the last block (fc): the user model's first block is the original's.
  exp = experiment.Experiment.create(cfg, wd)
  original = exp.load_state("original")
  cf = exp.load_state(exp.stage_named(rows[3]["stage"]))
  np.testing.assert_array_equal(cf.params["conv1"]["kernel"], original.params["conv1"]["kernel"])
  assert not np.array_equal(cf.params["fc"]["kernel"], original.params["fc"]["kernel"])


def test_a_module_missing_part_of_the_contract_is_refused_naming_it():
  with pytest.raises(ValueError, match=r"lacks \['mask'\]"):
    create_model("tests.user_models:build_without_mask", 8)
  with pytest.raises(ValueError, match="cannot import 'nothing'"):
    create_model("tests.user_models:nothing", 8)
