"""Where a run's time goes: XLA compilation, training, evaluation and the rest.

Compilation is counted from JAX's own monitoring events (every backend compilation of this
process, whatever triggered it: a method's step, the evaluation pass, a model initialisation);
evaluation is the time spent inside :func:`measure` ("evaluation") blocks minus the compilation
that happened within them. Training seconds come from the stages' records (the driver's epoch
times, compilation and evaluation excluded), so :func:`breakdown` splits a stage's wall time into
four parts that add up.
"""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_totals: dict[str, float] = collections.defaultdict(float)
_depth: dict[str, int] = collections.defaultdict(int)
_installed = False


def _on_duration(event: str, duration: float, **kwargs: Any) -> None:
  del kwargs
  if event == _COMPILE_EVENT:
    _totals["compile"] += duration
    _totals["programs"] += 1


def install() -> None:
  """Starts counting compilations (once per process; the library never does it on import)."""
  global _installed
  if not _installed:
    jax.monitoring.register_event_duration_secs_listener(_on_duration)
    _installed = True


def snapshot() -> dict[str, float]:
  """Totals so far: ``compile`` seconds, ``programs`` compiled and ``evaluation`` seconds."""
  return {"compile": _totals["compile"], "programs": _totals["programs"],
          "evaluation": _totals["evaluation"]}


@contextlib.contextmanager
def measure(kind: str = "evaluation") -> Iterator[None]:
  """Adds the block's wall seconds, less the compilation inside it, to ``kind``.

  Blocks may nest (a metric that computes outputs that run the evaluation pass); only the
  outermost one counts.
  """
  _depth[kind] += 1
  t, c = time.perf_counter(), _totals["compile"]
  try:
    yield
  finally:
    _depth[kind] -= 1
    if not _depth[kind]:
      _totals[kind] += time.perf_counter() - t - (_totals["compile"] - c)


class Ledger:
  """Per-stage costs of one command, in the order the stages ran."""

  def __init__(self):
    install()
    self.rows: list[dict[str, Any]] = []

  @contextlib.contextmanager
  def stage(self, name: str, record: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Times one block; ``row["train"]`` may be set inside it (the stage's training seconds)."""
    row: dict[str, Any] = {"stage": name, "train": 0.0}
    before, t = snapshot(), time.perf_counter()
    try:
      yield row
    finally:
      after = snapshot()
      row["wall"] = time.perf_counter() - t
      row["compile"] = after["compile"] - before["compile"]
      row["programs"] = int(after["programs"] - before["programs"])
      row["evaluation"] = after["evaluation"] - before["evaluation"]
      row["other"] = row["wall"] - row["compile"] - row["evaluation"] - row["train"]
      self.rows.append(row)

  def run(self, name: str, done: bool, work: Callable[[], Mapping[str, Any]]
          ) -> tuple[Mapping[str, Any], float]:
    """Runs one stage's ``work`` (returning its done.json) as ledger stage ``name``.

    Its ``wall_s`` counts as training only when this call did the work (``done`` is whether the
    stage had finished before). Returns the record and this call's seconds.
    """
    with self.stage(name) as cost:
      t = time.perf_counter()
      rec = work()
      cost["train"] = 0.0 if done else rec["wall_s"]
    return rec, time.perf_counter() - t

  def table(self) -> str:
    return format_table(self.as_json())

  def as_json(self) -> list[dict[str, Any]]:
    return [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
            for r in self.rows]


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """A fixed-width table of :meth:`Ledger.as_json` rows: one line per stage and a total."""
  keys = ("compile", "train", "evaluation", "other", "wall")
  lines = [f"{'stage':>24} {'compile s':>9} {'train s':>8} {'eval s':>8} {'other s':>8} "
           f"{'total s':>8} {'programs':>8}"]
  total = {k: sum(r[k] for r in rows) for k in (*keys, "programs")}
  for r in [*rows, dict(total, stage="total")]:
    lines.append(f"{r['stage'][-24:]:>24} " + " ".join(
        f"{r[k]:{w}.1f}" for k, w in zip(keys, (9, 8, 8, 8, 8))) + f" {int(r['programs']):>8}")
  return "\n".join(lines)
