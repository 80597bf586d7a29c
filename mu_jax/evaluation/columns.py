"""The one registry of result columns: key, label, which direction is better, format, tables.

The classification, SISA and retrieval tables, the CSV header order, the legend under each table
and the column reference in ``docs/metrics.md`` are all produced from :data:`COLUMNS`; a column
added here appears everywhere at once. SISA rows join the classification table; the SISA summary
(``experiments.sisa``: the aggregate before and after a request) shows the classification columns
and then SISA's own.

Directions (``better``):
  ``higher`` / ``lower``: plainly better that way;
  ``retrained``: best when closest to the retrained model (exact unlearning), not when extreme;
  ``original``: best when it stays at the original model's value (utility kept);
  ``unretrievable``: best at the level of embeddings that carry no identity (the retrieval table's
  ``unretrievable`` reference row): a forgotten person can no longer be found from a new photo.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

ARROWS = {"higher": "↑", "lower": "↓", "retrained": "≈ retrained", "original": "≈ original",
          "unretrievable": "≈ unretrievable"}


@dataclasses.dataclass(frozen=True)
class Column:
  """One column of the result tables.

  Attributes:
    key: the row key (``results.json``, ``results.csv``).
    label: its name in table.md.
    better: "higher", "lower", "retrained", "original" or "unretrievable" (module docstring).
    fmt: a format spec for the value (``.4f``, ``,d``, ``.1f``).
    tables: the tables showing it: "classification" (the benchmark, SISA rows included),
      "retrieval" and/or "sisa" (the SISA summary's own columns, after the classification ones).
    doc: one sentence saying what it measures.
  """

  key: str
  label: str
  better: str
  fmt: str = ".4f"
  tables: tuple[str, ...] = ("classification",)
  doc: str = ""

  def format(self, row: Mapping[str, Any]) -> str:
    """The row's value (± its ``<key>_std`` over seeds), "yes"/"no" for a flag, or "–" where
    absent."""
    v = row.get(self.key)
    if isinstance(v, bool):
      return "yes" if v else "no"
    if v is None or (isinstance(v, float) and math.isnan(v)):
      return "–"
    if not isinstance(v, (int, float)):
      return str(v)
    text = format(int(v), self.fmt) if self.fmt.endswith("d") else format(v, self.fmt)
    std = row.get(f"{self.key}_std")
    if std is not None and not self.fmt.endswith("d"):
      text += f" ± {format(std, self.fmt)}"
    return text


C, R, S, B = ("classification",), ("retrieval",), ("sisa",), ("classification", "retrieval")
TABLES = ("classification", "retrieval", "sisa")

COLUMNS: tuple[Column, ...] = (
    # The reference README's columns first, in its order.
    Column("test_acc", "Test Acc", "higher", doc="accuracy on the test persons"),
    Column("test_top2_acc", "Top-2 Acc", "higher", doc="top-2 accuracy on the test persons"),
    Column("mia_forgetting_score", "MIA (forgetting score \\|acc−0.5\\|)", "lower",
           doc="|reference attack accuracy − 0.5|, the reference README's MIA column"),
    Column("nomus", "Final Score (NoMUS)", "higher",
           doc="λ·test_acc + (1−λ)·(1 − 2·|attack_acc − 0.5|)"),
    Column("mia_attack_acc", "MIA attack accuracy (raw)", "retrained",
           doc="the reference logistic-regression attack's accuracy, forget vs unseen losses"),
    Column("forget_acc", "Forget Acc", "retrained", doc="accuracy on the forgotten examples"),
    Column("retain_acc", "Retain Acc", "higher", doc="accuracy on the retained training examples"),
    Column("unseen_acc", "Unseen Acc", "higher", doc="accuracy on the unseen persons"),
    Column("mia_auroc", "Loss-attack AUROC forget vs unseen", "retrained",
           doc="AUROC of the per-example loss as a membership score"),
    Column("mia_tpr_at_1pct_fpr", "TPR @ 1% FPR", "retrained",
           doc="the loss attack's true-positive rate at 1% false positives"),
    Column("svc_mia_confidence", "SVC-MIA efficacy (confidence)", "retrained",
           doc="share of forget examples an SVM on confidences calls non-members"),
    Column("kl_to_retrained_forget", "KL to retrained (forget)", "lower",
           doc="mean KL(retrained ‖ model) of the predictions on the forget set"),
    Column("js_to_retrained_forget", "JS to retrained (forget)", "lower",
           doc="mean Jensen-Shannon divergence to the retrained model on the forget set"),
    Column("agreement_with_retrained_forget", "Top-1 agreement with retrained (forget)", "higher",
           doc="share of forget examples where the top-1 class equals the retrained model's"),
    Column("param_l2_to_retrained", "ℓ2 param distance to retrained", "lower",
           doc="ℓ2 norm of the parameter difference to the retrained model"),
    Column("tow", "ToW (tug of war)", "higher",
           doc="product over forget, retain and test of 1 − abs(accuracy − the retrained model's)"),
    # Populations of models (mu_jax.evaluation.population).
    Column("forget_score", "Forget score F (NeurIPS 2023)", "higher",
           doc="mean over forget examples of 2^−k, k the bucket of ε between unlearned and "
               "retrained populations"),
    Column("neurips_score", "NeurIPS 2023 final score", "higher",
           doc="F · retain acc / retrained retain acc · test acc / retrained test acc"),
    Column("ulira_auc", "U-LiRA AUROC (persons)", "retrained",
           doc="identity-level U-LiRA: AUROC of unlearned vs never-trained persons, mean over "
               "target members"),
    Column("ulira_acc", "U-LiRA accuracy (persons)", "retrained",
           doc="identity-level U-LiRA: accuracy of the likelihood-ratio test on balanced persons"),
    Column("ulira_tpr_at_1pct_fpr", "U-LiRA TPR @ 1% FPR (images)", "retrained",
           doc="identity-level U-LiRA: true-positive rate at 1% false positives over images"),
    # Retrieval (docs/metrics.md).
    Column("forget_map", "forget mAP", "retrained", tables=R,
           doc="mean average precision of the forgotten persons' images as queries"),
    Column("forget_rank1", "forget R@1", "retrained", tables=R,
           doc="share of forgotten persons' queries whose nearest image is the same person"),
    Column("retain_map", "retain mAP", "higher", tables=R,
           doc="mean average precision of the retained persons' images as queries"),
    Column("retain_rank1", "retain R@1", "higher", tables=R,
           doc="Rank-1 of the retained persons' queries"),
    Column("forget_compactness", "forget CS", "lower", tables=R,
           doc="mean cosine similarity of a forgotten person's embeddings to their centroid"),
    Column("retain_compactness", "retain CS", "original", tables=R,
           doc="the same for the retained persons"),
    Column("identifiability", "forget ident.", "lower", tables=R,
           doc="share of forgotten persons still identified by their nearest centroid"),
    Column("retain_tar_at_far_1e-3", "retain TAR@FAR1e-3", "higher", tables=R,
           doc="1:1 verification of the retained persons at a false-accept rate of 1e-3"),
    Column("heldout_map", "held-out mAP", "original", tables=R,
           doc="mAP among persons no model trained on (how the model generalises)"),
    Column("heldout_rank1", "held-out R@1", "original", tables=R,
           doc="Rank-1 among persons no model trained on: how findable a stranger is"),
    # Probe photos: new images of the train persons that no model trained or unlearned on, matched
    # against every enrolled image (docs/metrics.md#probe-photos).
    *(Column(f"{group}_probe_{key}", f"{group} probe {label}", better, tables=R,
             doc=f"the {whose} probe photos vs the enrolled gallery: {what}; {judged}")
      for group, better, whose, judged in (
          ("forget", "unretrievable", "forgotten persons'",
           "judged against the unretrievable row, with the retrained model as exact unlearning"),
          ("retain", "original", "retained persons'", "judged against the original model"))
      for key, label, what in (
          ("rank1", "R@1", "share with a same-person image ranked first (ties shared)"),
          ("rank5", "R@5", "share with a same-person image in the first five (ties shared)"),
          ("map", "mAP", "mean average precision"),
          ("flip_rate", "flip rate",
           "share whose best same-person score is below their best other-person score (tie ½)"),
          ("tar_at_far_1e-3", "TAR@FAR1e-3",
           "1:1 verification (probe vs enrolled pairs, threshold on other-person pairs) at FAR 1e-3"),
          ("tar_at_far_1e-2", "TAR@FAR1e-2",
           "1:1 verification (probe vs enrolled pairs, threshold on other-person pairs) at FAR 1e-2"))),
    # Cost, in every table.
    Column("wall_s", "Wall seconds", "lower", ".1f", tables=B,
           doc="seconds of training steps (compilation excluded)"),
    Column("examples", "Examples processed", "lower", ",d", tables=B,
           doc="examples fed to training steps"),
    Column("cost_vs_retrain", "Cost vs retrain (wall)", "lower", tables=B,
           doc="wall seconds over the retrained model's"),
    Column("examples_vs_retrain", "Examples vs retrain", "lower", tables=R,
           doc="examples over the retrained model's"),
    # SISA (docs/metrics.md#sisa-row): the aggregate under the other aggregation, and the request.
    Column("test_acc_vote", "Test Acc, majority vote", "higher", tables=S,
           doc="test accuracy of the SISA aggregate by majority vote"),
    Column("test_acc_mean", "Test Acc, mean softmax", "higher", tables=S,
           doc="test accuracy of the SISA aggregate by mean softmax"),
    Column("sisa_retrained_shards", "Shards retrained", "lower", tables=S,
           doc="the shards the forget request touched"),
    Column("sisa_speedup_examples", "Speed-up vs full retrain (examples)", "higher", ".2f",
           tables=S, doc="examples of a full retrain of all shards over those SISA processed"),
    Column("sisa_speedup_wall", "Speed-up vs full retrain (wall)", "higher", ".2f", tables=S,
           doc="wall seconds of that full retrain (measured with --full_retrain, else estimated) "
               "over SISA's"),
    Column("sisa_expected_speedup_identity", "Expected speed-up, one-person requests", "higher",
           ".2f", tables=S, doc="the examples speed-up averaged over every one-person request"),
    Column("sisa_exact_match", "Equals a from-scratch retrain, bit for bit", "higher", tables=S,
           doc="whether the unlearned shard models equal shards trained without the request"),
)

BY_KEY = {c.key: c for c in COLUMNS}


def for_table(table: str) -> list[Column]:
  """The columns a table shows, in order ("sisa": the classification columns, then SISA's)."""
  if table not in TABLES:
    raise ValueError(f"unknown table {table!r}; use one of {TABLES}")
  if table == "sisa":
    return for_table("classification") + [c for c in COLUMNS if "sisa" in c.tables]
  return [c for c in COLUMNS if table in c.tables]


def labels(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Each row's name in a table: its ``model``, with its stage where two rows share a model."""
  models = [str(r["model"]) for r in rows]
  return [f"{m} [{r['stage'].rsplit('-', 1)[-1]}]" if models.count(m) > 1 and r.get("stage") else m
          for m, r in zip(models, rows)]


def markdown_table(rows: Sequence[Mapping[str, Any]], table: str = "classification") -> str:
  """Models as columns and metrics as rows, like the reference README's tables; only the columns
  some row has."""
  cols = [c for c in for_table(table) if any(c.key in r for r in rows)]
  lines = ["| | " + " | ".join(labels(rows)) + " |", "|---|" + "---|" * len(rows)]
  for c in cols:
    lines.append(f"| {c.label} ({ARROWS[c.better]}) | " + " | ".join(c.format(r) for r in rows) + " |")
  return "\n".join(lines)


def legend(table: str = "classification") -> str:
  """What the arrows mean, under a table."""
  text = ("↑ higher is better, ↓ lower is better, ≈ retrained: best when closest to the retrained "
          "model (exact unlearning), not when extreme; ≈ original: best when unchanged from the "
          "original model.")
  if table == "retrieval":
    text += (" ≈ unretrievable: best at the unretrievable row, the expected value for embeddings "
             "that carry no identity, computed from this gallery (probe columns: new photos that no "
             "model trained or unlearned on).")
  if table in ("classification", "sisa"):
    text += (" MIA = the reference attack (logistic regression on per-example losses, forget vs "
             "unseen); its forgetting score |acc − 0.5| is the reference README's \"MIA\" column.")
  return text


def csv_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """CSV header: ``model``, ``stage``, the registry's columns present, then every other key in order
  of first appearance."""
  present = list(dict.fromkeys(k for r in rows for k in r))
  head = [k for k in ("model", "stage") if k in present]
  known = [c.key for c in COLUMNS if c.key in present]
  return head + known + [k for k in present if k not in head and k not in known]


def reference_markdown() -> str:
  """The column reference (key, table label, direction, tables, meaning) for the docs."""
  lines = ["| key | label | better | tables | meaning |", "|---|---|---|---|---|"]
  for c in COLUMNS:
    lines.append(f"| `{c.key}` | {c.label} | {ARROWS[c.better]} | {', '.join(c.tables)} | {c.doc} |")
  return "\n".join(lines)
