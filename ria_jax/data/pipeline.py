"""grain input pipelines: sharded, shuffled, augmented, checkpointable train batches; exact eval batches.

Train: ``source -> (boxes file join) -> shuffle (per epoch) -> repeat ->
random resized crop + flip -> batch -> this process's rows of each global
batch``. Every batch is a
pure function of ``(seed, step)`` (grain ``MapDataset`` semantics), and the
iterator state saved with each checkpoint (``get_state``/``set_state``) makes
a resumed run see exactly the batches an uninterrupted one would.

Eval: every example exactly once, in order, in batches of the global batch
size; the last batch is padded with copies of example 0 whose ``weight`` is 0,
and every process gets the same number of batches.

Host batches hold ``image (B, S, S, 3) uint8`` (the model normalises on the
device), ``label``, ``box``, ``box_valid``, ``index`` (position in the split)
and, for evaluation, ``mask (B, S, S) bool``, ``weight`` and ``bg_family``
when the dataset has one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

import grain
import jax
import numpy as np
from absl import flags, logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ria_jax.data import augment, boxes_file
from ria_jax.data.sources import Source

_DEVICE_KEYS = ("image", "label", "box", "box_valid", "mask", "weight", "bg_family", "index")


@dataclasses.dataclass(frozen=True)
class BoxOverride:
  """Boxes from a file, aligned with a split's indices (built once, shipped to workers)."""

  boxes: np.ndarray  # (N, 4) float32, normalised
  valid: np.ndarray  # (N,) bool
  missing: int

  @classmethod
  def from_file(cls, path: str, source: Source) -> BoxOverride:
    table = boxes_file.BoxTable.from_file(path)
    ids = source.ids()
    looked_up = [table.lookup(i) for i in ids]
    boxes = np.stack([b for b, _ in looked_up]) if ids else np.zeros((0, 4), np.float32)
    valid = np.array([v for _, v in looked_up], bool)
    if table.missing:
      logging.warning("Boxes file %s lacks %d of %d ids of split %r (e.g. %s); those examples get "
                      "invalid boxes and no RIA loss.", path, len(table.missing), len(ids), source.split,
                      sorted(table.missing)[:3])
    return cls(boxes.astype(np.float32), valid, len(table.missing))


def box_overrides(data_cfg: Mapping[str, Any], split_sources: Mapping[str, Source]) -> dict[str, BoxOverride]:
  """Boxes-file overrides for each split, or none when boxes come from the masks (``data.boxes='mask'``)."""
  if data_cfg["boxes"] in ("", "mask"):
    return {}
  return {split: BoxOverride.from_file(data_cfg["boxes"], src) for split, src in split_sources.items()}


class _Prepare(grain.transforms.RandomMap):
  """Decoded example -> fixed-size arrays (augmented in training)."""

  def __init__(self, size: int, train: bool, data_cfg: Mapping[str, Any],
               override: BoxOverride | None, keep_mask: bool):
    self.size, self.train, self.override, self.keep_mask = size, train, override, keep_mask
    self.augment = bool(data_cfg.get("augment", True)) and train
    self.scale = tuple(data_cfg.get("crop_scale", (0.8, 1.0)))
    self.ratio = tuple(data_cfg.get("crop_ratio", (0.75, 1.25)))
    self.hflip = bool(data_cfg.get("hflip", True))

  def random_map(self, element: tuple[int, dict], rng: np.random.Generator) -> dict:
    index, example = element
    if self.override is not None:
      example = {**example, "box": self.override.boxes[index], "box_valid": self.override.valid[index]}
    h, w = example["image"].shape[:2]
    if self.augment:
      crop = augment.random_resized_crop_params(h, w, rng, self.scale, self.ratio)
      flip = self.hflip and bool(rng.uniform() < 0.5)
    else:
      crop, flip = augment.full_crop(h, w), False
    out = augment.apply(example, crop, flip, self.size, box_from_mask=self.override is None)
    result = {
        "image": out["image"],
        "label": np.int32(out["label"]),
        "box": np.asarray(out["box"], np.float32),
        "box_valid": np.bool_(out["box_valid"]),
        "index": np.int32(index),
    }
    if self.keep_mask:
      result["mask"] = out["mask"]
    if "bg_family" in out:
      result["bg_family"] = np.int32(out["bg_family"])
    return result


def _with_index(source: Source) -> grain.MapDataset:
  return grain.MapDataset.source(source).map_with_index(lambda i, ex: (i, ex))


def _check_batch(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ValueError(f"Global batch {global_batch} is not divisible by the {process_count} processes.")
  return global_batch // process_count


def train_dataset(source: Source, data_cfg: Mapping[str, Any], *, global_batch: int, seed: int,
                  override: BoxOverride | None = None, keep_mask: bool = False,
                  process_index: int | None = None, process_count: int | None = None) -> grain.MapDataset:
  """Infinite, indexable dataset of this process's train batches (``ds[step]`` is batch ``step``).

  The shuffle and the augmentation are defined on the *global* example
  stream, and process ``p`` takes rows ``[p * B_p, (p + 1) * B_p)`` of every
  global batch: the global batch is the same for any number of processes, so
  a multi-host run trains on exactly what a single-host run would.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local_batch = _check_batch(global_batch, process_count)
  if len(source) < global_batch:
    raise ValueError(f"Split {source.split!r} has {len(source)} examples, fewer than the global batch "
                     f"{global_batch}.")
  ds = _with_index(source).seed(seed).shuffle().repeat()
  ds = ds.random_map(_Prepare(int(data_cfg["image_size"]), True, data_cfg, override, keep_mask))
  return ds.batch(local_batch, drop_remainder=True)[process_index::process_count]


def make_iterator(ds: grain.MapDataset, workers: int = 0, threads: int = 0) -> grain.DatasetIterator:
  """A checkpointable iterator, optionally with worker processes."""
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads, 1)))
  if workers > 0:
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside an absl app use defaults
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
  return iter(it_ds)


def eval_dataset(source: Source, data_cfg: Mapping[str, Any], *, global_batch: int,
                 override: BoxOverride | None = None, keep_mask: bool = True,
                 process_index: int | None = None, process_count: int | None = None) -> grain.MapDataset:
  """Finite dataset of this process's eval batches; all processes get the same number.

  Global position ``g`` of batch ``b`` holds example ``g = b * global_batch +
  process_index * local_batch + k``; positions past the end are padding
  (example 0 with ``weight`` 0).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local_batch = _check_batch(global_batch, process_count)
  n = len(source)
  n_batches = math.ceil(n / global_batch)
  positions = np.array([b * global_batch + process_index * local_batch + k
                        for b in range(n_batches) for k in range(local_batch)], np.int64)
  prepare = _Prepare(int(data_cfg["image_size"]), False, data_cfg, override, keep_mask)
  rng = np.random.default_rng(0)  # unused: no augmentation in evaluation

  def load(position: int) -> dict:
    index = int(position) if position < n else 0
    example = prepare.random_map((index, source[index]), rng)
    example["weight"] = np.float32(position < n)
    return example

  return grain.MapDataset.source(positions).map(load).batch(local_batch, drop_remainder=False)


def to_device(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This process's share of a batch -> global arrays sharded along ``'data'``."""
  sharding = NamedSharding(mesh, PartitionSpec("data"))
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items() if k in _DEVICE_KEYS}


def iterate(ds: grain.MapDataset, threads: int = 8) -> Iterator[dict]:
  """Iterates a finite dataset with read threads (evaluation)."""
  yield from ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))
