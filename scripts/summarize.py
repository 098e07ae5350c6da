"""Prints a Markdown table of finished runs' results.json (the README's results tables).

  python scripts/summarize.py runs/headline/*_seed*
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

COLUMNS = [("in_distribution", "accuracy", "in-dist acc"), ("mixed_same", "accuracy", "mixed_same"),
           ("mixed_rand", "accuracy", "mixed_rand"), ("only_fg", "accuracy", "only_fg"),
           ("only_bg", "accuracy", "only_bg"), (None, "bg_gap", "BG-gap"),
           ("in_distribution", "true_cam_iou", "CAM-box IoU"),
           ("in_distribution", "true_energy_mask", "CAM energy in mask"), ("in_distribution", "rfs_mean", "RFS")]


def main(paths):
  groups = defaultdict(list)
  for path in paths:
    path = Path(path)
    if not (path / "results.json").exists():
      continue
    variant = path.name.rsplit("_seed", 1)[0]
    groups[variant].append(json.loads((path / "results.json").read_text())["eval"])
  print("| run | seeds | " + " | ".join(c[2] for c in COLUMNS) + " |")
  print("|---|---|" + "---|" * len(COLUMNS))
  for variant, runs in groups.items():
    cells = []
    for split, key, _ in COLUMNS:
      values = [r[key] if split is None else r[split][key] for r in runs]
      mean = float(np.mean(values))
      cells.append(f"{mean:.3f}" + (f" ± {float(np.std(values)):.3f}" if len(values) > 1 else ""))
    print(f"| {variant} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main(sys.argv[1:])
