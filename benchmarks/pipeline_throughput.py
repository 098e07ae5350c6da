"""Input-pipeline throughput: training images/s at 64 and 224 px for 0, 1, 2 worker processes.

  python benchmarks/pipeline_throughput.py [--batches 40] [--data_dir /tmp/bench_tfds]

Uses the embedded dataset (generated at each size on first use) with the
training augmentation (random resized crop + flip) and batching; no model.
"""

import argparse
import json
import time

from absl import logging

from ria_jax.data import pipeline, sources


def throughput(size, workers, batches, data_dir, batch=64):
  cfg = {"name": "synthetic", "data_dir": data_dir, "image_size": size, "boxes": "mask",
         "synthetic": {"train_size": 2048, "test_size": 16}}
  src = sources.open_source(cfg, "train")
  it = pipeline.make_iterator(pipeline.train_dataset(src, cfg, global_batch=batch, seed=0), workers=workers)
  for _ in range(3):  # warm up (worker start-up)
    next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch / (time.perf_counter() - t)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batches", type=int, default=40)
  parser.add_argument("--data_dir", default="/tmp/ria_jax_bench_tfds")
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)
  report = {}
  for size in (64, 224):
    report[size] = {f"workers={w}": round(throughput(size, w, args.batches, args.data_dir), 1) for w in (0, 1, 2)}
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
