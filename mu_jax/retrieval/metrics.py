"""Face-retrieval metrics on the host, from embeddings and identities.

Identity unlearning for retrieval (docs/metrics.md#retrieval-columns) asks two things of a model:
images of a forgotten person should no longer find each other, and everyone else should still be
found. The numbers here measure both from embeddings that the device code computed:

- :func:`retrieval_metrics`: mAP over all gallery positives and Rank-1, cosine similarity;
- :func:`compactness`: how tightly each identity clusters around its centroid (our definition of the
  dispersion paper's "Cluster Compactness Score", arXiv 2512.13317, whose formula we could not check);
- :func:`tar_at_far`: verification TAR at a fixed FAR over all pairs;
- :func:`identifiability`: how often the nearest gallery image shows the same person;
- :func:`evaluate_retrieval`: all of them for a forget/retain identity split, with the key names of
  docs/metrics.md#retrieval-columns;
- :func:`probe_metrics` / :func:`evaluate_probes`: new photos of a person (probes, never trained or
  unlearned on) against the enrolled gallery: Rank-1, Rank-5, mAP, flip rate and TAR@FAR, and
  :func:`unretrievable_probe_row`, their expected values for embeddings that carry no identity
  (docs/metrics.md#probe-photos).

Embeddings are ℓ2-normalised here again (cosine similarity is the dot product of unit vectors), so
un-normalised inputs give the same numbers; a zero embedding is refused. Gallery items with equal
similarity share their rank (average precision as scikit-learn's ``average_precision_score``,
Rank-1 as the share of positives among the items tied first), so no number depends on the order of
the gallery.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from mu_jax.evaluation.attacks import tpr_at_fpr

# Queries are scored this many at a time, so the similarity matrix never needs Q×G memory at once.
_QUERY_CHUNK = 128


def _unit(emb, name: str) -> np.ndarray:
  """Returns the rows of ``emb`` scaled to unit length (float64); refuses zero or non-finite rows."""
  x = np.asarray(emb, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f"{name} must be [N, D] embeddings, got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} holds non-finite values (nan or inf)")
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  if np.any(norms == 0):
    raise ValueError(f"{name} has {int(np.sum(norms == 0))} zero embeddings: cosine similarity is "
                     "undefined for them")
  return x / norms


def _ids(ids, n: int, name: str) -> np.ndarray:
  y = np.asarray(ids)
  if y.shape != (n,):
    raise ValueError(f"{name} must have shape ({n},) to match the embeddings, got {y.shape}")
  return y


def _codes(*id_arrays: np.ndarray) -> list[np.ndarray]:
  """Maps identities (strings or numbers) to shared integer codes, so comparisons are cheap."""
  _, inverse = np.unique(np.concatenate(id_arrays), return_inverse=True)
  out, start = [], 0
  for a in id_arrays:
    out.append(inverse[start:start + len(a)].reshape(-1))
    start += len(a)
  return out


def gallery_query_split(identities, n_query_per_identity: int = 1,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Splits images into queries and gallery, per identity.

  Each identity with at least two images gives min(``n_query_per_identity``, images − 1) randomly
  chosen query images; the rest go to the gallery, so every query has at least one positive in the
  gallery. Identities with a single image are gallery-only: they cannot be queried, but they still
  act as distractors for everyone else's queries.

  Args:
    identities: [N] identity of each image.
    n_query_per_identity: queries per identity (at least 1).
    seed: seed of the choice.

  Returns:
    ``(query_index, gallery_index)``: sorted int64 indices into ``identities``, disjoint, covering
    all N images.
  """
  if n_query_per_identity < 1:
    raise ValueError(f"n_query_per_identity must be >= 1, got {n_query_per_identity}")
  ids = np.asarray(identities)
  if ids.ndim != 1:
    raise ValueError(f"identities must be a vector, got shape {ids.shape}")
  rng = np.random.default_rng(seed)
  (codes,) = _codes(ids)
  # Image indices grouped by identity, each group in image order.
  groups = np.split(np.argsort(codes, kind="stable"), np.cumsum(np.bincount(codes))[:-1])
  is_query = np.zeros(len(ids), dtype=bool)
  for members in groups:
    if len(members) >= 2:
      k = min(n_query_per_identity, len(members) - 1)
      is_query[rng.choice(members, size=k, replace=False)] = True
  return np.nonzero(is_query)[0], np.nonzero(~is_query)[0]


def _tie_aware_scores(q: np.ndarray, q_codes: np.ndarray, g: np.ndarray, g_codes: np.ndarray):
  """Yields, per chunk of queries, ``(ap, top1, n_pos)``, each with ties in similarity shared.

  Average precision is scikit-learn's ``average_precision_score`` of the gallery ranked by cosine
  similarity: a sum over the distinct similarity values, from the highest, of (recall gained at that
  value) × (precision over every item scoring at least that value). Items that tie share one
  precision, so the order of tied gallery items never changes the result. ``top1`` is the share of
  positives among the gallery items tied for the highest similarity (1 or 0 when there is no tie).
  ``n_pos`` counts each query's gallery positives; ``ap`` is 0 where it is 0.
  """
  ranks = np.arange(1, len(g) + 1)
  for s in range(0, len(q), _QUERY_CHUNK):
    sims = q[s:s + _QUERY_CHUNK] @ g.T
    order = np.argsort(-sims, axis=1, kind="stable")
    ranked = np.take_along_axis(sims, order, axis=1)
    rel = g_codes[order] == q_codes[s:s + _QUERY_CHUNK, None]
    # The last rank of each run of equal similarities: a run ends where the next value differs.
    is_end = np.ones_like(rel)
    is_end[:, :-1] = ranked[:, 1:] != ranked[:, :-1]
    end = np.where(is_end, np.arange(len(g)), len(g))
    end = np.minimum.accumulate(end[:, ::-1], axis=1)[:, ::-1]
    hits = np.cumsum(rel, axis=1)
    # Every positive is credited with the precision at the end of its run of ties.
    precision_at_end = np.take_along_axis(hits, end, axis=1) / ranks[end]
    n_pos = hits[:, -1]
    ap = np.sum(precision_at_end * rel, axis=1) / np.maximum(n_pos, 1)
    first = end[:, 0]
    top1 = hits[np.arange(len(hits)), first] / (first + 1)
    yield ap, top1, n_pos


def retrieval_metrics(query_emb, query_ids, gallery_emb, gallery_ids) -> dict:
  """mAP and Rank-1 of cosine-similarity retrieval, invariant to the order of tied gallery items.

  For each query the gallery is ranked by cosine similarity. Its average precision (mAP@all) is
  scikit-learn's ``average_precision_score(gallery is a positive, similarity)``: the mean, over the
  gallery positives, of the precision at the last rank that ties with the positive's similarity.
  Rank-1 is the share of positives among the gallery items tied for the highest similarity: with one
  positive and one negative tied first, AP and Rank-1 are both 0.5, whichever comes first in the
  gallery. A query with no positive in the gallery has no defined AP: it is left out of both mAP and
  Rank-1 and counted in ``n_queries_without_positive``.

  Args:
    query_emb: [Q, D] query embeddings.
    query_ids: [Q] their identities.
    gallery_emb: [G, D] gallery embeddings (queries must not be in the gallery).
    gallery_ids: [G] their identities.

  Returns:
    ``{"map", "rank1", "n_queries" (scored), "n_queries_without_positive"}``; map and rank1 are nan
    when no query has a positive.
  """
  q = _unit(query_emb, "query_emb")
  g = _unit(gallery_emb, "gallery_emb")
  if len(q) == 0 or len(g) == 0:
    raise ValueError(f"need at least one query and one gallery image, got {len(q)} and {len(g)}")
  if q.shape[1] != g.shape[1]:
    raise ValueError(f"query_emb has dimension {q.shape[1]} but gallery_emb has {g.shape[1]}")
  q_codes, g_codes = _codes(_ids(query_ids, len(q), "query_ids"), _ids(gallery_ids, len(g), "gallery_ids"))
  aps, top1 = [], []
  for ap, first, n_pos in _tie_aware_scores(q, q_codes, g, g_codes):
    keep = n_pos > 0
    aps.append(ap[keep])
    top1.append(first[keep])
  aps_all, top1_all = np.concatenate(aps), np.concatenate(top1)
  n = len(aps_all)
  return {
      "map": float(np.mean(aps_all)) if n else float("nan"),
      "rank1": float(np.mean(top1_all)) if n else float("nan"),
      "n_queries": int(n),
      "n_queries_without_positive": int(len(q) - n),
  }


def identifiability(query_emb, query_ids, gallery_emb, gallery_ids) -> float:
  """Fraction of queries whose nearest gallery image shows the same person.

  When several gallery images tie for nearest, a query counts by the share of them that show its
  person (as Rank-1 in :func:`retrieval_metrics`). Unlike Rank-1 in :func:`retrieval_metrics`, every query counts: a query whose identity has no image
  in the gallery cannot be identified and counts as not identified. Queries are not in the gallery,
  so a query never matches itself.

  Args:
    query_emb: [Q, D] query embeddings.
    query_ids: [Q] their identities.
    gallery_emb: [G, D] gallery embeddings.
    gallery_ids: [G] their identities.

  Returns:
    The fraction in [0, 1].
  """
  q = _unit(query_emb, "query_emb")
  g = _unit(gallery_emb, "gallery_emb")
  if len(q) == 0 or len(g) == 0:
    raise ValueError(f"need at least one query and one gallery image, got {len(q)} and {len(g)}")
  if q.shape[1] != g.shape[1]:
    raise ValueError(f"query_emb has dimension {q.shape[1]} but gallery_emb has {g.shape[1]}")
  q_codes, g_codes = _codes(_ids(query_ids, len(q), "query_ids"), _ids(gallery_ids, len(g), "gallery_ids"))
  hits = [top1 for _, top1, _ in _tie_aware_scores(q, q_codes, g, g_codes)]
  return float(np.mean(np.concatenate(hits)))


def compactness(emb, ids) -> float:
  """Mean cosine similarity of each embedding to its identity's normalised centroid.

  1 means every identity collapses to a point; dispersing an identity over the sphere drives its
  value toward 0. Identities with a single image are left out (their cosine to their own centroid is
  1 by construction and says nothing about clustering). If an identity's embeddings cancel exactly
  (zero centroid), its cosines count as 0: the cluster has no direction left.

  Args:
    emb: [N, D] embeddings.
    ids: [N] identities.

  Returns:
    The mean over the images of identities with at least two images; nan when there are none.
  """
  x = _unit(emb, "emb")
  if len(x) == 0:
    return float("nan")
  (codes,) = _codes(_ids(ids, len(x), "ids"))
  k = codes.max() + 1
  counts = np.bincount(codes, minlength=k)
  sums = np.zeros((k, x.shape[1]))
  np.add.at(sums, codes, x)
  norms = np.linalg.norm(sums, axis=1, keepdims=True)
  # Relative tolerance: a centroid this much shorter than its members is rounding noise, not a direction.
  zero = norms[:, 0] <= 1e-12 * counts
  centroids = np.where(zero[:, None], 0.0, sums / np.where(norms > 0, norms, 1.0))
  cos = np.sum(x * centroids[codes], axis=1)
  keep = counts[codes] >= 2
  return float(np.mean(cos[keep])) if np.any(keep) else float("nan")


def tar_at_far(emb, ids, far: float = 1e-3) -> float:
  """Verification true-accept rate at a false-accept rate, over all pairs of images.

  Every unordered pair (i < j) is scored by cosine similarity; genuine pairs share an identity,
  impostor pairs do not. The threshold follows the convention of
  :func:`mu_jax.evaluation.attacks.tpr_at_fpr`: the largest TAR over thresholds whose FAR (fraction
  of impostor pairs accepted, score ≥ threshold) is at most ``far``. Memory grows with N²/2 scores, so
  subsample large sets first (:func:`evaluate_retrieval` does).

  Args:
    emb: [N, D] embeddings.
    ids: [N] identities.
    far: the target false-accept rate in [0, 1].

  Returns:
    The TAR in [0, 1].
  """
  x = _unit(emb, "emb")
  (codes,) = _codes(_ids(ids, len(x), "ids"))
  genuine, impostor = [], []
  for s in range(0, len(x), _QUERY_CHUNK):
    sims = x[s:s + _QUERY_CHUNK] @ x.T
    rows = np.arange(s, min(s + _QUERY_CHUNK, len(x)))
    upper = np.arange(len(x))[None, :] > rows[:, None]
    same = codes[rows][:, None] == codes[None, :]
    genuine.append(sims[upper & same])
    impostor.append(sims[upper & ~same])
  genuine_all, impostor_all = np.concatenate(genuine), np.concatenate(impostor)
  if len(genuine_all) == 0 or len(impostor_all) == 0:
    raise ValueError(f"tar_at_far needs genuine and impostor pairs, got {len(genuine_all)} and "
                     f"{len(impostor_all)}: give at least two images of one identity and two identities")
  return tpr_at_fpr(genuine_all, impostor_all, far)


def evaluate_retrieval(emb, ids, forget_identities: Iterable, seed: int = 0,
                       tar_max_examples: int = 4000) -> dict:
  """Retrieval report of an identity-unlearning run.

  One query per identity (:func:`gallery_query_split` with ``seed``); the gallery is every gallery
  image of every identity, forget and retain together, so a forgotten person's query competes with
  everyone. Forget metrics use the queries of forgotten identities, retain metrics the others.

  Args:
    emb: [N, D] embeddings of every evaluation image.
    ids: [N] identities.
    forget_identities: the forgotten identities (each must occur in ``ids``); may be empty.
    seed: seed of the query choice and of the TAR subsample.
    tar_max_examples: at most this many retain images (drawn uniformly with ``seed``) enter the
      all-pairs TAR@FAR, whose memory grows quadratically.

  Returns:
    ``{"forget_map", "forget_rank1", "retain_map", "retain_rank1", "forget_compactness",
    "retain_compactness", "identifiability" (of forget-identity queries), "retain_tar_at_far_1e-3",
    "n_forget_queries", "n_retain_queries"}``; a value is nan when its set is empty.
  """
  x = np.asarray(emb, dtype=np.float64)
  y = _ids(ids, len(x), "ids")
  forget = list(dict.fromkeys(forget_identities))
  present = set(y.tolist())
  missing = [f for f in forget if f not in present]
  if missing:
    raise ValueError(f"forget_identities names identities that are not in ids: {missing[:5]} "
                     f"({len(missing)} in all; check that both use the same type)")
  forget_set = set(forget)
  is_forget = np.array([v in forget_set for v in y.tolist()], dtype=bool)
  query, gallery = gallery_query_split(y, 1, seed)
  forget_q, retain_q = query[is_forget[query]], query[~is_forget[query]]
  nan = float("nan")

  def scored(q: np.ndarray) -> dict:
    if len(q) == 0:
      return {"map": nan, "rank1": nan}
    return retrieval_metrics(x[q], y[q], x[gallery], y[gallery])

  f, r = scored(forget_q), scored(retain_q)
  retain_idx = np.nonzero(~is_forget)[0]
  if len(retain_idx) > tar_max_examples:
    retain_idx = np.sort(np.random.default_rng(seed).choice(retain_idx, tar_max_examples,
                                                            replace=False))
  # TAR@FAR needs a genuine pair (an identity with two images) and an impostor pair (two identities).
  _, per_identity = np.unique(y[retain_idx], return_counts=True)
  tar = (tar_at_far(x[retain_idx], y[retain_idx], 1e-3)
         if len(per_identity) >= 2 and per_identity.max() >= 2 else nan)
  return {
      "forget_map": f["map"],
      "forget_rank1": f["rank1"],
      "retain_map": r["map"],
      "retain_rank1": r["rank1"],
      "forget_compactness": compactness(x[is_forget], y[is_forget]) if is_forget.any() else nan,
      "retain_compactness": compactness(x[~is_forget], y[~is_forget]) if (~is_forget).any() else nan,
      "identifiability": (identifiability(x[forget_q], y[forget_q], x[gallery], y[gallery])
                          if len(forget_q) else nan),
      "retain_tar_at_far_1e-3": tar,
      "n_forget_queries": int(len(forget_q)),
      "n_retain_queries": int(len(retain_q)),
  }


# ------------------------------------------------------------------------------ probe photos

# The verification operating points of the probe columns, with the spelling of their row keys.
PROBE_FARS = ((1e-3, "1e-3"), (1e-2, "1e-2"))
PROBE_METRICS = ("rank1", "rank5", "map", "flip_rate") + tuple(f"tar_at_far_{s}" for _, s in PROBE_FARS)


def probe_keys(prefix: str) -> tuple[str, ...]:
  """The row keys of one group's probe metrics: ``forget_probe_rank1``, ... for ``prefix="forget"``."""
  return tuple(f"{prefix}_probe_{m}" for m in PROBE_METRICS)


def _rank_k_hits(sims: np.ndarray, rel: np.ndarray, k: int) -> np.ndarray:
  """Per row, the chance that a same-person item is among the first ``k`` when ties are ordered at
  random: 1 if one scores above the k-th highest value; otherwise 1 − C(t−p, m)/C(t, m), where the
  ``t`` items tied at that value hold ``p`` same-person items and fill the ``m`` places left."""
  n = sims.shape[1]
  if n <= k:
    return rel.any(axis=1).astype(np.float64)
  kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1:k]
  above, tied = sims > kth, sims == kth
  pos_above = np.any(rel & above, axis=1)
  m = k - above.sum(axis=1)
  t = tied.sum(axis=1).astype(np.float64)
  p = np.sum(rel & tied, axis=1).astype(np.float64)
  miss = np.ones(len(sims))
  for i in range(k):
    step = np.maximum(t - p - i, 0.0) / np.maximum(t - i, 1.0)
    miss *= np.where(i < m, step, 1.0)
  return np.where(pos_above, 1.0, 1.0 - miss)


def probe_metrics(probe_emb, probe_ids, gallery_emb, gallery_ids) -> dict:
  """Rank-1, Rank-5, mAP, flip rate and TAR@FAR of new photos (probes) against an enrolled gallery.

  Probes are never in the gallery. Each probe ranks the gallery by cosine similarity:

  - ``rank1``/``rank5``: whether an image of the probe's person is among the first 1 / 5, with tied
    gallery items in random order (the expectation over that order, so no gallery order matters);
  - ``map``: average precision as in :func:`retrieval_metrics` (ties share their precision);
  - ``flip_rate``: the share of probes whose best same-person score is below their best
    other-person score (a retrieval flip, arXiv 2512.13317); an exact tie counts one half;
  - ``tar_at_far_1e-3`` / ``1e-2``: 1:1 verification over every (probe, enrolled image) pair: the
    share of same-person pairs accepted at the threshold whose false-accept rate over the
    other-person pairs is at most the FAR (:func:`mu_jax.evaluation.attacks.tpr_at_fpr`).

  A probe whose person has no enrolled image cannot be found; it is left out and counted in
  ``n_probes_without_enrolled``. Memory holds all Q×G scores for the verification pairs.

  Args:
    probe_emb: [Q, D] probe embeddings.
    probe_ids: [Q] their persons.
    gallery_emb: [G, D] enrolled embeddings.
    gallery_ids: [G] their persons.

  Returns:
    ``{"rank1", "rank5", "map", "flip_rate", "tar_at_far_1e-3", "tar_at_far_1e-2", "n_probes",
    "n_probes_without_enrolled"}``; the metrics are nan when no probe has an enrolled image, and the
    TARs also when no other-person pair exists.
  """
  q = _unit(probe_emb, "probe_emb")
  g = _unit(gallery_emb, "gallery_emb")
  if len(g) == 0:
    raise ValueError("the gallery is empty: probes need enrolled images to be matched against")
  if len(q) and q.shape[1] != g.shape[1]:
    raise ValueError(f"probe_emb has dimension {q.shape[1]} but gallery_emb has {g.shape[1]}")
  q_codes, g_codes = _codes(_ids(probe_ids, len(q), "probe_ids"), _ids(gallery_ids, len(g), "gallery_ids"))
  keep = np.isin(q_codes, g_codes)
  q, q_codes = q[keep], q_codes[keep]
  nan = float("nan")
  out = {m: nan for m in PROBE_METRICS}
  out.update(n_probes=int(len(q)), n_probes_without_enrolled=int(np.sum(~keep)))
  if len(q) == 0:
    return out
  r1, r5, ap, flip, genuine, impostor = [], [], [], [], [], []
  for s in range(0, len(q), _QUERY_CHUNK):
    sims = q[s:s + _QUERY_CHUNK] @ g.T
    rel = g_codes[None, :] == q_codes[s:s + _QUERY_CHUNK, None]
    r1.append(_rank_k_hits(sims, rel, 1))
    r5.append(_rank_k_hits(sims, rel, 5))
    best_same = np.where(rel, sims, -np.inf).max(axis=1)
    best_other = np.where(rel, -np.inf, sims).max(axis=1)
    flip.append((best_same < best_other) + 0.5 * (best_same == best_other))
    genuine.append(sims[rel])
    impostor.append(sims[~rel])
  for a, _, _ in _tie_aware_scores(q, q_codes, g, g_codes):
    ap.append(a)
  out.update(rank1=float(np.mean(np.concatenate(r1))), rank5=float(np.mean(np.concatenate(r5))),
             map=float(np.mean(np.concatenate(ap))), flip_rate=float(np.mean(np.concatenate(flip))))
  gen, imp = np.concatenate(genuine), np.concatenate(impostor)
  for far, name in PROBE_FARS:
    out[f"tar_at_far_{name}"] = tpr_at_fpr(gen, imp, far) if len(imp) else nan
  return out


def unretrievable_probe_metrics(probe_ids, gallery_ids) -> dict:
  """The expected :func:`probe_metrics` of embeddings that carry no identity, for this gallery.

  With identity-free embeddings every probe's ranking of the gallery is a uniformly random
  permutation. For a probe whose person has ``n`` of the ``G`` enrolled images: Rank-1 = n/G;
  Rank-5 = 1 − C(G−n, 5)/C(G, 5); average precision = H_G/G + (n−1)(G−H_G)/(G(G−1)) (H_G the G-th
  harmonic number: the expectation of Σ_k rel_k·hits_k/k over random orders, divided by n); flip
  rate = (G−n)/G (the first item is another person's); and genuine and impostor scores share one
  distribution, so TAR at FAR f is f. Each is averaged over the probes as :func:`probe_metrics`
  averages them (probes without an enrolled image left out).

  Args:
    probe_ids: [Q] the probes' persons.
    gallery_ids: [G] the enrolled images' persons.

  Returns:
    :func:`probe_metrics`' keys.
  """
  p = np.asarray(probe_ids)
  g = np.asarray(gallery_ids)
  if p.ndim != 1 or g.ndim != 1:
    raise ValueError(f"probe_ids and gallery_ids must be vectors, got shapes {p.shape} and {g.shape}")
  if len(g) == 0:
    raise ValueError("the gallery is empty: probes need enrolled images to be matched against")
  p_codes, g_codes = _codes(p, g)
  counts = np.bincount(g_codes, minlength=int(max(p_codes.max(initial=0), g_codes.max()) + 1))
  n = counts[p_codes].astype(np.float64) if len(p) else np.zeros(0)
  keep = n > 0
  n = n[keep]
  size = float(len(g))
  nan = float("nan")
  out = {m: nan for m in PROBE_METRICS}
  out.update(n_probes=int(len(n)), n_probes_without_enrolled=int(np.sum(~keep)))
  if len(n) == 0:
    return out
  harmonic = float(np.sum(1.0 / np.arange(1, len(g) + 1)))
  k = min(5, len(g))
  miss5 = np.ones_like(n)
  for i in range(k):
    miss5 *= np.maximum(size - n - i, 0.0) / (size - i)
  ap = harmonic / size + ((n - 1) * (size - harmonic) / (size * (size - 1)) if size > 1 else 0.0)
  out.update(rank1=float(np.mean(n / size)), rank5=float(np.mean(1.0 - miss5)),
             map=float(np.mean(ap)), flip_rate=float(np.mean((size - n) / size)))
  for far, name in PROBE_FARS:
    out[f"tar_at_far_{name}"] = far
  return out


def _split_probes(probe_ids, forget_identities: Iterable) -> tuple[np.ndarray, np.ndarray]:
  p = np.asarray(probe_ids)
  forget = set(forget_identities)
  is_forget = np.array([v in forget for v in p.tolist()], dtype=bool)
  return is_forget, p


def evaluate_probes(probe_emb, probe_ids, gallery_emb, gallery_ids,
                    forget_identities: Iterable) -> dict:
  """:func:`probe_metrics` for the forgotten and for the retained persons' probes separately.

  The gallery is the same for both: every enrolled image of every train person, so a forgotten
  person's probe competes with everyone.

  Args:
    probe_emb: [Q, D] probe embeddings.
    probe_ids: [Q] their persons.
    gallery_emb: [G, D] enrolled embeddings.
    gallery_ids: [G] their persons.
    forget_identities: the forgotten persons.

  Returns:
    ``forget_probe_<m>`` and ``retain_probe_<m>`` for each metric of :data:`PROBE_METRICS`, plus
    ``n_forget_probes`` and ``n_retain_probes``; a group without probes has nan metrics.
  """
  x = np.asarray(probe_emb, dtype=np.float64)
  is_forget, p = _split_probes(_ids(probe_ids, len(x), "probe_ids"), forget_identities)
  row = {}
  for prefix, sel in (("forget", is_forget), ("retain", ~is_forget)):
    m = (probe_metrics(x[sel], p[sel], gallery_emb, gallery_ids) if sel.any()
         else {k: float("nan") for k in PROBE_METRICS} | {"n_probes": 0})
    row.update({f"{prefix}_probe_{k}": m[k] for k in PROBE_METRICS})
    row[f"n_{prefix}_probes"] = int(m["n_probes"])
  return row


def unretrievable_probe_row(probe_ids, gallery_ids, forget_identities: Iterable) -> dict:
  """:func:`unretrievable_probe_metrics` with :func:`evaluate_probes`' keys: the level a model
  reaches when a forgotten (or retained) person cannot be found at all."""
  is_forget, p = _split_probes(probe_ids, forget_identities)
  row = {}
  for prefix, sel in (("forget", is_forget), ("retain", ~is_forget)):
    m = (unretrievable_probe_metrics(p[sel], gallery_ids) if sel.any()
         else {k: float("nan") for k in PROBE_METRICS} | {"n_probes": 0})
    row.update({f"{prefix}_probe_{k}": m[k] for k in PROBE_METRICS})
    row[f"n_{prefix}_probes"] = int(m["n_probes"])
  return row
