"""Cost of the RIA step relative to a plain cross-entropy step (ratios from one run).

  python benchmarks/step_cost.py                                  # demo-sized ResNet18, 64 px
  python benchmarks/step_cost.py --model vgg16 --layer conv5_3 --size 224 --batch 32 --width 1

Reports, for CE, RIA (stop-gradient weights) and RIA (full second order):
the compiled step's FLOPs (XLA cost analysis, deterministic) and the median
wall time over --steps steps after compilation, each as a ratio to CE.
"""

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs import base
from ria_jax import models, parallel, step
from ria_jax.data import pipeline


def measure(config, batch, steps):
  mesh = parallel.make_mesh()
  model = models.from_config(config.model, 10, axis_name=parallel.AXIS)
  kwargs = step.step_kwargs_from_config(config, model, 1000)
  size = batch["image"].shape[1]
  variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3), jnp.uint8))
  state = parallel.replicate(step.create_train_state(variables, kwargs["tx"], 0), mesh)
  fn = step.make_train_step(mesh, **kwargs)
  device_batch = pipeline.to_device(batch, mesh)
  analysis = fn.lower(state, device_batch).compile().cost_analysis()
  flops = (analysis[0] if isinstance(analysis, list) else analysis)["flops"]
  state, metrics = fn(state, device_batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    state, metrics = fn(state, device_batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  return flops, statistics.median(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="resnet18")
  parser.add_argument("--layer", default="layer3")
  parser.add_argument("--size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--width", type=float, default=0.25)
  parser.add_argument("--stem", default="small")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()
  config = base.get_config()
  config.model.update(name=args.model, width=args.width, stem=args.stem, dtype=args.dtype, input_norm="none")
  config.ria.layer = args.layer
  rng = np.random.default_rng(0)
  batch = {"image": rng.integers(0, 256, (args.batch, args.size, args.size, 3), dtype=np.uint8),
           "label": rng.integers(0, 10, args.batch).astype(np.int32),
           "box": np.tile(np.array([0.2, 0.2, 0.7, 0.8], np.float32), (args.batch, 1)),
           "box_valid": np.ones(args.batch, bool)}
  rows = {}
  for name, beta, mode in (("ce", 0.0, "stop"), ("ria_stop", 0.5, "stop"), ("ria_full", 0.5, "full")):
    config.loss.beta, config.ria.weights_gradient = beta, mode
    rows[name] = measure(config, batch, args.steps)
  ce_flops, ce_time = rows["ce"]
  report = {"device": jax.devices()[0].device_kind, "devices": jax.device_count(), **vars(args)}
  for name, (flops, seconds) in rows.items():
    report[name] = {"gflops": round(flops / 1e9, 2), "flops_ratio": round(flops / ce_flops, 4),
                    "ms": round(seconds * 1e3, 1), "time_ratio": round(seconds / ce_time, 3),
                    "images_per_s": round(args.batch / seconds, 1)}
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
