"""TFDS builder for `shapes`: procedurally drawn 32x32 RGB scenes with captions (ntm_jax.data.builders.shapes_scenes).

One to four circles, squares and triangles in five colours on a 3x3 grid of cells; captions from
templates that cover GenEval's six categories (single object, two objects, counting, colours, position,
colour attribution), cycled evenly. Fixed seeds make the splits reproducible: train 20,000 (seed 0),
validation 1,000 (seed 1), test 1,000 (seed 2). Built locally in a few seconds; nothing is downloaded.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from ntm_jax.data.builders import image_features, shapes_scenes

SPLITS = {"train": (20_000, 0), "validation": (1_000, 1), "test": (1_000, 2)}


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Captioned compositional shapes scenes as a TFDS data set (array_record)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "32x32 RGB scenes, GenEval-style captions, fixed seeds per split."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=image_features((shapes_scenes.SIZE, shapes_scenes.SIZE, 3), caption=tfds.features.Text(),
                                category=tfds.features.ClassLabel(names=list(shapes_scenes.CATEGORIES))),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # drawn here
    return {name: self._generate_examples(num, seed) for name, (num, seed) in SPLITS.items()}

  def _generate_examples(self, num, seed):
    images, prompts = shapes_scenes.make_scenes(num, seed)
    for i, (image, prompt) in enumerate(zip(images, prompts)):
      yield i, {"image": image, "caption": prompt.caption(), "category": prompt.category}
