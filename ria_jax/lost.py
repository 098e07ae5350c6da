"""LOST (Simeoni et al., BMVC 2021): unsupervised object boxes from DINO key features, in JAX.

Algorithm (DESIGN.md section 5), batched over images of one padded size:

1. ImageNet-normalise; zero-pad bottom/right to a multiple of the patch size
   (no resize); run the DINO ViT.
2. ``F`` = keys of the last block's attention, CLS dropped, heads
   concatenated; ``A = F F^T``.
3. Degree ``d_i = #{j != i : A_ij > 0}``; patches sorted by increasing degree
   (ties: lower index first); the seed is the first.
4. Seed expansion: among the ``k`` lowest-degree patches keep those with
   ``A[seed, p] > 0`` (the seed included); ``M`` = sum of their rows of ``A``.
5. Mask ``M > 0`` on the patch grid; keep the 4-connected component holding
   the seed; box = its extent times the patch size, ``x2``/``y2`` clipped to the
   unpadded image.

Command line (resumable; writes the boxes file the input pipeline reads)::

  python -m ria_jax.lost --dataset rival10 --split train --weights dino_deitsmall16_pretrain.pth \\
      --out boxes/rival10_train.jsonl --manual_dir /data/rival10
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ria_jax.models import vit as vit_lib

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def prepare_image(image: np.ndarray, patch_size: int) -> np.ndarray:
  """uint8 ``(H, W, 3)`` -> ImageNet-normalised float, zero-padded bottom/right to a patch multiple."""
  x = (image.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  h, w = x.shape[:2]
  ph, pw = math.ceil(h / patch_size) * patch_size, math.ceil(w / patch_size) * patch_size
  return np.pad(x, ((0, ph - h), (0, pw - w), (0, 0)))


def _component(mask: jax.Array, seed_rc: jax.Array) -> jax.Array:
  """The 4-connected component of ``mask`` (h, w) containing ``seed_rc``, by flood fill to a fixed point."""
  start = jnp.zeros_like(mask).at[seed_rc[0], seed_rc[1]].set(True) & mask

  def grow(comp):
    up = jnp.pad(comp[1:], ((0, 1), (0, 0)))
    down = jnp.pad(comp[:-1], ((1, 0), (0, 0)))
    left = jnp.pad(comp[:, 1:], ((0, 0), (0, 1)))
    right = jnp.pad(comp[:, :-1], ((0, 0), (1, 0)))
    return mask & (comp | up | down | left | right)

  def body(state):
    comp, _ = state
    new = grow(comp)
    return new, jnp.any(new != comp)

  comp, _ = jax.lax.while_loop(lambda s: s[1], body, (start, jnp.array(True)))
  return comp


def lost_from_features(feats: jax.Array, grid: tuple[int, int], k_patches: int = 100) -> dict[str, jax.Array]:
  """LOST on one image's patch features.

  Args:
    feats: ``(N, D)`` key features of the ``N = h * w`` patches (no CLS).
    grid: ``(h, w)``.
    k_patches: size of the seed-expansion pool (LOST: 100).

  Returns:
    ``box_patches`` ``(4,)`` int ``(x1, y1, x2, y2)`` in patch units (edges),
    ``seed`` (patch index), ``mask`` ``(h, w)`` (the seed's component),
    ``degree`` ``(N,)``.
  """
  h, w = grid
  n = feats.shape[0]
  a = jnp.matmul(feats, feats.T, precision=jax.lax.Precision.HIGHEST)
  off_diagonal = ~jnp.eye(n, dtype=bool)
  degree = jnp.sum((a > 0) & off_diagonal, axis=1)
  order = jnp.argsort(degree, stable=True)
  seed = order[0]
  pool = order[: min(k_patches, n)]
  similar = a[seed, pool] > 0
  m = jnp.sum(jnp.where(similar[:, None], a[pool], 0.0), axis=0)
  comp = _component((m > 0).reshape(h, w), jnp.stack([seed // w, seed % w]))
  rows, cols = jnp.any(comp, axis=1), jnp.any(comp, axis=0)
  r, c = jnp.arange(h), jnp.arange(w)
  box = jnp.stack([jnp.min(jnp.where(cols, c, w)), jnp.min(jnp.where(rows, r, h)),
                   jnp.max(jnp.where(cols, c, -1)) + 1, jnp.max(jnp.where(rows, r, -1)) + 1])
  return {"box_patches": box, "seed": seed, "mask": comp, "degree": degree}


class Lost:
  """A DINO ViT plus LOST, jitted per padded image size.

  Args:
    params: ViT parameters (``ria_jax.vit_weights.read_vit``).
    arch: ``vit_small16`` (LOST's default), ``vit_small8``, ``vit_base16``, or a ``ViT`` module.
    k_patches: seed-expansion pool size.
  """

  def __init__(self, params, arch: str | vit_lib.ViT = "vit_small16", k_patches: int = 100):
    self.model = vit_lib.create(arch) if isinstance(arch, str) else arch
    self.params = params
    self.patch = self.model.patch_size
    self.k_patches = k_patches
    self._fn = jax.jit(self._boxes)

  def _boxes(self, params, images):
    keys = self.model.apply({"params": params}, images)["keys"][:, 1:]  # drop CLS
    grid = (images.shape[1] // self.patch, images.shape[2] // self.patch)
    return jax.vmap(lambda f: lost_from_features(f, grid, self.k_patches))(keys)

  def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """Pixel boxes ``(B, 4)`` (x1, y1, x2, y2 edges, clipped to each unpadded image) of uint8 images.

    Images of different sizes are grouped by padded size (one compilation per size).
    """
    boxes = np.zeros((len(images), 4), np.float32)
    groups: dict[tuple[int, int], list[int]] = {}
    prepared = [prepare_image(im, self.patch) for im in images]
    for i, x in enumerate(prepared):
      groups.setdefault(x.shape[:2], []).append(i)
    for idx in groups.values():
      out = jax.device_get(self._fn(self.params, np.stack([prepared[i] for i in idx])))
      for j, i in enumerate(idx):
        h, w = images[i].shape[:2]
        x1, y1, x2, y2 = (out["box_patches"][j] * self.patch).tolist()
        boxes[i] = [x1, y1, min(x2, w), min(y2, h)]
    return boxes


def corloc(pred_px: np.ndarray, gt_px: np.ndarray) -> np.ndarray:
  """Per-image hit (IoU >= 0.5) of pixel boxes."""
  lo = np.maximum(pred_px[:, :2], gt_px[:, :2])
  hi = np.minimum(pred_px[:, 2:], gt_px[:, 2:])
  inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
  area = lambda b: np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
  return inter / (area(pred_px) + area(gt_px) - inter + 1e-9) >= 0.5


# ------------------------------------------------------------------ command line


def run(args: argparse.Namespace) -> dict:
  """Computes boxes for every example of a split; skips ids already in ``--out``."""
  from tqdm import tqdm

  from ria_jax.data import boxes_file, sources
  from ria_jax.vit_weights import read_vit

  data_cfg = {"name": args.dataset, "data_dir": args.data_dir, "manual_dir": args.manual_dir,
              "image_size": args.image_size}
  if args.dataset == "synthetic":
    data_cfg["source_size"] = args.image_size
    data_cfg["synthetic"] = json.loads(args.synthetic) if args.synthetic else {}
  source = sources.open_source(data_cfg, args.split)
  model = vit_lib.create(args.arch)
  init = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))["params"]
  if args.weights == "random":  # plumbing checks only: the boxes are meaningless
    params = model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"]
  else:
    params = read_vit(args.weights, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), init))
  detector = Lost(params, args.arch, args.k)
  out = Path(args.out)
  boxes_file.repair_tail(out)  # a run killed mid-write leaves a partial line
  done = set(boxes_file.read(out)) if out.exists() else set()
  todo = [i for i, ex_id in enumerate(source.ids()) if ex_id not in done]
  hits, total = [], 0
  for start in tqdm(range(0, len(todo), args.batch), desc=f"LOST {args.dataset}/{args.split}",
                    total=math.ceil(len(todo) / args.batch)):
    examples = [source[i] for i in todo[start:start + args.batch]]
    pred = detector([ex["image"] for ex in examples])
    records = []
    for ex, box in zip(examples, pred, strict=True):
      h, w = ex["image"].shape[:2]
      extra = {}
      if ex.get("box_valid"):
        gt = np.asarray(ex["box"]) * [w, h, w, h]
        extra["corloc"] = bool(corloc(box[None], gt[None])[0])
        hits.append(extra["corloc"])
      records.append(boxes_file.BoxRecord(ex["id"], tuple(float(v) for v in box), "pixels", w, h, True, extra))
    boxes_file.write(out, records, append=True)  # flushed per batch: a killed run resumes here
    total += len(records)
  # CorLoc over the whole file (this run and earlier ones).
  all_hits = [r.extra["corloc"] for r in boxes_file.read(out).values() if "corloc" in r.extra]
  summary = {"dataset": args.dataset, "split": args.split, "weights": str(args.weights), "arch": args.arch,
             "k_patches": args.k, "boxes": len(boxes_file.read(out)), "new_boxes": total,
             "corloc": float(np.mean(all_hits)) if all_hits else None}
  Path(str(out) + ".summary.json").write_text(json.dumps(summary, indent=2))
  print(json.dumps(summary))
  return summary


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description="LOST boxes for a dataset split (writes a boxes file).")
  parser.add_argument("--dataset", required=True, choices=("synthetic", "rival10"))
  parser.add_argument("--split", required=True)
  parser.add_argument("--weights", required=True,
                      help="DINO .pth / transformers .safetensors / .npz, or 'random' to test the plumbing")
  parser.add_argument("--out", required=True, help="boxes file (.jsonl or .csv); appended to, resumable")
  parser.add_argument("--arch", default="vit_small16", choices=sorted(vit_lib.VIT_CONFIGS))
  parser.add_argument("--k", type=int, default=100, help="seed-expansion pool size")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--data_dir", default="", help="TFDS data dir (default ~/tensorflow_datasets)")
  parser.add_argument("--manual_dir", default="", help="RIVAL10: folder with rival10.zip or RIVAL10/")
  parser.add_argument("--image_size", type=int, default=64, help="synthetic: generated image side")
  parser.add_argument("--synthetic", default="", help='synthetic: JSON of generation options, e.g. {"rho": 0.9}')
  run(parser.parse_args(argv))


if __name__ == "__main__":
  main()
