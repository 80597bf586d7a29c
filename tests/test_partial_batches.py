"""Partial batches and BatchNorm modes of the unlearning methods, as the reference loops run them.

The reference's plain loaders keep the last partial batch (fine-tuning, the UNSIR repair, both
SCRUB passes); its pair loops skip pairs that are not full (NegGrad, Advanced NegGrad, the UNSIR
impair stage). MUFAC: 8,525 retain and 1,500 forget images; MUCAC multi-label: 15,750 and 10,183.
"""

import importlib

import chex
import jax
import numpy as np
import pytest

from mu_jax import methods, parallel
from mu_jax.data.splits import Examples
from mu_jax.methods import driver
from tests import helpers
from tests.helpers import lax_convolutions  # noqa: F401  (fast XLA convolutions here)

scrub_lib = importlib.import_module("mu_jax.methods.scrub")
common = importlib.import_module("mu_jax.methods.common")

R, S = parallel.REPLICATED, parallel.SHARDED
MUFAC = {"retain": 8525, "forget": 1500}
MUCAC = {"retain": 15750, "forget": 10183}


def _plan(stream, sizes, partial, epoch=0, phase_epoch=0, n_dev=4):
  return driver._stream_plan(stream, sizes, 64, 42, epoch, n_dev, None, partial, phase_epoch)


def _real(item):
  return int(item[1].sum())


def test_kept_partial_batches_match_the_reference_loaders():
  forget = _plan("forget", MUFAC, "keep")
  assert len(forget) == 24 and [_real(b) for b in forget] == [64] * 23 + [28]
  # Every forget example exactly once; the padding is masked out and has the static shape.
  seen = np.concatenate([idx[mask > 0] for idx, mask in forget])
  np.testing.assert_array_equal(np.sort(seen), np.arange(1500))
  assert all(len(idx) == 64 for idx, _ in forget)
  retain = _plan("retain", MUFAC, "keep")
  assert len(retain) == 134 and _real(retain[-1]) == 8525 - 133 * 64
  # The full batches are the ones "drop" feeds (the old policy: 133 steps).
  dropped = _plan("retain", MUFAC, "drop")
  assert len(dropped) == 133
  for (a, _), (b, _) in zip(retain, dropped):
    np.testing.assert_array_equal(a, b)
  # Fewer examples than a batch: one padded batch, not a shrunken one.
  (only,) = _plan("forget", {"retain": 100, "forget": 10}, "keep")
  assert len(only[0]) == 64 and _real(only) == 10


def test_paired_skip_is_the_reference_neggrad_loop():
  """134 retain batches per epoch, a forget iterator of 24 batches (the 24th partial) that carries
  over between epochs; pairs with a partial batch are skipped: 128 steps, then 127."""
  e0 = _plan("paired", MUFAC, "skip", epoch=0, phase_epoch=0)
  e1 = _plan("paired", MUFAC, "skip", epoch=1, phase_epoch=1)
  assert (len(e0), len(e1)) == (128, 127)
  for pair in e0 + e1:
    assert _real(pair["forget"]) == _real(pair["retain"]) == 64
  # Reference positions: epoch 0 skips iterations 23, 47, 71, 95, 119 (partial forget) and 133
  # (partial retain); epoch 1 starts at forget position 134 mod 24 = 14 of a new cycle, so its
  # partial forget batch comes at iterations 9, 33, 57, 81, 105, 129.
  retain0 = _plan("retain", MUFAC, "keep", epoch=0)
  used = [i for i, (idx, _) in enumerate(retain0[:133])
          if any(np.array_equal(idx, p["retain"][0]) for p in e0)]
  assert used == [i for i in range(133) if i % 24 != 23]
  retain1 = _plan("retain", MUFAC, "keep", epoch=1)
  used1 = [i for i, (idx, _) in enumerate(retain1[:133])
           if any(np.array_equal(idx, p["retain"][0]) for p in e1)]
  assert used1 == [i for i in range(133) if (134 + i) % 24 != 23]
  # The old policy fed 133 pairs of full batches per epoch.
  assert len(_plan("paired", MUFAC, "drop")) == 133
  # A split smaller than the batch shrinks its batch (the reference would take no step at all).
  tiny = _plan("paired", {"retain": 100, "forget": 30}, "skip")
  assert len(tiny) == 1 and len(tiny[0]["forget"][0]) == 28 and len(tiny[0]["retain"][0]) == 64


def test_mucac_loops_step_counts():
  # Multi-label NegGrad: the forget loader only, partial batch skipped (not the paired stream's 246).
  assert len(_plan("forget", MUCAC, "drop")) == 159
  assert len(_plan("paired", MUCAC, "drop")) == 246
  # Advanced NegGrad: zip(forget, retain) stops at the shorter (160 batches, the last partial).
  assert len(_plan("zip", MUCAC, "skip")) == 159


def _stream_and_partial(u, spec):
  return [(p.name, p.stream, p.partial) for p in u.phases(spec)]


def test_methods_follow_the_reference_loops_and_bn_modes():
  spec = driver.Spec(model=helpers.tiny_model(8), task="multiclass", num_classes=8,
                     image_shape=(8, 8, 3))
  assert _stream_and_partial(methods.finetune(), spec) == [("retain", "retain", "keep")]
  assert _stream_and_partial(methods.cf_k(), spec) == [("retain", "retain", "keep")]
  assert _stream_and_partial(methods.neggrad(), spec) == [("ascent", "paired", "skip")]
  assert _stream_and_partial(methods.neggrad(stream="forget"), spec) == [("ascent", "forget", "drop")]
  assert _stream_and_partial(methods.neggrad_plus(), spec) == [("joint", "paired", "skip")]
  assert _stream_and_partial(methods.neggrad_plus(stream="zip"), spec) == [("joint", "zip", "skip")]
  # BatchNorm modes as the MUFAC notebooks ran them.
  modes = {n: methods.create(n).hparams["bn_mode"]
           for n in ("finetune", "cf_k", "eu_k", "neggrad", "neggrad_plus", "scrub", "unsir")}
  assert modes == {"finetune": "eval", "cf_k": "train", "eu_k": "train", "neggrad": "train",
                   "neggrad_plus": "train", "scrub": "train", "unsir": "eval"}
  with pytest.raises(ValueError, match="finetune: bn_mode must be one of"):
    methods.finetune(bn_mode="frozen")
  with pytest.raises(ValueError, match="neggrad_plus: stream must be 'paired' or 'zip'"):
    methods.neggrad_plus(stream="forget")
  with pytest.raises(ValueError, match="partial='keep' needs a single stream"):
    methods.Phase("x", "paired", lambda *a: None, partial="keep")


def _padded(examples, real, total):
  """Rows 0..real-1 of ``examples``, padded to ``total`` with other rows under mask 0."""
  idx = np.arange(total) % len(examples)
  idx[real:] = np.arange(total - real) + real + 7  # different images: the mask must hide them
  batch = {"image": examples.images[idx], "label": examples.labels[idx],
           "mask": (np.arange(total) < real).astype(np.float32)}
  return batch


def _run_step(step, state, aux, batch, devices):
  fn = parallel.data_parallel(driver.guarded(step, False), in_specs=(R, R, S, R, R, R),
                              out_specs=(R, R, R, R), devices=devices)
  info = driver.step_info(methods.scrub(temperature=4.0))
  out = fn(*parallel.replicate((state, aux), devices), parallel.shard(batch, devices),
           jax.random.key(3), info, parallel.replicate(np.bool_(False), devices))
  return parallel.to_host(out[:3])


@pytest.mark.parametrize("kind", ["supervised", "scrub_max"])
def test_masked_step_equals_the_unpadded_step_on_the_real_examples(kind):
  """6 real rows padded to 16: on 4 devices shards hold 4, 2, 0 and 0 real rows."""
  ds = helpers.tiny_dataset(size=8)
  forget = ds.split("forget")
  state = helpers.tiny_state(size=8)
  tx = common.reference_sgd(0.5)
  state = state.replace(tx=tx, opt_state=tx.init(state.params))
  if kind == "supervised":
    step, aux = common.supervised_step("multiclass"), {}
  else:
    step = scrub_lib.max_step("multiclass")
    # A teacher that differs from the student, so the KL and its gradient are not zero.
    _, aux = scrub_lib.teacher_init(state, None, None)
    aux = jax.tree.map(lambda x: x * 1.1, aux)
  padded = _padded(forget, 6, 16)
  plain = {k: v[:6] for k, v in padded.items()}
  ref_state, _, ref_m = _run_step(step, state, aux, plain, jax.devices()[:1])
  new_state, _, m = _run_step(step, state, aux, padded, jax.devices())
  np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-5, atol=1e-6)
  # Parameters after one SGD step (lr 0.5) carry the gradient; the BN statistics moved.
  chex.assert_trees_all_close(new_state.params, ref_state.params, rtol=1e-4, atol=1e-6)
  chex.assert_trees_all_close(new_state.batch_stats, ref_state.batch_stats, rtol=1e-4, atol=1e-6)
  # The padding is visible without its mask, so the comparison above can fail.
  _, _, um = _run_step(step, state, aux, {**padded, "mask": np.ones(16, np.float32)}, jax.devices())
  assert abs(float(um["loss"]) - float(ref_m["loss"])) > 1e-4


def test_eval_mode_finetuning_leaves_the_running_statistics_bit_identical():
  ds = helpers.tiny_dataset(size=8)
  original = parallel.to_host(helpers.tiny_state(size=8))
  cfg = methods.RunConfig(batch_size=16, log_splits=())
  res = methods.run_detailed(methods.finetune(lr=0.05, epochs=1), original, ds, cfg)
  chex.assert_trees_all_equal(res.state.batch_stats, original.batch_stats)
  assert max(float(np.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(res.state.params), jax.tree.leaves(original.params))) > 0
  # One pass over retain, the last partial batch included.
  n = len(ds.split("retain"))
  assert n % 16 and res.history[0]["steps"] == -(-n // 16) and res.examples == n
  trained = methods.run_detailed(methods.finetune(lr=0.05, epochs=1, bn_mode="train"), original, ds,
                                 cfg)
  assert not np.allclose(trained.state.batch_stats["bn1"]["var"], original.batch_stats["bn1"]["var"])


def test_scrub_forget_pass_sees_every_forget_example():
  ds = helpers.tiny_dataset(size=8)
  original = parallel.to_host(helpers.tiny_state(size=8))
  res = methods.run_detailed(methods.scrub(lr=0.01, epochs=1), original, ds,
                             methods.RunConfig(batch_size=16, log_splits=()))
  n_f = len(ds.split("forget"))
  assert n_f % 16
  assert [(r["phase"], r["examples"], r["steps"]) for r in res.history] == [
      ("min_retain", len(ds.split("retain")), -(-len(ds.split("retain")) // 16)),
      ("max_forget", n_f, -(-n_f // 16))]


def test_unsir_class_finds_the_forget_classes_from_every_forget_example():
  """9 forget images of 9 classes at batch 8: dropping the partial batch would lose a class."""
  rng = np.random.default_rng(0)

  def examples(labels):
    n = len(labels)
    return Examples(rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), np.asarray(labels, np.int32),
                    np.array([f"p{i}" for i in range(n)]), np.array([f"e{i}" for i in range(n)]))

  data = {"forget": examples(np.arange(9)), "retain": examples(np.arange(16) % 9)}
  state = parallel.to_host(helpers.tiny_state(helpers.tiny_model(9), size=8))
  u = methods.unsir_class(noise_batch=4, noise_epochs=1, noise_steps=1, impair_epochs=1,
                          repair_epochs=0)
  res = methods.run_detailed(u, state, data, methods.RunConfig(batch_size=8, task="multiclass",
                                                               log_splits=()))
  np.testing.assert_array_equal(res.aux["forget_classes"], np.ones(9, np.float32))
  assert res.history[0]["steps"] == 2 and res.history[0]["examples"] == 9
