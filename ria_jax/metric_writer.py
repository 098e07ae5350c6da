"""Where metrics go: TensorBoard event files and ``metrics.jsonl`` (process 0 only)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from tensorboardX import SummaryWriter


def scalars(tree: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
  """Flattens nested metrics to ``{'a/b': float}``, dropping lists and non-numbers."""
  out: dict[str, float] = {}
  for key, value in tree.items():
    name = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping):
      out.update(scalars(value, name))
    elif isinstance(value, int | float | np.number) and not isinstance(value, bool):
      out[name] = float(value)
  return out


class MetricWriter:
  """Writes scalars to ``workdir/tensorboard`` and one JSON object per call to ``metrics.jsonl``.

  Args:
    workdir: the experiment directory.
    enabled: False on processes other than 0 (then every call is a no-op).
  """

  def __init__(self, workdir: str | Path, enabled: bool = True):
    self.enabled = enabled
    if enabled:
      workdir = Path(workdir)
      self._tb = SummaryWriter(str(workdir / "tensorboard"))
      self._jsonl = (workdir / "metrics.jsonl").open("a")

  def write(self, step: int, metrics: Mapping[str, Any], prefix: str) -> None:
    """Logs ``metrics`` (nested dicts allowed) under ``prefix`` at ``step``."""
    if not self.enabled:
      return
    flat = scalars(metrics, prefix)
    for name, value in flat.items():
      if math.isfinite(value):
        self._tb.add_scalar(name, value, step)
    record = {"step": int(step), "kind": prefix, **{k[len(prefix) + 1:]: v for k, v in flat.items()}}
    self._jsonl.write(json.dumps(record, allow_nan=True) + "\n")
    self._jsonl.flush()
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()
      self._jsonl.close()
