"""The evaluation loop: every example of each split once, all metrics, data-parallel.

Used by periodic evaluation during training and by ``launch.py --mode=eval``.
One jitted ``shard_map`` step per batch returns *sums* (psum-ed over the
``'data'`` axis); the host adds them up and turns them into the metrics of
``ria_jax.evaluate``. Padded examples have weight 0 and never count, so the
numbers are the same on 1 or N devices and for any batch size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec
from tqdm import tqdm

from ria_jax import cam as cam_lib
from ria_jax import evaluate, losses
from ria_jax.data import pipeline
from ria_jax.data.sources import Source
from ria_jax.parallel import AXIS

LOC_KEYS = ("cam_iou", "corloc", "energy_box", "energy_mask", "pointing")


def _eval_step(variables, batch, *, model: nn.Module, num_classes: int, layer: str, method: str,
               threshold: float, tolerance: float, sigmas: tuple[float, ...], noise_seed: int):
  weights = batch["weight"].astype(jnp.float32)
  images01 = batch["image"].astype(jnp.float32) / 255.0
  labels = batch["label"]
  logits, cams = cam_lib.cams_for_targets(model, variables, images01, layer=layer,
                                          targets={"pred": None, "true": labels}, method=method)
  correct, count = evaluate.class_accuracy_sums(logits, labels, num_classes, weights)
  sums = {"correct": correct, "count": count,
          "ce": jnp.sum(losses.cross_entropy(logits, labels) * weights)}
  has_box = batch["box_valid"].astype(jnp.float32) * weights
  sums["loc_count"] = jnp.sum(has_box)
  for name, raw in cams.items():
    cam01 = cam_lib.normalize(jax.nn.relu(cam_lib.upsample(cam_lib.normalize(raw), images01.shape[1:3])))
    loc = evaluate.localisation(cam01, batch["box"], batch["mask"], threshold=threshold, tolerance=tolerance)
    for key, value in loc.items():
      sums[f"{name}_{key}"] = jnp.sum(value * has_box)
    sums[f"{name}_all_zero"] = jnp.sum((jnp.max(raw, axis=(1, 2)) <= 0) * weights)
  if sigmas:
    noise = evaluate.example_noise(noise_seed, batch["index"], images01.shape[1:])
    noisy = []
    for sigma in sigmas:
      for region in ("fg", "bg"):
        x = evaluate.add_region_noise(images01, batch["mask"], sigma, noise, region)
        noisy.append(evaluate.class_accuracy_sums(evaluate.predict(model, variables, x), labels,
                                                  num_classes, weights)[0])
    sums["noise_correct"] = jnp.stack(noisy).reshape(len(sigmas), 2, num_classes)
  return jax.lax.psum(sums, AXIS)


class Evaluator:
  """Compiled evaluation of one model on a mesh.

  Args:
    model: the classifier.
    mesh: the data-parallel mesh.
    config: the experiment config (``eval``, ``ria``, ``data`` sections).
    num_classes: number of classes.
  """

  def __init__(self, model: nn.Module, mesh: Mesh, config: Any, num_classes: int):
    self.model, self.mesh, self.config, self.num_classes = model, mesh, config, num_classes
    self._steps: dict[bool, Any] = {}

  def _step(self, with_noise: bool):
    if with_noise not in self._steps:
      ecfg = self.config.eval
      sigmas = tuple(float(s) / 255.0 for s in ecfg.noise_sigmas) if with_noise else ()
      fn = lambda v, b: _eval_step(v, b, model=self.model, num_classes=self.num_classes,
                                   layer=self.config.ria.layer, method=ecfg.cam_method,
                                   threshold=float(ecfg.cam_threshold),
                                   tolerance=float(ecfg.pointing_tolerance), sigmas=sigmas,
                                   noise_seed=int(ecfg.noise_seed))
      self._steps[with_noise] = jax.jit(jax.shard_map(
          fn, mesh=self.mesh, in_specs=(PartitionSpec(), PartitionSpec(AXIS)), out_specs=PartitionSpec()))
    return self._steps[with_noise]

  def evaluate_split(self, variables: Mapping[str, Any], source: Source, *,
                     override: pipeline.BoxOverride | None = None, with_noise: bool = False,
                     show_progress: bool = False) -> dict[str, Any]:
    """All metrics on one split.

    Args:
      variables: replicated model variables (``params`` and ``batch_stats``).
      source: the split.
      override: boxes from a file instead of the masks' boxes.
      with_noise: also run the foreground/background noise test.
      show_progress: a progress bar (process 0).

    Returns:
      A JSON-able dict of metrics.
    """
    ecfg = self.config.eval
    ds = pipeline.eval_dataset(source, self.config.data, global_batch=int(ecfg.global_batch),
                               override=override)
    step = self._step(with_noise)
    total = None
    batches = pipeline.iterate(ds, threads=int(self.config.data.threads))
    if show_progress and jax.process_index() == 0:
      batches = tqdm(batches, total=len(ds), desc=f"eval {source.split}", leave=False)
    for batch in batches:
      sums = step(variables, pipeline.to_device(batch, self.mesh))
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    return self._finalize(jax.device_get(total), with_noise)

  def _finalize(self, sums: Mapping[str, np.ndarray], with_noise: bool) -> dict[str, Any]:
    out = evaluate.accuracies(sums["correct"], sums["count"])
    n = max(float(np.sum(sums["count"])), 1.0)
    loc_n = float(sums["loc_count"])
    out.update(ce=float(sums["ce"]) / n, examples=int(np.sum(sums["count"])), examples_with_box=int(loc_n))
    for name in ("pred", "true"):
      for key in LOC_KEYS:
        out[f"{name}_{key}"] = float(sums[f"{name}_{key}"]) / loc_n if loc_n else float("nan")
      out[f"{name}_all_zero_share"] = float(sums[f"{name}_all_zero"]) / n
    if with_noise:
      count = np.asarray(sums["count"], np.float64)
      present = count > 0
      per_class = np.asarray(sums["noise_correct"], np.float64)[..., present] / count[present]
      acc = per_class.mean(-1)  # (sigma, region): class-averaged accuracy
      out["noise_sigmas"] = [int(s) for s in self.config.eval.noise_sigmas]
      out["noise_fg_accuracy"] = acc[:, 0].tolist()
      out["noise_bg_accuracy"] = acc[:, 1].tolist()
      out["rfs"] = evaluate.rfs(acc[:, 0], acc[:, 1]).tolist()
      out["rfs_mean"] = float(np.mean(out["rfs"]))
    return out

  def evaluate(self, variables: Mapping[str, Any], sources: Mapping[str, Source], *,
               overrides: Mapping[str, pipeline.BoxOverride] | None = None,
               show_progress: bool = False, noise: bool = True) -> dict[str, Any]:
    """Metrics for every split in ``sources``, plus ``bg_gap`` when both mixed splits are there.

    ``noise=False`` skips the noise test (2 x len(sigmas) extra forward passes
    per example), as periodic evaluations during training do.
    """
    results: dict[str, Any] = {}
    noise_splits = set(self.config.eval.noise_splits)
    for split, source in sources.items():
      results[split] = self.evaluate_split(
          variables, source, override=(overrides or {}).get(split),
          with_noise=noise and split in noise_splits and bool(self.config.eval.noise_sigmas),
          show_progress=show_progress)
    if "mixed_same" in results and "mixed_rand" in results:
      results["bg_gap"] = evaluate.bg_gap(results["mixed_same"]["accuracy"], results["mixed_rand"]["accuracy"])
    return results
