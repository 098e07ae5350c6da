"""The embedded dataset: masks agree with pixels, background statistics per split, determinism."""

import numpy as np
import pytest

from ria_jax.data import sources, synthetic

SPEC = synthetic.SyntheticSpec(image_size=48, train_size=400, test_size=100, seed=3)


def _examples(split, n, spec=SPEC):
  return [synthetic.generate(spec, split, i) for i in range(n)]


def _np_tight_box(mask):
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  h, w = mask.shape
  return np.array([cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h])


@pytest.mark.parametrize("split", synthetic.SPLITS)
def test_masks_and_boxes_agree_with_pixels(split):
  for ex in _examples(split, 60):
    image = ex["image"].astype(np.float32) / 255
    mask = ex["mask"]
    if split == "only_bg":
      assert not mask.any() and not ex["box_valid"]
      continue
    assert ex["box_valid"]
    np.testing.assert_allclose(ex["box"], _np_tight_box(mask), atol=1e-6)
    # Object pixels share one colour (up to the luminance noise, std 0.02)...
    inside = image[mask]
    colour = np.median(inside, axis=0)
    assert np.abs(inside - colour).max() < 6 * SPEC.noise + 1 / 255
    # ...and every background pixel is far from it (>= 0.3 mean absolute, minus noise).
    outside = image[~mask]
    assert np.abs(outside - colour).mean(axis=1).min() > 0.3 - 6 * SPEC.noise
    # The object is a third to a half of the image side (corners of rotated shapes reach 1.2 radii).
    side = max(ex["box"][2] - ex["box"][0], ex["box"][3] - ex["box"][1])
    assert 0.15 < side <= 0.5 * 1.21 + 1 / 48


def test_rho_on_train_matches_config():
  for rho in (0.9, 0.5):
    spec = synthetic.SyntheticSpec(image_size=32, rho=rho, seed=1)
    ex = _examples("train", 3000, spec)
    agree = np.mean([e["bg_family"] == e["label"] for e in ex])
    assert abs(agree - rho) < 4 * np.sqrt(rho * (1 - rho) / 3000), (rho, agree)
    # Disagreeing backgrounds are spread over the other families.
    other = [e["bg_family"] for e in ex if e["bg_family"] != e["label"]]
    assert len(set(other)) == synthetic.NUM_CLASSES


def test_test_splits_background_statistics():
  n = 1500
  same = _examples("mixed_same", n)
  assert all(e["bg_family"] == e["label"] for e in same)
  rand = _examples("mixed_rand", n)
  agree = np.mean([e["bg_family"] == e["label"] for e in rand])
  assert abs(agree - 0.1) < 4 * np.sqrt(0.09 / n)
  counts = np.bincount([e["bg_family"] for e in rand], minlength=10)
  assert counts.min() > n / 10 * 0.6  # every family appears, roughly uniformly
  in_dist = _examples("in_distribution", n)
  assert abs(np.mean([e["bg_family"] == e["label"] for e in in_dist]) - SPEC.rho) < 4 * np.sqrt(0.09 / n)
  for e in _examples("only_fg", 50):  # plain background: one colour outside the object
    outside = e["image"][~e["mask"]].astype(np.float32) / 255
    assert outside.std(axis=0).max() < 2 * SPEC.noise
  labels = np.bincount([e["label"] for e in same], minlength=10)
  assert labels.min() > n / 10 * 0.6  # classes balanced


def test_same_seed_same_bytes_other_seed_other_bytes():
  a = synthetic.generate(SPEC, "train", 17)
  b = synthetic.generate(SPEC, "train", 17)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  c = synthetic.generate(synthetic.SyntheticSpec(image_size=48, seed=4), "train", 17)
  assert not np.array_equal(a["image"], c["image"])
  d = synthetic.generate(SPEC, "mixed_rand", 17)
  assert not np.array_equal(a["image"], d["image"])


def test_tfds_builder_stores_exactly_the_generated_examples(tmp_path):
  cfg = {"name": "synthetic", "data_dir": str(tmp_path), "image_size": 32,
         "synthetic": {"train_size": 50, "test_size": 20, "seed": 5}}
  spec = sources.synthetic_spec(cfg)
  for split, n in (("train", 50), ("only_bg", 20)):
    src = sources.open_source(cfg, split)
    assert len(src) == n
    ids = set()
    for i in range(n):
      ex = src[i]
      split_name, index = ex["id"].split("/")
      assert split_name == split
      ref = synthetic.generate(spec, split, int(index))
      for key in ("image", "mask", "box", "label", "bg_family", "box_valid"):
        np.testing.assert_array_equal(ex[key], ref[key], err_msg=key)
      ids.add(ex["id"])
    assert len(ids) == n
  # A second builder with the same spec reuses the files (no regeneration).
  assert sources.builder(cfg).is_prepared()


def test_bad_spec_rejected():
  with pytest.raises(ValueError, match="rho"):
    synthetic.SyntheticSpec(rho=1.5)
  with pytest.raises(ValueError, match="split"):
    synthetic.generate(SPEC, "validation", 0)
