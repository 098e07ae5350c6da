"""The embedded background-bias dataset: procedural objects on procedural backgrounds.

Ten object classes (silhouettes with exact masks) are painted on ten
background families (low-contrast two-colour patterns). In the training split
the background family equals the class with probability ``rho``, so a
classifier can take the background shortcut; the test splits break or remove
that correlation, Backgrounds-Challenge style (Xiao et al. 2020):

================  ========================================================
split             background
================  ========================================================
train             family = class with probability rho, else another family
in_distribution   as train (same rho)
mixed_same        a fresh background of the class's own family
mixed_rand        a family drawn uniformly at random (independent of class)
only_fg           the object on a plain background (one colour)
only_bg           the class's own family, no object (box invalid)
================  ========================================================

Every example is a pure function of ``(seed, split, index)``: generation is
deterministic, parallel-safe and fast (vectorised NumPy on the pixel grid).
The calibration (object size a third to a half of the side, background
colours 0.10-0.25 apart per channel, objects >= 0.3 mean-absolute from both
background colours) follows DESIGN.md section 6.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib

import numpy as np

CLASSES = ("disk", "square", "triangle", "cross", "star", "ring", "crescent", "hexagon", "arrow", "ell")
FAMILIES = ("h_stripes", "v_stripes", "diag_stripes", "antidiag_stripes", "checker", "dots", "rings",
            "grid", "blobs", "waves")
SPLITS = ("train", "in_distribution", "mixed_same", "mixed_rand", "only_fg", "only_bg")
NUM_CLASSES = len(CLASSES)

_SQRT3 = np.sqrt(3.0)


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """What is generated (all fields go into the TFDS config name).

  Attributes:
    image_size: side of the square images in pixels.
    rho: P(background family == class) in ``train`` and ``in_distribution``.
    seed: generation seed.
    train_size: examples in ``train``.
    test_size: examples in each test split.
    min_object: smallest object diameter as a fraction of the side.
    max_object: largest object diameter as a fraction of the side.
    noise: std of per-pixel Gaussian luminance noise (in [0, 1] units).
  """

  image_size: int = 64
  rho: float = 0.9
  seed: int = 0
  train_size: int = 10_000
  test_size: int = 2_000
  min_object: float = 1 / 3
  max_object: float = 1 / 2
  noise: float = 0.02

  def __post_init__(self):
    if not 0.0 <= self.rho <= 1.0:
      raise ValueError(f"rho must be in [0, 1], got {self.rho}.")
    if self.image_size < 16:
      raise ValueError(f"image_size must be >= 16, got {self.image_size}.")
    if not 0 < self.min_object <= self.max_object <= 1:
      raise ValueError("Need 0 < min_object <= max_object <= 1.")

  def split_size(self, split: str) -> int:
    return self.train_size if split == "train" else self.test_size


# ------------------------------------------------------------------ shapes
# Each silhouette is an indicator on object coordinates (u, v) in about [-1, 1].


def _shape_mask(cls: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  au, av = np.abs(u), np.abs(v)
  r2 = u * u + v * v
  if cls == 0:  # disk
    return r2 <= 1.0
  if cls == 1:  # square
    return (au <= 0.78) & (av <= 0.78)
  if cls == 2:  # equilateral triangle, circumradius 1
    return (v >= -0.5) & (v <= 1.0 - _SQRT3 * au)
  if cls == 3:  # plus-shaped cross
    return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
  if cls == 4:  # five-pointed star
    theta = np.arctan2(v, u)
    return np.sqrt(r2) <= 0.38 + 0.62 * ((1 + np.cos(5 * theta)) / 2) ** 2
  if cls == 5:  # ring
    return (r2 <= 1.0) & (r2 >= 0.5**2)
  if cls == 6:  # crescent
    return (r2 <= 1.0) & ((u - 0.45) ** 2 + v * v >= 0.8**2)
  if cls == 7:  # flat-topped hexagon, circumradius 1
    return (av <= _SQRT3 / 2) & (_SQRT3 * au + av <= _SQRT3)
  if cls == 8:  # arrow pointing along +u
    shaft = (av <= 0.25) & (u >= -1.0) & (u <= 0.2)
    head = (u >= 0.2) & (u <= 1.0) & (av <= 0.75 * (1.0 - u) / 0.8)
    return shaft | head
  if cls == 9:  # L
    return ((u >= -0.8) & (u <= -0.25) & (av <= 0.9)) | ((u >= -0.8) & (u <= 0.8) & (v >= 0.35) & (v <= 0.9))
  raise ValueError(f"class index {cls} out of range")


# ------------------------------------------------------------- backgrounds


def _pattern(family: int, x: np.ndarray, y: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """A {0, 1} (or [0, 1]) pattern of the given family with random scale and phase."""
  period = float(rng.uniform(size / 8, size / 4))
  phase = float(rng.uniform(0, 2 * np.pi))
  k = 2 * np.pi / period
  if family == 0:
    return np.sin(k * y + phase) > 0
  if family == 1:
    return np.sin(k * x + phase) > 0
  if family == 2:
    return np.sin(k * (x + y) / np.sqrt(2) + phase) > 0
  if family == 3:
    return np.sin(k * (x - y) / np.sqrt(2) + phase) > 0
  if family == 4:
    return (np.sin(k * x + phase) > 0) ^ (np.sin(k * y + float(rng.uniform(0, 2 * np.pi))) > 0)
  if family == 5:
    ox, oy = (float(o) for o in rng.uniform(0, period, size=2))
    dx = np.mod(x - ox, period) - period / 2
    dy = np.mod(y - oy, period) - period / 2
    return dx * dx + dy * dy <= (period / 4) ** 2
  if family == 6:
    cx, cy = (float(c) for c in rng.uniform(0, size, size=2))
    return np.sin(k * np.hypot(x - cx, y - cy) + phase) > 0
  if family == 7:
    ox, oy = (float(o) for o in rng.uniform(0, period, size=2))
    return (np.mod(x - ox, period) < period / 4) | (np.mod(y - oy, period) < period / 4)
  if family == 8:  # blobs: a coarse random field, bilinearly upsampled, split at its median
    coarse = rng.uniform(size=(5, 5))
    g = np.linspace(0, 4, size)
    i0 = np.minimum(g.astype(int), 3)
    f = g - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    field = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
    return field > np.median(field)
  if family == 9:  # waves: horizontal stripes bent by a sine
    amp = float(rng.uniform(period / 4, period / 2))
    return np.sin(k * (y + amp * np.sin(k * x / 1.5)) + phase) > 0
  raise ValueError(f"family index {family} out of range")


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Background colours c0, c1 (0.10-0.25 apart per channel) and an object colour."""
  c0 = rng.uniform(0.3, 0.7, size=3)
  c1 = np.clip(c0 + rng.choice([-1.0, 1.0], size=3) * rng.uniform(0.10, 0.25, size=3), 0.0, 1.0)
  for _ in range(100):
    obj = rng.uniform(0.0, 1.0, size=3)
    if np.abs(obj - c0).mean() >= 0.3 and np.abs(obj - c1).mean() >= 0.3:
      return c0, c1, obj
  # Unreachable in practice (P(fail) < 1e-30): the complement is far from both.
  return c0, c1, np.where(c0 > 0.5, 0.0, 1.0)


def _family(split: str, label: int, rho: float, rng: np.random.Generator) -> int:
  if split in ("mixed_same", "only_bg", "only_fg"):
    return label
  if split == "mixed_rand":
    return int(rng.integers(NUM_CLASSES))
  # train / in_distribution: the class's family with probability rho.
  if rng.uniform() < rho:
    return label
  other = int(rng.integers(NUM_CLASSES - 1))
  return other + (other >= label)


def tight_box(mask: np.ndarray) -> tuple[np.ndarray, bool]:
  """Normalised tight box (pixel edges) of a 2-D mask, and whether it is non-empty."""
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  if rows.size == 0:
    return np.zeros(4, np.float32), False
  h, w = mask.shape
  return np.array([cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h], np.float32), True


@functools.lru_cache(maxsize=8)
def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
  y.setflags(write=False)
  x.setflags(write=False)
  return y, x


def example_rng(spec: SyntheticSpec, split: str, index: int) -> np.random.Generator:
  """The generator of example ``index`` of ``split`` (independent of all others)."""
  split_code = zlib.crc32(split.encode())
  return np.random.default_rng([spec.seed, split_code, index])


def generate(spec: SyntheticSpec, split: str, index: int) -> dict[str, np.ndarray | int | bool]:
  """Example ``index`` of ``split``.

  Returns:
    ``image (S, S, 3) uint8``, ``mask (S, S) bool``, ``box (4,) float32``
    (normalised), ``box_valid``, ``label``, ``bg_family``.
  """
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
  rng = example_rng(spec, split, index)
  s = spec.image_size
  label = int(rng.integers(NUM_CLASSES))
  family = _family(split, label, spec.rho, rng)
  c0, c1, obj = (c.astype(np.float32) for c in _colours(rng))
  y, x = _pixel_centres(s)

  if split == "only_fg":
    image = np.broadcast_to(c0, (s, s, 3))
  else:
    pattern = _pattern(family, x, y, s, rng)
    image = np.where(pattern[..., None], c1, c0) if pattern.dtype == bool else \
        c0 + (c1 - c0) * pattern[..., None].astype(np.float32)

  if split == "only_bg":
    mask = np.zeros((s, s), bool)
  else:
    radius = float(rng.uniform(spec.min_object, spec.max_object)) * s / 2
    cx, cy = (float(c) for c in rng.uniform(radius, s - radius, size=2))
    theta = float(rng.uniform(0, 2 * np.pi))
    cos, sin = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    u = ((x - cx) * cos + (y - cy) * sin) / radius
    v = (-(x - cx) * sin + (y - cy) * cos) / radius
    mask = _shape_mask(label, u, v)
    image = np.where(mask[..., None], obj, image)

  image = image * 255.0
  if spec.noise > 0:
    # Luminance noise (one draw per pixel, shared by the channels): 3x cheaper.
    image = image + rng.standard_normal(size=(s, s, 1), dtype=np.float32) * np.float32(spec.noise * 255.0)
  image = np.clip(image + 0.5, 0, 255).astype(np.uint8)  # round half up, then clip
  box, valid = tight_box(mask)
  return {"image": image, "mask": mask, "box": box, "box_valid": valid, "label": label,
          "bg_family": family}
