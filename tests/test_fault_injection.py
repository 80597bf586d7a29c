"""Crashes and full disks: a killed run, started again with the same command, ends bit-exact.

The kill chain runs training and an unlearning method (EU-k: SGD momentum, re-initialised layers
drawn from the run's key, augmentation, ten epochs) in five processes on one workdir. Four are
SIGKILLed: ``experiments.train`` at a seeded random moment after a checkpoint, the worker inside a
training checkpoint write, inside an unlearning checkpoint write (a seeded epoch and stage of the
write), and between the unlearned model's ``final/0`` and its ``done.json``; ``experiments.unlearn``
then finishes the work. Everything left must equal an uninterrupted run (another process), bit for
bit: checkpoints with their optimizer state, the unlearned model, its outputs, metrics.jsonl rows,
and an audit log holding one request that ends in exactly one complete line. ``MU_FAULT_SEED``
draws other kill moments.

The disk-full tests fill a small tmpfs (skipped where none can be mounted) or simulate ENOSPC in
orbax's write, and check that the error says so and where, that the previous checkpoint survives,
and that the same call resumes (to the uninterrupted result) once there is room.
"""

import errno
import glob
import json
import os
import random
import subprocess
import sys
import time

import chex
import jax
import orbax.checkpoint as ocp
import pytest
from orbax.checkpoint._src.path import atomicity

from mu_jax import audit, checkpoints, experiment
from tests import fault_worker, unlink_kill_worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = int(os.environ.get("MU_FAULT_SEED", "20261122"))
STAGE = f"unlearned/{fault_worker.METHOD}-*"
ORIGINAL = "original-*"
TMP_GLOB = "*.orbax-checkpoint-tmp*"


def _at(root, stage, *rest):
  """``root/<the stage matching the pattern>/rest``; the pattern itself while no stage matches yet."""
  found = glob.glob(os.path.join(root, stage))
  assert len(found) <= 1, found
  return os.path.join(found[0] if found else os.path.join(root, stage), *rest)


def _env(cache_dir):
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  # Compile as this process does (tests/conftest.py): in-process runs are compared with theirs.
  fast = jax.config.read("jax_disable_most_optimizations")
  env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = str(int(fast))
  # Later runs load what the first one compiled: the processes pay the compilation once.
  env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  return env


def _launch(args, env, log, kill_when=None, delay=0.0):
  """Runs ``args``; once ``kill_when()`` holds, waits ``delay`` s and SIGKILLs it.

  Returns:
    (return code, the tail of its output).
  """
  with open(log, "wb") as out:
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    if kill_when is not None:
      while proc.poll() is None and not kill_when():
        time.sleep(0.002)
      time.sleep(delay)
      proc.kill()
    proc.wait(timeout=300)
  with open(log, "rb") as f:
    return proc.returncode, f.read()[-3000:].decode(errors="replace")


def _complete_steps(directory):
  """The steps orbax finished writing (a step being written has a temporary name)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _tmp_dirs(root):
  return glob.glob(os.path.join(root, "**", TMP_GLOB), recursive=True)


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
  """(base folder, environment) shared by the processes of this module."""
  base = tmp_path_factory.mktemp("faults")
  return base, _env(str(base / "jax_cache"))


@pytest.fixture(scope="module")
def reference(processes):
  """The uninterrupted run (the first process: it fills the compilation cache)."""
  base, env = processes
  wd = str(base / "reference")
  rc, tail = _launch([sys.executable, "-m", "tests.fault_worker", wd], env, base / "reference.log")
  assert rc == 0, tail
  return wd


@pytest.fixture(scope="module")
def chain(processes, reference):
  """Runs the kill chain on one workdir; returns it and what was on disk after each kill."""
  base, env = processes
  wd = str(base / "chain")
  rng = random.Random(SEED)
  worker = [sys.executable, "-m", "tests.fault_worker", wd]
  script = lambda name, *extra: [sys.executable, "-m", f"experiments.{name}",
                                 *fault_worker.cli_flags(wd), *extra]
  k_train, delay = rng.randint(1, 2), rng.uniform(0, 0.03)
  # Checkpoint 1 at least is complete (the resume restores one), and epochs are left after it.
  when, k_method = rng.choice(["create", "finalize"]), rng.randint(2, 9)
  runs = [
      # (what, command, kill_when, delay); the last run is not killed.
      (f"experiments.train, killed {delay:.3f} s after checkpoint {k_train} was complete",
       script("train", "--stages=original"),
       lambda: len(_complete_steps(_at(wd, ORIGINAL, "checkpoints"))) >= k_train, delay),
      ("killed inside a training checkpoint write, after its files, before its rename",
       worker + [f"finalize:{ORIGINAL}/checkpoints"], None, 0.0),
      (f"killed inside unlearning checkpoint write {k_method} ({when})",
       worker + [f"{when}:{STAGE}/checkpoints:{k_method}"], None, 0.0),
      ("killed once the unlearned model's final/0 was saved, before its done.json",
       worker, lambda: os.path.isdir(_at(wd, STAGE, "final", "0")), 0.0),
      ("experiments.unlearn, to the end",
       script("unlearn", f"--method={fault_worker.METHOD}"), None, 0.0),
  ]
  seen = []
  for i, (what, args, kill_when, delay) in enumerate(runs):
    rc, tail = _launch(args, env, base / f"chain{i}.log", kill_when, delay)
    want = 0 if i == len(runs) - 1 else -9
    assert rc == want, f"run {i} ({what}; MU_FAULT_SEED={SEED}) ended with {rc}, not {want}\n{tail}"
    seen.append({"what": what, "tmp_dirs": _tmp_dirs(wd),
                 "original_steps": _complete_steps(_at(wd, ORIGINAL, "checkpoints")),
                 "method_steps": _complete_steps(_at(wd, STAGE, "checkpoints"))})
  return wd, seen


def _saved(directory):
  """The latest checkpoint's arrays as orbax wrote them (read without a model: nothing compiles)."""
  step = _complete_steps(directory)[-1]
  return ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), "default"))


def _metric_rows(path):
  """The rows of a metrics.jsonl without their timings (``epoch_s``, ``compile_s``, ...)."""
  with open(path) as f:
    return [{k: v for k, v in json.loads(line).items() if not k.endswith("_s")} for line in f]


def test_a_half_written_checkpoint_is_never_taken_for_a_checkpoint(chain):
  _, seen = chain
  # Each kill inside a write left that step's temporary directory, and the step is not listed.
  for run, key in ((1, "original_steps"), (2, "method_steps")):
    [tmp] = seen[run]["tmp_dirs"]
    step = int(os.path.basename(tmp).split(".")[0])
    assert all(s < step for s in seen[run][key]), (seen[run]["what"], tmp, seen[run][key])


def test_killed_training_resumes_to_the_uninterrupted_state_bit_for_bit(chain, reference):
  wd, _ = chain
  assert not _tmp_dirs(wd), "a resumed run left orbax temporary directories behind"
  ckpt = lambda root: _at(root, ORIGINAL, "checkpoints")
  assert _complete_steps(ckpt(wd)) == _complete_steps(ckpt(reference))
  # The whole train state: parameters, BN statistics, momentum buffers and the step.
  chex.assert_trees_all_equal(_saved(ckpt(wd)), _saved(ckpt(reference)))
  assert checkpoints.read_json(_at(wd, ORIGINAL, "done.json"))["resumed_from_epoch"] > 0
  # Every epoch logged once, with the numbers of the uninterrupted run.
  assert (_metric_rows(_at(wd, ORIGINAL, "metrics.jsonl"))
          == _metric_rows(_at(reference, ORIGINAL, "metrics.jsonl")))


def test_killed_unlearning_resumes_to_the_uninterrupted_model_bit_for_bit(chain, reference):
  wd, _ = chain
  for sub in ("checkpoints", "final"):  # the driver's state and aux, the saved model
    chex.assert_trees_all_equal(_saved(_at(wd, STAGE, sub)),
                                _saved(_at(reference, STAGE, sub)))
  assert (_metric_rows(_at(wd, STAGE, "metrics.jsonl"))
          == _metric_rows(_at(reference, STAGE, "metrics.jsonl")))
  outputs = lambda root, split: checkpoints.load_outputs(_at(root, STAGE, "outputs"), split)
  for split in ("forget", "test"):
    chex.assert_trees_all_equal(outputs(wd, split), outputs(reference, split))


def test_the_interrupted_request_has_one_id_and_one_complete_line(chain):
  wd, _ = chain
  with open(audit.log_path(wd)) as f:
    lines = [json.loads(line) for line in f]  # every line complete: none torn
  assert len({r["request_id"] for r in lines}) == 1, lines
  assert [r["status"] for r in lines].count("complete") == 1 and lines[-1]["status"] == "complete"
  # Three runs reached the method (two were killed); each resumed the same request.
  started = [r for r in lines if r["status"] == "started"]
  assert len(started) == 3 and all(r.get("resumed") for r in started[1:])
  assert not audit.incomplete_requests(wd)
  assert lines[-1]["method"] == fault_worker.METHOD
  assert lines[-1]["resume_key"].startswith(f"stage:unlearned/{fault_worker.METHOD}-")


def _check_disk_full_error(error, directory, kept):
  """The message says what happened and where; the previous step is intact, the failed one gone."""
  msg = str(error.value)
  assert "no space left on device" in msg and directory in msg, msg
  assert f"the previous checkpoint (step {kept}) is intact" in msg, msg
  assert _complete_steps(directory)[-1] == kept
  assert not glob.glob(os.path.join(directory, TMP_GLOB)), "the half-written step was left behind"
  assert int(_saved(directory)["step"]) == kept


def test_a_simulated_write_error_keeps_the_previous_checkpoint_and_resumes(tmp_path, monkeypatch,
                                                                           reference):
  exp = experiment.Experiment.create(fault_worker.config(), str(tmp_path / "wd"))
  ckpt = os.path.join(exp.trained_stage("original").dir, "checkpoints")
  real = atomicity.AtomicRenameTemporaryPath.finalize
  calls = {"n": 0}

  async def enospc_on_the_second_step(self, *args, **kwargs):
    # A step's outer directory is finalized last: fail the second step's with its data written,
    # as a write that fills the disk at its very end would.
    if os.path.dirname(str(self.get())) == ckpt:
      calls["n"] += 1
      if calls["n"] == 2:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return await real(self, *args, **kwargs)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", enospc_on_the_second_step)
  with pytest.raises(checkpoints.CheckpointError) as error:
    exp.train_stage("original", progress=False)
  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", real)
  steps_per_epoch = _complete_steps(ckpt)[0]
  _check_disk_full_error(error, ckpt, kept=steps_per_epoch)
  # There is room again: the same call resumes from epoch 1 and ends where the reference did.
  assert exp.train_stage("original", progress=False)["resumed_from_epoch"] == 1
  ref = _at(reference, ORIGINAL)
  chex.assert_trees_all_equal(_saved(ckpt), _saved(os.path.join(ref, "checkpoints")))
  assert (_metric_rows(os.path.join(exp.trained_stage("original").dir, "metrics.jsonl"))
          == _metric_rows(os.path.join(ref, "metrics.jsonl")))


@pytest.fixture
def small_tmpfs(tmp_path):
  mount = tmp_path / "disk"
  mount.mkdir()
  try:
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                         capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError) as e:
    pytest.skip(f"cannot run mount: {e}")
  if res.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN): {res.stderr.strip()}")
  yield str(mount)
  subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def _fill(directory):
  """Writes a file in ``directory`` until the file system is full."""
  fd = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT)
  try:
    for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
      try:
        while True:
          os.write(fd, b"\0" * chunk)
      except OSError as e:
        assert e.errno == errno.ENOSPC, e
  finally:
    os.close(fd)


def test_a_full_tmpfs_keeps_the_previous_checkpoint_and_saves_once_there_is_room(small_tmpfs,
                                                                                 reference):
  # A real train state (momentum and step included), written by orbax on a 2 MB file system.
  state = _saved(_at(reference, ORIGINAL, "checkpoints"))
  ckpt = os.path.join(small_tmpfs, "checkpoints")
  c = checkpoints.Checkpointer(ckpt)
  c.save(1, dict(state, step=1))
  _fill(small_tmpfs)
  with pytest.raises(checkpoints.CheckpointError) as error:
    c.save(2, dict(state, step=2))
  _check_disk_full_error(error, ckpt, kept=1)
  os.remove(os.path.join(small_tmpfs, "filler"))
  c.save(2, dict(state, step=2))  # the same save, once there is room
  c.close()
  assert _complete_steps(ckpt) == [1, 2]
  chex.assert_trees_all_equal(_saved(ckpt), dict(state, step=2))


def test_a_torn_metrics_line_from_a_full_disk_is_dropped_on_resume(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  checkpoints.append_jsonl(path, {"epoch": 1, "loss": 0.5})
  with open(path, "a") as f:
    f.write('{"epoch": 2, "lo')  # the disk filled up in the middle of the row
  checkpoints.truncate_jsonl(path, lambda r: r["epoch"] <= 1)
  with open(path) as f:
    assert [json.loads(line) for line in f] == [{"epoch": 1, "loss": 0.5}]


def _removals(monkeypatch, directory, step, value):
  """How many files a save removes (counted in this process)."""
  count = [0]
  real_unlink = os.unlink

  def unlink(*args, **kwargs):
    real_unlink(*args, **kwargs)
    count[0] += 1

  c = checkpoints.Checkpointer(directory, max_to_keep=unlink_kill_worker.MAX_TO_KEEP)
  monkeypatch.setattr(os, "unlink", unlink)
  c.save(step, unlink_kill_worker.tree(value))
  monkeypatch.setattr(os, "unlink", real_unlink)
  c.close()
  return count[0]


@pytest.mark.parametrize("step,value", [(2, 22.0), (3, 3.0)], ids=["replaced", "pruned"])
def test_a_kill_while_a_save_removes_files_leaves_only_complete_steps(tmp_path, monkeypatch,
                                                                      processes, step, value):
  """Saving step 2 again removes the old step 2; saving step 3 prunes step 1 (max_to_keep=2)."""
  _, env = processes
  saved = {1: unlink_kill_worker.tree(1.0), 2: unlink_kill_worker.tree(2.0)}

  def two_steps(directory):
    c = checkpoints.Checkpointer(directory, max_to_keep=unlink_kill_worker.MAX_TO_KEEP)
    for s, tree in saved.items():
      c.save(s, tree)
    c.close()

  two_steps(str(tmp_path / "count"))
  total = _removals(monkeypatch, str(tmp_path / "count"), step, value)
  assert total > 0
  # A kill right after the first removal, the last, and four drawn between (MU_FAULT_SEED draws
  # others): each kill costs a process start.
  between = list(range(2, total))
  kills = sorted({1, total, *random.Random(SEED).sample(between, min(4, len(between)))})
  for n in kills:
    directory = str(tmp_path / f"kill{n}")
    two_steps(directory)
    rc, tail = _launch([sys.executable, "-m", "tests.unlink_kill_worker", directory, str(step),
                        str(value), str(n)], env, tmp_path / f"kill{n}.log")
    assert rc == -9, f"killed after removal {n} of {total}: rc {rc}\n{tail}"
    # Every step listed restores to what was saved under its number, before or after the kill.
    c = checkpoints.Checkpointer(directory, max_to_keep=unlink_kill_worker.MAX_TO_KEEP)
    listed = c.all_steps()
    assert listed and set(listed) <= {1, 2, 3}, (n, listed)
    for s in listed:
      restored = c.restore(unlink_kill_worker.tree(0.0), step=s)
      candidates = [saved[s]] if s in saved else []
      if s == step:
        candidates.append(unlink_kill_worker.tree(value))
      assert any(all((restored[k] == t[k]).all() for k in t) for t in candidates), (n, s, restored)
    # The same save, run again, completes and leaves nothing but the kept steps.
    c.save(step, unlink_kill_worker.tree(value))
    c.close()
    assert sorted(os.listdir(directory)) == sorted(map(str, {1, 2, step} - ({1} if step == 3 else set()))), (
        n, os.listdir(directory))
    chex.assert_trees_all_equal(
        checkpoints.Checkpointer(directory).restore(unlink_kill_worker.tree(0.0)),
        unlink_kill_worker.tree(value))


def test_an_atomic_write_that_fails_midway_leaves_the_old_file_and_no_temporary(tmp_path):
  path = str(tmp_path / "done.json")
  checkpoints.write_json(path, {"v": 1})
  with pytest.raises(TypeError, match="not JSON serialisable"):
    checkpoints.write_json(path, {"v": 2, "w": object()})  # fails after part of it was written
  assert checkpoints.read_json(path) == {"v": 1}
  assert os.listdir(tmp_path) == ["done.json"]
