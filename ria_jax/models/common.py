"""Pieces shared by the classifiers: Grad-CAM taps, torch-compatible layers.

Every classifier in this package returns ``(logits, out)`` where ``out`` maps
layer names to activations (big_vision style). The names usable as Grad-CAM
layers are the keys of ``out`` that were marked with :func:`cam_tap`; a tap
adds the ``'perturbations'`` variable of the same name when the caller passes
one, so the gradient of any function of the logits with respect to that
perturbation is the gradient with respect to the activation. Because only the
tapped layer's perturbation is differentiated, JAX's backward for the CAM
weights runs through the layers *after* that layer only.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PERTURBATIONS = "perturbations"

Dtype = Any


def cam_tap(module: nn.Module, name: str, x: jax.Array, out: dict[str, jax.Array]) -> jax.Array:
  """Marks ``x`` as the Grad-CAM layer ``name``: records it and makes it perturbable.

  Args:
    module: the (top-level) module calling the tap; the perturbation variable
      lives in its scope as ``perturbations/<name>``.
    name: the layer name chosen in configs (e.g. ``'conv5_3'``, ``'layer4'``).
    x: the activation, ``(B, h, w, K)``.
    out: the dict of named outputs, updated in place.

  Returns:
    ``x`` plus the caller's zero perturbation when one was passed, else ``x``.
  """
  if module.has_variable(PERTURBATIONS, name):
    x = x + module.get_variable(PERTURBATIONS, name).astype(x.dtype)
  out[name] = x
  return x


def torch_pad(p: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric explicit padding, as PyTorch's ``padding=p`` (not 'SAME')."""
  return ((p, p), (p, p))


# torchvision initialises convolutions with kaiming_normal_(mode='fan_out',
# nonlinearity='relu'); in Flax terms: variance 2 / fan_out, untruncated normal.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def torch_linear_init(fan_in: int):
  """PyTorch's default ``nn.Linear`` init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def scaled(channels: int, width: float) -> int:
  """Channel count under a width multiplier (at least 1)."""
  return max(1, round(channels * width))


def _adaptive_pool_matrix(size_in: int, size_out: int) -> np.ndarray:
  """Averaging matrix of torch's AdaptiveAvgPool along one axis, (out, in)."""
  mat = np.zeros((size_out, size_in), np.float32)
  for i in range(size_out):
    start = (i * size_in) // size_out
    end = -((-(i + 1) * size_in) // size_out)  # ceil
    mat[i, start:end] = 1.0 / (end - start)
  return mat


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
  """``torch.nn.AdaptiveAvgPool2d(size)`` on NHWC input (also upsamples)."""
  _, h, w, _ = x.shape
  if (h, w) == (size, size):
    return x
  ph = jnp.asarray(_adaptive_pool_matrix(h, size), x.dtype)
  pw = jnp.asarray(_adaptive_pool_matrix(w, size), x.dtype)
  return jnp.einsum("oh,bhwc,pw->bopc", ph, x, pw)


def batch_norm(train: bool, dtype: Dtype, axis_name: str | None, name: str,
               scale_init=nn.initializers.ones) -> nn.BatchNorm:
  """BatchNorm with PyTorch's constants (momentum 0.1 -> Flax 0.9, eps 1e-5).

  ``axis_name`` makes the batch statistics global over that mesh axis inside
  ``shard_map`` (synchronised BN), which keeps N-device training equal to
  1-device training on the same global batch.
  """
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=dtype,
      axis_name=axis_name,
      scale_init=scale_init,
      name=name,
  )


# Per-channel (mean, std) of the input conventions pretrained weights expect.
INPUT_NORMS = {
    "none": None,
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # torchvision / timm ImageNet
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),                  # [-1, 1] inputs
}


def normalize_input(x: jax.Array, norm: str | None) -> jax.Array:
  """uint8 images -> [0, 1]; then ``(x - mean) / std`` for the named convention.

  Args:
    x: ``(B, H, W, 3)`` uint8 in [0, 255] or float in [0, 1].
    norm: a key of :data:`INPUT_NORMS` (``None`` = ``'none'``).
  """
  if x.dtype == jnp.uint8:
    x = x.astype(jnp.float32) / 255.0
  if norm not in INPUT_NORMS and norm is not None:
    raise ValueError(f"Unknown input normalisation {norm!r}; expected one of {sorted(INPUT_NORMS)}.")
  stats = INPUT_NORMS.get(norm or "none")
  if stats is None:
    return x
  mean, std = (jnp.asarray(s, x.dtype) for s in stats)
  return (x - mean) / std
