"""Cross-entropy and the RIA loss: ``alpha * CE + beta * L_RIA(B_gc, B_od)``.

``L_RIA = 1 - IoU(B_gc, B_od) + lambda_diag * d(B_gc) [+ DIoU or GIoU term]``
where ``B_gc`` is the soft box of the soft-thresholded, max-normalised
Grad-CAM of the true class, ``B_od`` the object box and ``d`` the squared
diagonal of ``B_gc`` over the squared image diagonal (DESIGN.md section 4).

Losses are returned as per-example values plus weights so that callers can
normalise by *global* counts (sums over all devices), which keeps N-device
training identical to 1-device training when the share of valid boxes
differs between devices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from ria_jax import boxes as boxes_lib
from ria_jax import cam as cam_lib
from ria_jax.numerics import at_least_f32

IOU_TYPES = ("iou", "diou", "giou")


@dataclasses.dataclass(frozen=True)
class RiaConfig:
  """Every constant of the RIA loss (the ``ria`` section of a config).

  Attributes:
    layer: Grad-CAM layer (``conv5_3``, ``pool5``, ``layer3``, ``layer4``).
    method: CAM variant used in the loss (``gradcam``, ``gradcam++``, ``hirescam``).
    weights_gradient: ``'full'`` (second order through the channel weights)
      or ``'stop'`` (only the feature maps are pushed onto the object).
    upsample: factor by which the CAM is bilinearly upsampled before boxing
      (1 = feature-map resolution).
    tau: soft-threshold level on the [0, 1]-normalised CAM.
    temperature: soft-threshold temperature ``T``.
    box: soft box construction, ``'extremes'`` or ``'moments'``.
    iou: ``'iou'`` (paper), ``'diou'`` (+ centre distance) or ``'giou'``.
    lambda_diag: weight of the squared-diagonal penalty on ``B_gc``.
  """

  layer: str = "conv5_3"
  method: str = "gradcam"
  weights_gradient: str = "stop"
  upsample: int = 1
  tau: float = 0.5
  temperature: float = 0.05
  box: str = "extremes"
  iou: str = "iou"
  lambda_diag: float = 0.1

  def __post_init__(self):
    checks = (("method", cam_lib.METHODS), ("weights_gradient", cam_lib.WEIGHTS_GRADIENT),
              ("box", boxes_lib.BOX_METHODS), ("iou", IOU_TYPES))
    for field, allowed in checks:
      if getattr(self, field) not in allowed:
        raise ValueError(f"ria.{field}={getattr(self, field)!r} is not one of {allowed}.")
    if self.temperature <= 0 or self.upsample < 1:
      raise ValueError("ria.temperature must be > 0 and ria.upsample >= 1.")

  @classmethod
  def from_config(cls, section: Mapping[str, Any]) -> RiaConfig:
    """Builds it from a config section, ignoring keys that are not loss fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(section).items() if k in names})


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy, ``(B,)``, computed in float32 (or wider)."""
  chex.assert_rank(logits, 2)
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) \
      if label_smoothing else jax.nn.one_hot(labels, num_classes)
  return optax.softmax_cross_entropy(at_least_f32(logits), targets)


def cam_boxes(cam: jax.Array, cfg: RiaConfig) -> tuple[jax.Array, jax.Array]:
  """Normalised (optionally upsampled) CAM and its soft box ``B_gc``.

  Args:
    cam: ``(B, h, w)`` raw CAM.
    cfg: loss constants.

  Returns:
    ``(cam01 (B, h', w'), boxes (B, 4))``.
  """
  cam01 = cam_lib.normalize(cam)
  if cfg.upsample > 1:
    _, h, w = cam.shape
    cam01 = cam_lib.upsample(cam01, (h * cfg.upsample, w * cfg.upsample))
  return cam01, boxes_lib.soft_box(cam01, cfg.tau, cfg.temperature, cfg.box)


def ria_per_example(box_gc: jax.Array, box_od: jax.Array, cfg: RiaConfig,
                    aspect: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Modified IoU loss per example.

  Args:
    box_gc: ``(B, 4)`` soft Grad-CAM boxes.
    box_od: ``(B, 4)`` object boxes.
    cfg: loss constants.
    aspect: image width / height, for the diagonal and DIoU terms.

  Returns:
    ``(loss (B,), iou (B,))``.
  """
  chex.assert_shape([box_gc, box_od], (box_gc.shape[0], 4))
  overlap = boxes_lib.iou(box_gc, box_od)
  loss = 1.0 - overlap + cfg.lambda_diag * boxes_lib.squared_diagonal(box_gc, aspect)
  if cfg.iou == "diou":
    loss = loss + boxes_lib.centre_distance_term(box_gc, box_od, aspect)
  elif cfg.iou == "giou":
    hull = boxes_lib.area(boxes_lib.enclosing(box_gc, box_od))
    union = boxes_lib.area(box_gc) + boxes_lib.area(box_od) - boxes_lib.intersection(box_gc, box_od)
    loss = loss + (hull - union) / (hull + 1e-9)
  return loss, overlap


def valid_boxes(box_od: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Validity of object boxes: the flag (if given) and a positive, finite area."""
  ok = jnp.all(jnp.isfinite(box_od), axis=-1)
  safe = jnp.where(ok[:, None], box_od, 0.0)
  ok = ok & (boxes_lib.area(safe) > 0)
  if valid is not None:
    ok = ok & valid.astype(bool)
  return ok


def weighted_mean(values: jax.Array, weights: jax.Array, total_weight: jax.Array | None = None) -> jax.Array:
  """``sum(w * v) / max(sum(w), 1)``; ``total_weight`` overrides the sum (e.g. a psum).

  Values where the weight is 0 are ignored even if they are NaN or inf.
  """
  weights = weights.astype(jnp.float32)
  total = jnp.sum(weights) if total_weight is None else total_weight
  return jnp.sum(jnp.where(weights > 0, values * weights, 0.0)) / jnp.maximum(total, 1.0)


def total_loss(ce: jax.Array, ria: jax.Array, alpha: float, beta: jax.Array | float) -> jax.Array:
  """``alpha * CE + beta * RIA``."""
  return alpha * ce + beta * ria


def ria_terms(cam: jax.Array, box_od: jax.Array, box_valid: jax.Array | None, cfg: RiaConfig,
              aspect: float = 1.0) -> dict[str, jax.Array]:
  """Per-example RIA loss from a raw CAM, safe for any object box.

  Invalid object boxes (flag off, empty, NaN) are replaced by a dummy box
  before any arithmetic, so neither their loss nor its gradient can be NaN;
  callers weight them out with ``valid``.

  Args:
    cam: ``(B, h, w)`` raw CAM of the true class.
    box_od: ``(B, 4)`` normalised object boxes.
    box_valid: ``(B,)`` validity flags or ``None``.
    cfg: loss constants.
    aspect: image width / height.

  Returns:
    Dict of ``(B,)`` arrays ``loss``, ``iou``, ``valid`` (float), ``all_zero``
    (the raw CAM is identically zero), plus ``box_gc`` ``(B, 4)``.
  """
  chex.assert_rank(cam, 3)
  chex.assert_shape(box_od, (cam.shape[0], 4))
  valid = valid_boxes(box_od, box_valid)
  box_od = at_least_f32(box_od)
  box_od = jnp.where(valid[:, None], box_od, jnp.asarray([0.0, 0.0, 1.0, 1.0], box_od.dtype))
  _, box_gc = cam_boxes(cam, cfg)
  loss, overlap = ria_per_example(box_gc, box_od, cfg, aspect)
  return {"loss": loss, "iou": overlap, "valid": valid.astype(jnp.float32),
          "all_zero": (jnp.max(cam, axis=(1, 2)) <= 0).astype(jnp.float32), "box_gc": box_gc}
