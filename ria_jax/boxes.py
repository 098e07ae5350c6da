"""Boxes: soft threshold, differentiable soft boxes, hard boxes, IoU helpers.

Convention everywhere: a box is ``(x1, y1, x2, y2)`` in normalised image
coordinates in [0, 1], pixel *edges* included: on an ``h x w`` grid the tight
box of the cells ``rows r0..r1, columns c0..c1`` is
``(c0 / w, r0 / h, (c1 + 1) / w, (r1 + 1) / h)``. Boxes with ``x2 <= x1`` or
``y2 <= y1`` are empty (area 0).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from ria_jax.numerics import at_least_f32

BOX_METHODS = ("extremes", "moments")
_TINY = 1e-30


def soft_threshold(cam: jax.Array, tau: float, temperature: float) -> jax.Array:
  """``sigmoid((cam - tau) / T)``: a soft version of ``cam > tau``."""
  return jax.nn.sigmoid((cam - tau) / temperature)


def _expected_first(log_empty: jax.Array) -> jax.Array:
  """E[index of the first occupied line | some line is occupied].

  Lines (columns or rows) are occupied independently; ``log_empty[..., j]``
  is ``log P(line j empty)`` (<= 0). ``P(first = j) = (1 - e_j) prod_{i<j} e_i``
  is evaluated in log space so that near-certain and near-impossible lines
  neither underflow nor produce NaN gradients.
  """
  log_empty = jnp.minimum(log_empty, -_TINY)  # a line is never *certainly* empty
  log_occupied = jnp.log(-jnp.expm1(log_empty))
  before = jnp.cumsum(log_empty, axis=-1) - log_empty  # exclusive cumsum
  weights = jax.nn.softmax(log_occupied + before, axis=-1)
  index = jnp.arange(log_empty.shape[-1], dtype=log_empty.dtype)
  return jnp.sum(weights * index, axis=-1)


def _extremes_1d(log_empty: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Soft [first, last + 1] / n along the last axis, normalised to [0, 1]."""
  n = log_empty.shape[-1]
  first = _expected_first(log_empty)
  last = (n - 1) - _expected_first(log_empty[..., ::-1])
  return first / n, (last + 1.0) / n


def soft_box_extremes(logits_m: jax.Array) -> jax.Array:
  """Soft-extremes box of a soft mask given as logits ``z`` (``m = sigmoid(z)``).

  Column ``x`` is occupied with probability ``p_x = 1 - prod_y (1 - m_xy)``;
  ``x1 = E[first occupied column]``, ``x2 = E[last occupied column] + 1``
  (then the same for rows), conditioned on the mask being non-empty. As the
  mask becomes binary this is exactly the tight (hard) box, and
  ``x2 - x1 >= 1/w`` always.

  Args:
    logits_m: ``(B, h, w)`` mask logits, e.g. ``(cam - tau) / T``.

  Returns:
    ``(B, 4)`` boxes.
  """
  chex.assert_rank(logits_m, 3)
  log_empty_cell = jax.nn.log_sigmoid(-at_least_f32(logits_m))  # log(1 - m)
  x1, x2 = _extremes_1d(jnp.sum(log_empty_cell, axis=1))  # columns: (B, w)
  y1, y2 = _extremes_1d(jnp.sum(log_empty_cell, axis=2))  # rows: (B, h)
  return jnp.stack([x1, y1, x2, y2], axis=-1)


def soft_box_moments(mask: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Moment box of a soft mask: centre +- sqrt(3) std per axis, clipped to [0, 1].

  For a binary rectangle this is exactly the rectangle (a uniform
  distribution on [a, b] has std (b - a) / sqrt(12)), measured on pixel
  centres and widened by the half-pixel edges.

  Args:
    mask: ``(B, h, w)`` soft mask in [0, 1].
    eps: guards the empty mask (its box is the image centre, size 1 pixel).

  Returns:
    ``(B, 4)`` boxes.
  """
  chex.assert_rank(mask, 3)
  mask = at_least_f32(mask)
  _, h, w = mask.shape
  boxes = []
  for axis, n in ((2, w), (1, h)):
    centres = (jnp.arange(n, dtype=mask.dtype) + 0.5) / n
    marginal = jnp.sum(mask, axis=3 - axis) + eps / n  # (B, n)
    p = marginal / jnp.sum(marginal, axis=-1, keepdims=True)
    mean = jnp.sum(p * centres, axis=-1)
    var = jnp.sum(p * (centres - mean[:, None]) ** 2, axis=-1)
    # The discrete uniform on n cells has variance ((n/N)^2 - 1/N^2) / 12; add
    # the cell's own 1/(12 N^2) back so a binary rectangle maps to its edges.
    half = jnp.sqrt(3.0 * (var + 1.0 / (12.0 * n * n)))
    boxes.append((jnp.clip(mean - half, 0.0, 1.0), jnp.clip(mean + half, 0.0, 1.0)))
  (x1, x2), (y1, y2) = boxes
  return jnp.stack([x1, y1, x2, y2], axis=-1)


def soft_box(cam: jax.Array, tau: float, temperature: float, method: str = "extremes") -> jax.Array:
  """Differentiable box of ``{cam > tau}``, see the two constructions above.

  Args:
    cam: ``(B, h, w)`` maps, normally in [0, 1].
    tau: threshold.
    temperature: softness ``T``; ``T -> 0`` gives the hard box.
    method: ``'extremes'`` or ``'moments'``.

  Returns:
    ``(B, 4)`` boxes.
  """
  if method == "extremes":
    return soft_box_extremes((cam - tau) / temperature)
  if method == "moments":
    return soft_box_moments(soft_threshold(cam, tau, temperature))
  raise ValueError(f"Unknown box method {method!r}; expected one of {BOX_METHODS}.")


def hard_box(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Tight box of a boolean mask.

  Args:
    mask: ``(B, h, w)`` boolean (e.g. ``cam > tau``).

  Returns:
    ``(boxes (B, 4), valid (B,))``; an empty mask gives ``valid=False`` and
    the box ``(0, 0, 0, 0)``.
  """
  chex.assert_rank(mask, 3)
  _, h, w = mask.shape
  cols = jnp.any(mask, axis=1)
  rows = jnp.any(mask, axis=2)
  valid = jnp.any(cols, axis=-1)

  def extent(occupied, n):
    idx = jnp.arange(n)
    first = jnp.min(jnp.where(occupied, idx, n), axis=-1)
    last = jnp.max(jnp.where(occupied, idx, -1), axis=-1)
    return first / n, (last + 1) / n

  x1, x2 = extent(cols, w)
  y1, y2 = extent(rows, h)
  boxes = jnp.stack([x1, y1, x2, y2], axis=-1).astype(jnp.float32)
  return jnp.where(valid[:, None], boxes, 0.0), valid


def area(boxes: jax.Array) -> jax.Array:
  """Area of ``(..., 4)`` boxes; empty or inverted boxes have area 0."""
  return jax.nn.relu(boxes[..., 2] - boxes[..., 0]) * jax.nn.relu(boxes[..., 3] - boxes[..., 1])


def intersection(a: jax.Array, b: jax.Array) -> jax.Array:
  """Area of the intersection of ``(..., 4)`` boxes."""
  lo = jnp.maximum(a[..., :2], b[..., :2])
  hi = jnp.minimum(a[..., 2:], b[..., 2:])
  return jnp.prod(jax.nn.relu(hi - lo), axis=-1)


def iou(a: jax.Array, b: jax.Array, eps: float = 1e-9) -> jax.Array:
  """Intersection over union of ``(..., 4)`` boxes (0 when both are empty)."""
  inter = intersection(a, b)
  union = area(a) + area(b) - inter
  return inter / (union + eps)


def enclosing(a: jax.Array, b: jax.Array) -> jax.Array:
  """Smallest box containing both boxes."""
  return jnp.concatenate([jnp.minimum(a[..., :2], b[..., :2]),
                          jnp.maximum(a[..., 2:], b[..., 2:])], axis=-1)


def squared_diagonal(boxes: jax.Array, aspect: float = 1.0) -> jax.Array:
  """Squared diagonal of boxes over the squared image diagonal.

  Args:
    boxes: ``(..., 4)`` normalised boxes.
    aspect: image width / height (the normalised axes have different pixel
      lengths otherwise).

  Returns:
    Values in [0, 1]; 1 for the whole image.
  """
  dw = (boxes[..., 2] - boxes[..., 0]) * aspect
  dh = boxes[..., 3] - boxes[..., 1]
  return (dw**2 + dh**2) / (aspect**2 + 1.0)


def centre_distance_term(a: jax.Array, b: jax.Array, aspect: float = 1.0, eps: float = 1e-9) -> jax.Array:
  """DIoU's penalty: squared centre distance over the enclosing box's squared diagonal."""
  ca = 0.5 * (a[..., :2] + a[..., 2:])
  cb = 0.5 * (b[..., :2] + b[..., 2:])
  d = (ca - cb) * jnp.asarray([aspect, 1.0])
  c = enclosing(a, b)
  diag = squared_diagonal(c, aspect) * (aspect**2 + 1.0)
  return jnp.sum(d**2, axis=-1) / (diag + eps)
