"""Identity unlearning for face embedding models, as Unlearners run by :func:`mu_jax.methods.run`.

Forgetting a person in a retrieval system means that their images no longer find each other
(docs/methods.md#retrieval-methods). Every method here is a factory that returns an
:class:`~mu_jax.methods.base.Unlearner` whose pure per-device steps work on an
:class:`~mu_jax.retrieval.model.EmbeddingNet` (margin head, unit embeddings), so the one
classification driver runs them, with its checkpoints, divergence guard and logs. Feed the driver
``{"retain": ..., "forget": ...}`` with identity labels (:mod:`mu_jax.retrieval.data`).

Baselines adapted to the margin head, as the dispersion paper (arXiv 2512.13317) says it did:

* ``random_labels``: margin loss on forget images with a random other identity, plus the margin
  loss on retain (SalUn's RL, with CosFace/ArcFace in place of CE);
* ``gradient_ascent``: minus the margin loss on forget images;
* ``boundary_shrink`` (Chen et al., CVPR 2023): FGSM (bound 0.1) on the frozen original's plain
  cosine logits gives each forget image's nearest wrong identity; the model is trained toward it
  with the margin loss. The true identity is excluded from the argmax, so the new label is always
  a wrong one (the reference takes the plain argmax, which can return the true class);
* ``scrub`` (Kurmanji et al., NeurIPS 2023) on embeddings: the KL between teacher and student
  outputs becomes the cosine distance between their embeddings; max-steps (push forget embeddings
  away from the teacher's) for the first ``msteps`` epochs, min-steps on retain (γ · margin loss
  + α · distance to the teacher) every epoch.

Methods for retrieval. The papers' loss formulas are not public, so both are **mu_jax's own
designs after the papers' descriptions, not the papers' formulas**:

* ``dispersion`` (after Zakharov, arXiv 2512.13317): on the forget identities, a uniformity loss
  ``log mean_{i≠j} exp(−t‖zᵢ − zⱼ‖²)`` (Wang & Isola, ICML 2020) spreads their embeddings over the
  hypersphere and a hard-dispersion loss ``mean_i τ·logsumexp_{j≠i, yⱼ=yᵢ} cos(zᵢ, zⱼ)/τ`` pushes
  apart each image's most similar images of the same person; on retain, the embeddings are kept
  at the original model's (distillation, ``‖z − z₀‖²``) and optionally the margin loss is kept.
  The forget terms drive the update; the retain terms only hold the rest in place.
* ``cure`` (after Shivam et al., CURE, arXiv 2509.19562): unsupervised, no identity label of
  a forget image is used. K-means on the forget embeddings (run inside the driver as Lloyd passes
  over the forget set, see :func:`cure`); each forget image is pulled toward the centroid farthest
  from its own, its own being the centroid nearest to the frozen original's embedding, so the
  pseudo-label stays fixed between clusterings (cosine loss plus a cross-entropy over the centroids
  with that pseudo-label); the clusters are recomputed from the current model every
  ``recluster_every`` epochs; retain
  embeddings are matched to the original's (feature matching, no labels either).

Set-level losses (uniformity, hard dispersion, K-means) see the *global* forget batch: embeddings
are gathered over the data-parallel axis with a differentiable ``all_gather``, every device
computes the same loss, and the gradient (whose transpose sums the devices' cotangents) divided by
the driver's ``pmean`` equals the one-device gradient. Per-example randomness is keyed by global
position. So every step gives the same result on 1 and on 4 devices (tested).

Defaults (learning rates, epochs, weights) are mu_jax's, chosen on the synthetic-identities
benchmark (``experiments/configs/retrieval.py``); the papers' values are not public. Every method
takes ``augment`` (default False): feed the reference training augmentation to its steps, which
suits models trained with it; the synthetic-identities models train without it (the nuisances are
in the images), and unlearning matches how the model was trained.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from mu_jax import parallel
from mu_jax.methods import common
from mu_jax.methods.base import Phase, Unlearner, check_non_negative, check_positive
from mu_jax.methods.registry import Registry
from mu_jax.retrieval import model as model_lib
from mu_jax.retrieval.train import margin_loss

TASKS = ("multiclass",)


# ---------------------------------------------------------------------------------------------
# Pure losses (exported for tests and for users' own loops).


def uniformity_loss(z: jax.Array, t: float = 2.0) -> jax.Array:
  """``log mean_{i≠j} exp(−t‖zᵢ − zⱼ‖²)`` over the rows of ``z`` [B, d] (B ≥ 2)."""
  z = z.astype(jnp.float32)
  b = z.shape[0]
  sq = jnp.sum(z * z, -1)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * z @ z.T, 0.0)
  off = ~jnp.eye(b, dtype=bool)
  return jax.nn.logsumexp(jnp.where(off, -t * d2, -jnp.inf)) - jnp.log(float(b * (b - 1)))


def hard_dispersion_loss(z: jax.Array, ids: jax.Array, tau: float = 0.1) -> jax.Array:
  """``mean_i τ·logsumexp_{j≠i, idⱼ=idᵢ}(cos(zᵢ, zⱼ)/τ)``: a soft maximum of each image's
  same-person cosines, averaged over the images that have a same-person partner (0 if none).

  Args:
    z: [B, d] embeddings (normalised here).
    ids: [B] person of each row.
    tau: temperature; as τ → 0 the soft maximum becomes the maximum.
  """
  u = model_lib.l2_normalize(z)
  cos = u @ u.T
  same = (ids[:, None] == ids[None, :]) & ~jnp.eye(z.shape[0], dtype=bool)
  soft_max = tau * jax.nn.logsumexp(jnp.where(same, cos / tau, -jnp.inf), axis=-1)
  has = same.any(-1)
  return jnp.sum(jnp.where(has, soft_max, 0.0)) / jnp.maximum(has.sum(), 1)


def cosine_distance(a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-row ``1 − cos(a, b)``."""
  return 1.0 - jnp.sum(model_lib.l2_normalize(a) * model_lib.l2_normalize(b), -1)


# ---------------------------------------------------------------------------------------------
# Step building blocks.


def _with_teacher(state, rng, spec):
  """``init`` of the methods that need the frozen original: its parameters and BN statistics."""
  del rng, spec
  return state, {"teacher": {"params": state.params, "batch_stats": state.batch_stats}}


def _frozen_out(state, variables, images):
  """Eval-mode (logits, embeddings) of ``variables`` ({params, batch_stats}), without gradient."""
  logits, emb, _ = model_lib.embed(state, variables["params"], variables["batch_stats"], images,
                                   train=False)
  return lax.stop_gradient(logits), lax.stop_gradient(emb)


def _teacher_out(state, aux, images):
  """Eval-mode (logits, embeddings) of the frozen original."""
  return _frozen_out(state, aux["teacher"], images)


def _gather(x: jax.Array) -> jax.Array:
  """The global batch of ``x`` on every device (differentiable; see the module docstring)."""
  return lax.all_gather(x, parallel.AXIS, tiled=True)


def _example_keys(rng: jax.Array, n: int) -> jax.Array:
  """One key per local example, from its global batch position (device-count invariant)."""
  return jax.vmap(lambda p: jax.random.fold_in(rng, p))(parallel.global_index(n))


def _random_other_labels(rng: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """Uniform over the C−1 identities that are not the true one, drawn per example."""
  keys = _example_keys(rng, labels.shape[0])
  shift = jax.vmap(lambda k: jax.random.randint(k, (), 1, num_classes))(keys)
  return (labels + shift) % num_classes


def _margin_ce(logits, labels):
  return margin_loss(logits, labels).mean()


def _single_step(loss_of: Callable[..., tuple[jax.Array, dict]]):
  """A step on a single-stream batch: ``loss_of(state, aux, params, batch, rng)`` →
  (loss, (batch_stats, metrics))."""

  def step(state, aux, batch, rng, info):
    del info
    state, metrics = common.gradient_step(state, lambda p: loss_of(state, aux, p, batch, rng))
    return state, aux, metrics

  return step


def _optimizer(name: str, lr: float, momentum: float):
  check_positive(name, lr=lr)
  if not 0 <= momentum < 1:
    raise ValueError(f"{name}: momentum must be in [0, 1), got {momentum}")
  return common.reference_sgd(lr, momentum)


def _forget_stream(stream: str, step):
  """(driver stream, step) for a forget-only step: over the forget set, or over paired batches with
  the retain half ignored (as the MUFAC reference's NegGrad: as many steps as retain batches, the
  forget batches cycled, which gives a small forget set more than one step per epoch). Build it
  once per method, so phases that share it share one compiled step."""
  if stream == "forget":
    return "forget", step
  return "paired", lambda s, a, b, r, i: step(s, a, b["forget"], r, i)


def _check_stream(name: str, stream: str) -> None:
  if stream not in ("paired", "forget"):
    raise ValueError(f"{name}: stream must be 'paired' or 'forget', got {stream!r}")


# ---------------------------------------------------------------------------------------------
# Baselines adapted to the margin head.


def random_labels(lr: float = 2e-2, epochs: int = 4, momentum: float = 0.9, augment: bool = False
                  ) -> Unlearner:
  """Margin loss toward a random other identity on forget, and toward the true one on retain.

  Paired batches: one retain and one forget batch per step (their margin losses summed), as SalUn's
  RL trains forget-with-random-labels together with retain.
  """
  check_positive("random_labels", epochs=epochs)

  def phases(spec):
    n_cls = spec.num_classes

    def step(state, aux, batch, rng, info):
      del info
      f, r = batch["forget"], batch["retain"]
      wrong = _random_other_labels(rng, f["label"], n_cls)

      def loss_fn(params):
        lr_, _, stats = model_lib.embed(state, params, state.batch_stats, r["image"], train=True,
                                        labels=r["label"])
        lf_, _, stats = model_lib.embed(state, params, stats, f["image"], train=True, labels=wrong)
        ce_r, ce_f = _margin_ce(lr_, r["label"]), _margin_ce(lf_, wrong)
        return ce_r + ce_f, (stats, {"retain_margin_loss": ce_r, "forget_random_label_loss": ce_f})

      state, metrics = common.gradient_step(state, loss_fn)
      return state, aux, metrics

    return [Phase("relabel", "paired", step, epochs, augment)]

  return Unlearner("random_labels", {"lr": lr, "epochs": epochs, "momentum": momentum,
                                     "augment": augment},
                   _optimizer("random_labels", lr, momentum), phases, tasks=TASKS)


def gradient_ascent(lr: float = 3e-3, epochs: int = 2, momentum: float = 0.9, stream: str = "paired",
                    augment: bool = False) -> Unlearner:
  """Minimise minus the margin loss of the forget images.

  The margin loss is bounded (cosines lie in [−1, 1]), so the ascent cannot run to infinity; it
  drives each forget embedding away from its own class centre. ``stream``: "paired" (forget batches
  cycled once per retain batch, the retain half unused) or "forget" (one pass over forget).
  """
  check_positive("gradient_ascent", epochs=epochs)
  _check_stream("gradient_ascent", stream)

  def loss_of(state, aux, params, batch, rng):
    del aux, rng
    logits, _, stats = model_lib.embed(state, params, state.batch_stats, batch["image"], train=True,
                                       labels=batch["label"])
    ce = _margin_ce(logits, batch["label"])
    return -ce, (stats, {"forget_margin_loss": ce})

  return Unlearner("gradient_ascent", {"lr": lr, "epochs": epochs, "momentum": momentum,
                                       "stream": stream, "augment": augment},
                   _optimizer("gradient_ascent", lr, momentum),
                   lambda spec: [Phase("ascent", *_forget_stream(stream, _single_step(loss_of)), epochs,
                                       augment)],
                   tasks=TASKS)


def boundary_shrink(bound: float = 0.1, lr: float = 1e-2, epochs: int = 2, momentum: float = 0.9,
                    stream: str = "paired", augment: bool = False) -> Unlearner:
  """Boundary Shrink with a margin head (module docstring; bound 0.1 as the paper's code).

  ``stream`` as in :func:`gradient_ascent`.
  """
  check_positive("boundary_shrink", bound=bound, epochs=epochs)
  _check_stream("boundary_shrink", stream)

  def loss_of(state, aux, params, batch, rng):
    del rng
    x, y = batch["image"], batch["label"]

    def teacher_ce(images):
      logits, _, _ = model_lib.embed(state, aux["teacher"]["params"], aux["teacher"]["batch_stats"],
                                     images, train=False)
      # Summed, so each image's input gradient is its own loss's gradient.
      return margin_loss(logits, y).sum()

    grad_x = jax.grad(teacher_ce)(x)
    x_adv = jnp.clip(jnp.round((x + bound * jnp.sign(grad_x)) * 255.0) / 255.0, 0.0, 1.0)
    adv_logits, _ = _teacher_out(state, aux, x_adv)
    onehot = jax.nn.one_hot(y, adv_logits.shape[-1], dtype=bool)
    nearest_wrong = jnp.argmax(jnp.where(onehot, -jnp.inf, adv_logits), -1)
    logits, _, stats = model_lib.embed(state, params, state.batch_stats, x, train=True,
                                       labels=nearest_wrong)
    ce = _margin_ce(logits, nearest_wrong)
    return ce, (stats, {"shrink_loss": ce})

  return Unlearner("boundary_shrink", {"bound": bound, "lr": lr, "epochs": epochs,
                                       "momentum": momentum, "stream": stream, "augment": augment},
                   _optimizer("boundary_shrink", lr, momentum),
                   lambda spec: [Phase("shrink", *_forget_stream(stream, _single_step(loss_of)), epochs,
                                       augment)],
                   init=_with_teacher, tasks=TASKS)


def scrub(lr: float = 5e-2, epochs: int = 4, msteps: int = 2, alpha: float = 1.0,
          gamma: float = 1.0, momentum: float = 0.9, max_stream: str = "paired",
          augment: bool = False) -> Unlearner:
  """SCRUB on embeddings (module docstring): per epoch a max pass on forget (first ``msteps``
  epochs), then a min pass on retain.

  The official max pass is one pass over the forget set; ``max_stream="paired"`` (the default
  here) cycles forget batches once per retain batch instead, as :func:`gradient_ascent` does,
  because a forget set of a few persons gives one or two batches: too few max-steps to move
  anything before the min pass restores it.

  Args:
    lr: learning rate (SGD with ``momentum``).
    epochs: epochs of min-steps.
    msteps: epochs that also run max-steps (the official default is 3 of 10).
    alpha: weight of the retain distance to the teacher.
    gamma: weight of the retain margin loss.
    momentum: SGD momentum.
    max_stream: "paired" or "forget" (the official one pass).
    augment: feed the reference augmentation.
  """
  check_positive("scrub", epochs=epochs)
  check_non_negative("scrub", msteps=msteps, alpha=alpha, gamma=gamma)
  _check_stream("scrub", max_stream)

  def max_loss(state, aux, params, batch, rng):
    del rng
    _, zt = _teacher_out(state, aux, batch["image"])
    _, z, stats = model_lib.embed(state, params, state.batch_stats, batch["image"], train=True)
    dist = cosine_distance(z, zt).mean()
    return -dist, (stats, {"forget_teacher_distance": dist})

  def min_loss(state, aux, params, batch, rng):
    del rng
    _, zt = _teacher_out(state, aux, batch["image"])
    logits, z, stats = model_lib.embed(state, params, state.batch_stats, batch["image"], train=True,
                                       labels=batch["label"])
    dist, ce = cosine_distance(z, zt).mean(), _margin_ce(logits, batch["label"])
    return gamma * ce + alpha * dist, (stats, {"retain_teacher_distance": dist,
                                               "retain_margin_loss": ce})

  def phases(spec):
    del spec
    max_name, max_step = _forget_stream(max_stream, _single_step(max_loss))
    min_step = _single_step(min_loss)
    out = []
    for e in range(epochs):
      if e < msteps:
        out.append(Phase(f"max{e + 1}", max_name, max_step, 1, augment))
      out.append(Phase(f"min{e + 1}", "retain", min_step, 1, augment))
    return out

  return Unlearner("scrub", {"lr": lr, "epochs": epochs, "msteps": msteps, "alpha": alpha,
                             "gamma": gamma, "momentum": momentum, "max_stream": max_stream,
                             "augment": augment},
                   _optimizer("scrub", lr, momentum), phases, init=_with_teacher, tasks=TASKS)


# ---------------------------------------------------------------------------------------------
# Embedding dispersion (mu_jax's design after arXiv 2512.13317).


def dispersion(lr: float = 1e-1, epochs: int = 10, t: float = 2.0, tau: float = 0.1,
               w_uniform: float = 1.0, w_hard: float = 1.0, w_distill: float = 5.0,
               w_margin: float = 0.0, momentum: float = 0.9, augment: bool = False) -> Unlearner:
  """Embedding dispersion of the forget identities (module docstring; mu_jax's loss design).

  Loss per paired step (forget batch F gathered over devices, retain batch R local)::

    w_uniform · log mean_{i≠j∈F} exp(−t‖zᵢ − zⱼ‖²)
    + w_hard · mean_{i∈F} τ·logsumexp_{j∈F, j≠i, yⱼ=yᵢ} cos(zᵢ, zⱼ)/τ
    + w_distill · mean_{R} ‖z − z_original‖²  + w_margin · margin loss(R)

  Args:
    lr: learning rate (SGD with ``momentum``).
    epochs: passes over the longer of forget and retain (paired stream).
    t: uniformity temperature (Wang & Isola's t = 2).
    tau: hard-dispersion temperature.
    w_uniform, w_hard: weights of the forget terms.
    w_distill, w_margin: weights of the retain terms.
    momentum: SGD momentum.
    augment: feed the reference augmentation (module docstring).
  """
  check_positive("dispersion", epochs=epochs, t=t, tau=tau)
  check_non_negative("dispersion", w_uniform=w_uniform, w_hard=w_hard, w_distill=w_distill,
                     w_margin=w_margin)
  if w_uniform + w_hard == 0:
    raise ValueError("dispersion: w_uniform and w_hard are both 0: nothing would be forgotten")

  def step(state, aux, batch, rng, info):
    del rng, info
    f, r = batch["forget"], batch["retain"]
    _, zt_r = _teacher_out(state, aux, r["image"])
    ids = _gather(f["label"])

    def loss_fn(params):
      lr_, zr, stats = model_lib.embed(state, params, state.batch_stats, r["image"], train=True,
                                       labels=r["label"])
      _, zf, stats = model_lib.embed(state, params, stats, f["image"], train=True)
      z_all = _gather(zf)
      unif = uniformity_loss(z_all, t)
      hard = hard_dispersion_loss(z_all, ids, tau)
      distill = jnp.sum((zr - zt_r) ** 2, -1).mean()
      margin = _margin_ce(lr_, r["label"])
      loss = w_uniform * unif + w_hard * hard + w_distill * distill + w_margin * margin
      return loss, (stats, {"uniformity": unif, "hard_dispersion": hard, "retain_distill": distill,
                            "retain_margin_loss": margin})

    state, metrics = common.gradient_step(state, loss_fn)
    return state, aux, metrics

  return Unlearner("dispersion", {"lr": lr, "epochs": epochs, "t": t, "tau": tau,
                                  "w_uniform": w_uniform, "w_hard": w_hard, "w_distill": w_distill,
                                  "w_margin": w_margin, "momentum": momentum,
                                  "augment": augment},
                   _optimizer("dispersion", lr, momentum),
                   lambda spec: [Phase("disperse", "paired", step, epochs, augment)],
                   init=_with_teacher, tasks=TASKS)


# ---------------------------------------------------------------------------------------------
# Centroid-guided unsupervised erasure (mu_jax's design after CURE, arXiv 2509.19562).


def _maximin_init(z: jax.Array, k: int) -> jax.Array:
  """K starting centroids: the first row, then repeatedly the row farthest from those chosen
  (deterministic farthest-point seeding, a greedy form of k-means++)."""
  def body(i, carry):
    cents, mind = carry
    j = jnp.argmax(mind)
    cents = cents.at[i].set(z[j])
    return cents, jnp.minimum(mind, jnp.sum((z - z[j]) ** 2, -1))

  cents = jnp.zeros((k, z.shape[-1]), z.dtype).at[0].set(z[0])
  mind = jnp.sum((z - z[0]) ** 2, -1)
  cents, _ = lax.fori_loop(1, k, body, (cents, mind))
  return cents


def _sq_dist(z: jax.Array, c: jax.Array) -> jax.Array:
  return jnp.maximum(jnp.sum(z * z, -1)[:, None] + jnp.sum(c * c, -1)[None] - 2.0 * z @ c.T, 0.0)


def farthest_map(centroids: jax.Array) -> jax.Array:
  """φ(k) = argmax_{k'} ‖c_k − c_{k'}‖² (CURE's farthest-cluster mapping)."""
  return jnp.argmax(_sq_dist(centroids, centroids), -1).astype(jnp.int32)


def cure_pseudo_labels(teacher_emb: jax.Array, centroids: jax.Array, target: jax.Array
                       ) -> jax.Array:
  """CURE's pseudo-label ỹ(x) = φ(l(x)), with l(x) the centroid nearest to the *teacher's* embedding.

  The teacher is frozen and the centroids change only at a re-clustering, so every image keeps its
  pseudo-label while the student moves; labelling from the student's own embedding instead would
  flip an image's target each time it crosses a cluster boundary, and it would oscillate there.

  Args:
    teacher_emb: [B, d] embeddings of the frozen original.
    centroids: [K, d] the current centroids.
    target: [K] φ, the farthest centroid of each centroid (:func:`farthest_map`).

  Returns:
    [B] int32 pseudo-labels (indices into ``centroids``).
  """
  own = jnp.argmin(_sq_dist(teacher_emb, centroids), -1)
  return target[own].astype(jnp.int32)


def cure(lr: float = 5e-2, epochs: int = 8, clusters: int = 4, recluster_every: int = 2,
         kmeans_iters: int = 3, temperature: float = 0.1, w_pull: float = 1.0,
         w_contrast: float = 0.5, w_match: float = 5.0, momentum: float = 0.9,
         augment: bool = False) -> Unlearner:
  """Centroid-guided unsupervised erasure (module docstring; mu_jax's loss design).

  Phases, all run by the driver: ``kmeans_iters`` Lloyd passes over the forget set (eval-mode
  embeddings of the current model; no parameter update; the first pass seeds the centroids by
  farthest-point selection on its first global batch, which must hold at least ``clusters``
  images), then ``recluster_every`` epochs of erasure on paired batches, then Lloyd passes again
  from the current centroids, and so on until ``epochs`` erasure epochs have run.

  Erasure loss, with ĉ the normalised centroids, k(x) the centroid nearest to the frozen
  original's embedding of x (as the paper's l_f(x) = argmin_k ‖f_θ*(x) − c_k‖²) and ỹ = φ(k(x))
  its farthest centroid (:func:`cure_pseudo_labels`); ỹ stays fixed until the next
  re-clustering while the student moves::

    w_pull · mean(1 − cos(z, ĉ_ỹ)) + w_contrast · CE(cos(z, ĉ)/temperature, ỹ)
    + w_match · mean_R ‖z − z_original‖²

  Args:
    lr: learning rate (SGD with ``momentum``).
    epochs: erasure epochs (paired stream).
    clusters: K of K-means (no identity labels are used, so K is not the number of persons).
    recluster_every: erasure epochs between two clusterings (CURE's τ).
    kmeans_iters: Lloyd passes per clustering.
    temperature: of the cross-entropy over centroids.
    w_pull, w_contrast, w_match: loss weights.
    momentum: SGD momentum.
    augment: feed the reference augmentation to the erasure steps (the K-means passes never); the
      original then embeds the augmented image, so an image close to a cluster boundary can get
      another pseudo-label under another augmentation.
  """
  check_positive("cure", epochs=epochs, clusters=clusters, recluster_every=recluster_every,
                 kmeans_iters=kmeans_iters, temperature=temperature)
  check_non_negative("cure", w_pull=w_pull, w_contrast=w_contrast, w_match=w_match)
  if clusters < 2:
    raise ValueError(f"cure: clusters must be at least 2 (a farthest other cluster), got {clusters}")

  def init(state, rng, spec):
    del rng
    state, aux = _with_teacher(state, None, spec)
    dim = state.params["fc"]["Dense_0"]["kernel"].shape[0]
    return state, {**aux, "centroids": jnp.zeros((clusters, dim), jnp.float32),
                   "sums": jnp.zeros((clusters, dim), jnp.float32),
                   "counts": jnp.zeros((clusters,), jnp.float32),
                   "target": jnp.arange(clusters, dtype=jnp.int32),
                   "fresh": jnp.ones((), jnp.float32)}

  def kmeans_step(state, aux, batch, rng, info):
    del rng, info
    _, z = _frozen_out(state, {"params": state.params, "batch_stats": state.batch_stats},
                       batch["image"])
    z = _gather(z)
    cents = jnp.where(aux["fresh"] > 0, _maximin_init(z, clusters), aux["centroids"])
    d2 = _sq_dist(z, cents)
    onehot = jax.nn.one_hot(jnp.argmin(d2, -1), clusters, dtype=jnp.float32)
    aux = {**aux, "centroids": cents, "sums": aux["sums"] + onehot.T @ z,
           "counts": aux["counts"] + onehot.sum(0), "fresh": jnp.zeros((), jnp.float32)}
    return state, aux, {"loss": jnp.min(d2, -1).mean()}

  def lloyd_update(state, aux, info):
    del info
    has = aux["counts"] > 0
    cents = jnp.where(has[:, None], aux["sums"] / jnp.maximum(aux["counts"], 1.0)[:, None],
                      aux["centroids"])
    return state, {**aux, "centroids": cents, "target": farthest_map(cents),
                   "sums": jnp.zeros_like(aux["sums"]), "counts": jnp.zeros_like(aux["counts"])}

  def erase_step(state, aux, batch, rng, info):
    del rng, info
    f, r = batch["forget"], batch["retain"]
    _, zt_r = _teacher_out(state, aux, r["image"])
    _, zt_f = _teacher_out(state, aux, f["image"])
    target = cure_pseudo_labels(zt_f, aux["centroids"], aux["target"])
    cents = model_lib.l2_normalize(aux["centroids"])

    def loss_fn(params):
      _, zr, stats = model_lib.embed(state, params, state.batch_stats, r["image"], train=True)
      _, zf, stats = model_lib.embed(state, params, stats, f["image"], train=True)
      cos = zf @ cents.T
      pull = (1.0 - jnp.take_along_axis(cos, target[:, None], -1)[:, 0]).mean()
      contrast = margin_loss(cos / temperature, target).mean()
      match = jnp.sum((zr - zt_r) ** 2, -1).mean()
      loss = w_pull * pull + w_contrast * contrast + w_match * match
      return loss, (stats, {"pull": pull, "centroid_ce": contrast, "retain_match": match})

    state, metrics = common.gradient_step(state, loss_fn)
    return state, aux, metrics

  def phases(spec):
    del spec
    out, done, n = [], 0, 0
    while done < epochs:
      n += 1
      out += [Phase(f"kmeans{n}.{i + 1}", "forget", kmeans_step, 1, augment=False, after=lloyd_update)
              for i in range(kmeans_iters)]
      block = min(recluster_every, epochs - done)
      out.append(Phase(f"erase{n}", "paired", erase_step, block, augment))
      done += block
    return out

  return Unlearner("cure", {"lr": lr, "epochs": epochs, "clusters": clusters,
                            "recluster_every": recluster_every, "kmeans_iters": kmeans_iters,
                            "temperature": temperature, "w_pull": w_pull,
                            "w_contrast": w_contrast, "w_match": w_match, "momentum": momentum,
                            "augment": augment},
                   _optimizer("cure", lr, momentum), phases, init=init, tasks=TASKS)


# ---------------------------------------------------------------------------------------------
# Registry.

METHODS = Registry("retrieval method", {
    "random_labels": random_labels,
    "gradient_ascent": gradient_ascent,
    "boundary_shrink": boundary_shrink,
    "scrub": scrub,
    "dispersion": dispersion,
    "cure": cure,
})
names, factory, create, parse_methods = (METHODS.names, METHODS.factory, METHODS.create,
                                         METHODS.parse_methods)
