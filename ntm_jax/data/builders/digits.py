"""TFDS builder for scikit-learn's digits: 1,797 real handwritten digits, 8x8, 17 grey levels (0..16).

Splits (fixed, reproducible, the protocol of the project's reference figures):
  test:       the test part of `train_test_split(load_digits().data, test_size=0.2, random_state=0)`, 360
  validation: 10% of the remaining 1,437, carved with `train_test_split(..., test_size=0.1, random_state=0)`, 144
  train:      the other 1,293
Model selection uses `validation`; `test` is only for the reported bits/dim.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from ntm_jax.data.builders import image_features


def digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{split: (images uint8 [n, 8, 8, 1], labels int64 [n])}, the documented fixed splits."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  digits = load_digits()
  index = np.arange(len(digits.data))
  rest, test = train_test_split(index, test_size=0.2, random_state=0)
  train, validation = train_test_split(rest, test_size=0.1, random_state=0)
  images = digits.data.reshape(-1, 8, 8, 1).astype(np.uint8)
  labels = digits.target.astype(np.int64)
  return {name: (images[i], labels[i]) for name, i in
          (("train", train), ("validation", validation), ("test", test))}


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn digits as a TFDS data set (array_record)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "scikit-learn load_digits with fixed train/validation/test splits."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=image_features((8, 8, 1), num_classes=10),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the data ship inside scikit-learn
    return {name: self._generate_examples(images, labels)
            for name, (images, labels) in digits_splits().items()}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}
