"""TFDS builder for RIVAL10 (Moayeri et al., CVPR 2022) from a user-supplied copy.

RIVAL10 cannot be downloaded by this project (non-commercial licence, no
redistribution): the builder reads ``rival10.zip`` or its unzipped
``RIVAL10/`` directory from the *manual dir* the user names. Layout
(DESIGN.md section 6)::

    RIVAL10/{train,test}/ordinary/<wnid>_<id>.JPEG
                                  <wnid>_<id>_attr_labels.npy   (row 0: 18 flags)
                                  <wnid>_<id>_attr_dict.pkl     (attr -> base64 JPEG mask)
                                  <wnid>_<id>_merged_mask.JPEG  (not used: not the object)

The object mask is the ``'entire-object'`` entry of the pickle, binarised at
``mask_threshold`` (JPEG noise makes ``!= 0`` unreliable). Images are stored
at their original size as JPEG (grayscale/CMYK converted to RGB), masks as
PNG, plus the tight box of the mask in normalised coordinates; resizing
happens in the input pipeline (official loaders: 224 x 224).

Security: the ``*_attr_dict.pkl`` files are Python pickles and unpickling can
run code. They are read only from the dataset path the user gives.

Corrupt or missing files are skipped and listed in a report
(``<data_dir>/rival10_build_report.json``); the build fails when more than
``max_bad_fraction`` of a split is bad.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image

from ria_jax.data.synthetic import tight_box

CLASSES = ("truck", "car", "plane", "ship", "cat", "dog", "equine", "deer", "frog", "bird")
WNIDS = {
    "n03796401": 0, "n04467665": 0,  # truck
    "n02814533": 1, "n03100240": 1,  # car
    "n02690373": 2, "n04552348": 2,  # plane
    "n03673027": 3, "n03095699": 3,  # ship
    "n02123394": 4, "n02124075": 4,  # cat
    "n02099712": 5, "n02099601": 5,  # dog
    "n02389026": 6, "n02391049": 6,  # equine
    "n02423022": 7, "n02422699": 7,  # deer
    "n01644900": 8, "n01644373": 8,  # frog
    "n01531178": 9, "n01532829": 9,  # bird
}
ATTRIBUTES = ("long-snout", "wings", "wheels", "text", "horns", "floppy-ears", "ears", "colored-eyes",
              "tail", "mane", "beak", "hairy", "metallic", "rectangular", "wet", "long", "tall",
              "patterned")
OBJECT_KEY = "entire-object"
SPLITS = ("train", "test")
REPORT_NAME = "rival10_build_report.json"

INSTRUCTIONS = """\
RIVAL10 must be supplied by you (licence: non-commercial, no redistribution).
Request it from the authors (https://github.com/mmoayeri/RIVAL10), then point
`--config.data.manual_dir` at a directory holding either `rival10.zip` or the
unzipped `RIVAL10/` folder (with `train/ordinary/` and `test/ordinary/`)."""


class DatasetNotFoundError(FileNotFoundError):
  """The user's RIVAL10 copy is not where the config says."""


class _Tree:
  """Uniform read access to the layout inside a zip or a directory."""

  def __init__(self, manual_dir: Path):
    self.zip: zipfile.ZipFile | None = None
    looked = []
    for candidate in (manual_dir / "rival10.zip", manual_dir):
      looked.append(str(candidate))
      if candidate.is_file() and zipfile.is_zipfile(candidate):
        self.zip = zipfile.ZipFile(candidate)
        names = self.zip.namelist()
        prefix = next((n[: n.index("train/ordinary/")] for n in names if "train/ordinary/" in n), None)
        if prefix is not None:
          self.prefix = prefix
          self.names = set(names)
          return
        raise DatasetNotFoundError(f"{candidate} holds no */train/ordinary/ folder; is it RIVAL10?\n"
                                   + INSTRUCTIONS)
    for candidate in (manual_dir / "RIVAL10", manual_dir):
      looked.append(str(candidate))
      if (candidate / "train" / "ordinary").is_dir():
        self.root = candidate
        return
    raise DatasetNotFoundError(
        f"RIVAL10 not found. Looked for rival10.zip and RIVAL10/train/ordinary/ in: {', '.join(looked)}.\n"
        + INSTRUCTIONS)

  def stems(self, split: str) -> list[str]:
    if self.zip is not None:
      folder = f"{self.prefix}{split}/ordinary/"
      files = [n[len(folder):] for n in self.names if n.startswith(folder)]
    else:
      folder_path = self.root / split / "ordinary"
      files = [p.name for p in folder_path.iterdir()] if folder_path.is_dir() else []
    return sorted(f[:-5] for f in files if f.endswith(".JPEG") and not f.endswith("_merged_mask.JPEG"))

  def read(self, split: str, name: str) -> bytes:
    if self.zip is not None:
      member = f"{self.prefix}{split}/ordinary/{name}"
      if member not in self.names:
        raise FileNotFoundError(member)
      return self.zip.read(member)
    return (self.root / split / "ordinary" / name).read_bytes()


def decode_object_mask(attr_dict: dict, size: tuple[int, int], threshold: int) -> np.ndarray:
  """The binarised ``'entire-object'`` mask at the image's ``(width, height)``."""
  if OBJECT_KEY not in attr_dict:
    raise KeyError(f"no '{OBJECT_KEY}' entry (keys: {sorted(attr_dict)})")
  uri = attr_dict[OBJECT_KEY]
  if isinstance(uri, str) and uri.startswith("data:"):
    uri = uri.split(",", 1)[1]
  raw = base64.b64decode(uri)
  with Image.open(io.BytesIO(raw)) as m:
    m = m.convert("L")
    if m.size != size:
      m = m.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(m) >= threshold


def _encode_png(mask: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG", optimize=False)
  return buf.getvalue()


def _load_example(tree: _Tree, split: str, stem: str, threshold: int) -> dict:
  label = WNIDS.get(stem.split("_")[0])
  if label is None:
    raise ValueError(f"unknown wnid {stem.split('_')[0]!r}")
  raw = tree.read(split, stem + ".JPEG")
  with Image.open(io.BytesIO(raw)) as img:
    img.load()  # a truncated or corrupt JPEG fails here
    size = img.size
    if img.mode != "RGB" or img.format != "JPEG":
      buf = io.BytesIO()
      img.convert("RGB").save(buf, format="JPEG", quality=95)
      raw = buf.getvalue()
  attrs = np.load(io.BytesIO(tree.read(split, stem + "_attr_labels.npy")), allow_pickle=False)
  attrs = np.asarray(attrs).reshape(-1, len(ATTRIBUTES))[0].astype(bool)
  attr_dict = pickle.loads(tree.read(split, stem + "_attr_dict.pkl"))
  mask = decode_object_mask(attr_dict, size, threshold)
  box, valid = tight_box(mask)
  return {"image": raw, "mask": _encode_png(mask), "box": box, "box_valid": valid, "label": label,
          "attributes": attrs, "id": stem, "width": size[0], "height": size[1]}


@dataclasses.dataclass(kw_only=True)
class Rival10Config(tfds.core.BuilderConfig):
  """What the stored data depends on (part of the config name).

  Attributes:
    mask_threshold: grey level (0-255) from which a mask pixel is object.
  """

  mask_threshold: int = 128

  @classmethod
  def from_threshold(cls, mask_threshold: int) -> Rival10Config:
    return cls(name=f"mask{int(mask_threshold)}", mask_threshold=int(mask_threshold))


class Rival10(tfds.core.GeneratorBasedBuilder):
  """RIVAL10 with entire-object masks and their boxes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}  # noqa: RUF012 - TFDS API
  BUILDER_CONFIGS = [Rival10Config.from_threshold(128)]  # noqa: RUF012
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

  def __init__(self, *, max_bad_fraction: float = 0.01, **kwargs):
    """Args: max_bad_fraction: share of bad examples per split above which the build fails."""
    self.max_bad_fraction = float(max_bad_fraction)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(), dtype=np.object_),  # JPEG bytes
            "mask": tfds.features.Tensor(shape=(), dtype=np.object_),   # PNG bytes
            "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
            "box_valid": tfds.features.Tensor(shape=(), dtype=np.bool_),
            "label": tfds.features.ClassLabel(names=CLASSES),
            "attributes": tfds.features.Tensor(shape=(len(ATTRIBUTES),), dtype=np.bool_),
            "id": tfds.features.Text(),
            "width": tfds.features.Tensor(shape=(), dtype=np.int32),
            "height": tfds.features.Tensor(shape=(), dtype=np.int32),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/mmoayeri/RIVAL10",
    )

  def _split_generators(self, dl_manager):
    tree = _Tree(Path(dl_manager.manual_dir))
    self._report = {"bad": {}, "counts": {}}
    return {split: self._generate_examples(tree, split) for split in SPLITS}

  def _generate_examples(self, tree: _Tree, split: str) -> Iterator[tuple[str, dict]]:
    cfg = self.builder_config
    stems = tree.stems(split)
    if not stems:
      raise DatasetNotFoundError(f"No images in {split}/ordinary/ of the RIVAL10 copy.\n{INSTRUCTIONS}")
    bad: dict[str, str] = {}
    for stem in stems:
      try:
        example = _load_example(tree, split, stem, cfg.mask_threshold)
      except Exception as e:
        bad[f"{split}/ordinary/{stem}"] = f"{type(e).__name__}: {e}"
        logging.warning("RIVAL10: skipping %s/%s: %s", split, stem, bad[f"{split}/ordinary/{stem}"])
        continue
      yield stem, example
    self._report["bad"].update(bad)
    self._report["counts"][split] = {"total": len(stems), "bad": len(bad)}
    self._write_report()
    if len(bad) > self.max_bad_fraction * len(stems):
      listing = "\n".join(f"  {k}: {v}" for k, v in list(bad.items())[:20])
      raise ValueError(
          f"RIVAL10 {split}: {len(bad)} of {len(stems)} examples are bad (more than "
          f"{self.max_bad_fraction:.1%}); is the copy complete? First ones:\n{listing}\n"
          f"Full report: {self._report_path()}")

  def _report_path(self) -> Path:
    return Path(self.data_dir_root) / REPORT_NAME

  def _write_report(self) -> None:
    path = self._report_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(self._report, indent=1, sort_keys=True))


def decode(record: dict) -> dict:
  """Stored record -> ``image (H, W, 3) uint8``, ``mask (H, W) bool`` and the rest."""
  out = dict(record)
  with Image.open(io.BytesIO(record["image"])) as img:
    out["image"] = np.asarray(img.convert("RGB"))
  with Image.open(io.BytesIO(record["mask"])) as m:
    out["mask"] = np.asarray(m) > 127
  return out
