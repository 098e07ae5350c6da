"""Classifier registry: ``create(name, **kwargs)`` and the Grad-CAM layer names.

Every model is a Flax Linen module whose ``__call__(images, train)`` returns
``(logits, out)``; ``out`` holds the named activations, among them the
Grad-CAM layers listed by :func:`cam_layers`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ria_jax.models import resnet, vgg

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...]]] = {
    "vgg16": (functools.partial(vgg.VGG, batch_norm=False), vgg.CAM_LAYERS),
    "vgg16_bn": (functools.partial(vgg.VGG, batch_norm=True), vgg.CAM_LAYERS),
    "resnet18": (functools.partial(resnet.ResNet, stage_sizes=(2, 2, 2, 2), block=resnet.BasicBlock),
                 resnet.CAM_LAYERS),
    "resnet34": (functools.partial(resnet.ResNet, stage_sizes=(3, 4, 6, 3), block=resnet.BasicBlock),
                 resnet.CAM_LAYERS),
    "resnet50": (functools.partial(resnet.ResNet, stage_sizes=(3, 4, 6, 3), block=resnet.Bottleneck),
                 resnet.CAM_LAYERS),
    "resnet101": (functools.partial(resnet.ResNet, stage_sizes=(3, 4, 23, 3), block=resnet.Bottleneck),
                  resnet.CAM_LAYERS),
}

NAMES = tuple(_REGISTRY)


def _lookup(name: str):
  if name not in _REGISTRY:
    raise ValueError(f"Unknown model {name!r}; available: {', '.join(NAMES)}.")
  return _REGISTRY[name]


def create(name: str, **kwargs: Any) -> nn.Module:
  """Builds a classifier by name.

  Args:
    name: one of :data:`NAMES` (``vgg16``, ``vgg16_bn``, ``resnet18``, ...).
    **kwargs: module attributes: ``num_classes``, ``width``, ``dtype`` (a dtype
      or its name, e.g. ``'bfloat16'``), ``bn_axis_name``, and per family
      ``pool_size``/``dropout`` (VGG) or ``stem`` (ResNet).

  Returns:
    The unbound Flax module.
  """
  factory, _ = _lookup(name)
  if isinstance(kwargs.get("dtype"), str):
    kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
  try:
    return factory(**kwargs)
  except TypeError as e:
    raise TypeError(f"Bad arguments for model {name!r}: {e}") from e


def cam_layers(name: str) -> tuple[str, ...]:
  """The Grad-CAM layer names a model exposes (valid ``cam.layer`` values)."""
  return _lookup(name)[1]


_FAMILY_FIELDS = {"vgg": ("pool_size", "dropout"), "resnet": ("stem",)}


def from_config(model_cfg: Mapping[str, Any], num_classes: int, axis_name: str | None = None) -> nn.Module:
  """Builds the classifier of a config's ``model`` section.

  Args:
    model_cfg: ``name``, ``width``, ``dtype``, ``input_norm``, ``sync_bn`` and
      per family ``pool_size``/``dropout`` (VGG) or ``stem`` (ResNet); fields
      of the other family are ignored.
    num_classes: classifier outputs.
    axis_name: data-parallel mesh axis; BatchNorm statistics are synchronised
      over it when ``sync_bn`` is set.

  Returns:
    The unbound Flax module.
  """
  name = model_cfg["name"]
  family = "vgg" if name.startswith("vgg") else "resnet"
  kwargs = {k: model_cfg[k] for k in _FAMILY_FIELDS[family] if k in model_cfg}
  sync = bool(model_cfg.get("sync_bn", True))
  return create(name, num_classes=num_classes, width=float(model_cfg.get("width", 1.0)),
                dtype=model_cfg.get("dtype", "float32"), input_norm=model_cfg.get("input_norm", "none"),
                bn_axis_name=axis_name if sync else None, **kwargs)
