"""VGG-16 (with and without BatchNorm), layer for layer torchvision's ``vgg16``.

Parameter names follow the paper's convention (``conv{block}_{i}``, ``fc6..8``)
and ``ria_jax.pretrained`` maps torchvision's ``features.N`` / ``classifier.N``
onto them. Grad-CAM layers: ``conv5_3`` (last conv, after its ReLU) and
``pool5`` (after the last max-pool); every conv output is also recorded in
``out`` under its name, and ``pre_logits`` holds fc7's output.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ria_jax.models import common
from ria_jax.numerics import at_least_f32

# (block, number of convs, channels) of VGG configuration "D".
_VGG16_BLOCKS = ((1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512))

CAM_LAYERS = ("conv5_3", "pool5")


class VGG(nn.Module):
  """torchvision-compatible VGG.

  Attributes:
    num_classes: size of the last layer (``fc8``).
    batch_norm: VGG16-BN (conv, BN, ReLU) instead of plain VGG16.
    width: channel multiplier for small CPU-sized variants (1.0 = torchvision).
    pool_size: output side of the adaptive average pool before ``fc6``
      (torchvision: 7; 1 turns fc6 into a global-pool classifier for tiny
      images).
    dropout: dropout rate in the classifier (torchvision: 0.5).
    dtype: compute dtype (parameters stay float32; logits are float32).
    bn_axis_name: mesh axis for synchronised BatchNorm statistics.
    input_norm: input convention, see ``common.INPUT_NORMS`` (``'imagenet'``
      for torchvision weights); inputs are uint8 or floats in [0, 1].
  """

  num_classes: int = 1000
  batch_norm: bool = False
  width: float = 1.0
  pool_size: int = 7
  dropout: float = 0.5
  dtype: common.Dtype = jnp.float32
  bn_axis_name: str | None = None
  input_norm: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Classifies NHWC images.

    Args:
      x: images ``(B, H, W, 3)``, uint8 or float in [0, 1].
      train: BatchNorm batch statistics and dropout on.

    Returns:
      ``(logits (B, num_classes) float32, out)`` with the named activations.
    """
    out: dict[str, jax.Array] = {}
    x = common.normalize_input(x, self.input_norm).astype(self.dtype)
    for block, n_convs, channels in _VGG16_BLOCKS:
      for i in range(1, n_convs + 1):
        name = f"conv{block}_{i}"
        x = nn.Conv(common.scaled(channels, self.width), (3, 3), padding=common.torch_pad(1),
                    kernel_init=common.conv_kernel_init, dtype=self.dtype, name=name)(x)
        if self.batch_norm:
          x = common.batch_norm(train, self.dtype, self.bn_axis_name, f"bn{block}_{i}")(x)
        x = nn.relu(x)
        if name == "conv5_3":
          x = common.cam_tap(self, name, x, out)
        else:
          out[name] = x
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = common.cam_tap(self, "pool5", x, out)

    x = common.adaptive_avg_pool(x, self.pool_size)
    # torch flattens NCHW; we flatten NHWC. ria_jax.pretrained permutes fc6's
    # input rows accordingly when importing torchvision weights.
    x = x.reshape(x.shape[0], -1)
    hidden = common.scaled(4096, self.width)
    dense_init = nn.initializers.normal(0.01)  # torchvision's VGG init
    for name in ("fc6", "fc7"):
      x = nn.Dense(hidden, kernel_init=dense_init, dtype=self.dtype, name=name)(x)
      x = nn.relu(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    out["pre_logits"] = x
    logits = nn.Dense(self.num_classes, kernel_init=dense_init, dtype=self.dtype, name="fc8")(x)
    return at_least_f32(logits), out
