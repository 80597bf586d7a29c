"""Populations in the benchmark: the pool's halves, the columns on every row, resume, bad settings."""

import os

import numpy as np
import pytest

from mu_jax import checkpoints
from mu_jax.data.splits import Examples
from mu_jax.pipelines import benchmark
from mu_jax.pipelines import population
from tests import helpers
from tests.helpers import lax_convolutions  # noqa: F401  (autouse fixture)

MEMBERS = 6
COLUMNS = ("ulira_auc", "ulira_acc", "ulira_tpr_at_1pct_fpr", "forget_score", "neurips_score",
           "tow")


def _config(**population):
  c = helpers.tiny_config({"data.num_identities": 24})
  c["population"] = {"members": MEMBERS, **population}
  return c


def _examples(persons, per, start=0):
  n = persons * per
  return Examples(np.zeros((n, 2, 2, 3), np.uint8), np.zeros(n, np.int32),
                  np.repeat([f"P{start + p:03d}" for p in range(persons)], per),
                  np.array([f"e{start * per + i}" for i in range(n)]))


def test_pool_halves_are_balanced_and_member_rows_are_its_persons_images():
  pool = population.make_pool(_examples(3, 4), _examples(4, 2, start=10), members=8, seed=0)
  assert len(pool.examples) == 3 * 4 + 4 * 2 and len(pool.names) == 7
  np.testing.assert_array_equal(pool.included.sum(axis=0), np.full(7, 4))
  for k in range(8):
    rows = pool.member_rows(k)
    persons = {pool.names[p] for p in np.flatnonzero(pool.included[k])}
    assert set(pool.examples.identities[rows]) == persons
    assert len(rows) == sum(np.sum(pool.examples.identities == p) for p in persons)
  # Another seed draws other halves.
  other = population.make_pool(_examples(3, 4), _examples(4, 2, start=10), members=8, seed=1)
  assert not np.array_equal(pool.included, other.included)


@pytest.mark.parametrize("section, message", [
    ({"members": 4}, "members must be an integer >= 6"),
    ({"members": 8, "shadows": 3}, "unknown keys ['shadows']"),
    ({"members": 8, "variance": "pooled"}, "variance must be"),
    ({"members": 8, "convolution": "fft"}, "convolution must be one of")])
def test_bad_population_settings_are_refused_before_any_work(tmp_path, section, message):
  c = helpers.tiny_config()
  c["population"] = section
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
    benchmark.run_benchmark(c, str(tmp_path / "w"), ["finetune"], progress=False, log=lambda s: None)
  assert not os.path.exists(tmp_path / "w")


def test_a_person_cut_between_forget_and_retain_is_refused_before_any_work(tmp_path):
  # The first 10 train rows of 4-image persons: the third person is cut in two.
  c = helpers.tiny_config({"data.forget.mode": "paper", "data.forget.paper_rows": 10})
  c["population"] = {"members": 8}
  with pytest.raises(ValueError, match=r"1 have some \(\w+\): forget whole persons"):
    benchmark.run_benchmark(c, str(tmp_path / "w"), ["finetune"], progress=False, log=lambda s: None)
  assert not os.path.exists(tmp_path / "w")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("pop"))
  lines = []
  out = benchmark.run_benchmark(_config(), wd, ["finetune"], progress=False, log=lines.append)
  return wd, out, lines


def test_every_row_gains_the_population_columns(finished):
  wd, out, lines = finished
  rows = {r["model"]: r for r in out["rows"]}
  assert set(rows) == {"original", "retrained", "finetune"}
  for name, r in rows.items():
    for key in COLUMNS:
      assert key in r, (name, key)
    for key in ("ulira_auc", "ulira_acc", "forget_score"):
      assert 0.0 <= r[key] <= 1.0, (name, key, r[key])
    assert r["population_members"] == MEMBERS
  assert any(line.startswith("populations: 3 of 3 to train (18 models") for line in lines), lines
  # The plan comes before the populations train.
  plan = next(i for i, line in enumerate(lines) if line.startswith("populations:"))
  assert plan < next(i for i, line in enumerate(lines) if "population ulira" in line)
  # Three trained populations and one method run over two of them, each a finished stage.
  trained = [s.name for s in _stages(wd, population.GROUP)]
  assert sorted(trained) == ["original", "retrained", "ulira"]
  method_stage = _stages(wd, os.path.join(population.GROUP, "unlearned"))
  assert [s.name for s in method_stage] == ["finetune"]
  files = sorted(os.listdir(os.path.join(method_stage[0].dir, "outputs")))
  assert files == sorted([f"ulira_{k}.npz" for k in range(MEMBERS)]
                         + [f"original_{k}.npz" for k in range(MEMBERS)])
  with open(os.path.join(wd, "results", "results.json")) as f:
    assert '"ulira_auc"' in f.read()
  assert "U-LiRA AUROC (persons)" in out["table"]


def _stages(wd, group):
  from mu_jax import experiment  # pylint: disable=import-outside-toplevel
  exp = experiment.Experiment.create(_config(), wd)
  return exp.workdir.finished_stages(group)


def test_members_of_a_population_differ_and_respect_their_masks(finished):
  wd, _, _ = finished
  from mu_jax import experiment  # pylint: disable=import-outside-toplevel
  exp = experiment.Experiment.create(_config(), wd)
  runner = population.Runner(exp, population.Settings.from_config(exp.config), progress=False,
                             log=lambda s: None)
  ulira = runner.population_stage("ulira")
  rows = checkpoints.read_json(os.path.join(ulira.dir, "population.json"))
  # Each member trained on the retain images plus the images of its pool half.
  retain = len(exp.split("retain"))
  assert rows["examples"] == [retain + len(runner.pool.member_rows(k)) for k in range(MEMBERS)]
  logits = runner.outputs("ulira")["pool"]["logits"]
  assert logits.shape[0] == MEMBERS
  assert np.max(np.abs(logits[0] - logits[1])) > 1e-3  # different seeds and data: different models


def test_a_killed_method_run_resumes_at_the_missing_member(finished, tmp_path):
  wd, out, _ = finished
  st = _stages(wd, os.path.join(population.GROUP, "unlearned"))[0]
  outputs = os.path.join(st.dir, "outputs")
  kept = {name: os.path.getmtime(os.path.join(outputs, name)) for name in os.listdir(outputs)}
  # As if the run had been killed after three members of the original population.
  os.remove(st.done_path)
  for k in range(3, MEMBERS):
    os.remove(os.path.join(outputs, f"original_{k}.npz"))
  lines = []
  again = benchmark.run_benchmark(_config(), wd, ["finetune"], progress=False, log=lines.append)
  assert any(line.startswith("populations: 0 of 3 to train") for line in lines), lines
  for name, mtime in kept.items():
    redone = name.startswith("original_") and int(name.split("_")[1][:-4]) >= 3
    assert (os.path.getmtime(os.path.join(outputs, name)) != mtime) == redone, name
  before = {r["model"]: r for r in out["rows"]}
  for r in again["rows"]:
    for key in COLUMNS:
      np.testing.assert_allclose(r[key], before[r["model"]][key], rtol=1e-6, err_msg=key)


def test_members_whose_batches_differ_run_one_at_a_time(finished, tmp_path):
  """A batch larger than every split: two U-LiRA members' whole-split forget batches differ in
  shape, so SSD runs them one at a time, and they are evaluated together."""
  from mu_jax import experiment  # pylint: disable=import-outside-toplevel
  from mu_jax.methods import driver  # pylint: disable=import-outside-toplevel
  from mu_jax.methods import registry  # pylint: disable=import-outside-toplevel
  wd, _, _ = finished
  exp = experiment.Experiment.create(_config(), wd)
  lines = []
  runner = population.Runner(exp, population.Settings.from_config(exp.config), progress=False,
                             log=lines.append)
  sizes = [len(runner.pool.member_rows(k)) for k in range(MEMBERS)]
  pair = [0, next(k for k in range(MEMBERS) if sizes[k] != sizes[0])]
  [method] = registry.resolve("ssd")
  cfg = driver.RunConfig(batch_size=256, seed=0, task=runner.task, log_splits=())
  runner._unlearn_members(method, "ulira", runner.states("ulira"), pair, cfg, str(tmp_path))
  assert any("run the members one at a time" in line for line in lines), lines
  for k in pair:
    out = checkpoints.load_outputs(str(tmp_path), f"ulira_{k}")
    assert np.all(np.isfinite(out["pool_logits"]))
