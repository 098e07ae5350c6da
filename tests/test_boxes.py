"""Boxes: hard boxes, soft boxes -> hard boxes as T -> 0, IoU on hand-built cases."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ria_jax import boxes


def _np_tight_box(mask):
  """Independent NumPy tight box with pixel-edge convention."""
  rows = np.where(mask.any(axis=1))[0]
  cols = np.where(mask.any(axis=0))[0]
  h, w = mask.shape
  return np.array([cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h])


def test_hard_box_hand_drawn():
  mask = np.zeros((3, 8, 10), bool)
  mask[0, 2:5, 3:7] = True          # rectangle: rows 2-4, cols 3-6
  mask[1, 1, 1] = mask[1, 6, 8] = True  # two separate pixels: the box spans both
  got, valid = boxes.hard_box(jnp.asarray(mask))
  np.testing.assert_allclose(got[0], [3 / 10, 2 / 8, 7 / 10, 5 / 8])
  np.testing.assert_allclose(got[1], [1 / 10, 1 / 8, 9 / 10, 7 / 8])
  np.testing.assert_array_equal(valid, [True, True, False])
  np.testing.assert_array_equal(got[2], 0.0)


def _maps_away_from_tau(seed, shape=(6, 7, 9), tau=0.5, margin=0.05):
  """Random maps in [0, 1] whose values stay ``margin`` away from ``tau``."""
  rng = np.random.default_rng(seed)
  cam = rng.uniform(size=shape)
  # Sparse foreground so that boxes are not all the whole image.
  cam = np.where(rng.uniform(size=shape) < 0.15, cam * 0.5 + 0.5, cam * 0.5)
  cam = np.where(np.abs(cam - tau) < margin, tau + np.sign(cam - tau + 1e-9) * margin, cam)
  return cam.astype(np.float32)


@pytest.mark.parametrize("seed", range(3))
def test_soft_extremes_box_converges_to_hard_box(seed):
  cam = _maps_away_from_tau(seed)
  hard = np.stack([_np_tight_box(m > 0.5) for m in cam])
  errors = []
  for temperature in (0.3, 0.1, 0.03, 0.01, 0.003):
    soft = boxes.soft_box(jnp.asarray(cam), 0.5, temperature, "extremes")
    errors.append(np.abs(np.asarray(soft) - hard).max())
  assert errors[-1] < 1e-3, errors
  assert all(a >= b - 1e-7 for a, b in itertools.pairwise(errors)), errors  # monotone
  assert errors[0] > 10 * errors[-1]  # the temperature really matters


def test_soft_boxes_on_hand_drawn_rectangles():
  cam = np.zeros((2, 12, 16), np.float32)
  cam[0, 3:9, 2:6] = 1.0   # rows 3-8, cols 2-5
  cam[1, 0:12, 10:16] = 0.8  # touching the border
  expected = np.array([[2 / 16, 3 / 12, 6 / 16, 9 / 12], [10 / 16, 0.0, 1.0, 1.0]])
  for method in boxes.BOX_METHODS:
    got = boxes.soft_box(jnp.asarray(cam), 0.5, 0.01, method)
    np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=method)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 10), st.integers(1, 10), st.integers(0, 9), st.integers(0, 9),
       st.integers(4, 12), st.integers(4, 12))
def test_moment_box_is_exact_on_binary_rectangles(rh, rw, r0, c0, h, w):
  r0, c0 = min(r0, h - 1), min(c0, w - 1)
  r1, c1 = min(r0 + rh, h), min(c0 + rw, w)
  mask = np.zeros((1, h, w), np.float32)
  mask[0, r0:r1, c0:c1] = 1.0
  got = boxes.soft_box_moments(jnp.asarray(mask), eps=0.0)
  np.testing.assert_allclose(got[0], [c0 / w, r0 / h, c1 / w, r1 / h], atol=1e-5)


def test_iou_hand_built():
  a = jnp.array([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.5], [0.1, 0.1, 0.3, 0.3],
                 [0.0, 0.0, 0.2, 0.2], [0.2, 0.2, 0.2, 0.6]])
  b = jnp.array([[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.4, 0.4],
                 [0.5, 0.5, 0.9, 0.9], [0.0, 0.0, 1.0, 1.0]])
  expected = [0.0625 / (0.25 + 0.25 - 0.0625), 1.0, 0.04 / 0.16, 0.0, 0.0]
  np.testing.assert_allclose(boxes.iou(a, b), expected, rtol=1e-6, atol=1e-7)


def test_diagonal_and_diou_terms():
  whole = jnp.array([0.0, 0.0, 1.0, 1.0])
  np.testing.assert_allclose(boxes.squared_diagonal(whole), 1.0)
  np.testing.assert_allclose(boxes.squared_diagonal(jnp.array([0.0, 0.0, 0.5, 0.5])), 0.25)
  # 2:1 image, box covering the left half: pixel diagonal^2 = (W/2)^2 + H^2 over W^2 + H^2.
  np.testing.assert_allclose(boxes.squared_diagonal(jnp.array([0.0, 0.0, 0.5, 1.0]), aspect=2.0),
                             (1.0 + 1.0) / (4.0 + 1.0), rtol=1e-6)
  # DIoU: centres (0.25, 0.25) and (0.75, 0.75), enclosing box = whole image.
  a, b = jnp.array([0.0, 0.0, 0.5, 0.5]), jnp.array([0.5, 0.5, 1.0, 1.0])
  np.testing.assert_allclose(boxes.centre_distance_term(a, b), (0.25 + 0.25) / 2.0, rtol=1e-6)


def test_all_zero_cam_and_saturated_maps_are_finite_with_finite_gradients():
  maps = jnp.stack([jnp.zeros((7, 7)), jnp.ones((7, 7)), jnp.full((7, 7), 0.5),
                    jnp.eye(7) * 1e4, -jnp.eye(7) * 1e4])
  for method in boxes.BOX_METHODS:
    for temperature in (1e-4, 0.05, 1.0):
      out = boxes.soft_box(maps, 0.5, temperature, method)
      grads = jax.grad(lambda m, t=temperature, k=method: boxes.soft_box(m, 0.5, t, k).sum())(maps)
      assert np.all(np.isfinite(out)) and np.all(np.isfinite(grads)), (method, temperature)
      assert np.all(out[:, 2] >= out[:, 0]) and np.all(out[:, 3] >= out[:, 1])
  # The all-ones map is boxed as the whole image.
  np.testing.assert_allclose(boxes.soft_box(maps[1:2], 0.5, 0.01), [[0, 0, 1, 1]], atol=1e-5)


def test_soft_box_gradient_points_the_right_way():
  cam = np.zeros((1, 8, 8), np.float32)
  cam[0, 2:5, 2:5] = 1.0
  cam[0, 3, 6] = 0.45  # just below tau, right of the box
  grad = jax.grad(lambda c: boxes.soft_box(c, 0.5, 0.05)[0, 2])(jnp.asarray(cam))
  assert grad[0, 3, 6] > 0  # raising that pixel moves x2 to the right
  assert abs(float(grad[0, 3, 0])) < abs(float(grad[0, 3, 6]))  # far pixels matter less


def test_unknown_box_method():
  with pytest.raises(ValueError, match="Unknown box method"):
    boxes.soft_box(jnp.zeros((1, 2, 2)), 0.5, 0.1, "convex_hull")
