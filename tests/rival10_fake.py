"""Writes a small RIVAL10 tree in the exact on-disk layout, with known answers.

Each good example is a random-noise image with an axis-aligned elliptic
object whose pixel extent is known; its ``'entire-object'`` mask is stored,
as in the real dataset, as a base64 JPEG inside a pickled dict next to a
couple of other attribute masks.
"""

from __future__ import annotations

import base64
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ria_jax.data import rival10

# Two images per class in train, one in test; wnid = the first synset of the class.
CLASS_WNIDS = [next(w for w, c in rival10.WNIDS.items() if c == k) for k in range(len(rival10.CLASSES))]


def _jpeg(array: np.ndarray, mode: str | None = None, quality: int = 90) -> bytes:
  buf = io.BytesIO()
  img = Image.fromarray(array)
  if mode:
    img = img.convert(mode)
  img.save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def _object_mask(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int, int]]:
  """A filled ellipse; returns the mask and its tight pixel box (x1, y1, x2, y2) with edges."""
  cy, cx = rng.integers(h // 3, 2 * h // 3), rng.integers(w // 3, 2 * w // 3)
  ry, rx = rng.integers(h // 8, h // 4), rng.integers(w // 8, w // 4)
  yy, xx = np.mgrid[0:h, 0:w]
  mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  return mask, (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def write_tree(root: Path, seed: int = 0, per_class: dict[str, int] | None = None) -> dict:
  """Writes ``root/RIVAL10/{train,test}/ordinary`` and returns the expected contents.

  Bad files, all in train: ``corrupt`` (a truncated JPEG), ``nopkl`` (no
  ``_attr_dict.pkl``); odd but valid: ``gray`` (a grayscale JPEG) and
  ``cmyk`` (a CMYK JPEG).

  Returns:
    ``{'good': {split: {stem: dict(label, box_px, size, attrs, mode)}}, 'bad': {split/ordinary/stem}}``.
  """
  per_class = per_class or {"train": 2, "test": 1}
  rng = np.random.default_rng(seed)
  expected: dict = {"good": {"train": {}, "test": {}}, "bad": set()}
  for split, n in per_class.items():
    folder = root / "RIVAL10" / split / "ordinary"
    folder.mkdir(parents=True, exist_ok=True)
    for label, wnid in enumerate(CLASS_WNIDS):
      for k in range(n):
        stem = f"{wnid}_{split}{k}"
        h, w = int(rng.integers(40, 80)), int(rng.integers(40, 80))
        image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        mask, box_px = _object_mask(h, w, rng)
        attrs = rng.integers(0, 2, size=(2, len(rival10.ATTRIBUTES))).astype(np.int64)
        mode = "RGB"
        if split == "train" and label == 0 and k == 0:
          mode = "L"
        elif split == "train" and label == 1 and k == 0:
          mode = "CMYK"
        (folder / f"{stem}.JPEG").write_bytes(_jpeg(image, None if mode == "RGB" else mode))
        np.save(folder / f"{stem}_attr_labels.npy", attrs)
        mask_rgb = np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=-1)
        attr_dict = {
            "entire-object": base64.b64encode(_jpeg(mask_rgb)).decode(),
            "wings": base64.b64encode(_jpeg(np.zeros((h, w, 3), np.uint8))).decode(),
        }
        with (folder / f"{stem}_attr_dict.pkl").open("wb") as f:
          pickle.dump(attr_dict, f)
        (folder / f"{stem}_merged_mask.JPEG").write_bytes(_jpeg(mask_rgb))
        expected["good"][split][stem] = {"label": label, "box_px": box_px, "size": (w, h),
                                         "attrs": attrs[0].astype(bool), "mode": mode}
  # The bad ones (train only).
  folder = root / "RIVAL10" / "train" / "ordinary"
  good_jpeg = _jpeg(rng.integers(0, 256, size=(50, 50, 3), dtype=np.uint8))
  (folder / f"{CLASS_WNIDS[2]}_corrupt.JPEG").write_bytes(good_jpeg[: len(good_jpeg) // 3])
  np.save(folder / f"{CLASS_WNIDS[2]}_corrupt_attr_labels.npy", np.zeros((2, 18), np.int64))
  with (folder / f"{CLASS_WNIDS[2]}_corrupt_attr_dict.pkl").open("wb") as f:
    pickle.dump({"entire-object": base64.b64encode(_jpeg(np.zeros((50, 50, 3), np.uint8))).decode()}, f)
  (folder / f"{CLASS_WNIDS[3]}_nopkl.JPEG").write_bytes(good_jpeg)
  np.save(folder / f"{CLASS_WNIDS[3]}_nopkl_attr_labels.npy", np.zeros((2, 18), np.int64))
  expected["bad"] = {f"train/ordinary/{CLASS_WNIDS[2]}_corrupt", f"train/ordinary/{CLASS_WNIDS[3]}_nopkl"}
  return expected


def zip_tree(root: Path, zip_path: Path) -> Path:
  """Zips ``root/RIVAL10`` as ``rival10.zip`` with the ``RIVAL10/`` prefix (as distributed)."""
  with zipfile.ZipFile(zip_path, "w") as zf:
    for path in sorted((root / "RIVAL10").rglob("*")):
      if path.is_file():
        zf.write(path, path.relative_to(root).as_posix())
  return zip_path
