"""The training objective on a batch: one forward pass, CE + beta * RIA.

``objective`` is what ``train_step`` differentiates. It normalises every mean
by *global* counts when an ``axis_name`` is given (counts are ``psum``-ed over
the data axis), so that summing the per-device gradients gives exactly the
gradient of the global-batch loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from ria_jax import cam as cam_lib
from ria_jax import losses

Batch = Mapping[str, jax.Array]

# Per-device sums returned by ``objective``; ``finalize_metrics`` turns their
# global sums into means.
SUM_KEYS = ("count", "ce", "ria", "correct", "valid", "iou", "all_zero")


def _global(x: jax.Array, axis_name: str | None) -> jax.Array:
  return jax.lax.psum(x, axis_name) if axis_name else x


def objective(model: nn.Module, params: Any, model_state: Mapping[str, Any], batch: Batch, *,
              ria_cfg: losses.RiaConfig, alpha: float, beta: jax.Array | float, use_ria: bool,
              train: bool, rngs: Mapping[str, jax.Array] | None = None,
              axis_name: str | None = None, label_smoothing: float = 0.0
              ) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, jax.Array], Mapping[str, Any]]]:
  """``alpha * CE + beta * RIA`` on (this device's share of) a batch.

  Args:
    model: classifier from ``ria_jax.models``.
    params: its ``params`` (the differentiated argument).
    model_state: other collections, e.g. ``{'batch_stats': ...}``.
    batch: ``image (B,H,W,3)``, ``label (B,)``, ``box (B,4)``,
      ``box_valid (B,)`` and optionally ``mask (B,)`` (0 = padding).
    ria_cfg: RIA loss constants.
    alpha: CE weight.
    beta: RIA weight (may be traced, e.g. during a warm-up).
    use_ria: statically off for the plain-CE baseline (no CAM is computed).
    train: model train mode (BatchNorm statistics, dropout).
    rngs: e.g. ``{'dropout': key}``.
    axis_name: data-parallel mesh axis; ``None`` outside ``shard_map``.
    label_smoothing: CE label smoothing.

  Returns:
    ``(loss, (terms, sums, new_model_state))``: ``terms`` are the global-mean
    ``ce`` and ``ria`` (for NaN diagnosis), ``sums`` the per-device metric
    sums of :data:`SUM_KEYS`.
  """
  images, labels = batch["image"], batch["label"]
  chex.assert_rank(images, 4)
  chex.assert_shape(labels, (images.shape[0],))
  weights = batch.get("mask", jnp.ones(labels.shape, jnp.float32)).astype(jnp.float32)
  mutable = list(model_state) if train else []
  variables = {"params": params, **model_state}

  if use_ria:
    res = cam_lib.forward_with_cam(
        model, variables, images, layer=ria_cfg.layer, targets=labels, method=ria_cfg.method,
        weights_gradient=ria_cfg.weights_gradient, train=train, rngs=rngs, mutable=mutable)
    logits, new_state = res.logits, res.state
    aspect = images.shape[2] / images.shape[1]
    terms = losses.ria_terms(res.cam, batch["box"], batch.get("box_valid"), ria_cfg, aspect)
    ria_w = terms["valid"] * weights
    ria = losses.weighted_mean(terms["loss"], ria_w, _global(jnp.sum(ria_w), axis_name))
  else:
    result = model.apply(variables, images, train=train, rngs=rngs, mutable=mutable or False)
    (logits, _), new_state = result if mutable else (result, {})
    terms, ria_w, ria = None, jnp.zeros_like(weights), jnp.zeros((), jnp.float32)

  ce_i = losses.cross_entropy(logits, labels, label_smoothing)
  ce = losses.weighted_mean(ce_i, weights, _global(jnp.sum(weights), axis_name))
  loss = losses.total_loss(ce, ria, alpha, beta) if use_ria else alpha * ce

  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  sums = {
      "count": jnp.sum(weights),
      "ce": jnp.sum(ce_i * weights),
      "correct": jnp.sum(correct * weights),
      "valid": jnp.sum(ria_w),
      "ria": jnp.sum(jnp.where(ria_w > 0, terms["loss"], 0.0)) if use_ria else jnp.zeros(()),
      "iou": jnp.sum(jnp.where(ria_w > 0, terms["iou"], 0.0)) if use_ria else jnp.zeros(()),
      "all_zero": jnp.sum(terms["all_zero"] * weights) if use_ria else jnp.zeros(()),
  }
  return loss, ({"ce": ce, "ria": ria}, sums, dict(new_state))


def finalize_metrics(sums: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Global sums -> means: ``ce``, ``ria``, ``accuracy``, ``iou``, ``valid_share``, ``all_zero_share``."""
  count = jnp.maximum(sums["count"], 1.0)
  valid = jnp.maximum(sums["valid"], 1.0)
  return {
      "ce": sums["ce"] / count,
      "ria": sums["ria"] / valid,
      "accuracy": sums["correct"] / count,
      "iou": sums["iou"] / valid,
      "valid_share": sums["valid"] / count,
      "all_zero_share": sums["all_zero"] / count,
  }
