"""Bad Teacher: distil from a competent teacher on retain and from an incompetent one on forget.

Chundawat, Tarun, Mandal and Kankanhalli, "Can Bad Teaching Induce Forgetting? Unlearning in Deep
Networks using an Incompetent Teacher", AAAI 2023 (arXiv 2205.08096). A baseline of CURE (arXiv
2509.19562) and of De Min et al., "Unlearning Personal Data from a Single Image", TMLR 2025
(tdemin16/one-shui@d2b895b:method/approaches/bad_teacher.py); see docs/methods.md#bad_teacher.

The student starts as the original model. Two frozen teachers live in ``aux``: the competent one
(the original) and the incompetent one (the same architecture freshly initialised by
``spec.model.init`` with the key the driver hands to ``init``, i.e. drawn from ``RunConfig.seed``).
Each example is distilled from the teacher its membership selects:

  loss = mean_i KL(p_teacher(i) ‖ softmax(s_i / T)) / C,
  p_teacher(i) = softmax(bad_i / T) for a forget example, softmax(orig_i / T) for a retain one,

which is the official ``UnlearnerLoss``: ``F.kl_div(log_softmax(s/T), teacher_probs)`` with torch's
default ``reduction="mean"``, an average over the batch *and* the C classes (hence the 1/C; no T²).

The loss and the loop (``UnlearnerLoss``, ``blindspot_unlearner``: forget ∪ retain shuffled together,
teachers in eval mode, the student in train mode) are those of
vikram2000b/bad-teaching-unlearning@0aab08c:unlearn.py, whose function defaults are 10 epochs,
Adam lr 0.01, batch 256. The recipe used here (a random 30% of retain, 1 epoch, Adam lr 1e-4,
batch 256, ``KL_temperature=1``) is the call in the authors' CIFAR notebook as copied into other
public repositories; it was not checked against the official repository's notebook.

Here batches come from the driver's ``paired`` stream: every step sees a forget batch and a retain
batch of ``RunConfig.batch_size`` each, concatenated into one train-mode forward pass (the official
mixed batch, but half forget instead of the official's share of |D_f| / (|D_f| + 0.3 |D_r|)), and an
epoch is one pass over the whole retain split with the forget split cycled, not over 30% of
retain. ``stream="zip"`` instead stops at the end of the shorter split (one pass over forget and as
many retain examples). Teachers run in eval mode (running statistics, as ``.eval()``), the student
in train mode. Multiclass only: the rule distils class distributions.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mu_jax.methods import common
from mu_jax.methods.base import Phase, Unlearner, check_positive
from mu_jax.training.state import init_variables


def init_teachers(state, rng, spec):
  """``aux``: the competent teacher (the original) and a freshly initialised incompetent one."""
  fresh = init_variables(spec.model, rng, spec.image_shape)
  aux = {"teacher": {"params": state.params, "batch_stats": state.batch_stats},
         "bad_teacher": fresh}
  return state, aux


def _logits(state, model, images):
  out, _ = common.forward(state, model["params"], model["batch_stats"], images, train=False)
  return out


def bad_teaching_kl(student_logits: jax.Array, good_logits: jax.Array, bad_logits: jax.Array,
                    is_forget: jax.Array, temperature: float) -> jax.Array:
  """Per-example KL(selected teacher ‖ student) of temperature-softened outputs, no T² factor."""
  t2 = temperature**2
  good = common.kl_div(good_logits, student_logits, temperature, "multiclass") / t2
  bad = common.kl_div(bad_logits, student_logits, temperature, "multiclass") / t2
  return jnp.where(is_forget, bad, good)


def bad_teacher(temperature: float = 1.0, lr: float = 1e-4, epochs: int = 1,
                stream: str = "paired") -> Unlearner:
  """Bad-teacher distillation (defaults: the authors' CIFAR recipe; see the module docstring).

  Args:
    temperature: ``KL_temperature`` (1).
    lr: Adam learning rate (1e-4).
    epochs: epochs over the stream (1).
    stream: "paired" (one pass over retain, forget cycled) or "zip" (stops at the shorter).

  Returns:
    The Unlearner (multiclass).
  """
  check_positive("bad_teacher", temperature=temperature, lr=lr, epochs=epochs)
  if stream not in ("paired", "zip"):
    raise ValueError(f"bad_teacher: stream must be 'paired' or 'zip', got {stream!r}")

  def phases(spec):
    return [Phase("distill", stream, _step(spec.num_classes), epochs)]

  return Unlearner(
      name="bad_teacher",
      hparams={"temperature": temperature, "lr": lr, "epochs": epochs, "stream": stream},
      optimizer=common.reference_adam(lr), phases=phases, init=init_teachers, tasks=("multiclass",),
      traced={"temperature": temperature})


@functools.cache
def _step(num_classes: int):
  """Distillation from the good teacher on retain rows and the bad one on forget rows."""

  def step(state, aux, batch, rng, info):
    del rng
    temperature = info["hp"]["temperature"]
    f, r = batch["forget"], batch["retain"]
    bf = f["image"].shape[0]
    images = jnp.concatenate([f["image"], r["image"]])
    is_forget = jnp.arange(images.shape[0]) < bf
    mf, mr = f.get("mask"), r.get("mask")
    mask = None if mf is None or mr is None else jnp.concatenate([mf, mr])
    good = _logits(state, aux["teacher"], images)
    bad = _logits(state, aux["bad_teacher"], images)

    def loss_fn(params):
      s_logits, stats = common.forward(state, params, state.batch_stats, images, mask=mask)
      kl = bad_teaching_kl(s_logits, good, bad, is_forget, temperature)
      return common.mean(kl, mask) / num_classes, (stats, {
          "kl_forget_to_bad": common.mean(kl[:bf], mf),
          "kl_retain_to_original": common.mean(kl[bf:], mr),
          "forget_accuracy": common.accuracy(s_logits[:bf], f["label"], "multiclass", mf),
          "retain_accuracy": common.accuracy(s_logits[bf:], r["label"], "multiclass", mr)})

    state, metrics = common.gradient_step(state, loss_fn)
    return state, aux, metrics

  return step
