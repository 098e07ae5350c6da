"""Datasets by name: build (or find) the TFDS ArrayRecord files, read them as random-access sources.

``open_source(data_cfg, split)`` is the one entry point: it prepares the
dataset on first use (the synthetic one is generated, RIVAL10 is read from
the user's copy) and returns a picklable random-access source whose items are
decoded examples::

    image (H, W, 3) uint8, mask (H, W) bool, box (4,) float32 normalised,
    box_valid bool, label int, id str [, bg_family int]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds
from absl import logging

from ria_jax.data import rival10, synthetic, synthetic_tfds

DATASETS = ("synthetic", "rival10")


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What the rest of the system needs to know about a dataset."""

  name: str
  num_classes: int
  class_names: tuple[str, ...]
  splits: tuple[str, ...]
  train_split: str


def info(name: str) -> DataInfo:
  if name == "synthetic":
    return DataInfo(name, synthetic.NUM_CLASSES, synthetic.CLASSES, synthetic.SPLITS, "train")
  if name == "rival10":
    return DataInfo(name, len(rival10.CLASSES), rival10.CLASSES, rival10.SPLITS, "train")
  raise ValueError(f"Unknown dataset {name!r}; available: {DATASETS}.")


def data_dir(data_cfg: Mapping[str, Any]) -> str:
  """The TFDS data directory (``~/tensorflow_datasets`` unless configured)."""
  return str(Path(data_cfg.get("data_dir") or "~/tensorflow_datasets").expanduser())


def synthetic_spec(data_cfg: Mapping[str, Any]) -> synthetic.SyntheticSpec:
  opts = dict(data_cfg.get("synthetic", {}))
  return synthetic.SyntheticSpec(image_size=data_cfg.get("source_size") or data_cfg["image_size"], **opts)


def _config_arg(builder_cls: type, config: tfds.core.BuilderConfig) -> tfds.core.BuilderConfig | str:
  """TFDS wants predefined configs by name (an equal custom config object is an error)."""
  return config.name if any(c.name == config.name for c in builder_cls.BUILDER_CONFIGS) else config


def builder(data_cfg: Mapping[str, Any]) -> tfds.core.DatasetBuilder:
  """The TFDS builder for ``data_cfg.name`` (not yet prepared)."""
  name = data_cfg["name"]
  if name == "synthetic":
    config = synthetic_tfds.SyntheticConfig.from_spec(synthetic_spec(data_cfg))
    return synthetic_tfds.SyntheticBackgrounds(config=_config_arg(synthetic_tfds.SyntheticBackgrounds, config),
                                               data_dir=data_dir(data_cfg),
                                               file_format="array_record")
  if name == "rival10":
    opts = dict(data_cfg.get("rival10", {}))
    config = rival10.Rival10Config.from_threshold(opts.get("mask_threshold", 128))
    return rival10.Rival10(config=_config_arg(rival10.Rival10, config), data_dir=data_dir(data_cfg),
                           file_format="array_record",
                           max_bad_fraction=opts.get("max_bad_fraction", 0.01))
  raise ValueError(f"Unknown dataset {name!r}; available: {DATASETS}.")


def prepare(data_cfg: Mapping[str, Any]) -> tfds.core.DatasetBuilder:
  """Builds the dataset's ArrayRecord files unless they exist; returns the builder."""
  b = builder(data_cfg)
  if not b.is_prepared():
    logging.info("Preparing %s in %s", data_cfg["name"], b.data_dir)
    download_config = None
    if data_cfg["name"] == "rival10":
      manual = data_cfg.get("manual_dir")
      if not manual:
        raise rival10.DatasetNotFoundError(
            f"RIVAL10 is not built in {data_dir(data_cfg)} and no manual_dir was given.\n"
            + rival10.INSTRUCTIONS)
      download_config = tfds.download.DownloadConfig(manual_dir=str(Path(manual).expanduser()))
    b.download_and_prepare(download_config=download_config)
  return b


class Source:
  """Random-access decoded examples of one split (picklable for grain workers)."""

  def __init__(self, name: str, records: Sequence, split: str):
    self.name, self.split, self._records = name, split, records

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    record = self._records[int(index)]
    if self.name == "rival10":
      record = rival10.decode(record)
    out = {k: v for k, v in record.items() if k not in ("attributes", "width", "height")}
    out["id"] = out["id"].decode() if isinstance(out["id"], bytes) else str(out["id"])
    out["label"] = int(out["label"])
    out["box_valid"] = bool(out["box_valid"])
    return out

  def ids(self) -> list[str]:
    """Every example's id, in index order (reads the whole split once)."""
    ids = (self._records[i]["id"] for i in range(len(self)))  # raw records: no image decoding
    return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]


def open_source(data_cfg: Mapping[str, Any], split: str) -> Source:
  """Prepares the dataset if needed and opens ``split``."""
  data_info = info(data_cfg["name"])
  if split not in data_info.splits:
    raise ValueError(f"Dataset {data_info.name!r} has no split {split!r}; it has {data_info.splits}.")
  b = prepare(data_cfg)
  return Source(data_info.name, b.as_data_source(split), split)

