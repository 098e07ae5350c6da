"""Figures (matplotlib, PNG): heatmap grids, baseline-vs-RIA comparisons, accuracy-vs-noise curves.

Command line, for two finished runs::

  python -m ria_jax.figures --compare runs/demo_ce runs/demo_ria --out runs/compare.png
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ria_jax import cam as cam_lib
from ria_jax import losses
from ria_jax.data import pipeline
from ria_jax.data.sources import Source

# Figures are built with matplotlib's object API (no pyplot): no global backend
# is touched, so this works headless and leaves notebooks' inline backend alone.


def _subplots(rows: int, cols: int, figsize: tuple[float, float]):
  fig = Figure(figsize=figsize)
  axes = fig.subplots(rows, cols, squeeze=False)
  return fig, axes


def _save(fig: Figure, path: str | Path) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return path


def fixed_examples(source: Source, data_cfg: Any, n: int) -> dict[str, np.ndarray]:
  """The first ``n`` examples of a split, preprocessed for evaluation (the figures' fixed set)."""
  ds = pipeline.eval_dataset(source, data_cfg, global_batch=n, process_index=0, process_count=1)
  batch = ds[0]
  keep = batch["weight"] > 0
  return {k: v[keep] for k, v in batch.items()}


def explain(model: Any, variables: Mapping[str, Any], batch: Mapping[str, np.ndarray], ria_cfg: Any,
            method: str = "gradcam") -> dict[str, np.ndarray]:
  """True-class CAM at image size, its soft box ``B_gc`` and the prediction, for a host batch."""
  cfg = losses.RiaConfig.from_config(ria_cfg)

  @jax.jit
  def run(images, labels):
    res = cam_lib.forward_with_cam(model, variables, images, layer=cfg.layer, targets=labels, method=method)
    _, box_gc = losses.cam_boxes(res.cam, cfg)
    cam01 = cam_lib.normalize(jax.nn.relu(cam_lib.upsample(cam_lib.normalize(res.cam), images.shape[1:3])))
    return cam01, box_gc, res.logits.argmax(-1)

  images = np.asarray(batch["image"], np.float32) / 255.0
  cam01, box_gc, pred = jax.device_get(run(images, np.asarray(batch["label"])))
  return {"image": images, "cam": cam01, "box_gc": box_gc, "pred": pred}


def _draw_box(ax, box: np.ndarray, size: tuple[int, int], color: str) -> None:
  h, w = size
  x1, y1, x2, y2 = box
  ax.add_patch(Rectangle((x1 * w - 0.5, y1 * h - 0.5), (x2 - x1) * w, (y2 - y1) * h, fill=False,
                         edgecolor=color, linewidth=1.5))


def _heatmap_column(axes, image, cam, box_gc, box_od, box_valid, title):
  h, w = image.shape[:2]
  axes[0].imshow(image)
  axes[0].set_title(title, fontsize=7)
  axes[1].imshow(image)
  axes[1].imshow(cam, cmap="jet", alpha=0.5, vmin=0, vmax=1)
  _draw_box(axes[1], box_gc, (h, w), "red")
  if box_valid:
    _draw_box(axes[1], box_od, (h, w), "lime")
  for ax in axes:
    ax.axis("off")


def heatmap_grid(batch: Mapping[str, np.ndarray], explained: Mapping[str, np.ndarray],
                 class_names: Sequence[str], path: str | Path, title: str = "") -> Path:
  """Rows: image / CAM overlay with B_gc (red) and the object box (green), one column per example."""
  n = len(batch["label"])
  fig, axes = _subplots(2, n, (1.6 * n, 3.4))
  for i in range(n):
    label, pred = int(batch["label"][i]), int(explained["pred"][i])
    _heatmap_column(axes[:, i], explained["image"][i], explained["cam"][i], explained["box_gc"][i],
                    batch["box"][i], bool(batch["box_valid"][i]),
                    f"{class_names[label]}\npred {class_names[pred]}")
  fig.suptitle(title or "Grad-CAM of the true class: B_gc red, object box green", fontsize=9)
  return _save(fig, path)


def noise_curves(results: Mapping[str, Any], path: str | Path, labels: Sequence[str] = ("",)) -> Path | None:
  """Class-averaged accuracy vs sigma for foreground and background noise (one or more runs)."""
  runs = [r for r in (results if isinstance(results, list) else [results]) if r.get("noise_sigmas")]
  if not runs:
    return None
  fig, axes = _subplots(1, 1, (4.5, 3.2))
  ax = axes[0, 0]
  for run, label in zip(runs, list(labels) + [""] * len(runs), strict=False):
    sig = run["noise_sigmas"]
    ax.plot(sig, run["noise_fg_accuracy"], "o-", label=f"{label} foreground noise".strip())
    ax.plot(sig, run["noise_bg_accuracy"], "s--", label=f"{label} background noise".strip())
  ax.set_xlabel("sigma (x 1/255)")
  ax.set_ylabel("class-averaged accuracy")
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  return _save(fig, path)


def write_run_figures(workdir: str | Path, model: Any, variables: Mapping[str, Any], config: Any,
                      eval_sources: Mapping[str, Source], results: Mapping[str, Any]) -> list[Path]:
  """The figures of a finished run, in ``workdir/figures/``."""
  from ria_jax.data import sources

  out = Path(workdir) / "figures"
  names = sources.info(config.data.name).class_names
  written = []
  for split, source in eval_sources.items():
    batch = fixed_examples(source, config.data, int(config.eval.figure_examples))
    explained = explain(model, variables, batch, config.ria, config.eval.cam_method)
    written.append(heatmap_grid(batch, explained, names, out / f"heatmaps_{split}.png", f"{split}"))
    if isinstance(results.get(split), dict):
      curve = noise_curves(results[split], out / f"noise_{split}.png")
      if curve:
        written.append(curve)
  return written


def compare_workdirs(workdirs: Sequence[str | Path], out: str | Path, split: str | None = None,
                     which: str = "latest") -> Path:
  """The same fixed examples explained by several runs, one pair of rows per run (e.g. CE vs RIA)."""
  from ml_collections import ConfigDict

  from ria_jax import models
  from ria_jax.checkpoint import Checkpoints
  from ria_jax.data import sources
  from ria_jax.eval_main import restore_variables

  rows = []
  for wd in workdirs:
    config = ConfigDict(json.loads((Path(wd) / "config.json").read_text()))
    info = sources.info(config.data.name)
    split = split or config.eval.splits[0]
    model = models.from_config(config.model, info.num_classes)
    variables = restore_variables(Checkpoints(wd), config, model, which)
    batch = fixed_examples(sources.open_source(config.data, split), config.data, int(config.eval.figure_examples))
    rows.append((Path(wd).name, batch, explain(model, variables, batch, config.ria, config.eval.cam_method),
                 info.class_names))
  n = len(rows[0][1]["label"])
  fig, axes = _subplots(2 * len(rows), n, (1.6 * n, 3.4 * len(rows)))
  for r, (name, batch, explained, names) in enumerate(rows):
    for i in range(n):
      label, pred = int(batch["label"][i]), int(explained["pred"][i])
      _heatmap_column(axes[2 * r:2 * r + 2, i], explained["image"][i], explained["cam"][i],
                      explained["box_gc"][i], batch["box"][i], bool(batch["box_valid"][i]),
                      f"{name}\n{names[label]} / pred {names[pred]}")
  fig.suptitle(f"{split}: B_gc red, object box green", fontsize=9)
  return _save(fig, out)


def main(argv: Sequence[str] | None = None) -> None:
  import argparse

  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--compare", nargs="+", required=True, help="workdirs of finished runs")
  parser.add_argument("--out", required=True, help="PNG to write")
  parser.add_argument("--split", default=None, help="split to show (default: each run's first eval split)")
  parser.add_argument("--which", default="latest", choices=("latest", "best"))
  args = parser.parse_args(argv)
  print(compare_workdirs(args.compare, args.out, args.split, args.which))


if __name__ == "__main__":
  main()
