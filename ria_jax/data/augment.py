"""Geometric transforms applied identically to an image, its object mask and its box.

Per-example NumPy/PIL code run by the grain workers. The random resized crop
is torchvision's ``RandomResizedCrop.get_params`` algorithm (RIVAL10's
official loader uses scale (0.8, 1.0), ratio (0.75, 1.25)) followed, as in
that loader, by a resize of the crop to the output size and a horizontal
flip with probability 1/2.

Boxes are normalised ``(x1, y1, x2, y2)`` with pixel edges (see
``ria_jax.boxes``). A box that comes with a mask is recomputed as the tight
box of the transformed mask (exact); a box from a boxes file is transformed
analytically (exact up to the output pixel grid) and becomes invalid when the
crop leaves nothing of it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from ria_jax.data.synthetic import tight_box


@dataclasses.dataclass(frozen=True)
class Crop:
  """A crop of the source image in pixels: rows ``top:top+height``, columns ``left:left+width``."""

  top: int
  left: int
  height: int
  width: int


def random_resized_crop_params(height: int, width: int, rng: np.random.Generator,
                               scale: tuple[float, float] = (0.8, 1.0),
                               ratio: tuple[float, float] = (0.75, 1.25)) -> Crop:
  """torchvision's ``RandomResizedCrop.get_params`` with a NumPy generator."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = round(math.sqrt(target_area * aspect))
    h = round(math.sqrt(target_area / aspect))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return Crop(top, left, h, w)
  # Fallback: the central crop with the aspect ratio clamped to the range.
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, round(width / min(ratio))
  elif in_ratio > max(ratio):
    h, w = height, round(height * max(ratio))
  else:
    w, h = width, height
  return Crop((height - h) // 2, (width - w) // 2, h, w)


def full_crop(height: int, width: int) -> Crop:
  return Crop(0, 0, height, width)


def _resize(array: np.ndarray, crop: Crop, size: int, resample: Image.Resampling) -> np.ndarray:
  if crop == full_crop(*array.shape[:2]) and array.shape[:2] == (size, size):
    return array
  box = (crop.left, crop.top, crop.left + crop.width, crop.top + crop.height)
  return np.asarray(Image.fromarray(array).resize((size, size), resample, box=box))


def transform_box(box: np.ndarray, crop: Crop, height: int, width: int, flip: bool) -> tuple[np.ndarray, bool]:
  """Maps a normalised box of the source image through a crop (+ resize) and a flip.

  Returns:
    ``(box, valid)``: the box clipped to the crop; ``valid`` is False when
    nothing of it is left.
  """
  x1, y1, x2, y2 = (float(v) for v in box)
  x1 = (x1 * width - crop.left) / crop.width
  x2 = (x2 * width - crop.left) / crop.width
  y1 = (y1 * height - crop.top) / crop.height
  y2 = (y2 * height - crop.top) / crop.height
  x1, x2, y1, y2 = (min(max(v, 0.0), 1.0) for v in (x1, x2, y1, y2))
  if flip:
    x1, x2 = 1.0 - x2, 1.0 - x1
  out = np.array([x1, y1, x2, y2], np.float32)
  return out, bool(x2 > x1 and y2 > y1)


def apply(example: dict, crop: Crop, flip: bool, size: int, box_from_mask: bool) -> dict:
  """Crops, resizes to ``size x size`` and optionally flips one example.

  Args:
    example: ``image (H, W, 3) uint8``, ``box (4,)``, ``box_valid`` and
      optionally ``mask (H, W) bool``.
    crop: the region of the source image to keep.
    flip: horizontal flip after the resize.
    size: output side.
    box_from_mask: recompute the box as the tight box of the transformed mask
      (ground-truth boxes) instead of transforming it analytically.

  Returns:
    A new dict with the transformed fields (other fields are copied).
  """
  out = dict(example)
  height, width = example["image"].shape[:2]
  image = _resize(example["image"], crop, size, Image.Resampling.BILINEAR)
  mask = example.get("mask")
  if mask is not None:
    mask = _resize(mask.astype(np.uint8), crop, size, Image.Resampling.NEAREST).astype(bool)
  if flip:
    image = image[:, ::-1]
    mask = None if mask is None else mask[:, ::-1]
  out["image"] = np.ascontiguousarray(image)
  if mask is not None:
    out["mask"] = np.ascontiguousarray(mask)
  if box_from_mask and mask is not None:
    out["box"], out["box_valid"] = tight_box(mask)
  else:
    box, inside = transform_box(example["box"], crop, height, width, flip)
    out["box"], out["box_valid"] = box, bool(example["box_valid"]) and inside
  return out
