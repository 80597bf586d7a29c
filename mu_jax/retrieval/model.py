"""Face embedding models: a trunk, an ℓ2-normalised d-dimensional embedding, a margin head.

Face recognition is trained as identity classification with an additive angular or cosine margin
and deployed as retrieval with the embedding alone. :class:`EmbeddingNet` puts the two together:

* the **trunk** is any mu_jax classifier (ResNet-18 by default; the small CNN for tests) built with
  ``num_classes = embed_dim``, so its own linear head is the embedding projection;
* the **embedding** is the trunk output scaled to unit length;
* the **head** holds one weight vector (class centre) per training identity and scores
  ``cos θ_j = ⟨ẑ, ŵ_j⟩``. With labels it applies the training margin to the true class:

  - CosFace (Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR 2018,
    arXiv 1801.09414):
    ``s · (cos θ_y − m)``, paper defaults s = 64, m = 0.35;
  - ArcFace (Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition",
    CVPR 2019, arXiv 1801.07698):
    ``s · cos(θ_y + m)``, paper defaults s = 64, m = 0.5, and for θ_y + m > π the monotone
    continuation ``cos θ_y − m · sin m`` that the authors' code uses, so the target logit keeps
    decreasing in θ_y.

  Without labels the head returns the plain ``s · cos θ`` (no margin): what the classification
  driver logs as the forget/retain loss and identity accuracy during unlearning.

mu_jax's default scale is s = 30 rather than 64: the CosFace paper's own bound
``s ≥ (C−1)/C · log((C−1)·P/(1−P))`` is below 10 for the few hundred identities of the benchmark
sets, and a smaller s keeps the softmax from saturating on tiny training sets.

Parameter layout: ``{"trunk": {...}, "fc": {"Dense_0": {"kernel": [d, C]}}}``: the class centres
sit where a classifier's last linear layer sits, so "the last k blocks" address the head as for
classifiers; the driver reads the identity count from the model's ``num_classes``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mu_jax.models.registry import create_model
from mu_jax.training.state import TrainState

HEADS = ("cosface", "arcface")
# Paper margins; the scale is mu_jax's (see the module docstring).
DEFAULT_MARGIN = {"cosface": 0.35, "arcface": 0.5}
DEFAULT_SCALE = 30.0
_EPS = 1e-12


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
  """x / ‖x‖ along ``axis``; the epsilon keeps the gradient finite at zero."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + _EPS)


def margin_logits(cos: jax.Array, labels: jax.Array, head: str, scale: float, margin: float
                  ) -> jax.Array:
  """Training logits of a margin head from the cosines of every class.

  Args:
    cos: [N, C] cosine between each embedding and each class centre.
    labels: [N] integer identity of each example (in 0..C-1).
    head: "cosface" or "arcface".
    scale: s.
    margin: m.

  Returns:
    [N, C]: ``s · cos θ_j`` for the wrong classes and the margin-penalised value for the true one
    (formulas in the module docstring).
  """
  if head not in HEADS:
    raise ValueError(f"head must be one of {HEADS}, got {head!r}")
  cos = cos.astype(jnp.float32)
  onehot = jax.nn.one_hot(labels, cos.shape[-1], dtype=jnp.float32)
  if head == "cosface":
    target = cos - margin
  else:
    # cos(θ + m) = cos θ cos m − sin θ sin m, with sin θ = sqrt(1 − cos²θ) (θ ∈ [0, π]).
    sin = jnp.sqrt(jnp.clip(1.0 - cos * cos, 1e-9, 1.0))
    shifted = cos * jnp.cos(margin) - sin * jnp.sin(margin)
    # Past θ = π − m, cos(θ + m) would rise again; continue linearly instead (authors' code).
    target = jnp.where(cos > jnp.cos(jnp.pi - margin), shifted, cos - margin * jnp.sin(margin))
  return scale * jnp.where(onehot > 0, target, cos)


class _ClassCentres(nn.Module):
  """The head's parameters: the class centres [d, C] (no bias: the margin formulas have none)."""

  num_classes: int

  @nn.compact
  def __call__(self, dim: int) -> jax.Array:
    # Xavier-uniform centres: unit scale does not matter (they are normalised), spread does.
    return self.param("kernel", nn.initializers.xavier_uniform(), (dim, self.num_classes), jnp.float32)


class MarginHead(nn.Module):
  """Cosine classifier over normalised class centres, with the CosFace or ArcFace margin."""

  num_classes: int
  head: str = "cosface"
  scale: float = DEFAULT_SCALE
  margin: float = DEFAULT_MARGIN["cosface"]

  @nn.compact
  def __call__(self, emb: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    centres = l2_normalize(_ClassCentres(self.num_classes, name="Dense_0")(emb.shape[-1]), axis=0)
    cos = emb @ centres
    if labels is None:
      return self.scale * cos
    return margin_logits(cos, labels, self.head, self.scale, self.margin)


class EmbeddingNet(nn.Module):
  """Trunk → unit-length embedding → margin head (see the module docstring).

  Attributes:
    trunk: a classifier module whose ``num_classes`` is the embedding dimension.
    num_classes: training identities (rows of the head).
    head: "cosface" or "arcface".
    scale: s of the head.
    margin: m of the head.
  """

  trunk: nn.Module
  num_classes: int
  head: str = "cosface"
  scale: float = DEFAULT_SCALE
  margin: float = DEFAULT_MARGIN["cosface"]

  # Coarse groups for methods that address blocks by name: the whole trunk, then the head.
  block_names = (("trunk",), ("fc",))

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False,
               labels: jax.Array | None = None):
    """Returns logits [N, C], or (logits, embeddings [N, d]) if ``features``.

    Logits carry the training margin on the true class when ``labels`` is given, else they are the
    plain scaled cosines.
    """
    emb = l2_normalize(self.trunk(x, train=train))
    logits = MarginHead(self.num_classes, self.head, self.scale, self.margin, name="fc")(emb, labels)
    return (logits, emb) if features else logits


def create_embedding_model(trunk: str, num_classes: int, *, embed_dim: int = 512,
                           head: str = "cosface", scale: float = DEFAULT_SCALE,
                           margin: float | None = None, width: int | None = None,
                           stem: str = "imagenet", dtype: str = "float32") -> EmbeddingNet:
  """Builds an :class:`EmbeddingNet`.

  Args:
    trunk: "resnet18" (torchvision's ResNet-18, its fc the 512·width/64 → d projection) or
      "small_cnn".
    num_classes: training identities.
    embed_dim: d (512 by default, as ArcFace/CosFace models).
    head: "cosface" or "arcface".
    scale: s.
    margin: m (default: the paper's, 0.35 for CosFace and 0.5 for ArcFace).
    width, stem, dtype: passed to :func:`mu_jax.models.create_model`.

  Raises:
    ValueError: an unknown trunk or head, or a non-positive size or scale.
  """
  if head not in HEADS:
    raise ValueError(f"model.head must be one of {HEADS}, got {head!r}")
  if embed_dim <= 0 or num_classes <= 0:
    raise ValueError(f"embed_dim and num_classes must be positive, got {embed_dim} and {num_classes}")
  if not scale > 0:
    raise ValueError(f"model.scale must be positive, got {scale}")
  m = DEFAULT_MARGIN[head] if margin is None else float(margin)
  if not 0 <= m < 1.5:
    raise ValueError(f"model.margin must be in [0, 1.5), got {m}")
  body = create_model(trunk, embed_dim, width=width, stem=stem, dtype=dtype)
  return EmbeddingNet(body, num_classes, head, float(scale), m)


def embed(state: TrainState, params: Any, batch_stats: Any, images: jax.Array, *,
          train: bool, labels: jax.Array | None = None):
  """Forward pass returning (logits, embeddings, batch_stats).

  In train mode the BN statistics come back updated (chain them through several calls, as the
  classification methods do); in eval mode the given ones come back unchanged.
  """
  variables = {"params": params, "batch_stats": batch_stats}
  if train:
    (logits, emb), upd = state.apply_fn(variables, images, train=True, features=True,
                                        labels=labels, mutable=["batch_stats"])
    return logits, emb, upd["batch_stats"]
  logits, emb = state.apply_fn(variables, images, train=False, features=True, labels=labels)
  return logits, emb, batch_stats
