"""What the multi-process workers share with the tests: a record of the files a process writes."""

import atexit
import json
import os
import sys

# Flags of os.open that change a file.
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
# Audit events (https://docs.python.org/3/library/audit_events.html) that change the file system,
# with the positions of their path arguments.
_CHANGES = {"os.rename": (0, 1), "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,),
            "shutil.rmtree": (0,), "os.truncate": (0,), "os.link": (1,), "os.symlink": (1,),
            "shutil.copyfile": (1,), "shutil.move": (1,)}


def record_writes(out_path):
  """Records every path this process opens for writing, creates, renames or removes through
  Python, from now on, and writes them (absolute, sorted) as a JSON list to ``out_path`` at exit.

  Arrays that orbax writes through tensorstore (C++) are not seen; everything mu_jax writes itself
  (JSON, npz, the audit log, directory removals) is.
  """
  seen = set()

  def add(path):
    if isinstance(path, bytes):
      path = os.fsdecode(path)
    if isinstance(path, (str, os.PathLike)):
      seen.add(os.path.abspath(os.fspath(path)))

  def hook(event, args):
    if event == "open":
      path, mode, flags = args
      writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
          isinstance(flags, int) and flags & _WRITE_FLAGS)
      if writes:
        add(path)
    elif event in _CHANGES:
      for i in _CHANGES[event]:
        add(args[i])

  def dump():
    paths = sorted(seen)
    with open(out_path, "w") as f:
      json.dump(paths, f)

  sys.addaudithook(hook)
  atexit.register(dump)
