"""The workdir's files over orbax: checkpoints that are complete or absent, and the run's record.

```
WORKDIR/config.json  manifest.json  workdir.json
WORKDIR/<stage>/checkpoints/<step>/   orbax CheckpointManager (atomic: written to a temp dir, renamed)
WORKDIR/<stage>/checkpoints/deleted/  steps being deleted (renamed here first, then removed)
WORKDIR/<stage>/metrics.jsonl         one JSON object per epoch
WORKDIR/<stage>/done.json             written last: the stage finished (identity, wall time, examples)
WORKDIR/<stage>/outputs/<split>.npz   per-example outputs
```
``<stage>`` is a stage directory of :mod:`mu_jax.experiment` (``original-<hash>``,
``unlearned/<method>-<hash>``, ...); ``docs/workdir.md`` has the whole layout.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from typing import IO, Any, Iterator, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from mu_jax import parallel


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be restored into the expected state (another model, corrupt)."""


class WorkdirError(RuntimeError):
  """A workdir made by another config, or in an unusable state."""


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
  """A new file whose content replaces ``path`` in one rename when the block ends.

  The file is synced before the rename and the directory after it, so after a crash or a power
  loss ``path`` holds its old or its new content, never a part. If the block raises, ``path`` is
  left as it was and the temporary file is removed.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  try:
    with open(tmp, mode, **open_kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
  """Syncs a directory's entries (where the platform can: not on Windows, not every file system)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (:func:`atomic_write`)."""
  with atomic_write(path) as f:
    json.dump(obj, f, indent=1, sort_keys=True, default=json_default)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def json_default(x: Any) -> Any:
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, (tuple, set)):
    return list(x)
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")


# Not a step number, so orbax never lists it as a step.
DELETED_SUBDIR = "deleted"


class Checkpointer:
  """Saves and restores a train state (any flax struct pytree) at integer steps with orbax.

  Saves are synchronous, so when :meth:`save` returns the checkpoint is complete on disk; orbax
  writes to a temporary directory and renames it, so a crash leaves the previous checkpoint.
  Deleting a step is a rename too, so a crash never leaves part of a step under a step's name.
  """

  def __init__(self, directory: str, max_to_keep: int | None = 2):
    self.directory = os.path.abspath(directory)
    # Steps to delete (pruned past ``max_to_keep``, or replaced by :meth:`save`) are first renamed
    # into DELETED_SUBDIR, then removed from there. orbax's own deletion removes the files in place:
    # a kill in the middle left a step directory without its data, which still counted as the
    # latest step, so resuming failed and so did every later save into the directory.
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False,
                                           todelete_subdir=DELETED_SUBDIR)
    self._manager = ocp.CheckpointManager(self.directory, options=options)
    self._empty_deleted()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, force: bool = True) -> None:
    """Writes ``state`` as ``step``; a step already on disk is replaced.

    A run killed after a save but before it recorded that the save happened (e.g. between an
    unlearned model's ``final/0`` and its ``done.json``) saves the same step again when resumed.

    Raises:
      CheckpointError: the disk (or quota) is full. The half-written step is removed and the
        previous checkpoints are left as they were, so the same command resumes once there is room.
    """
    tree = jax.tree.map(np.asarray, serialization.to_state_dict(state))
    if step in self._manager.all_steps():
      self._manager.delete(step)
      self._empty_deleted()
    try:
      self._manager.save(step, args=ocp.args.StandardSave(tree), force=force)
      self._manager.wait_until_finished()
      self._empty_deleted()
    except Exception as e:
      if not _is_disk_full(e):
        raise
      # orbax leaves its temporary directory behind; removing it gives back the space it took.
      for name in os.listdir(self.directory):
        if name.startswith(f"{step}.orbax-checkpoint-tmp"):
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      kept = self.latest_step()
      raise CheckpointError(
          f"no space left on device: could not write checkpoint step {step} to {self.directory} "
          f"({type(e).__name__}: {str(e)[:300]}); "
          + (f"the previous checkpoint (step {kept}) is intact" if kept is not None
             else "no earlier checkpoint exists")
          + "; free some space and run the same command again to resume") from e

  def _empty_deleted(self) -> None:
    """Removes the steps renamed into DELETED_SUBDIR (the process that renames them does)."""
    deleted = os.path.join(self.directory, DELETED_SUBDIR)
    if parallel.is_primary() and os.path.isdir(deleted):
      shutil.rmtree(deleted)

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores ``step`` (default: the latest) into the structure of ``target``.

    Raises:
      CheckpointError: no checkpoint, or one that does not restore into ``target`` (another
        model, or damaged files).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint in {self.directory}")
    template = jax.tree.map(np.asarray, serialization.to_state_dict(target))
    try:
      restored = self._manager.restore(step, args=ocp.args.StandardRestore(template))
    except Exception as e:  # orbax raises several types for a structure mismatch
      raise CheckpointError(f"checkpoint {self.directory}/{step} cannot be restored into the "
                            "expected model state (written for another model or config, or files "
                            f"removed or damaged since): {str(e)[:500]}") from e
    _check_shapes(template, restored, f"{self.directory}/{step}")
    return serialization.from_state_dict(target, restored)

  def close(self) -> None:
    self._manager.close()


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _is_disk_full(e: BaseException) -> bool:
  """Whether ``e`` (or an exception it came from) says the disk or the quota is full.

  Python raises ``OSError(ENOSPC)``; tensorstore, which writes orbax's arrays, raises a
  ``ValueError`` whose text carries the OS error.
  """
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _DISK_FULL:
      return True
    text = str(e)
    if any(m in text for m in ("No space left on device", "Disk quota exceeded")):
      return True
    e = e.__cause__ or e.__context__
  return False


def _check_shapes(template: Any, restored: Any, where: str) -> None:
  flat_t = dict(jax.tree_util.tree_flatten_with_path(template)[0])
  flat_r = dict(jax.tree_util.tree_flatten_with_path(restored)[0])
  if flat_t.keys() != flat_r.keys():
    missing = sorted(map(jax.tree_util.keystr, flat_t.keys() - flat_r.keys()))[:3]
    raise CheckpointError(f"checkpoint {where} lacks {missing}: another model?")
  for k, v in flat_t.items():
    if np.shape(v) != np.shape(flat_r[k]):
      raise CheckpointError(f"checkpoint {where}: {jax.tree_util.keystr(k)} has shape "
                            f"{np.shape(flat_r[k])}, the model expects {np.shape(v)}: another model?")


# Config sections that define what a workdir holds; the others (methods to run, evaluation knobs)
# may change between runs on the same workdir.
WORKDIR_KEYS = ("seed", "data", "model", "train", "retrain")


def prepare_workdir(workdir: str, config: Mapping[str, Any], overwrite: bool = False,
                    write: bool = True) -> None:
  """Creates the workdir and its config.json, or checks that an existing one matches.

  Args:
    workdir: the run's directory.
    config: the run's config.
    overwrite: start a workdir made with another config again (everything in it is removed).
    write: false to check only (the processes of a multi-process run other than the first).

  Raises:
    WorkdirError: the workdir was made with a different config and ``overwrite`` is false.
  """
  path = os.path.join(workdir, "config.json")
  config = json.loads(json.dumps(dict(config), default=json_default))
  if os.path.exists(path) and not overwrite:
    old = read_json(path)
    diff = [k for k in WORKDIR_KEYS if old.get(k) != config.get(k)]
    if diff:
      detail = "; ".join(f"{k}: {json.dumps(old.get(k))[:200]} != {json.dumps(config.get(k))[:200]}"
                         for k in diff)
      raise WorkdirError(f"{workdir} was made with another config ({detail}); use another "
                         "--workdir or pass --overwrite to start it again")
    return
  if not write:
    return
  os.makedirs(workdir, exist_ok=True)
  if overwrite and os.path.exists(path):
    for name in os.listdir(workdir):
      p = os.path.join(workdir, name)
      shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
  write_json(path, config)


def config_hash(config: Mapping[str, Any]) -> str:
  """sha256 of the config sections that define a workdir (:data:`WORKDIR_KEYS`)."""
  import hashlib
  cfg = json.loads(json.dumps(dict(config), default=json_default))
  payload = json.dumps({k: cfg.get(k) for k in WORKDIR_KEYS}, sort_keys=True)
  return hashlib.sha256(payload.encode()).hexdigest()[:16]


def append_jsonl(path: str, row: Mapping[str, Any]) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "a") as f:
    f.write(json.dumps(dict(row), default=json_default, sort_keys=True) + "\n")
    f.flush()
    os.fsync(f.fileno())


def truncate_jsonl(path: str, keep: Any) -> None:
  """Keeps the rows for which ``keep(row)`` is true (after a resume: the rows up to the checkpoint).

  A torn line (a write cut short by a full disk) is dropped too: it belongs to an epoch whose
  checkpoint was not written.
  """
  if not os.path.exists(path):
    return
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  with atomic_write(path) as f:
    for r in rows:
      if keep(r):
        f.write(json.dumps(r, sort_keys=True) + "\n")


def save_outputs(directory: str, split: str, outputs: Mapping[str, np.ndarray]) -> str:
  """Writes ``outputs/<split>.npz`` atomically (the per-example output contract)."""
  path = os.path.join(directory, f"{split}.npz")
  arrays = {k: np.asarray(v) for k, v in outputs.items()}
  # Object arrays would need pickle to load; ids and identities are stored as fixed-width strings.
  arrays = {k: v.astype(str) if v.dtype == object else v for k, v in arrays.items()}
  with atomic_write(path, "wb") as f:
    np.savez(f, **arrays)
  return path


def load_outputs(directory: str, split: str) -> dict[str, np.ndarray]:
  with np.load(os.path.join(directory, f"{split}.npz"), allow_pickle=False) as z:
    return {k: z[k] for k in z.files}
