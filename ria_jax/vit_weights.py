"""DINO ViT weights: the original DINO ``state_dict`` (``.pth``) or the transformers-format port.

Accepted key layouts (detected automatically):

* DINO (``facebookresearch/dino``): ``cls_token``, ``pos_embed``,
  ``patch_embed.proj.*``, ``blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``,
  ``norm.*``; a full training checkpoint's ``teacher`` (``backbone.`` prefix)
  is used when present. DINO's projection head (``head.*``) is not part of
  the backbone and is skipped.
* transformers ``ViTModel`` (e.g. ``facebook/dino-vits16`` safetensors):
  ``embeddings.*``, ``encoder.layer.N.attention.attention.{query,key,value}.*``
  (concatenated into qkv), ``...attention.output.dense``, ``layernorm_before``,
  ``layernorm_after``, ``intermediate.dense``, ``output.dense``, ``layernorm``;
  an optional ``vit.`` prefix; the ``pooler.*`` (not in DINO) is skipped.

Every missing, unexpected or mis-shaped key is reported by name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from ria_jax.pretrained import WeightImportError, read_state_dict

_SKIPPED = re.compile(r"^(head\.|pooler\.)")


def _from_transformers(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """transformers ViT names -> DINO names (query/key/value concatenated into qkv)."""
  out: dict[str, np.ndarray] = {}
  qkv: dict[tuple[int, str], dict[str, np.ndarray]] = {}
  simple = {
      "embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
      "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
      "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
      "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
  }
  block = {"attention.output.dense": "attn.proj", "layernorm_before": "norm1", "layernorm_after": "norm2",
           "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
  for key, value in state.items():
    key = key.removeprefix("vit.")
    if key in simple:
      out[simple[key]] = value
      continue
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", key)
    if m and m.group(2) in ("attention.attention.query", "attention.attention.key", "attention.attention.value"):
      qkv.setdefault((int(m.group(1)), m.group(3)), {})[m.group(2).rsplit(".", 1)[1]] = value
    elif m and m.group(2) in block:
      out[f"blocks.{m.group(1)}.{block[m.group(2)]}.{m.group(3)}"] = value
    else:
      out[key] = value  # reported as unexpected unless skipped
  for (i, kind), parts in qkv.items():
    if set(parts) != {"query", "key", "value"}:
      raise WeightImportError(f"encoder.layer.{i}: incomplete attention weights, have {sorted(parts)}.")
    out[f"blocks.{i}.attn.qkv.{kind}"] = np.concatenate([parts["query"], parts["key"], parts["value"]], axis=0)
  return out


def to_dino_names(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Any accepted layout -> DINO's own key names."""
  if any(k.startswith("teacher.") for k in state):
    state = {k[len("teacher."):]: v for k, v in state.items() if k.startswith("teacher.")}
  state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
  if any(k.startswith(("embeddings.", "vit.embeddings.", "encoder.", "vit.encoder.")) for k in state):
    state = _from_transformers(state)
  return dict(state)


def dino_key(path: tuple[str, ...]) -> str:
  """Our parameter path -> DINO key, e.g. ``('blocks_3', 'attn', 'qkv', 'kernel')`` -> ``blocks.3.attn.qkv.weight``."""
  if path in (("cls_token",), ("pos_embed",)):
    return path[0]
  *modules, leaf = path
  leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
  parts = []
  for m in modules:
    if m.startswith("blocks_"):
      parts += ["blocks", m.split("_")[1]]
    elif m == "patch_embed":
      parts += ["patch_embed", "proj"]
    elif m in ("fc1", "fc2"):
      parts += ["mlp", m]
    else:
      parts.append(m)
  return ".".join([*parts, leaf])


def load_vit(params: Mapping[str, Any], state: Mapping[str, np.ndarray]) -> dict[str, Any]:
  """Fills a ViT's ``params`` (from ``init``) with DINO/transformers weights, checking every key."""
  state = to_dino_names(state)
  flat = traverse_util.flatten_dict(dict(params))
  out, used, missing, misshaped = {}, set(), [], []
  for path, target in flat.items():
    key = dino_key(path)
    if key not in state:
      missing.append(f"{key} (for {'/'.join(path)}, shape {tuple(np.shape(target))})")
      continue
    used.add(key)
    value = np.asarray(state[key])
    if path[-1] == "kernel" and value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # conv OIHW -> HWIO
    elif path[-1] == "kernel":
      value = value.T
    if path == ("pos_embed",) and value.shape != np.shape(target):
      misshaped.append(f"pos_embed: checkpoint {value.shape}, model expects {np.shape(target)} (pretraining grid "
                       f"differs: set the model's pretrain_size)")
      continue
    if value.shape != np.shape(target):
      misshaped.append(f"{key}: checkpoint {tuple(state[key].shape)}, model expects {np.shape(target)}")
      continue
    out[path] = value.astype(np.asarray(target).dtype)
  unexpected = sorted(k for k in state if k not in used and not _SKIPPED.match(k))
  if missing or misshaped or unexpected:
    lines = ["ViT checkpoint does not fit the model:"]
    for title, items in (("missing", missing), ("mis-shaped", misshaped), ("unexpected", unexpected)):
      if items:
        lines.append(f"  {len(items)} {title} key(s):\n    " + "\n    ".join(items))
    raise WeightImportError("\n".join(lines))
  return traverse_util.unflatten_dict(out)


def read_vit(path: str | Path, params: Mapping[str, Any], fmt: str = "auto") -> dict[str, Any]:
  """Reads a DINO ``.pth`` / transformers ``.safetensors`` / ``.npz`` file into ViT ``params``."""
  return load_vit(params, read_state_dict(path, fmt))
