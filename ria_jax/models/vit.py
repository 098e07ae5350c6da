"""DINO's Vision Transformer (ViT-S/16, ViT-S/8, ViT-B/16) in Flax, for the LOST detector.

Layer for layer ``facebookresearch/dino``'s ``vision_transformer.py``:
patch embedding (a conv with kernel = stride = patch), a CLS token, learned
position embeddings for the pretraining grid (224 / patch) interpolated to
any other grid exactly as DINO does (bicubic, a = -0.75, with DINO's +0.1
scale offset), pre-norm blocks with qkv bias, exact GELU, LayerNorm eps
1e-6. Parameter names follow DINO's state_dict (``blocks_3`` for
``blocks.3``), see ``ria_jax.vit_weights``.

``__call__`` returns the final tokens and the **keys of the last block's
attention** (heads concatenated, CLS included), the features LOST uses.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

VIT_CONFIGS = {
    "vit_small16": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_small8": dict(patch_size=8, embed_dim=384, depth=12, num_heads=6),
    "vit_base16": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
}


def _cubic_weights(t: float, a: float = -0.75) -> list[float]:
  """PyTorch's bicubic convolution weights for offsets -1, 0, 1, 2 (a = -0.75)."""
  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return [far(t + 1), near(t), near(1 - t), far(2 - t)]


@functools.lru_cache(maxsize=64)
def torch_bicubic_matrix(size_in: int, size_out: int, scale_factor: float) -> np.ndarray:
  """``(out, in)`` matrix of ``F.interpolate(mode='bicubic', scale_factor=s, align_corners=False)``.

  PyTorch maps output index ``i`` to source ``(i + 0.5) / s - 0.5`` using the
  *given* scale factor and clamps the four taps to the border.
  """
  mat = np.zeros((size_out, size_in), np.float64)
  for i in range(size_out):
    src = (i + 0.5) / scale_factor - 0.5
    x0 = math.floor(src)
    for offset, w in zip(range(-1, 3), _cubic_weights(src - x0), strict=True):
      mat[i, min(max(x0 + offset, 0), size_in - 1)] += w
  return mat


def interpolate_pos_embed(pos_embed: jax.Array, grid_h: int, grid_w: int) -> jax.Array:
  """DINO's ``interpolate_pos_encoding``: the pretraining grid's embeddings resized to ``(grid_h, grid_w)``."""
  n = pos_embed.shape[1] - 1
  side = int(math.sqrt(n))
  if grid_h * grid_w == n and grid_h == grid_w:
    return pos_embed
  cls, patches = pos_embed[:, :1], pos_embed[:, 1:].reshape(side, side, -1)
  mh = jnp.asarray(torch_bicubic_matrix(side, grid_h, (grid_h + 0.1) / side), pos_embed.dtype)
  mw = jnp.asarray(torch_bicubic_matrix(side, grid_w, (grid_w + 0.1) / side), pos_embed.dtype)
  resized = jnp.einsum("hi,ijd,wj->hwd", mh, patches, mw, precision=jax.lax.Precision.HIGHEST)
  return jnp.concatenate([cls, resized.reshape(1, grid_h * grid_w, -1)], axis=1)


class Attention(nn.Module):
  dim: int
  num_heads: int
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    b, n, _ = x.shape
    qkv = nn.Dense(3 * self.dim, dtype=self.dtype, name="qkv")(x).reshape(b, n, 3, self.num_heads, -1)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, heads, dh)
    scale = (self.dim // self.num_heads) ** -0.5
    attn = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, n, self.dim)
    return nn.Dense(self.dim, dtype=self.dtype, name="proj")(out), k.reshape(b, n, self.dim)


class Block(nn.Module):
  dim: int
  num_heads: int
  mlp_ratio: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    y, keys = Attention(self.dim, self.num_heads, self.dtype, name="attn")(
        nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm1")(x))
    x = x + y
    h = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm2")(x)
    h = nn.Dense(int(self.dim * self.mlp_ratio), dtype=self.dtype, name="fc1")(h)
    h = nn.Dense(self.dim, dtype=self.dtype, name="fc2")(nn.gelu(h, approximate=False))
    return x + h, keys


class ViT(nn.Module):
  """DINO ViT.

  Attributes:
    patch_size: 16 or 8.
    embed_dim: 384 (S) or 768 (B).
    depth: number of blocks.
    num_heads: attention heads.
    mlp_ratio: hidden width of the MLP over ``embed_dim``.
    pretrain_size: image side of the position-embedding grid (224).
    dtype: compute dtype.
  """

  patch_size: int = 16
  embed_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  pretrain_size: int = 224
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """Runs the transformer.

    Args:
      images: ``(B, H, W, 3)`` ImageNet-normalised, ``H`` and ``W`` multiples of the patch size.

    Returns:
      ``tokens (B, 1 + h*w, D)`` after the final norm and ``keys (B, 1 + h*w, D)``
      of the last block's attention (CLS first); ``h, w = H // patch, W // patch``.
    """
    b, height, width, _ = images.shape
    p = self.patch_size
    if height % p or width % p:
      raise ValueError(f"Image size {(height, width)} is not a multiple of the patch size {p}; pad it first.")
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                name="patch_embed")(images.astype(self.dtype))
    gh, gw = x.shape[1:3]
    x = x.reshape(b, gh * gw, self.embed_dim)
    n0 = (self.pretrain_size // p) ** 2
    init = nn.initializers.truncated_normal(0.02)
    cls = self.param("cls_token", init, (1, 1, self.embed_dim))
    pos = self.param("pos_embed", init, (1, n0 + 1, self.embed_dim))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.embed_dim)).astype(x.dtype), x], axis=1)
    x = x + interpolate_pos_embed(pos, gh, gw).astype(x.dtype)
    keys = None
    for i in range(self.depth):
      x, keys = Block(self.embed_dim, self.num_heads, self.mlp_ratio, self.dtype, name=f"blocks_{i}")(x)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x)
    return {"tokens": x, "keys": keys}


def create(name: str = "vit_small16", **kwargs) -> ViT:
  """``vit_small16`` (LOST's default), ``vit_small8`` or ``vit_base16``."""
  if name not in VIT_CONFIGS:
    raise ValueError(f"Unknown ViT {name!r}; available: {sorted(VIT_CONFIGS)}.")
  return ViT(**VIT_CONFIGS[name], **kwargs)
