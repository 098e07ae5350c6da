"""ResNet-18/34/50/101 (v1.5), layer for layer torchvision's ``resnet*``.

Module names mirror torchvision (``conv1``, ``bn1``, ``layer1_0`` ... with
``downsample_conv``/``downsample_bn``) so weight import is a rename.
Grad-CAM layers: the outputs of ``layer1``..``layer4`` (after the last block's
residual ReLU). ``pre_logits`` is the global-average-pooled feature.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ria_jax.models import common
from ria_jax.numerics import at_least_f32

CAM_LAYERS = ("layer1", "layer2", "layer3", "layer4")


class _Block(nn.Module):
  """Shared fields and the conv/BN factories of the residual blocks."""

  planes: int
  stride: int
  train: bool
  dtype: common.Dtype
  bn_axis_name: str | None

  def conv(self, channels: int, kernel: int, stride: int, padding: int, name: str) -> nn.Conv:
    return nn.Conv(channels, (kernel, kernel), (stride, stride), padding=common.torch_pad(padding),
                   use_bias=False, kernel_init=common.conv_kernel_init, dtype=self.dtype, name=name)

  def bn(self, name: str) -> nn.BatchNorm:
    return common.batch_norm(self.train, self.dtype, self.bn_axis_name, name)

  def shortcut(self, x: jax.Array, out_planes: int) -> jax.Array:
    if self.stride != 1 or x.shape[-1] != out_planes:
      return self.bn("downsample_bn")(self.conv(out_planes, 1, self.stride, 0, "downsample_conv")(x))
    return x


class BasicBlock(_Block):
  """Two 3x3 convs (ResNet-18/34)."""

  expansion = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.relu(self.bn("bn1")(self.conv(self.planes, 3, self.stride, 1, "conv1")(x)))
    y = self.bn("bn2")(self.conv(self.planes, 3, 1, 1, "conv2")(y))
    return nn.relu(y + self.shortcut(x, self.planes))


class Bottleneck(_Block):
  """1x1 -> 3x3 (strided, torchvision's v1.5) -> 1x1 x4 (ResNet-50/101)."""

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_planes = self.planes * self.expansion
    y = nn.relu(self.bn("bn1")(self.conv(self.planes, 1, 1, 0, "conv1")(x)))
    y = nn.relu(self.bn("bn2")(self.conv(self.planes, 3, self.stride, 1, "conv2")(y)))
    y = self.bn("bn3")(self.conv(out_planes, 1, 1, 0, "conv3")(y))
    return nn.relu(y + self.shortcut(x, out_planes))


class ResNet(nn.Module):
  """torchvision-compatible ResNet.

  Attributes:
    stage_sizes: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18.
    block: ``BasicBlock`` or ``Bottleneck``.
    num_classes: size of ``fc``.
    width: channel multiplier (1.0 = torchvision).
    stem: ``'imagenet'`` (7x7/2 conv + 3x3/2 max-pool, torchvision),
      ``'cifar'`` (3x3/1 conv, no pool: 4x finer maps for 32-64 px images)
      or ``'small'`` (3x3/1 conv + 3x3/2 max-pool: 2x finer maps than
      'imagenet' at a quarter of 'cifar''s cost). The last two are not
      weight-compatible with torchvision's stem.
    dtype: compute dtype (parameters stay float32; logits are float32).
    bn_axis_name: mesh axis for synchronised BatchNorm statistics.
    input_norm: input convention, see ``common.INPUT_NORMS`` (``'imagenet'``
      for torchvision weights); inputs are uint8 or floats in [0, 1].
  """

  stage_sizes: Sequence[int]
  block: type[nn.Module]
  num_classes: int = 1000
  width: float = 1.0
  stem: str = "imagenet"
  dtype: common.Dtype = jnp.float32
  bn_axis_name: str | None = None
  input_norm: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Classifies NHWC images.

    Args:
      x: images ``(B, H, W, 3)``, uint8 or float in [0, 1].
      train: BatchNorm batch statistics on (and updated).

    Returns:
      ``(logits (B, num_classes) float32, out)`` with the named activations.
    """
    out: dict[str, jax.Array] = {}
    x = common.normalize_input(x, self.input_norm).astype(self.dtype)
    stem_channels = common.scaled(64, self.width)
    if self.stem == "imagenet":
      x = nn.Conv(stem_channels, (7, 7), (2, 2), padding=common.torch_pad(3), use_bias=False,
                  kernel_init=common.conv_kernel_init, dtype=self.dtype, name="conv1")(x)
    elif self.stem in ("cifar", "small"):
      x = nn.Conv(stem_channels, (3, 3), padding=common.torch_pad(1), use_bias=False,
                  kernel_init=common.conv_kernel_init, dtype=self.dtype, name="conv1")(x)
    else:
      raise ValueError(f"Unknown ResNet stem {self.stem!r}; expected 'imagenet', 'cifar' or 'small'.")
    x = common.batch_norm(train, self.dtype, self.bn_axis_name, "bn1")(x)
    x = nn.relu(x)
    if self.stem in ("imagenet", "small"):
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=common.torch_pad(1))

    for stage, n_blocks in enumerate(self.stage_sizes):
      planes = common.scaled(64 * 2**stage, self.width)
      for i in range(n_blocks):
        stride = 2 if (stage > 0 and i == 0) else 1
        x = self.block(planes, stride, train, self.dtype, self.bn_axis_name,
                       name=f"layer{stage + 1}_{i}")(x)
      x = common.cam_tap(self, f"layer{stage + 1}", x, out)

    x = jnp.mean(x, axis=(1, 2))
    out["pre_logits"] = x
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fc",
                      kernel_init=common.torch_linear_init(x.shape[-1]),
                      bias_init=common.torch_linear_init(x.shape[-1]))(x)
    return at_least_f32(logits), out
