"""TFDS builder of the embedded background-bias dataset (ArrayRecord, no TensorFlow).

Generated locally from a seed by ``ria_jax.data.synthetic``; nothing is
downloaded. Images and masks are stored as zlib-compressed raw tensors
(lossless: masks and pixels agree exactly), so neither writing nor reading
needs TensorFlow's image codecs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from ria_jax.data import synthetic


@dataclasses.dataclass(kw_only=True)
class SyntheticConfig(tfds.core.BuilderConfig):
  """A builder config carrying the generation spec; its name encodes the spec."""

  spec: synthetic.SyntheticSpec = dataclasses.field(default_factory=synthetic.SyntheticSpec)

  @classmethod
  def from_spec(cls, spec: synthetic.SyntheticSpec) -> SyntheticConfig:
    name = (f"s{spec.image_size}_rho{round(spec.rho * 1000):04d}_n{spec.train_size}x{spec.test_size}"
            f"_obj{round(spec.min_object * 100)}-{round(spec.max_object * 100)}"
            f"_noise{round(spec.noise * 1000)}_seed{spec.seed}")
    return cls(name=name, spec=spec, description=f"Generated with {spec}.")


class SyntheticBackgrounds(tfds.core.GeneratorBasedBuilder):
  """Procedural objects on class-correlated procedural backgrounds."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}  # noqa: RUF012 - TFDS API
  BUILDER_CONFIGS = [SyntheticConfig.from_spec(synthetic.SyntheticSpec())]  # noqa: RUF012

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.spec.image_size
    return self.dataset_info_from_configs(
        description=synthetic.__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8, encoding="zlib"),
            "mask": tfds.features.Tensor(shape=(s, s), dtype=np.bool_, encoding="zlib"),
            "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
            "box_valid": tfds.features.Tensor(shape=(), dtype=np.bool_),
            "label": tfds.features.ClassLabel(names=synthetic.CLASSES),
            "bg_family": tfds.features.ClassLabel(names=synthetic.FAMILIES),
            "id": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in synthetic.SPLITS}

  def _generate_examples(self, split: str):
    spec = self.builder_config.spec
    for index in range(spec.split_size(split)):
      example = synthetic.generate(spec, split, index)
      key = f"{split}/{index:07d}"
      example["id"] = key
      yield key, example
