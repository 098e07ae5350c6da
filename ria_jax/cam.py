"""Batched, differentiable Grad-CAM (and Grad-CAM++, HiResCAM) in one forward pass.

:func:`forward_with_cam` runs the classifier **once** and returns its logits
together with the class activation map of a named layer. The gradient of the
target logits with respect to the layer is obtained with ``jax.vjp`` with
respect to a zero perturbation added at that layer (see
``ria_jax.models.common.cam_tap``), so the extra backward pass runs only
through the layers after it. The result is an ordinary differentiable JAX
value: put it in a loss, ``jit``/``vmap``/``shard_map`` it, take ``jax.grad``.

Gradient flow through the channel weights ``a_k`` is selectable:
``weights_gradient='full'`` differentiates through them (second order, through
the head's backward), ``'stop'`` treats them as constants so that only the
feature maps are pushed around by a loss on the CAM.

Batching note: the targets' scores are summed before the backward pass, so
each example's map uses the gradient of *its own* score exactly when examples
do not interact after the layer (always in eval mode; in train mode unless a
BatchNorm runs after the layer, e.g. ResNet ``layer3``, where the batch
statistics couple examples just as they do in the forward pass).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ria_jax.models.common import PERTURBATIONS
from ria_jax.numerics import at_least_f32

METHODS = ("gradcam", "gradcam++", "hirescam")
WEIGHTS_GRADIENT = ("full", "stop")


class CamOutput(NamedTuple):
  """Everything one forward pass with Grad-CAM produces.

  Attributes:
    logits: ``(B, C)`` float32, from the single forward pass.
    cam: ``(B, h, w)`` float32 (or wider), raw (non-negative, not normalised) map.
    targets: ``(B,)`` int32, the explained class per example.
    activations: ``(B, h, w, K)`` the layer's activation.
    gradients: ``(B, h, w, K)`` gradient of each example's target logit.
    out: the model's dict of named outputs.
    state: updated mutable collections (e.g. ``batch_stats``), ``{}`` if none.
  """

  logits: jax.Array
  cam: jax.Array
  targets: jax.Array
  activations: jax.Array
  gradients: jax.Array
  out: dict[str, jax.Array]
  state: Mapping[str, Any]


def cam_from_gradients(activations: jax.Array, gradients: jax.Array, method: str = "gradcam",
                       weights_gradient: str = "full") -> jax.Array:
  """Combines a layer's activations and gradients into a raw CAM.

  Args:
    activations: ``(B, h, w, K)``.
    gradients: ``(B, h, w, K)``, d(target score)/d(activations).
    method: ``'gradcam'`` (channel weights = spatial mean of the gradient),
      ``'gradcam++'`` (Chattopadhyay et al. 2018, with the exponential-score
      closed form used by pytorch-grad-cam), or ``'hirescam'`` (element-wise
      gradient x activation, summed over channels; Draelos & Carin 2020).
    weights_gradient: ``'full'`` or ``'stop'`` (stop_gradient on the weights,
      i.e. on everything derived from ``gradients``).

  Returns:
    ``(B, h, w)`` float32 (float64 for float64 inputs) map, ``relu`` applied.
  """
  chex.assert_rank(activations, 4)
  chex.assert_equal_shape((activations, gradients))
  if method not in METHODS:
    raise ValueError(f"Unknown CAM method {method!r}; expected one of {METHODS}.")
  if weights_gradient not in WEIGHTS_GRADIENT:
    raise ValueError(f"weights_gradient must be one of {WEIGHTS_GRADIENT}, got {weights_gradient!r}.")
  a = at_least_f32(activations)
  g = at_least_f32(gradients)
  if weights_gradient == "stop":
    g = jax.lax.stop_gradient(g)
  if method == "hirescam":
    return nn.relu(jnp.sum(a * g, axis=-1))
  if method == "gradcam":
    weights = jnp.mean(g, axis=(1, 2))
  else:  # gradcam++
    g2, g3 = g**2, g**3
    sum_a = jnp.sum(a, axis=(1, 2), keepdims=True)
    denom = 2.0 * g2 + sum_a * g3
    safe = jnp.where(denom != 0.0, denom, 1.0)
    alpha = jnp.where(denom != 0.0, g2 / safe, 0.0)
    weights = jnp.sum(alpha * nn.relu(g), axis=(1, 2))
    if weights_gradient == "stop":
      weights = jax.lax.stop_gradient(weights)
  return nn.relu(jnp.einsum("bhwk,bk->bhw", a, weights))


def normalize(cam: jax.Array, eps: float = 0.0) -> jax.Array:
  """Scales each map to [0, 1] by its maximum; an all-zero map stays zero.

  Args:
    cam: ``(B, h, w)`` non-negative maps.
    eps: added to the maximum (0 keeps the maximum exactly at 1).

  Returns:
    ``(B, h, w)`` maps in [0, 1], never NaN.
  """
  chex.assert_rank(cam, 3)
  peak = jnp.max(cam, axis=(1, 2), keepdims=True)
  # Differentiate through the max only where it is positive: the all-zero map
  # (ReLU killed everything) would otherwise give 0/0.
  safe_peak = jnp.where(peak > 0.0, peak, 1.0)
  return cam / (safe_peak + eps)


def upsample(cam: jax.Array, size: Sequence[int]) -> jax.Array:
  """Bilinear resize of ``(B, h, w)`` maps to ``size = (H, W)``.

  Half-pixel centres, i.e. ``F.interpolate(..., mode='bilinear',
  align_corners=False)`` as pytorch-grad-cam and captum use.
  """
  chex.assert_rank(cam, 3)
  h, w = int(size[0]), int(size[1])
  if cam.shape[1:] == (h, w):
    return cam
  return jax.image.resize(cam, (cam.shape[0], h, w), method="bilinear", antialias=False)


def _varying_axes(aval: Any) -> tuple[str, ...]:
  """Mesh axes along which a traced value varies inside ``shard_map`` (empty outside)."""
  manual = getattr(aval, "manual_axis_type", None)  # JAX >= 0.9
  axes = manual.varying if manual is not None else getattr(aval, "vma", ())  # older releases
  return tuple(sorted(axes))


def _forward_and_vjp(model: nn.Module, variables: Mapping[str, Any], images: jax.Array, layer: str,
                     train: bool, rngs: Mapping[str, jax.Array] | None, mutable: Sequence[str]):
  """One forward pass; returns logits, the VJP from logits to ``layer``, the outputs and new state."""
  mutable = list(mutable)

  def apply(perturbation: jax.Array | None):
    vs = dict(variables)
    if perturbation is not None:
      vs[PERTURBATIONS] = {layer: perturbation}
    result = model.apply(vs, images, train=train, rngs=rngs, mutable=mutable or False)
    (logits, out), state = result if mutable else (result, {})
    if layer not in out:
      raise ValueError(f"Layer {layer!r} is not a named output of {type(model).__name__}; "
                       f"available: {sorted(out)}.")
    return logits, (out, state)

  # Trace-time only: the layer's shape, to build the zero perturbation.
  _, (out_shapes, _) = jax.eval_shape(lambda: apply(None))
  zeros = jnp.zeros(out_shapes[layer].shape, out_shapes[layer].dtype)
  # Inside shard_map the activation varies along the data axis; a constant
  # zero would be typed as replicated, and the transpose of that replication
  # would psum the CAM gradients of all devices together.
  varying = _varying_axes(out_shapes[layer])
  if varying:
    zeros = jax.lax.pcast(zeros, varying, to="varying")
  logits, vjp_fn, (out, state) = jax.vjp(apply, zeros, has_aux=True)
  return logits, vjp_fn, out, state


def _target_gradients(vjp_fn, logits: jax.Array, targets: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  if targets is None:
    targets = jnp.argmax(logits, axis=-1)
  targets = jax.lax.stop_gradient(targets).astype(jnp.int32)
  (grads,) = vjp_fn(jax.nn.one_hot(targets, logits.shape[-1], dtype=logits.dtype))
  return grads, targets


def forward_with_cam(model: nn.Module, variables: Mapping[str, Any], images: jax.Array, *,
                     layer: str, targets: jax.Array | None = None, method: str = "gradcam",
                     weights_gradient: str = "full", train: bool = False,
                     rngs: Mapping[str, jax.Array] | None = None,
                     mutable: Sequence[str] = ()) -> CamOutput:
  """One forward pass of a classifier plus the CAM of ``layer``.

  Args:
    model: a module from ``ria_jax.models`` (returns ``(logits, out)``).
    variables: its variables (``params``, ``batch_stats``, ...).
    images: ``(B, H, W, 3)``.
    layer: a Grad-CAM layer name of the model (``models.cam_layers(name)``).
    targets: ``(B,)`` class to explain per example; ``None`` = the argmax.
    method: see :func:`cam_from_gradients`.
    weights_gradient: ``'full'`` (second order) or ``'stop'``.
    train: the model's train mode (BatchNorm statistics, dropout).
    rngs: e.g. ``{'dropout': key}`` in train mode.
    mutable: collections the forward pass may update (``['batch_stats']``
      in train mode).

  Returns:
    A :class:`CamOutput`.
  """
  chex.assert_rank(images, 4)
  if targets is not None:
    chex.assert_shape(targets, (images.shape[0],))
  logits, vjp_fn, out, state = _forward_and_vjp(model, variables, images, layer, train, rngs, mutable)
  grads, targets = _target_gradients(vjp_fn, logits, targets)
  activations = out[layer]
  cam = cam_from_gradients(activations, grads, method, weights_gradient)
  return CamOutput(logits, cam, targets, activations, grads, out, state)


def cams_for_targets(model: nn.Module, variables: Mapping[str, Any], images: jax.Array, *, layer: str,
                     targets: Mapping[str, jax.Array | None], method: str = "gradcam"
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Eval-mode CAMs of several target sets from a single forward pass.

  Args:
    model: the classifier.
    variables: its variables.
    images: ``(B, H, W, 3)``.
    layer: Grad-CAM layer.
    targets: e.g. ``{'pred': None, 'true': labels}`` (``None`` = argmax).
    method: CAM variant.

  Returns:
    ``(logits, {name: raw cam (B, h, w)})``; one backward through the head per entry.
  """
  logits, vjp_fn, out, _ = _forward_and_vjp(model, variables, images, layer, False, None, ())
  cams = {}
  for name, t in targets.items():
    grads, _ = _target_gradients(vjp_fn, logits, t)
    cams[name] = cam_from_gradients(out[layer], grads, method)
  return logits, cams
