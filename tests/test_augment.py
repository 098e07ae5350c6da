"""Augmentation: image, mask and box move together under random resized crops and flips."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ria_jax.data import augment


def _np_tight_box(mask):
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  h, w = mask.shape
  return np.array([cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h])


def _example(rng, h, w):
  mask = np.zeros((h, w), bool)
  r0, c0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
  r1, c1 = rng.integers(r0 + 2, h + 1), rng.integers(c0 + 2, w + 1)
  mask[r0:r1, c0:c1] = True
  mask &= rng.uniform(size=mask.shape) < 0.9  # ragged, but keep the extremes
  mask[r0, c0] = mask[r1 - 1, c1 - 1] = True
  image = np.zeros((h, w, 3), np.uint8)
  image[mask] = 255  # the image carries the mask in its pixels
  return {"image": image, "mask": mask, "box": _np_tight_box(mask).astype(np.float32), "box_valid": True,
          "label": 0}


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(24, 90), st.integers(24, 90), st.sampled_from([16, 32, 48]))
def test_box_stays_the_tight_box_of_the_transformed_mask(seed, h, w, size):
  rng = np.random.default_rng(seed)
  ex = _example(rng, h, w)
  crop = augment.random_resized_crop_params(h, w, rng)
  flip = bool(rng.uniform() < 0.5)
  out = augment.apply(ex, crop, flip, size, box_from_mask=True)
  assert out["image"].shape == (size, size, 3) and out["mask"].shape == (size, size)
  if out["mask"].any():
    np.testing.assert_allclose(out["box"], _np_tight_box(out["mask"]), atol=1e-6)
    # The image moved with the mask: object pixels are bright where the mask is.
    assert out["image"][out["mask"]].mean() > out["image"][~out["mask"]].mean() if (~out["mask"]).any() else True
  else:
    assert not out["box_valid"]
  # A box from a file (analytic transform) agrees with the box of the transformed
  # solid rectangle to one output pixel (nearest-neighbour sampling of the mask).
  solid = dict(ex, mask=np.zeros_like(ex["mask"]))
  x1, y1, x2, y2 = np.round(ex["box"] * [w, h, w, h]).astype(int)
  solid["mask"][y1:y2, x1:x2] = True
  sampled = augment.apply(solid, crop, flip, size, box_from_mask=True)
  analytic = augment.apply(solid, crop, flip, size, box_from_mask=False)
  assert analytic["box_valid"] or not sampled["mask"].any()
  if sampled["mask"].any():
    np.testing.assert_allclose(analytic["box"], sampled["box"], atol=1.0 / size + 1e-6)


def test_flip_mirrors_box_and_mask():
  rng = np.random.default_rng(0)
  ex = _example(rng, 40, 60)
  full = augment.full_crop(40, 60)
  plain = augment.apply(ex, full, False, 40, box_from_mask=True)
  flipped = augment.apply(ex, full, True, 40, box_from_mask=True)
  np.testing.assert_array_equal(flipped["mask"], plain["mask"][:, ::-1])
  np.testing.assert_array_equal(flipped["image"], plain["image"][:, ::-1])
  x1, y1, x2, y2 = plain["box"]
  np.testing.assert_allclose(flipped["box"], [1 - x2, y1, 1 - x1, y2], atol=1e-6)


def test_crop_parameters_follow_torchvision_ranges():
  rng = np.random.default_rng(1)
  h, w = 300, 400
  scales, ratios = [], []
  for _ in range(2000):
    c = augment.random_resized_crop_params(h, w, rng)
    assert c.top >= 0 and c.top + c.height <= h and c.left >= 0 and c.left + c.width <= w
    scales.append(c.height * c.width / (h * w))
    ratios.append(c.width / c.height)
  assert min(scales) >= 0.79 and max(scales) <= 1.0
  assert min(ratios) >= 0.74 and max(ratios) <= 1.26
  assert np.std(scales) > 0.03  # really random


def test_crop_that_misses_the_box_invalidates_it():
  ex = {"image": np.zeros((100, 100, 3), np.uint8), "box": np.array([0.0, 0.0, 0.2, 0.2], np.float32),
        "box_valid": True, "label": 1}
  out = augment.apply(ex, augment.Crop(50, 50, 50, 50), False, 32, box_from_mask=False)
  assert not out["box_valid"]
  out = augment.apply(ex, augment.Crop(0, 0, 50, 50), False, 32, box_from_mask=False)
  assert out["box_valid"]
  np.testing.assert_allclose(out["box"], [0, 0, 0.4, 0.4], atol=1e-6)
