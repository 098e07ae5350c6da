"""Writes notebooks/explore.ipynb and, with --execute WORKDIR, runs it against a finished run.

  python scripts/build_notebook.py --execute runs/demo   # executed copy with outputs, committed
"""

import argparse
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
PATH = ROOT / "notebooks" / "explore.ipynb"

CELLS = [
    ("md", """# Exploring a trained RIA model

Load a checkpoint, look at Grad-CAM heatmaps, and measure where the model looks.
Set `RIA_JAX_WORKDIR` to a finished run (default `runs/demo`, made by
`python launch.py --config=configs/demo.py --workdir=runs/demo`)."""),
    ("code", """import json
import os
from pathlib import Path

import jax
import numpy as np
from absl import logging
from IPython.display import Image, display
from ml_collections import ConfigDict

from ria_jax import evaluate, figures, models, parallel
from ria_jax.checkpoint import Checkpoints
from ria_jax.data import sources
from ria_jax.eval_loop import Evaluator
from ria_jax.eval_main import restore_variables

logging.set_verbosity(logging.ERROR)
workdir = Path(os.environ.get("RIA_JAX_WORKDIR", "runs/demo"))
config = ConfigDict(json.loads((workdir / "config.json").read_text()))
info = sources.info(config.data.name)
model = models.from_config(config.model, info.num_classes)
variables = restore_variables(Checkpoints(workdir, async_save=False), config, model, "latest")
print(f"{config.model.name} on {config.data.name}, Grad-CAM layer {config.ria.layer}, beta={config.loss.beta}")"""),
    ("md", "## Grad-CAM of the true class on fixed examples\n"
           "Red: the soft box `B_gc` the RIA loss uses; green: the object box."),
    ("code", """split = config.eval.splits[0]
source = sources.open_source(config.data, split)
batch = figures.fixed_examples(source, config.data, 6)
explained = figures.explain(model, variables, batch, config.ria)
path = figures.heatmap_grid(batch, explained, info.class_names, workdir / "figures" / "notebook_heatmaps.png",
                            split)
display(Image(filename=str(path)))"""),
    ("md", "## Localisation metrics on these examples\n`evaluate.gradcam` is jitted-friendly; any CAM variant works."),
    ("code", """images = batch["image"].astype(np.float32) / 255.0
rows = {}
for method in ("gradcam", "gradcam++", "hirescam"):
  cam01, logits = jax.jit(lambda v, x, t, m=method: evaluate.gradcam(model, v, x, layer=config.ria.layer,
                                                                    targets=t, method=m))(
      variables, images, batch["label"])
  loc = evaluate.localisation(cam01, batch["box"], batch["mask"], threshold=config.eval.cam_threshold,
                              tolerance=config.eval.pointing_tolerance)
  rows[method] = {k: round(float(np.mean(v)), 3) for k, v in loc.items()}
for method, row in rows.items():
  print(f"{method:10s}", row)"""),
    ("md", "## Whole split: accuracy, localisation and foreground/background noise sensitivity"),
    ("code", """mesh = parallel.make_mesh()
evaluator = Evaluator(model, mesh, config, info.num_classes)
noise_split = config.eval.noise_splits[0] if config.eval.noise_splits else split
metrics = evaluator.evaluate_split(parallel.replicate(variables, mesh), sources.open_source(config.data, noise_split),
                                   with_noise=True)
print({k: round(v, 3) for k, v in metrics.items() if isinstance(v, float)})
print("RFS per sigma:", [round(r, 3) for r in metrics["rfs"]], " mean:", round(metrics["rfs_mean"], 3))
curve = figures.noise_curves(metrics, workdir / "figures" / "notebook_noise.png")
display(Image(filename=str(curve)))"""),
    ("md", "## The numbers of the run itself (`results.json`)"),
    ("code", """results = json.loads((workdir / "results.json").read_text())
for split_name, r in results["eval"].items():
  if isinstance(r, dict):
    print(f"{split_name:16s} accuracy {r['accuracy']:.3f}  CAM-box IoU {r['true_cam_iou']:.3f}  "
          f"energy in mask {r['true_energy_mask']:.3f}")
if "bg_gap" in results["eval"]:
  print("BG-gap:", round(results["eval"]["bg_gap"], 3))"""),
]


def build() -> nbformat.NotebookNode:
  nb = nbformat.v4.new_notebook()
  nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
              for kind, src in CELLS]
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  return nb


def execute(nb: nbformat.NotebookNode, workdir: str, timeout: int = 900) -> nbformat.NotebookNode:
  env_before = os.environ.get("RIA_JAX_WORKDIR")
  os.environ["RIA_JAX_WORKDIR"] = str(workdir)
  try:
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
  finally:
    if env_before is None:
      os.environ.pop("RIA_JAX_WORKDIR", None)
    else:
      os.environ["RIA_JAX_WORKDIR"] = env_before
  return nb


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--execute", metavar="WORKDIR", help="run it against this finished run and keep outputs")
  args = parser.parse_args()
  nb = build()
  if args.execute:
    nb = execute(nb, args.execute)
  PATH.parent.mkdir(exist_ok=True)
  nbformat.write(nb, PATH)
  print(PATH)


if __name__ == "__main__":
  main()
