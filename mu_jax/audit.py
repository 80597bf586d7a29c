"""The audit log of forget requests: one JSON line per event in ``WORKDIR/requests.jsonl``.

Any code that serves a forget request (SISA, an unlearning method) records it in two lines with the
same ``request_id``: ``"status": "started"`` before it changes anything, and ``"status": "complete"``
when the result is saved. A request with a started line and no complete line was interrupted;
:func:`incomplete_requests` lists those. Running the same command again resumes it: the caller
passes a ``resume_key`` naming the work (e.g. ``"method:scrub"`` or a hash of the forgotten ids),
and :func:`start_request` returns the id of the interrupted request with that key (writing a
``"resumed": true`` started line) instead of a new one; the complete line then closes it.

Records are for people who must show what was forgotten and when: identities, example counts,
hashes, paths and metric summaries. They never hold images: a record with an array or raw bytes in
it is refused.

Each line is written with one ``write`` on a file opened for appending, under an exclusive lock, and
flushed to disk before returning, so lines from several processes never interleave and a crash can
at most leave a torn last line, which readers skip (and the next append starts on a new line).
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np
from absl import logging

LOG_NAME = "requests.jsonl"
STARTED = "started"
COMPLETE = "complete"


def log_path(workdir: str) -> str:
  return os.path.join(workdir, LOG_NAME)


def utc_now() -> str:
  return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_request_id() -> str:
  """A unique, sortable id: ``req-<UTC time>-<8 random hex digits>``."""
  return f"req-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def _plain(value: Any, where: str) -> Any:
  """JSON-ready copy of a record; refuses arrays and bytes (images must never reach the log)."""
  if hasattr(value, "to_dict") and callable(value.to_dict):  # ml_collections.ConfigDict
    value = value.to_dict()
  if isinstance(value, os.PathLike):
    value = os.fspath(value)
  if isinstance(value, Mapping):
    return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
  if isinstance(value, (list, tuple, set, frozenset)):
    items = sorted(value) if isinstance(value, (set, frozenset)) else value
    return [_plain(v, f"{where}[]") for v in items]
  if isinstance(value, (bytes, bytearray, memoryview, np.ndarray)):
    raise TypeError(f"audit record field {where} is {type(value).__name__}: the log holds "
                    "identities, counts and hashes, never arrays or image bytes")
  if isinstance(value, (np.integer, np.floating, np.bool_)):
    return value.item()
  if value is None or isinstance(value, (str, int, float, bool)):
    return value
  raise TypeError(f"audit record field {where} has type {type(value).__name__}, not JSON data")


def _append(path: str, row: Mapping[str, Any]) -> None:
  line = json.dumps(row, sort_keys=True, allow_nan=True) + "\n"
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    size = os.fstat(fd).st_size
    if size:
      # A crash in the middle of a write leaves a line without its newline: start a fresh line.
      with open(path, "rb") as f:
        f.seek(size - 1)
        if f.read(1) != b"\n":
          line = "\n" + line
    os.write(fd, line.encode())
    os.fsync(fd)
  finally:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def read_requests(workdir: str) -> list[dict[str, Any]]:
  """Every readable line of the log (started and complete), in order; a torn line is skipped."""
  path = log_path(workdir)
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        logging.warning("%s line %d is not JSON (an interrupted write?); skipped", path, n)
        continue
      if isinstance(row, dict) and "request_id" in row:
        rows.append(row)
  return rows


def _status(workdir: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
  """(latest started row, complete row) per request id, in the order requests first appear."""
  started: dict[str, dict[str, Any]] = {}
  complete: dict[str, dict[str, Any]] = {}
  for row in read_requests(workdir):
    if row.get("status") == STARTED:
      started[row["request_id"]] = row
    elif row.get("status") == COMPLETE:
      complete[row["request_id"]] = row
  return started, complete


def start_request(workdir: str, record: Mapping[str, Any], resume_key: str | None = None) -> str:
  """Writes the ``started`` line of a request and returns its id.

  Args:
    workdir: the run's workdir (the log is ``WORKDIR/requests.jsonl``).
    record: what the request is (method, settings, identities, counts, hashes, paths). A
      ``request_id`` in it names the request (it must not be complete already).
    resume_key: names the work the request does; when an incomplete request has the same key, this
      call resumes it under its id instead of starting a new request.

  Returns:
    The request id.

  Raises:
    ValueError: the given ``request_id`` is already complete.
    TypeError: the record holds an array, bytes or another non-JSON value.
  """
  row = _plain(dict(record), "record")
  started, complete = _status(workdir)
  rid = row.get("request_id")
  if rid is None and resume_key is not None:
    rid = next((r for r, prior in reversed(started.items())
                if r not in complete and prior.get("resume_key") == resume_key), None)
  rid = rid or new_request_id()
  if rid in complete:
    raise ValueError(f"request {rid} is already complete in {log_path(workdir)}")
  row.update({"request_id": rid, "status": STARTED, "time": utc_now()})
  if resume_key is not None:
    row["resume_key"] = resume_key
  if rid in started:
    row["resumed"] = True
  _append(log_path(workdir), row)
  return rid


def complete_request(workdir: str, request_id: str, record: Mapping[str, Any]) -> None:
  """Writes the ``complete`` line of a started request.

  Raises:
    ValueError: the request was never started, or is already complete.
    TypeError: the record holds an array, bytes or another non-JSON value.
  """
  row = _plain(dict(record), "record")
  started, complete = _status(workdir)
  if request_id not in started:
    raise ValueError(f"request {request_id} was never started in {log_path(workdir)}")
  if request_id in complete:
    raise ValueError(f"request {request_id} is already complete in {log_path(workdir)}")
  row.update({"request_id": request_id, "status": COMPLETE, "time": utc_now()})
  if "resume_key" in started[request_id]:
    row["resume_key"] = started[request_id]["resume_key"]
  _append(log_path(workdir), row)


def incomplete_requests(workdir: str) -> list[dict[str, Any]]:
  """The latest ``started`` line of every request that has no ``complete`` line."""
  started, complete = _status(workdir)
  return [row for rid, row in started.items() if rid not in complete]


def completed_requests(workdir: str) -> list[dict[str, Any]]:
  """The ``complete`` line of every finished request, in the order they were started."""
  started, complete = _status(workdir)
  return [complete[rid] for rid in started if rid in complete]
