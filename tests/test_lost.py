"""LOST: hand-built features with known boxes, a SciPy reference, DINO ViT parity, the command."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from ria_jax import lost
from ria_jax.data import boxes_file, pipeline, sources
from ria_jax.models import vit
from ria_jax.vit_weights import load_vit

FIXTURE = Path(__file__).parent / "fixtures" / "dino_vit.npz"


def _features(object_mask, seed=0, dim=16, noise=0.05):
  """Background patches ~ +b, object patches ~ -b + o: object-object and bg-bg similar, object-bg not."""
  rng = np.random.default_rng(seed)
  b = rng.normal(size=dim)
  o = rng.normal(size=dim)
  o -= (o @ b) / (b @ b) * b  # o orthogonal to b
  n = object_mask.size
  feats = np.where(object_mask.reshape(-1, 1), -b + 0.5 * o, b) + noise * rng.normal(size=(n, dim))
  return feats.astype(np.float32)


def _run(mask, k=100):
  h, w = mask.shape
  out = lost.lost_from_features(jnp.asarray(_features(mask)), (h, w), k)
  return np.asarray(out["box_patches"]).tolist(), int(out["seed"]), np.asarray(out["mask"])


@pytest.mark.parametrize("shape", ["rectangle", "ell", "corner", "single"])
def test_hand_built_objects_give_their_box(shape):
  mask = np.zeros((9, 12), bool)
  if shape == "rectangle":
    mask[2:5, 3:9] = True
    expected = [3, 2, 9, 5]
  elif shape == "ell":
    mask[1:8, 2:4] = True
    mask[6:8, 2:10] = True
    expected = [2, 1, 10, 8]
  elif shape == "corner":  # touching the bottom-right border
    mask[6:, 9:] = True
    expected = [9, 6, 12, 9]
  else:  # a single patch
    mask[4, 4] = True
    expected = [4, 4, 5, 5]
  box, seed, comp = _run(mask)
  assert box == expected
  assert mask.reshape(-1)[seed]
  np.testing.assert_array_equal(comp, mask)


def test_only_the_seed_component_is_kept_and_ties_pick_the_lowest_index():
  mask = np.zeros((8, 10), bool)
  mask[1:3, 1:4] = True   # first in raster order: holds the seed (all object degrees tie)
  mask[5:7, 6:10] = True  # equally object-like, not connected
  box, seed, comp = _run(mask)
  assert seed == 1 * 10 + 1
  assert box == [1, 1, 4, 3]
  assert comp[5:7, 6:10].sum() == 0 and comp[1:3, 1:4].all()


def _scipy_reference(feats, h, w, k=100):
  """LOST written as the original code does it (NumPy + scipy.ndimage.label)."""
  a = feats @ feats.T
  a0 = a.copy()
  np.fill_diagonal(a0, 0)
  degree = (a0 > 0).sum(1)
  order = np.argsort(degree, kind="stable")
  seed = order[0]
  pool = order[:k]
  similars = pool[a[seed, pool] > 0]
  m = a[similars].sum(0)
  labels, _ = ndimage.label(m.reshape(h, w) > 0)  # 4-connectivity
  ys, xs = np.nonzero(labels == labels[seed // w, seed % w])
  return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


@pytest.mark.parametrize("seed", range(6))
def test_matches_scipy_reference_on_random_features(seed):
  rng = np.random.default_rng(seed)
  h, w = rng.integers(4, 12, size=2)
  feats = rng.normal(size=(h * w, 8)).astype(np.float32) + rng.normal(size=8).astype(np.float32)
  k = int(rng.integers(5, 100))
  out = lost.lost_from_features(jnp.asarray(feats), (int(h), int(w)), k)
  assert np.asarray(out["box_patches"]).tolist() == _scipy_reference(feats.astype(np.float64), h, w, k)


def test_pixel_boxes_are_clipped_to_the_unpadded_image():
  model = vit.ViT(patch_size=16, embed_dim=24, depth=1, num_heads=2)
  detector = lost.Lost(model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"], model)
  rng = np.random.default_rng(0)
  images = [rng.integers(0, 255, size=(50, 70, 3), dtype=np.uint8),
            rng.integers(0, 255, size=(33, 90, 3), dtype=np.uint8),
            rng.integers(0, 255, size=(50, 70, 3), dtype=np.uint8)]
  boxes = detector(images)
  for img, box in zip(images, boxes, strict=True):
    h, w = img.shape[:2]
    assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
    assert box[0] % 16 == 0 and box[1] % 16 == 0
  padded = lost.prepare_image(images[1], 16)
  assert padded.shape == (48, 96, 3) and np.all(padded[33:] == 0) and np.all(padded[:, 90:] == 0)


# ------------------------------------------------------------------ ViT parity


def _fixture():
  with np.load(FIXTURE) as f:
    data = {k: f[k] for k in f.files}
  state = {k[3:]: v for k, v in data.items() if k.startswith("sd/")}
  patch, dim, depth, heads = (int(v) for v in data["dims"])
  model = vit.ViT(patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads)
  init = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))["params"])
  return model, init, state, data["input_nchw"].transpose(0, 2, 3, 1), data["keys"], data["tokens"]


def _to_transformers_names(state):
  """DINO names -> transformers ViTModel names (independent of the loader's mapping)."""
  out = {"vit.embeddings.cls_token": state["cls_token"], "vit.embeddings.position_embeddings": state["pos_embed"],
         "vit.embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
         "vit.embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
         "vit.layernorm.weight": state["norm.weight"], "vit.layernorm.bias": state["norm.bias"],
         "vit.pooler.dense.weight": np.zeros((4, 4), np.float32)}
  depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
  for i in range(depth):
    p, q = f"blocks.{i}.", f"vit.encoder.layer.{i}."
    for kind in ("weight", "bias"):
      qkv = state[p + f"attn.qkv.{kind}"]
      d = qkv.shape[0] // 3
      for j, name in enumerate(("query", "key", "value")):
        out[q + f"attention.attention.{name}.{kind}"] = qkv[j * d:(j + 1) * d]
      out[q + f"attention.output.dense.{kind}"] = state[p + f"attn.proj.{kind}"]
      out[q + f"layernorm_before.{kind}"] = state[p + f"norm1.{kind}"]
      out[q + f"layernorm_after.{kind}"] = state[p + f"norm2.{kind}"]
      out[q + f"intermediate.dense.{kind}"] = state[p + f"mlp.fc1.{kind}"]
      out[q + f"output.dense.{kind}"] = state[p + f"mlp.fc2.{kind}"]
  return out


@pytest.mark.parametrize("layout", ["dino", "transformers", "dino_full_checkpoint"])
def test_vit_keys_match_dino_reference(layout):
  model, init, state, x, keys, tokens = _fixture()
  if layout == "transformers":
    state = _to_transformers_names(state)
  elif layout == "dino_full_checkpoint":
    state = {**{f"teacher.backbone.{k}": v for k, v in state.items()},
             "teacher.head.mlp.0.weight": np.zeros(3, np.float32), "student.backbone.norm.weight": np.zeros(1)}
  params = load_vit(init, state)
  with jax.default_matmul_precision("highest"):
    out = model.apply({"params": params}, x)  # 80 x 112 input: interpolated position embeddings
  rel = lambda a, b: float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())
  assert rel(out["keys"], keys) < 1e-4
  assert rel(out["tokens"], tokens) < 1e-4


def test_vit_import_names_bad_keys():
  _, init, state, *_ = _fixture()
  broken = dict(state)
  del broken["blocks.1.mlp.fc2.bias"]
  broken["blocks.0.attn.proj.weight"] = broken["blocks.0.attn.proj.weight"][:-1]
  broken["something.else"] = np.zeros(2, np.float32)
  with pytest.raises(ValueError) as info:
    load_vit(init, broken)
  msg = str(info.value)
  assert "blocks.1.mlp.fc2.bias" in msg and "blocks.0.attn.proj.weight" in msg and "something.else" in msg


def test_torch_bicubic_matrix_matches_hand_computed_weights():
  # 2 -> 4 with scale 2: source of output 0 is -0.25 (taps -2..1 clamped).
  m = vit.torch_bicubic_matrix(2, 4, 2.0)
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)  # partition of unity
  t = 0.75  # src = -0.25 -> floor -1, t = 0.75
  a = -0.75
  w = [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a, ((a + 2) * t - (a + 3)) * t * t + 1,
       ((a + 2) * (1 - t) - (a + 3)) * (1 - t) ** 2 + 1, ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a]
  np.testing.assert_allclose(m[0], [w[0] + w[1] + w[2], w[3]], atol=1e-12)  # taps -2,-1,0 -> index 0


# ------------------------------------------------------------------ command


@pytest.mark.slow
def test_command_end_to_end_resumes_and_trains(tmp_path):
  data_dir = tmp_path / "tfds"
  synthetic = json.dumps({"train_size": 48, "test_size": 8, "seed": 4})
  out = tmp_path / "boxes.jsonl"
  argv = ["--dataset", "synthetic", "--split", "train", "--weights", "random", "--out", str(out),
          "--data_dir", str(data_dir), "--image_size", "48", "--synthetic", synthetic, "--batch", "16"]
  first = lost.main(argv) or json.loads(Path(str(out) + ".summary.json").read_text())
  assert first["boxes"] == 48 and first["new_boxes"] == 48 and first["corloc"] is not None
  # "Kill" mid-run: keep 20 complete lines and half of the next one, then resume.
  lines = out.read_text().splitlines(keepends=True)
  out.write_text("".join(lines[:20]) + lines[20][:15])
  lost.main(argv)
  summary = json.loads(Path(str(out) + ".summary.json").read_text())
  assert summary["new_boxes"] == 28 and summary["boxes"] == 48
  records = boxes_file.read(out)
  assert len(out.read_text().splitlines()) == 48 and len(records) == 48
  for r in records.values():
    assert r.units == "pixels" and r.width == r.height == 48
    x1, y1, x2, y2 = r.box
    assert 0 <= x1 < x2 <= 48 and 0 <= y1 < y2 <= 48
  # The file feeds the input pipeline.
  cfg = {"name": "synthetic", "data_dir": str(data_dir), "image_size": 48, "boxes": str(out),
         "synthetic": json.loads(synthetic)}
  src = sources.open_source(cfg, "train")
  overrides = pipeline.box_overrides(cfg, {"train": src})
  assert overrides["train"].missing == 0 and overrides["train"].valid.all()
  batch = pipeline.train_dataset(src, cfg, global_batch=8, seed=0, override=overrides["train"])[0]
  assert batch["box"].shape == (8, 4) and batch["box_valid"].any()
