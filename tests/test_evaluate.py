"""Evaluation metrics on hand-made cases with known answers, and the loop on 1 vs 8 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ria_jax import evaluate, models, parallel
from ria_jax.data import sources
from ria_jax.eval_loop import Evaluator

from tiny_run import tiny_config


def test_accuracies_from_hand_made_predictions():
  # 3 classes; class 0: 2/4 right, class 1: 1/1, class 2: 0/2; one padded example.
  labels = jnp.array([0, 0, 0, 0, 1, 2, 2, 1])
  preds = jnp.array([0, 0, 1, 2, 1, 0, 1, 1])
  weights = jnp.array([1, 1, 1, 1, 1, 1, 1, 0])
  logits = jax.nn.one_hot(preds, 3) * 5.0
  correct, count = evaluate.class_accuracy_sums(logits, labels, 3, weights)
  np.testing.assert_allclose(correct, [2, 1, 0])
  np.testing.assert_allclose(count, [4, 1, 2])
  acc = evaluate.accuracies(correct, count)
  assert acc["accuracy"] == pytest.approx(3 / 7)
  assert acc["class_avg_accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
  assert acc["per_class_accuracy"] == [0.5, 1.0, 0.0]
  # A class without examples is skipped, not counted as 0.
  acc = evaluate.accuracies(np.array([1.0, 0.0]), np.array([2.0, 0.0]))
  assert acc["class_avg_accuracy"] == 0.5 and acc["per_class_accuracy"] == [0.5, None]


def test_rfs_known_values():
  # a_fg = 0.6, a_bg = 0.8 -> a = 0.7, min(a, 1-a) = 0.3 -> RFS = 0.2 / 0.6.
  np.testing.assert_allclose(evaluate.rfs([0.6], [0.8]), [0.2 / 0.6])
  # Symmetric: relying on the background gives a negative value.
  np.testing.assert_allclose(evaluate.rfs([0.8], [0.6]), [-0.2 / 0.6])
  # a = 0.25: min is a -> (0.4 - 0.1) / 0.5.
  np.testing.assert_allclose(evaluate.rfs([0.1], [0.4]), [0.6])
  # Undefined (a in {0, 1}) -> 0, never NaN; RFS is bounded by 1 in magnitude.
  np.testing.assert_allclose(evaluate.rfs([1.0, 0.0, 0.0], [1.0, 0.0, 1.0]), [0.0, 0.0, 1.0])


def test_noise_only_inside_or_outside_the_mask_and_clipped():
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(2, 8, 8, 3)).astype(np.float32)
  mask = np.zeros((2, 8, 8), bool)
  mask[:, 2:5, 3:7] = True
  noise = rng.normal(size=images.shape).astype(np.float32)
  fg = np.asarray(evaluate.add_region_noise(images, mask, 0.5, noise, "fg"))
  bg = np.asarray(evaluate.add_region_noise(images, mask, 0.5, noise, "bg"))
  np.testing.assert_array_equal(fg[~mask], images[~mask])
  np.testing.assert_array_equal(bg[mask], images[mask])
  np.testing.assert_allclose(fg[mask], np.clip(images[mask] + 0.5 * noise[mask], 0, 1), rtol=1e-6)
  np.testing.assert_allclose(bg[~mask], np.clip(images[~mask] + 0.5 * noise[~mask], 0, 1), rtol=1e-6)
  assert fg.min() == 0.0 and fg.max() == 1.0  # clipping happened
  # Noise is a function of the example's position only (same on any device count / batch size).
  a = evaluate.example_noise(0, jnp.array([3, 9]), (4, 4, 3))
  b = evaluate.example_noise(0, jnp.array([9]), (4, 4, 3))
  np.testing.assert_array_equal(a[1], b[0])


def test_localisation_metrics_on_hand_drawn_maps():
  h = w = 40
  cam = np.zeros((3, h, w), np.float32)
  cam[0, 10:20, 10:30] = 1.0          # exactly the object box
  cam[1, 0:10, 0:10] = 1.0            # disjoint, far away
  cam[1, 15, 15] = 0.4                # a weaker blob inside the object
  cam[2, 10:20, 10:20] = 1.0          # half of the box
  cam[2, 30:40, 30:40] = 1.0          # plus an equal blob outside
  box = np.tile(np.array([10 / w, 10 / h, 30 / w, 20 / h], np.float32), (3, 1))
  mask = np.zeros((3, h, w), bool)
  mask[:, 10:20, 10:30] = True
  loc = evaluate.localisation(jnp.asarray(cam), jnp.asarray(box), jnp.asarray(mask), threshold=0.5, tolerance=15)
  # Hard CAM box IoU: 1; 0 (disjoint); the box spanning both blobs (10..40 x 10..40 = 900 px)
  # against the object (200 px), intersection 200 -> 200 / 900.
  np.testing.assert_allclose(loc["cam_iou"], [1.0, 0.0, 200 / 900], atol=1e-6)
  np.testing.assert_allclose(loc["corloc"], [1, 0, 0])
  # Energy: all inside; 0.4 of 100.4 inside; half inside.
  np.testing.assert_allclose(loc["energy_box"], [1.0, 0.4 / 100.4, 0.5], rtol=1e-5)
  np.testing.assert_allclose(loc["energy_mask"], [1.0, 0.4 / 100.4, 0.5], rtol=1e-5)
  # Pointing: the argmax of map 1 is (0, 0): distance to (10, 10) is 14.1 px <= 15 -> hit;
  # with tolerance 10 it is a miss. Map 2's argmax (10, 10) is inside.
  np.testing.assert_allclose(loc["pointing"], [1, 1, 1])
  np.testing.assert_allclose(evaluate.pointing_game(jnp.asarray(cam), jnp.asarray(mask), tolerance=10), [1, 0, 1])
  # An all-zero CAM: no box, no energy, no NaN.
  zero = evaluate.localisation(jnp.zeros((1, h, w)), jnp.asarray(box[:1]), jnp.asarray(mask[:1]))
  assert all(np.isfinite(v).all() and float(v[0]) == 0.0 for k, v in zero.items() if k != "pointing")


def test_bg_gap():
  assert evaluate.bg_gap(0.95, 0.2) == pytest.approx(0.75)


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
  config = tiny_config(tmp_path_factory.mktemp("tfds_eval"))
  src = sources.open_source(config.data, "mixed_rand")  # 40 examples: a partial last batch at 16
  model = models.from_config(config.model, 10, axis_name=parallel.AXIS)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.uint8))
  return config, src, model, variables


def _evaluate(config, src, model, variables, devices, global_batch):
  config.eval.global_batch = global_batch
  mesh = parallel.make_mesh(jax.devices()[:devices])
  evaluator = Evaluator(model, mesh, config, 10)
  return evaluator.evaluate_split(parallel.replicate(variables, mesh), src, with_noise=True)


def test_eval_loop_same_numbers_on_1_and_8_devices_and_any_batch(tiny_setup):
  config, src, model, variables = tiny_setup
  one = _evaluate(config, src, model, variables, 1, 16)
  eight = _evaluate(config, src, model, variables, 8, 16)
  other_batch = _evaluate(config, src, model, variables, 8, 24)
  assert one["examples"] == eight["examples"] == other_batch["examples"] == len(src) == 40
  for res in (eight, other_batch):
    for key, value in one.items():
      np.testing.assert_allclose(res[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
  # Independent check of the accuracy: a plain forward pass over all examples.
  images = np.stack([src[i]["image"] for i in range(len(src))])
  labels = np.array([src[i]["label"] for i in range(len(src))])
  logits, _ = model.apply(variables, images)
  assert one["accuracy"] == pytest.approx(float(np.mean(np.argmax(logits, -1) == labels)))
  assert len(one["rfs"]) == len(config.eval.noise_sigmas)
