"""RIVAL10 builder on a fake tree in the exact layout: labels, masks, boxes, bad-file report."""

import json

import numpy as np
import pytest

from ria_jax.data import rival10, sources

import rival10_fake


def _cfg(tmp_path, manual, **rival):
  return {"name": "rival10", "data_dir": str(tmp_path / "tfds"), "manual_dir": str(manual),
          "image_size": 32, "rival10": {"max_bad_fraction": 0.2, **rival}}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  root = tmp_path_factory.mktemp("rival")
  return root, rival10_fake.write_tree(root)


@pytest.mark.parametrize("packaging", ["directory", "zip"])
def test_builder_reads_labels_masks_boxes(tmp_path, tree, packaging):
  root, expected = tree
  manual = root
  if packaging == "zip":
    manual = tmp_path / "manual"
    manual.mkdir()
    rival10_fake.zip_tree(root, manual / "rival10.zip")
  cfg = _cfg(tmp_path, manual)
  for split in ("train", "test"):
    src = sources.open_source(cfg, split)
    assert len(src) == len(expected["good"][split])
    seen = set()
    for i in range(len(src)):
      ex = src[i]
      want = expected["good"][split][ex["id"]]
      seen.add(ex["id"])
      assert ex["label"] == want["label"]
      w, h = want["size"]
      assert ex["image"].shape == (h, w, 3) and ex["image"].dtype == np.uint8
      assert ex["mask"].shape == (h, w)
      # The box is the tight box of the stored mask, and the mask survived JPEG
      # noise: its extent is the drawn ellipse's to within a pixel.
      rows, cols = np.flatnonzero(ex["mask"].any(1)), np.flatnonzero(ex["mask"].any(0))
      np.testing.assert_allclose(ex["box"], [cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h],
                                 atol=1e-6)
      x1, y1, x2, y2 = want["box_px"]
      np.testing.assert_allclose(ex["box"] * [w, h, w, h], [x1, y1, x2, y2], atol=1.01)
      assert ex["box_valid"]
    assert seen == set(expected["good"][split])
  # Attributes are stored too (row 0 of the .npy), read from the raw records.
  builder = sources.builder(cfg)
  raw = builder.as_data_source("train")
  for i in range(len(raw)):
    rec = raw[i]
    np.testing.assert_array_equal(rec["attributes"], expected["good"]["train"][rec["id"].decode()]["attrs"])


def test_bad_files_are_reported_by_name(tmp_path, tree):
  root, expected = tree
  cfg = _cfg(tmp_path, root)
  sources.prepare(cfg)
  report = json.loads((tmp_path / "tfds" / rival10.REPORT_NAME).read_text())
  assert set(report["bad"]) == expected["bad"]
  assert "nopkl" in " ".join(report["bad"]) and "FileNotFoundError" in report["bad"][
      next(k for k in report["bad"] if "nopkl" in k)]
  assert report["counts"]["train"] == {"total": len(expected["good"]["train"]) + 2, "bad": 2}


def test_grayscale_and_cmyk_images_become_rgb(tmp_path, tree):
  root, expected = tree
  src = sources.open_source(_cfg(tmp_path, root), "train")
  modes = {ex_id: v["mode"] for ex_id, v in expected["good"]["train"].items()}
  odd = [i for i in range(len(src)) if modes[src[i]["id"]] != "RGB"]
  assert len(odd) == 2
  for i in odd:
    assert src[i]["image"].shape[-1] == 3
  gray = next(i for i in odd if modes[src[i]["id"]] == "L")
  img = src[gray]["image"].astype(int)
  assert np.abs(img[..., 0] - img[..., 1]).max() <= 2  # grey stays grey


def test_too_many_bad_files_fail_the_build(tmp_path, tree):
  root, _ = tree
  with pytest.raises(ValueError, match=r"(?s)2 of 22 examples are bad.*_corrupt: OSError.*_nopkl: FileNotFoundError"):
    sources.prepare(_cfg(tmp_path, root, max_bad_fraction=0.01))


def test_missing_dataset_says_where_it_looked(tmp_path):
  where = r"(?s)Looked for rival10.zip.*" + str(tmp_path) + ".*mmoayeri/RIVAL10"
  with pytest.raises(rival10.DatasetNotFoundError, match=where):
    sources.prepare(_cfg(tmp_path, tmp_path))
  with pytest.raises(rival10.DatasetNotFoundError, match="no manual_dir was given"):
    sources.prepare({**_cfg(tmp_path, tmp_path), "manual_dir": ""})


def test_mask_threshold_binarises_jpeg_noise():
  import base64
  import io

  from PIL import Image
  mask = np.zeros((40, 40, 3), np.uint8)
  mask[10:30, 5:20] = 255
  buf = io.BytesIO()
  Image.fromarray(mask).save(buf, format="JPEG", quality=60)
  decoded = rival10.decode_object_mask({"entire-object": base64.b64encode(buf.getvalue()).decode()},
                                       (40, 40), 128)
  expected = mask[..., 0] > 0
  assert (decoded != expected).mean() < 0.01
  # "!= 0" would be fooled by JPEG ringing:
  raw = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
  assert ((raw != 0) != expected).sum() > (decoded != expected).sum()
