"""Classifier registry: ``create(name, **kwargs)`` and the Grad-CAM layer names.

Every model is a Flax Linen module whose ``__call__(images, train)`` returns
``(logits, out)``; ``out`` holds the named activations, among them the
Grad-CAM layers listed by :func:`cam_layers`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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
