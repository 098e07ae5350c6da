"""Boxes files: object boxes from any detector, joined to a dataset by example id.

Two formats, chosen by the file extension:

* JSON lines (``.jsonl``), one object per line::

    {"id": "n01531178_1234", "box": [x1, y1, x2, y2], "units": "pixels",
     "width": 500, "height": 375, "valid": true}

  ``units`` is ``"normalized"`` (coordinates in [0, 1]; ``width``/``height``
  optional) or ``"pixels"`` (pixel edges of the *original* image; ``width``
  and ``height`` required). ``valid`` defaults to true; extra keys (scores,
  CorLoc flags) are kept in the file and ignored here.
* CSV (``.csv``) with the header ``id,x1,y1,x2,y2,units,width,height,valid``.

Ids that a dataset has but the file lacks get an invalid box (RIA then
ignores those examples) and are counted, so a partial file cannot silently
train on garbage.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

UNITS = ("normalized", "pixels")
CSV_FIELDS = ("id", "x1", "y1", "x2", "y2", "units", "width", "height", "valid")


@dataclasses.dataclass(frozen=True)
class BoxRecord:
  """One line of a boxes file."""

  id: str
  box: tuple[float, float, float, float]
  units: str = "normalized"
  width: int | None = None
  height: int | None = None
  valid: bool = True
  extra: dict = dataclasses.field(default_factory=dict)

  def normalized(self) -> np.ndarray:
    box = np.asarray(self.box, np.float32)
    if self.units == "pixels":
      box = box / np.array([self.width, self.height, self.width, self.height], np.float32)
    return np.clip(box, 0.0, 1.0)

  def to_json(self) -> str:
    d = {"id": self.id, "box": [float(v) for v in self.box], "units": self.units, "valid": self.valid}
    if self.width is not None:
      d.update(width=int(self.width), height=int(self.height))
    d.update(self.extra)
    return json.dumps(d)


def _parse(raw: dict, where: str) -> BoxRecord:
  try:
    box = tuple(float(v) for v in raw["box"])
    units = raw.get("units", "normalized")
    width = raw.get("width")
    height = raw.get("height")
    valid = raw.get("valid", True)
    if isinstance(valid, str):
      valid = valid.strip().lower() in ("1", "true", "yes")
    record_id = str(raw["id"])
  except (KeyError, TypeError, ValueError) as e:
    raise ValueError(f"{where}: malformed box record {raw!r} ({e!r}).") from e
  if len(box) != 4:
    raise ValueError(f"{where}: a box needs 4 numbers (x1, y1, x2, y2), got {len(box)}.")
  if units not in UNITS:
    raise ValueError(f"{where}: units must be one of {UNITS}, got {units!r}.")
  if units == "pixels":
    if not width or not height:
      raise ValueError(f"{where}: pixel boxes need the image 'width' and 'height'.")
    width, height = int(float(width)), int(float(height))
  known = {"id", "box", "units", "width", "height", "valid"}
  extra = {k: v for k, v in raw.items() if k not in known}
  return BoxRecord(record_id, box, units, width, height, bool(valid), extra)


def read(path: str | Path) -> dict[str, BoxRecord]:
  """Reads a boxes file (``.jsonl`` or ``.csv``); later lines win for duplicate ids."""
  path = Path(path)
  if not path.exists():
    raise FileNotFoundError(f"Boxes file {path} does not exist (write one with `python -m ria_jax.lost`).")
  records: dict[str, BoxRecord] = {}
  if path.suffix == ".csv":
    with path.open(newline="") as f:
      for n, row in enumerate(csv.DictReader(f), start=2):
        raw = {"id": row["id"], "box": [row["x1"], row["y1"], row["x2"], row["y2"]],
               **{k: row[k] for k in ("units", "width", "height", "valid") if row.get(k) not in (None, "")}}
        rec = _parse(raw, f"{path}:{n}")
        records[rec.id] = rec
    return records
  with path.open() as f:
    for n, line in enumerate(f, start=1):
      line = line.strip()
      if not line:
        continue
      try:
        raw = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}).") from e
      rec = _parse(raw, f"{path}:{n}")
      records[rec.id] = rec
  return records


def write(path: str | Path, records: Iterable[BoxRecord], append: bool = False) -> None:
  """Writes (or appends) records as JSON lines or CSV according to the extension."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.suffix == ".csv":
    new = not (append and path.exists())
    with path.open("a" if append else "w", newline="") as f:
      writer = csv.writer(f)
      if new:
        writer.writerow(CSV_FIELDS)
      for r in records:
        writer.writerow([r.id, *r.box, r.units, r.width or "", r.height or "", int(r.valid)])
    return
  with path.open("a" if append else "w") as f:
    for r in records:
      f.write(r.to_json() + "\n")


def repair_tail(path: str | Path) -> int:
  """Drops a partial last line (a writer killed mid-line); returns the bytes removed."""
  path = Path(path)
  if not path.exists():
    return 0
  data = path.read_bytes()
  if not data or data.endswith(b"\n"):
    return 0
  keep = data.rfind(b"\n") + 1
  with path.open("r+b") as f:
    f.truncate(keep)
  return len(data) - keep


class BoxTable:
  """Normalised boxes by id, with a count of the ids it did not have."""

  def __init__(self, records: dict[str, BoxRecord]):
    self._boxes = {k: (r.normalized(), r.valid) for k, r in records.items()}
    self.missing: set[str] = set()

  @classmethod
  def from_file(cls, path: str | Path) -> BoxTable:
    return cls(read(path))

  def __len__(self) -> int:
    return len(self._boxes)

  def lookup(self, example_id: str) -> tuple[np.ndarray, bool]:
    """``(box, valid)``; an unknown id gives an invalid box and is counted."""
    if example_id in self._boxes:
      box, valid = self._boxes[example_id]
      return box, valid and bool(box[2] > box[0] and box[3] > box[1])
    self.missing.add(example_id)
    return np.zeros(4, np.float32), False
