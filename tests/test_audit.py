"""The forget-request audit log: started/complete lines, resume after a crash, no images, torn lines."""

import json
import os
from concurrent import futures

import ml_collections
import numpy as np
import pytest

from mu_jax import audit


def test_a_request_writes_a_started_then_a_complete_line(tmp_path):
  wd = str(tmp_path)
  rid = audit.start_request(wd, {"method": "sisa", "identities": ["P1", "P2"], "num_examples": 12})
  assert [r["request_id"] for r in audit.incomplete_requests(wd)] == [rid]
  audit.complete_request(wd, rid, {"method": "sisa", "evaluation": {"test_acc": np.float32(0.5)},
                                   "hparams": ml_collections.ConfigDict({"lr": 0.1, "steps": (1, 2)})})
  rows = audit.read_requests(wd)
  assert [r["status"] for r in rows] == ["started", "complete"]
  assert {r["request_id"] for r in rows} == {rid}
  assert rows[0]["identities"] == ["P1", "P2"] and rows[1]["evaluation"]["test_acc"] == 0.5
  assert rows[1]["hparams"] == {"lr": 0.1, "steps": [1, 2]}
  assert rows[0]["time"].endswith("Z") and rid.startswith("req-")
  assert not audit.incomplete_requests(wd)
  assert [r["request_id"] for r in audit.completed_requests(wd)] == [rid]
  with pytest.raises(ValueError, match="already complete"):
    audit.complete_request(wd, rid, {})
  with pytest.raises(ValueError, match="never started"):
    audit.complete_request(wd, "req-unknown", {})


def test_an_interrupted_request_is_resumed_under_its_id(tmp_path):
  wd = str(tmp_path)
  first = audit.start_request(wd, {"method": "sisa"}, resume_key="sisa:abc")
  other = audit.start_request(wd, {"method": "scrub"}, resume_key="method:scrub")
  # The process died here; the same command runs again.
  again = audit.start_request(wd, {"method": "sisa"}, resume_key="sisa:abc")
  assert again == first != other
  assert {r["request_id"] for r in audit.incomplete_requests(wd)} == {first, other}
  assert audit.read_requests(wd)[-1]["resumed"] is True
  audit.complete_request(wd, first, {"method": "sisa"})
  assert [r["request_id"] for r in audit.incomplete_requests(wd)] == [other]
  assert audit.completed_requests(wd)[0]["resume_key"] == "sisa:abc"
  # Once complete, the same key starts a new request.
  assert audit.start_request(wd, {"method": "sisa"}, resume_key="sisa:abc") not in (first, other)


def test_records_never_hold_arrays_or_bytes(tmp_path):
  wd = str(tmp_path)
  for bad in ({"image": np.zeros((4, 4, 3), np.uint8)}, {"nested": {"png": b"\x89PNG"}},
              {"x": object()}):
    with pytest.raises(TypeError, match="record"):
      audit.start_request(wd, bad)
  assert not os.path.exists(audit.log_path(wd))


def test_a_torn_last_line_is_skipped_and_the_next_line_starts_fresh(tmp_path):
  wd = str(tmp_path)
  rid = audit.start_request(wd, {"method": "sisa"})
  with open(audit.log_path(wd), "a") as f:
    f.write('{"request_id": "req-torn", "status": "sta')  # a crash in the middle of a write
  audit.complete_request(wd, rid, {"method": "sisa"})
  with open(audit.log_path(wd)) as f:
    lines = f.read().splitlines()
  assert len(lines) == 3 and json.loads(lines[2])["status"] == "complete"
  assert [r["status"] for r in audit.read_requests(wd)] == ["started", "complete"]


def _start_many(args):
  wd, k = args
  return [audit.start_request(wd, {"method": "m", "k": k, "i": i}) for i in range(20)]


def test_concurrent_writers_never_interleave_lines(tmp_path):
  wd = str(tmp_path)
  # Threads open the log separately, so they contend for the lock as processes would.
  with futures.ThreadPoolExecutor(4) as pool:
    ids = sum(pool.map(_start_many, [(wd, k) for k in range(4)]), [])
  rows = audit.read_requests(wd)
  assert len(rows) == 80 and sorted(r["request_id"] for r in rows) == sorted(ids)
