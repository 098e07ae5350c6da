"""Importing pretrained weights: torchvision / timm checkpoints and our own, onto our Flax models.

Formats (``init.format``, detected from the path by default):

* ``torch``: a PyTorch ``state_dict`` (``.pth``/``.pt``/``.bin``) as torchvision
  publishes it; read with ``torch.load(weights_only=True)``, so torch must be
  installed for this format only.
* ``safetensors``: torchvision key names, or timm's (timm's VGG stores fc6/fc7
  as convolutions under ``pre_logits`` and fc8 as ``head.fc``).
* ``npz``: a NumPy archive with torchvision key names.
* ``orbax``: a directory written by ``python -m ria_jax.pretrained`` or a
  training workdir of ours (its latest checkpoint).

Layout conversions: conv ``OIHW -> HWIO``; linear ``(out, in) -> (in, out)``;
BatchNorm ``weight/bias`` -> ``scale/bias`` and running statistics into
``batch_stats``; VGG's fc6 rows permuted from torch's NCHW flattening to our
NHWC flattening. The classifier (``fc8``/``fc``) is loaded when its shape
matches; otherwise it keeps its fresh initialisation (a new ``num_classes``),
unless ``keep_head`` demands it. Every missing, unexpected or mis-shaped key
is reported by name.

Command line::

  python -m ria_jax.pretrained --src vgg16-397923af.pth --arch vgg16 --out weights/vgg16
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import traverse_util

FORMATS = ("auto", "torch", "safetensors", "npz", "orbax")
HEADS = {"vgg": "fc8", "resnet": "fc"}
_IGNORED = re.compile(r"(^|\.)num_batches_tracked$")


class WeightImportError(ValueError):
  """The checkpoint does not fit the model; the message lists every offending key."""


# ------------------------------------------------------------------ reading


def detect_format(path: str | Path) -> str:
  path = Path(path)
  if path.is_dir():
    return "orbax"
  suffix = path.suffix.lower()
  if suffix in (".pth", ".pt", ".bin", ".ckpt"):
    return "torch"
  if suffix == ".safetensors":
    return "safetensors"
  if suffix == ".npz":
    return "npz"
  raise WeightImportError(f"Cannot tell the format of {path}; set init.format to one of {FORMATS[1:]}.")


def read_state_dict(path: str | Path, fmt: str = "auto") -> dict[str, np.ndarray]:
  """A flat ``{torch key: array}`` dict from a torch, safetensors or npz file."""
  path = Path(path).expanduser()
  if not path.exists():
    raise FileNotFoundError(f"Weights file {path} does not exist. Weights are never downloaded at run time; "
                            f"see the README section 'Pretrained weights' for where to get them.")
  fmt = detect_format(path) if fmt == "auto" else fmt
  if fmt == "torch":
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"Reading {path} (a PyTorch file) needs torch: `pip install torch`, or convert it once "
                        f"to .safetensors/.npz on a machine that has torch.") from e
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
      if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
        obj = obj[key]

    def flatten(tree, prefix=""):  # nested dicts (e.g. DINO's {'teacher': {...}}) -> dotted keys
      for k, v in tree.items():
        if isinstance(v, Mapping):
          yield from flatten(v, f"{prefix}{k}.")
        elif hasattr(v, "detach"):
          yield f"{prefix}{k}", v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()

    state = dict(flatten(obj))
  elif fmt == "safetensors":
    from safetensors.numpy import load_file

    state = load_file(str(path))
  elif fmt == "npz":
    with np.load(path, allow_pickle=False) as npz:
      state = {k: npz[k] for k in npz.files}
  else:
    raise WeightImportError(f"read_state_dict reads torch/safetensors/npz files, not {fmt!r}.")
  # Checkpoints saved from DataParallel / DDP prefix every key with "module.".
  return {k.removeprefix("module."): np.asarray(v) for k, v in state.items()}


# ------------------------------------------------------------------ key mapping


def _vgg_torch_indices(batch_norm: bool) -> dict[str, int]:
  """``conv{b}_{i}`` -> index in torchvision's ``features`` Sequential."""
  index, out = 0, {}
  for block, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
    for i in range(1, n + 1):
      out[f"conv{block}_{i}"] = index
      index += 3 if batch_norm else 2  # conv, [bn,] relu
    index += 1  # max-pool
  return out


_LEAF = {("params", "kernel"): "weight", ("params", "bias"): "bias", ("params", "scale"): "weight",
         ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}


def torch_key(arch: str, collection: str, path: tuple[str, ...], timm_vgg: bool = False) -> str:
  """The torchvision (or timm) key of one of our leaves, e.g. ``('params', ('layer1_0', 'conv1', 'kernel'))``."""
  *modules, leaf = path
  suffix = _LEAF[(collection, leaf)]
  if arch.startswith("vgg"):
    (module,) = modules
    if timm_vgg and module in ("fc6", "fc7", "fc8"):
      return {"fc6": "pre_logits.fc1", "fc7": "pre_logits.fc2", "fc8": "head.fc"}[module] + "." + suffix
    if module in ("fc6", "fc7", "fc8"):
      return f"classifier.{ {'fc6': 0, 'fc7': 3, 'fc8': 6}[module] }.{suffix}"
    indices = _vgg_torch_indices(arch.endswith("_bn"))
    if module.startswith("bn"):
      return f"features.{indices['conv' + module[2:]] + 1}.{suffix}"
    return f"features.{indices[module]}.{suffix}"
  parts = []
  for module in modules:
    m = re.fullmatch(r"layer(\d)_(\d+)", module)
    if m:
      parts.append(f"layer{m.group(1)}.{m.group(2)}")
    elif module == "downsample_conv":
      parts.append("downsample.0")
    elif module == "downsample_bn":
      parts.append("downsample.1")
    else:
      parts.append(module)
  return ".".join([*parts, suffix])


def _fc6_from_torch(value: np.ndarray, channels: int) -> np.ndarray:
  """fc6 ``(out, C*P*P)`` flattened channel-major (torch NCHW) -> ``(P*P*C, out)`` (our NHWC)."""
  out, rows = value.shape
  side = round((rows / channels) ** 0.5)
  return value.reshape(out, channels, side, side).transpose(2, 3, 1, 0).reshape(-1, out)


def _fc6_to_torch(kernel: np.ndarray, channels: int) -> np.ndarray:
  rows, out = kernel.shape
  side = round((rows / channels) ** 0.5)
  return kernel.reshape(side, side, channels, out).transpose(3, 2, 0, 1).reshape(out, -1)


def _convert(value: np.ndarray, target_shape: tuple[int, ...], module: str, leaf: str,
             fc6_channels: int | None) -> np.ndarray:
  """Torch layout -> ours for one tensor."""
  if leaf != "kernel":
    return value
  if value.ndim == 4 and len(target_shape) == 4:  # conv OIHW -> HWIO
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 4:  # timm's conv-form fc6/fc7 (O, I, kh, kw) -> dense over NHWC-flattened input
    return value.transpose(2, 3, 1, 0).reshape(-1, value.shape[0])
  if module == "fc6" and fc6_channels and value.shape[1] == target_shape[0] and value.shape[1] % fc6_channels == 0:
    return _fc6_from_torch(value, fc6_channels)
  return value.T


def load_into(variables: Mapping[str, Any], state: Mapping[str, np.ndarray], arch: str, *,
              keep_head: bool = False) -> dict[str, Any]:
  """Our variables with every leaf replaced by its checkpoint value.

  Args:
    variables: freshly initialised model variables (define structure and shapes).
    state: flat torch-named arrays.
    arch: model name (``vgg16``, ``vgg16_bn``, ``resnet18``, ...).
    keep_head: require the checkpoint's classifier (its shape must match).

  Returns:
    New variables (NumPy leaves).

  Raises:
    WeightImportError: listing missing, unexpected and mis-shaped keys.
  """
  head = HEADS["vgg" if arch.startswith("vgg") else "resnet"]
  timm_vgg = any(k.startswith("pre_logits.") for k in state)
  flat = traverse_util.flatten_dict({k: v for k, v in variables.items() if k in ("params", "batch_stats")})
  conv5 = flat.get(("params", "conv5_3", "kernel"))
  fc6_channels = None if conv5 is None else int(np.shape(conv5)[-1])
  used, missing, misshaped, fresh_head = set(), [], [], []
  out = {}
  for (collection, *path), target in flat.items():
    key = torch_key(arch, collection, tuple(path), timm_vgg)
    target_shape = tuple(np.shape(target))
    if key not in state:
      missing.append(f"{key} (for {collection}/{'/'.join(path)}, shape {target_shape})")
      continue
    used.add(key)
    value = _convert(np.asarray(state[key]), target_shape, path[0], path[-1], fc6_channels)
    if value.shape != target_shape:
      if path[0] == head and not keep_head:
        fresh_head.append(key)
        out[(collection, *path)] = np.asarray(target)
        continue
      misshaped.append(f"{key}: checkpoint {tuple(state[key].shape)} -> {value.shape}, model expects "
                       f"{target_shape} ({collection}/{'/'.join(path)})")
      continue
    out[(collection, *path)] = value.astype(np.asarray(target).dtype)
  unexpected = sorted(k for k in state if k not in used and not _IGNORED.search(k))
  if missing or misshaped or unexpected:
    lines = [f"Checkpoint does not fit {arch}:"]
    for title, items in (("missing", missing), ("mis-shaped", misshaped), ("unexpected", unexpected)):
      if items:
        lines.append(f"  {len(items)} {title} key(s):\n    " + "\n    ".join(items))
    lines.append("(Imported weights need width=1.0 and the torchvision stem; see the README.)")
    raise WeightImportError("\n".join(lines))
  if fresh_head:
    logging.info("Classifier %s keeps its fresh initialisation (checkpoint head has another num_classes).",
                 ", ".join(fresh_head))
  return traverse_util.unflatten_dict(out)


# ------------------------------------------------------------------ orbax (ours)


def save_variables(directory: str | Path, variables: Mapping[str, Any], meta: Mapping[str, Any]) -> Path:
  """Writes converted variables as an orbax checkpoint plus ``meta.json``."""
  import orbax.checkpoint as ocp

  directory = Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(directory / "variables", dict(variables), force=True)
  (directory / "meta.json").write_text(json.dumps(dict(meta), indent=2))
  return directory


def _read_orbax(directory: Path, variables: Mapping[str, Any], model_name: str) -> dict[str, np.ndarray]:
  """Our own checkpoints, returned torch-named so that one code path does the checking."""
  import orbax.checkpoint as ocp

  template = {k: v for k, v in variables.items() if k in ("params", "batch_stats")}
  if (directory / "variables").exists():
    with ocp.StandardCheckpointer() as ckpt:
      raw = ckpt.restore(directory / "variables")
  elif (directory / "checkpoints").exists():
    mngr = ocp.CheckpointManager(directory / "checkpoints", item_names=("state", "data"))
    step = mngr.latest_step()
    if step is None:
      raise FileNotFoundError(f"{directory}/checkpoints has no checkpoint.")
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    raw = {"params": state["params"], **state.get("model_state", {})}
    mngr.close()
  else:
    raise FileNotFoundError(f"{directory} is neither a converted-weights directory (variables/) nor a "
                            f"training workdir (checkpoints/).")
  return export_state_dict({k: v for k, v in raw.items() if k in template}, model_name)


def export_state_dict(variables: Mapping[str, Any], arch: str) -> dict[str, np.ndarray]:
  """Our variables as a torchvision-named, torch-layout state_dict (the inverse of :func:`load_into`).

  Useful to take a model trained here back to PyTorch:
  ``model.load_state_dict({k: torch.from_numpy(v) for k, v in export_state_dict(v, 'vgg16').items()},
  strict=False)`` (``num_batches_tracked`` is not stored here).
  """
  flat = traverse_util.flatten_dict({k: v for k, v in variables.items() if k in ("params", "batch_stats")})
  conv5 = flat.get(("params", "conv5_3", "kernel"))
  channels = None if conv5 is None else int(np.shape(conv5)[-1])
  return {torch_key(arch, collection, tuple(path)): _to_torch_layout(np.asarray(v), path[-1], path[0], channels)
          for (collection, *path), v in flat.items()}


def _to_torch_layout(value: np.ndarray, leaf: str, module: str, fc6_channels: int | None) -> np.ndarray:
  """Inverse of ``_convert`` for our own arrays (so they go through the same checked path)."""
  if leaf == "kernel" and value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  if leaf == "kernel" and module == "fc6" and fc6_channels:
    return _fc6_to_torch(value, fc6_channels)
  if leaf == "kernel":
    return value.T
  return value


# ------------------------------------------------------------------ entry points


def initialize(init_cfg: Mapping[str, Any], variables: Mapping[str, Any], model_name: str) -> dict[str, Any]:
  """Applies ``config.init`` to freshly initialised variables (used by ``train``).

  Args:
    init_cfg: ``checkpoint``, ``format``, ``keep_head``.
    variables: the model's initial variables.
    model_name: the registry name of the model.

  Returns:
    The variables with the checkpoint's values.
  """
  path = Path(str(init_cfg["checkpoint"])).expanduser()
  fmt = init_cfg.get("format", "auto")
  fmt = detect_format(path) if fmt == "auto" else fmt
  if fmt not in FORMATS[1:]:
    raise WeightImportError(f"init.format={fmt!r} is not one of {FORMATS}.")
  state = _read_orbax(path, variables, model_name) if fmt == "orbax" else read_state_dict(path, fmt)
  loaded = load_into(jax.device_get(variables), state, model_name, keep_head=bool(init_cfg.get("keep_head", False)))
  logging.info("Initialised %s from %s (%s).", model_name, path, fmt)
  return {**variables, **loaded}


def main(argv: list[str] | None = None) -> None:
  import argparse

  from ria_jax import models

  parser = argparse.ArgumentParser(description="Convert torchvision/timm weights to an orbax checkpoint of ours.")
  parser.add_argument("--src", required=True, help=".pth / .safetensors / .npz file")
  parser.add_argument("--arch", required=True, choices=models.NAMES)
  parser.add_argument("--out", required=True, help="output directory")
  parser.add_argument("--format", default="auto", choices=FORMATS[:4])
  parser.add_argument("--num_classes", type=int, default=1000)
  args = parser.parse_args(argv)
  model = models.create(args.arch, num_classes=args.num_classes)
  variables = jax.jit(lambda k: model.init(k, np.zeros((1, 224, 224, 3), np.float32)))(jax.random.key(0))
  converted = load_into(jax.device_get(variables), read_state_dict(args.src, args.format), args.arch,
                        keep_head=args.num_classes == 1000)
  out = save_variables(args.out, converted, {"arch": args.arch, "source": str(Path(args.src).absolute()),
                                             "num_classes": args.num_classes, "input_norm": "imagenet"})
  print(f"Wrote {out} ({args.arch}); train with --config.init.checkpoint={out}")


if __name__ == "__main__":
  main()
