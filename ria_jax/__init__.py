"""ria_jax: RIA (Region of Interest Activation) in JAX/Flax.

The functions notebooks import live here; everything is a pure JAX function
that works under ``jit``, ``vmap`` and ``shard_map``.
"""

from ria_jax import boxes, cam, losses, models, objective
from ria_jax.boxes import hard_box, iou, soft_box
from ria_jax.cam import CamOutput, cam_from_gradients, forward_with_cam, normalize, upsample
from ria_jax.losses import RiaConfig, cross_entropy, ria_terms
from ria_jax.models import cam_layers
from ria_jax.models import create as create_model

__all__ = [
    "CamOutput",
    "RiaConfig",
    "boxes",
    "cam",
    "cam_from_gradients",
    "cam_layers",
    "create_model",
    "cross_entropy",
    "forward_with_cam",
    "hard_box",
    "iou",
    "losses",
    "models",
    "normalize",
    "objective",
    "ria_terms",
    "soft_box",
    "upsample",
]
