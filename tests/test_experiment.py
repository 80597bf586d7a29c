"""The engine: stage identities (same identity skipped, another one beside it, never overwritten),
hyperparameters from the command line, user methods, refusals before the workdir is touched."""

import json
import os

import jax
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

import mu_jax.methods
from mu_jax import checkpoints, experiment
from mu_jax.methods import registry
from mu_jax.pipelines import benchmark, retrieval
from tests import fault_worker

METHODS = "finetune,tests.user_methods:my_method"


def _cli_config(*overrides):
  """The config experiments.benchmark builds from fault_worker's flags plus ``overrides``."""
  argv = ["prog", *[f for f in fault_worker.cli_flags("unused") if not f.startswith("--workdir")],
          "--config.unlearn.hparams.finetune.epochs=1", *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "config", flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  return fv.config


def _digest(path):
  out = {}
  for d, _, files in os.walk(path):
    for f in files:
      with open(os.path.join(d, f), "rb") as fh:
        out[os.path.relpath(os.path.join(d, f), path)] = fh.read()
  return out


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("engine"))
  cfg = _cli_config("--config.unlearn.hparams.finetune.lr=0.002")
  out = benchmark.run_benchmark(cfg, wd, METHODS, progress=False, log=lambda _: None)
  return wd, out


def test_a_command_line_hyperparameter_reaches_the_method_and_results(bench):
  wd, out = bench
  rows = {r["model"]: r for r in json.load(open(os.path.join(wd, "results", "results.json")))["rows"]}
  assert list(rows) == ["original", "retrained", "finetune", "my_method"]
  ft = rows["finetune"]
  assert ft["hparams"] == {"lr": 0.002, "epochs": 1, "momentum": 0.0, "bn_mode": "eval"}
  assert ft["stage"].startswith("unlearned/finetune-")
  done = checkpoints.read_json(os.path.join(wd, ft["stage"], "done.json"))
  assert done["identity"]["hparams"]["lr"] == 0.002 and done["name"] == "finetune"
  assert '"lr": 0.002' in open(os.path.join(wd, ft["stage"], "done.json")).read()
  # One epoch at batch 8 over the 48 - forget retain images: what the hyperparameter asked for.
  metrics = [json.loads(l) for l in open(os.path.join(wd, ft["stage"], "metrics.jsonl"))]
  assert len(metrics) == 1


def test_a_user_factory_makes_its_own_row_and_stage(bench):
  wd, out = bench
  rows = {r["model"]: r for r in out["rows"]}
  mine = rows["my_method"]
  assert mine["stage"].startswith("unlearned/my_method-") and mine["hparams"] == {}
  assert mine["stage"] != rows["finetune"]["stage"]
  assert "| | original | retrained | finetune | my_method |" in out["table"]
  # finetune's defaults (lr 1e-3, 2 epochs) ran for my_method: another run than finetune's.
  assert mine["examples"] == 2 * rows["finetune"]["examples"]


def test_the_same_identity_is_skipped_with_identical_results(bench):
  wd, out = bench
  before = _digest(os.path.join(wd, "unlearned"))
  cfg = _cli_config("--config.unlearn.hparams.finetune.lr=0.002")
  again = benchmark.run_benchmark(cfg, wd, METHODS, progress=False, log=lambda _: None)
  assert _digest(os.path.join(wd, "unlearned")) == before
  strip = lambda rows: [{k: v for k, v in r.items()} for r in rows]
  assert strip(again["rows"]) == strip(out["rows"])


def test_another_hyperparameter_makes_a_stage_beside_the_first(bench):
  wd, _ = bench
  first = {s: _digest(os.path.join(wd, "unlearned", s)) for s in os.listdir(os.path.join(wd, "unlearned"))}
  cfg = _cli_config("--config.unlearn.hparams.finetune.lr=0.004")
  exp = experiment.Experiment.create(cfg, wd, methods="finetune")
  rec = exp.unlearn_stage(exp.selected[0])
  assert rec["hparams"]["lr"] == 0.004 and rec["stage"] not in first
  assert {s: _digest(os.path.join(wd, "unlearned", s)) for s in first} == first  # untouched
  out = benchmark.evaluate_workdir(cfg, wd)
  ft = [r for r in out["rows"] if r["model"] == "finetune"]
  assert sorted(r["hparams"]["lr"] for r in ft) == [0.002, 0.004]
  assert len({r["stage"] for r in ft}) == 2
  assert "finetune [" in out["table"]  # two finetune columns told apart by their stage


def test_unknown_or_mistyped_hyperparameters_are_refused_before_the_workdir_is_touched(tmp_path):
  wd = tmp_path / "wd"
  cfg = experiment.to_dict(_cli_config())
  cfg["unlearn"]["hparams"]["finetune"]["nope"] = 1
  with pytest.raises(registry.MethodError, match="'finetune' has no hyperparameter 'nope'"):
    experiment.Experiment.create(cfg, str(wd), methods="finetune")
  cfg = experiment.to_dict(_cli_config())
  cfg["unlearn"]["hparams"]["finetune"]["lr"] = "fast"
  with pytest.raises(registry.MethodError, match="'finetune': hyperparameter 'lr'"):
    experiment.Experiment.create(cfg, str(wd), methods="finetune")
  with pytest.raises(registry.MethodError, match="cannot import 'nothing'"):
    experiment.Experiment.create(_cli_config(), str(wd), methods="tests.user_methods:nothing")
  assert not wd.exists()
  # The locked config refuses a key no method has, as the command line gives it.
  with pytest.raises((flags.IllegalFlagValueError, AttributeError), match="nope"):
    _cli_config("--config.unlearn.hparams.scrub.nope=1")


def test_register_and_named_defaults_of_user_factories():
  from tests import user_methods
  mu_jax.methods.register("renamed_finetune", user_methods.renamed_finetune)
  try:
    [m] = mu_jax.methods.resolve("renamed_finetune", {"renamed_finetune": {"epochs": 3}})
    assert m.hparams == {"lr": 0.002, "epochs": 3}
    assert m.factory_path == "tests.user_methods:renamed_finetune"
    assert m.create().hparams["epochs"] == 3
    assert "renamed_finetune" in mu_jax.methods.names()
  finally:
    registry.METHODS._factories.pop("renamed_finetune")  # pylint: disable=protected-access
  with pytest.raises(registry.MethodError, match="already registered"):
    mu_jax.methods.register("finetune", user_methods.my_method)
  # A method named on the command line is not added to the registry ("all" stays the built-ins).
  mu_jax.methods.resolve(METHODS)
  assert "my_method" not in mu_jax.methods.names()


def test_a_workdir_of_the_earlier_layout_is_refused(tmp_path):
  wd = tmp_path / "old"
  wd.mkdir()
  (wd / "config.json").write_text(json.dumps(experiment.to_dict(_cli_config())))
  with pytest.raises(checkpoints.WorkdirError, match="earlier mu_jax"):
    experiment.Experiment.create(_cli_config(), str(wd))
  assert sorted(os.listdir(wd)) == ["config.json"]


def test_identity_hash_keeps_values_as_given():
  a = experiment.identity_hash({"hparams": {"lr": 0.1}})
  assert a == experiment.identity_hash({"hparams": {"lr": 0.1}})
  assert a != experiment.identity_hash({"hparams": {"lr": float(np.float32(0.1))}})
  assert a != experiment.identity_hash({"hparams": {"lr": 0.1, "epochs": 1}})


def _retrieval_config(**unlearn_hparams):
  from experiments.configs import retrieval as rconfig
  c = rconfig.get_config("runlocal")
  c.data.num_identities, c.data.images_per_identity, c.data.image_size = 12, 4, 8
  c.model.width, c.model.embed_dim = 4, 8
  c.train.epochs, c.train.batch_size, c.train.lr_boundaries = 2, 8, ()
  c.unlearn.batch_size = 8
  c.eval.plot = False
  c.unlearn.hparams.gradient_ascent.epochs = 1
  for k, v in unlearn_hparams.items():
    c.unlearn.hparams.gradient_ascent[k] = v
  return c


def test_retrieval_stages_follow_the_same_identity_rule(tmp_path):
  wd = str(tmp_path)
  out = retrieval.run_retrieval(_retrieval_config(), wd, "gradient_ascent", progress=False,
                                log=lambda _: None)
  [row] = [r for r in out["rows"] if r["model"] == "gradient_ascent"]
  first = _digest(os.path.join(wd, "retrieval", row["stage"]))
  again = retrieval.run_retrieval(_retrieval_config(), wd, "gradient_ascent", progress=False,
                                  log=lambda _: None)
  assert again["rows"] == out["rows"]
  other = retrieval.run_retrieval(_retrieval_config(lr=0.01), wd, "gradient_ascent",
                                  progress=False, log=lambda _: None)
  [row2] = [r for r in other["rows"] if r["model"] == "gradient_ascent"]
  assert row2["stage"] != row["stage"] and row2["hparams"]["lr"] == 0.01
  assert _digest(os.path.join(wd, "retrieval", row["stage"])) == first
  saved = json.load(open(os.path.join(wd, "results", "retrieval.json")))
  assert [r["model"] for r in saved["rows"]] == ["original", "retrained", "unretrievable",
                                                "gradient_ascent"]


def test_a_retrieval_method_killed_after_a_checkpoint_resumes_to_the_uninterrupted_model(
    tmp_path, monkeypatch):
  import shutil
  cfg = _retrieval_config(epochs=2)
  wd, ref_wd = str(tmp_path / "wd"), str(tmp_path / "ref")
  exp = experiment.Experiment.create(cfg, wd, task="retrieval", methods="gradient_ascent")
  for stage in experiment.TRAINED:
    exp.train_stage(stage, progress=False)
  shutil.copytree(os.path.join(wd, "retrieval"), os.path.join(ref_wd, "retrieval"))
  real_save = checkpoints.Checkpointer.save

  def killed_after_the_first(self, step, *args, **kwargs):
    real_save(self, step, *args, **kwargs)
    if "unlearned" in self.directory and step == 1:
      raise KeyboardInterrupt("killed")

  monkeypatch.setattr(checkpoints.Checkpointer, "save", killed_after_the_first)
  with pytest.raises(KeyboardInterrupt):
    retrieval.run_retrieval(cfg, wd, "gradient_ascent", progress=False, log=lambda _: None)
  monkeypatch.setattr(checkpoints.Checkpointer, "save", real_save)
  resumed = retrieval.run_retrieval(cfg, wd, "gradient_ascent", progress=False, log=lambda _: None)
  whole = retrieval.run_retrieval(cfg, ref_wd, "gradient_ascent", progress=False, log=lambda _: None)
  st = exp.method_stage(exp.selected[0])
  rows = [json.loads(l) for l in open(os.path.join(st.dir, "metrics.jsonl"))]
  assert [r["epoch_index"] for r in rows] == [1, 2]
  ref = experiment.Experiment.create(cfg, ref_wd, task="retrieval")
  a, b = exp.load_state(st), ref.load_state(ref.method_stage(exp.selected[0]))
  for x, y in zip(jax.tree.leaves((a.params, a.batch_stats)), jax.tree.leaves((b.params, b.batch_stats))):
    np.testing.assert_array_equal(x, y)  # the unlearned model, bit for bit
  keep = lambda rows: [{k: v for k, v in r.items() if k not in ("wall_s", "cost_vs_retrain")}
                       for r in rows]
  assert keep(resumed["rows"]) == keep(whole["rows"])


def test_an_imported_original_is_a_stage_named_by_its_checkpoint(tmp_path):
  from mu_jax import models
  cfg = experiment.to_dict(_cli_config())
  cfg["model"].update(name="resnet18", width=64, stem="imagenet")
  net = models.create_model("resnet18", 8, width=64, stem="imagenet")
  variables = net.init(jax.random.key(3), np.zeros((1, 8, 8, 3), np.float32), train=False)
  path = str(tmp_path / "original.npz")
  np.savez(path, **models.to_torch(variables))
  cfg["model"]["checkpoint"] = path
  wd = str(tmp_path / "wd")
  exp = experiment.Experiment.create(cfg, wd)
  rec = exp.train_stage("original", progress=False)
  assert rec["examples"] == 0 and rec["imported_from"] == path
  st = exp.trained_stage("original")
  assert st.identity["imported"]["sha256"] == rec["checkpoint_sha256"]
  assert "train" not in st.identity and rec["preprocessing"]["resolution"] == 8
  state = exp.load_state("original")
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(variables["params"])):
    np.testing.assert_array_equal(a, b)
  assert exp.train_stage("original") == rec  # skipped: same file, same identity
  # Exported back (what experiments.export_torch writes): the same state_dict, bit for bit.
  out = models.save_torch_checkpoint(str(tmp_path / "back.npz"),
                                     {"params": state.params, "batch_stats": state.batch_stats})
  back, sent = models.load_torch_checkpoint(out), models.load_torch_checkpoint(path)
  assert back.keys() == sent.keys()
  for k in sent:
    np.testing.assert_array_equal(back[k], sent[k])
  # Another checkpoint is another original; a width the checkpoint cannot fill is refused.
  other = dict(variables, params=jax.tree.map(lambda x: x + 1, variables["params"]))
  np.savez(path, **models.to_torch(other))
  assert experiment.Experiment.create(cfg, wd).trained_stage("original").rel != st.rel
  cfg["model"]["width"] = 32
  with pytest.raises(checkpoints.CheckpointError, match="torchvision's ResNet-18"):
    experiment.Experiment.create(cfg, str(tmp_path / "wd2")).train_stage("original")
