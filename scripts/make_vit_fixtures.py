"""Writes tests/fixtures/dino_vit.npz: a DINO ViT's weights and last-block keys, for parity tests.

Uses the *reference* implementation, ``vision_transformer.py`` of
facebookresearch/dino (not vendored here): clone that repository and pass
its path. Needs torch; the tests do not.

  git clone https://github.com/facebookresearch/dino /tmp/dino
  python scripts/make_vit_fixtures.py --dino_repo /tmp/dino          # small fixture, committed
  python scripts/make_vit_fixtures.py --dino_repo /tmp/dino --full   # + ViT-S/16 full-size parity

The fixture model is DINO's ``VisionTransformer`` class at reduced width and
depth (embed 48, depth 2, 3 heads, patch 16, qkv bias, LayerNorm eps 1e-6)
with the 224-px position grid, run on a non-square 80 x 112 input so that
DINO's position-embedding interpolation is exercised.
"""

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(patch_size=16, embed_dim=48, depth=2, num_heads=3)


def keys_of_last_block(model, x):
  store = {}
  hook = model.blocks[-1].attn.qkv.register_forward_hook(lambda _m, _i, o: store.__setitem__("qkv", o.detach()))
  with torch.no_grad():
    tokens = model.get_intermediate_layers(x, 1)[0]
  hook.remove()
  b, n, three_d = store["qkv"].shape
  heads = model.blocks[-1].attn.num_heads
  # As LOST does: qkv -> (3, B, heads, N, dh); keys -> (B, N, heads * dh).
  qkv = store["qkv"].reshape(b, n, 3, heads, three_d // 3 // heads).permute(2, 0, 3, 1, 4)
  keys = qkv[1].transpose(1, 2).reshape(b, n, -1)
  return tokens.numpy(), keys.numpy()


def build(vt, **dims):
  return vt.VisionTransformer(mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), **dims)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--dino_repo", required=True, help="a clone of facebookresearch/dino")
  parser.add_argument("--full", action="store_true")
  args = parser.parse_args()
  sys.path.insert(0, args.dino_repo)
  import vision_transformer as vt  # the reference

  torch.manual_seed(0)
  model = build(vt, **SMALL).eval()
  with torch.no_grad():  # non-trivial LayerNorm affine parameters
    for m in model.modules():
      if isinstance(m, nn.LayerNorm):
        m.weight.add_(0.2 * torch.randn_like(m.weight))
        m.bias.add_(0.1 * torch.randn_like(m.bias))
  x = torch.randn(2, 3, 80, 112, generator=torch.Generator().manual_seed(1))
  tokens, keys = keys_of_last_block(model, x)
  arrays = {f"sd/{k}": v.numpy() for k, v in model.state_dict().items()}
  arrays.update(input_nchw=x.numpy(), tokens=tokens, keys=keys,
                dims=np.array([SMALL["patch_size"], SMALL["embed_dim"], SMALL["depth"], SMALL["num_heads"]]))
  path = ROOT / "tests" / "fixtures" / "dino_vit.npz"
  np.savez_compressed(path, **arrays)
  print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1e6:.2f} MB")

  if args.full:
    sys.path.insert(0, str(ROOT))
    import jax

    from ria_jax.models import vit
    from ria_jax.vit_weights import load_vit

    model = vt.vit_small(patch_size=16).eval()
    x = torch.randn(1, 3, 240, 320, generator=torch.Generator().manual_seed(2))
    tokens, keys = keys_of_last_block(model, x)
    ours = vit.create("vit_small16")
    init = jax.jit(ours.init)(jax.random.key(0), np.zeros((1, 224, 224, 3), np.float32))["params"]
    params = load_vit(jax.device_get(init), {k: v.numpy() for k, v in model.state_dict().items()})
    with jax.default_matmul_precision("highest"):
      out = ours.apply({"params": params}, x.numpy().transpose(0, 2, 3, 1))
    rel = lambda a, b: float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())
    print(f"DINO ViT-S/16 full size, 240x320 input: keys {rel(out['keys'], keys):.1e}, "
          f"tokens {rel(out['tokens'], tokens):.1e}")


if __name__ == "__main__":
  main()
