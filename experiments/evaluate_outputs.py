"""Scores per-example outputs written by any framework (one .npz per split) into the result table.

  python -m experiments.evaluate_outputs --task=multiclass --out=results \
      --outputs=original=outs/original,retrained=outs/retrained,mymethod=outs/mymethod

Each folder holds forget.npz, retain.npz, test.npz, unseen.npz (and optionally train.npz) with the
arrays logits, label, identity (loss, example_id optional): the contract in
mu_jax/evaluation/outputs_table.py. Prints the markdown table and writes results.json,
results.csv and table.md to --out.
"""

from absl import app, flags

from mu_jax import cli
from mu_jax.evaluation import outputs_table, report

_OUTPUTS = flags.DEFINE_string("outputs", None, "name=dir,name=dir,...; one name must be retrained.")
_TASK = flags.DEFINE_enum("task", "multiclass", list(outputs_table.TASKS), "The task of the logits.")
_OUT = flags.DEFINE_string("out", None, "Folder for results.json, results.csv and table.md.")
_LAMBDA = flags.DEFINE_float("nomus_lambda", 0.5, "NoMUS weight of test accuracy.")
flags.mark_flags_as_required(["outputs", "out"])


def parse_outputs(text: str) -> dict[str, str]:
  """"a=dir1,b=dir2" -> {"a": "dir1", "b": "dir2"}, refusing malformed or repeated entries."""
  out: dict[str, str] = {}
  for item in filter(None, (x.strip() for x in text.split(","))):
    name, sep, path = item.partition("=")
    if not sep or not name.strip() or not path.strip():
      raise app.UsageError(f"--outputs entry {item!r} is not name=dir")
    if name.strip() in out:
      raise app.UsageError(f"--outputs names {name.strip()!r} twice")
    out[name.strip()] = path.strip()
  return out


def main(argv):
  del argv
  paths = parse_outputs(_OUTPUTS.value)
  rows = outputs_table.evaluate_outputs(paths, _TASK.value, nomus_lambda=_LAMBDA.value)
  retrained = outputs_table.read_outputs(paths["retrained"], _TASK.value)
  config = {"outputs": paths, "task": _TASK.value, "nomus_lambda": _LAMBDA.value}
  report.write_results(_OUT.value, rows, config=config,
                       manifest_hash=outputs_table.manifest_hash(retrained))
  print(report.markdown_table(rows))


if __name__ == "__main__":
  cli.run(main)
