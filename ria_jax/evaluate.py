"""Evaluation metrics as pure, jittable functions (import them in notebooks).

Definitions follow DESIGN.md section 7:

* accuracy, per-class and class-averaged accuracy;
* CAM localisation against object boxes/masks: IoU of the hard CAM box
  (``cam01 > threshold``), CorLoc (IoU >= 0.5), energy-based pointing game
  (share of CAM mass inside the box or the mask; Wang et al., Score-CAM),
  pointing game (argmax within ``tolerance`` pixels of the mask; TorchRay);
* RIVAL10 noise sensitivity: Gaussian noise inside (foreground) or outside
  (background) the object mask, images clipped to [0, 1], class-averaged
  accuracy per sigma, and ``RFS = (a_bg - a_fg) / (2 min(a, 1 - a))`` with
  ``a = (a_fg + a_bg) / 2`` (positive = the model relies on the foreground);
* background shift: ``BG-gap = acc(mixed_same) - acc(mixed_rand)``.

Every function takes per-example ``weights`` where it reduces over a batch,
so padded examples (weight 0) never count. Functions that return sums
(``*_sums``) are for accumulation over batches and devices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ria_jax import boxes as boxes_lib
from ria_jax import cam as cam_lib

# ---------------------------------------------------------------- predictions


def predict(model: nn.Module, variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
  """Eval-mode logits ``(B, C)``."""
  logits, _ = model.apply(variables, images, train=False)
  return logits


def class_accuracy_sums(logits: jax.Array, labels: jax.Array, num_classes: int,
                        weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Per-class ``(correct (C,), count (C,))`` sums."""
  chex.assert_rank(logits, 2)
  weights = jnp.ones(labels.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32) * weights
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return correct @ onehot, weights @ onehot


def accuracies(correct: np.ndarray, count: np.ndarray) -> dict[str, Any]:
  """Top-1, class-averaged and per-class accuracy from per-class sums (classes without examples skipped)."""
  correct, count = np.asarray(correct, np.float64), np.asarray(count, np.float64)
  present = count > 0
  per_class = np.where(present, correct / np.maximum(count, 1), np.nan)
  return {"accuracy": float(correct.sum() / max(count.sum(), 1)),
          "class_avg_accuracy": float(np.nanmean(per_class)) if present.any() else float("nan"),
          "per_class_accuracy": [None if np.isnan(a) else float(a) for a in per_class]}


# ---------------------------------------------------------------- Grad-CAM


def gradcam(model: nn.Module, variables: Mapping[str, Any], images: jax.Array, *, layer: str,
            targets: jax.Array | None = None, method: str = "gradcam", image_size: bool = True
            ) -> tuple[jax.Array, jax.Array]:
  """[0, 1]-normalised CAM of the target (default: predicted) class, eval mode.

  Args:
    model: the classifier.
    variables: its variables.
    images: ``(B, H, W, 3)``.
    layer: Grad-CAM layer.
    targets: classes to explain, ``None`` = predicted.
    method: ``gradcam`` | ``gradcam++`` | ``hirescam``.
    image_size: upsample (bilinear) to ``(H, W)``; else feature-map resolution.

  Returns:
    ``(cam01 (B, h, w) or (B, H, W), logits (B, C))``.
  """
  res = cam_lib.forward_with_cam(model, variables, images, layer=layer, targets=targets, method=method)
  cam = cam_lib.normalize(res.cam)
  if image_size:
    cam = cam_lib.normalize(jax.nn.relu(cam_lib.upsample(cam, images.shape[1:3])))
  return cam, res.logits


# ---------------------------------------------------------------- localisation


def box_mask(box: jax.Array, height: int, width: int) -> jax.Array:
  """``(B, H, W)`` indicator of the pixels whose centres lie in normalised ``(B, 4)`` boxes."""
  ys = (jnp.arange(height) + 0.5) / height
  xs = (jnp.arange(width) + 0.5) / width
  in_x = (xs[None, :] >= box[:, 0:1]) & (xs[None, :] <= box[:, 2:3])
  in_y = (ys[None, :] >= box[:, 1:2]) & (ys[None, :] <= box[:, 3:4])
  return in_y[:, :, None] & in_x[:, None, :]


def cam_box_iou(cam01: jax.Array, box: jax.Array, threshold: float = 0.5) -> jax.Array:
  """IoU of the tight box of ``cam01 > threshold`` with ``box``; 0 for an empty CAM box."""
  hard, valid = boxes_lib.hard_box(cam01 > threshold)
  return jnp.where(valid, boxes_lib.iou(hard, box), 0.0)


def energy_pointing_game(cam01: jax.Array, region: jax.Array) -> jax.Array:
  """Share of CAM mass inside ``region`` (``(B, H, W)`` bool); 0 for an all-zero CAM."""
  total = jnp.sum(cam01, axis=(1, 2))
  inside = jnp.sum(jnp.where(region, cam01, 0.0), axis=(1, 2))
  return jnp.where(total > 0, inside / jnp.where(total > 0, total, 1.0), 0.0)


def pointing_game(cam01: jax.Array, mask: jax.Array, tolerance: float = 15.0) -> jax.Array:
  """1 where the CAM's maximum lies within ``tolerance`` pixels of the mask (TorchRay's rule).

  Ties for the maximum are broken by the first pixel in row-major order.
  """
  b, h, w = cam01.shape
  flat = jnp.argmax(cam01.reshape(b, -1), axis=-1)
  py, px = flat // w, flat % w
  ys, xs = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
  d2 = (ys - py[:, None, None]) ** 2 + (xs - px[:, None, None]) ** 2
  nearest = jnp.min(jnp.where(mask, d2, jnp.iinfo(jnp.int32).max), axis=(1, 2))
  return (nearest <= tolerance**2).astype(jnp.float32)


def localisation(cam01: jax.Array, box: jax.Array, mask: jax.Array, *, threshold: float = 0.5,
                 tolerance: float = 15.0) -> dict[str, jax.Array]:
  """Per-example localisation metrics of image-resolution CAMs.

  Args:
    cam01: ``(B, H, W)`` CAMs in [0, 1].
    box: ``(B, 4)`` normalised object boxes.
    mask: ``(B, H, W)`` object masks.
    threshold: hard-box threshold.
    tolerance: pointing-game tolerance in pixels.

  Returns:
    ``cam_iou``, ``corloc``, ``energy_box``, ``energy_mask``, ``pointing`` (each ``(B,)``).
  """
  chex.assert_rank([cam01, mask], 3)
  _, h, w = cam01.shape
  iou = cam_box_iou(cam01, box, threshold)
  return {"cam_iou": iou, "corloc": (iou >= 0.5).astype(jnp.float32),
          "energy_box": energy_pointing_game(cam01, box_mask(box, h, w)),
          "energy_mask": energy_pointing_game(cam01, mask),
          "pointing": pointing_game(cam01, mask, tolerance)}


# ---------------------------------------------------------------- noise


def add_region_noise(images01: jax.Array, mask: jax.Array, sigma: float, noise: jax.Array,
                     region: str) -> jax.Array:
  """``clip(x + sigma * z * region_mask, 0, 1)`` with ``region`` ``'fg'`` (mask) or ``'bg'`` (complement).

  Args:
    images01: ``(B, H, W, 3)`` in [0, 1].
    mask: ``(B, H, W)`` object masks.
    sigma: noise std in [0, 1] units (e.g. 60 / 255).
    noise: ``(B, H, W, 3)`` standard normal draws.
    region: ``'fg'`` or ``'bg'``.
  """
  if region not in ("fg", "bg"):
    raise ValueError(f"region must be 'fg' or 'bg', got {region!r}.")
  where = mask if region == "fg" else ~mask
  return jnp.clip(images01 + sigma * noise * where[..., None].astype(images01.dtype), 0.0, 1.0)


def example_noise(seed: int, index: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Standard normal noise per example, keyed by its position in the split.

  Independent of batch size and device count, so 1- and N-device evaluations
  see the same noise.
  """
  base = jax.random.key(seed)
  keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(index)
  return jax.vmap(lambda k: jax.random.normal(k, tuple(shape), jnp.float32))(keys)


def rfs(acc_fg: np.ndarray, acc_bg: np.ndarray) -> np.ndarray:
  """Relative foreground sensitivity ``(a_bg - a_fg) / (2 min(a, 1 - a))``; 0 where undefined (a in {0, 1})."""
  acc_fg, acc_bg = np.asarray(acc_fg, np.float64), np.asarray(acc_bg, np.float64)
  a = (acc_fg + acc_bg) / 2
  denom = 2 * np.minimum(a, 1 - a)
  return np.where(denom > 0, (acc_bg - acc_fg) / np.where(denom > 0, denom, 1.0), 0.0)


def bg_gap(acc_mixed_same: float, acc_mixed_rand: float) -> float:
  """Backgrounds Challenge BG-gap: how much accuracy the background cues carry."""
  return float(acc_mixed_same) - float(acc_mixed_rand)
