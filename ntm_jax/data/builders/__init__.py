"""TFDS builders for the data sets that ship inside packages or are drawn here (built locally, nothing is
downloaded)."""

import numpy as np
import tensorflow_datasets as tfds


def image_features(shape: tuple[int, int, int], num_classes: int = 0, **more) -> tfds.features.FeaturesDict:
  """uint8 images of `shape`, a class label if `num_classes`, then the `more` features, in that order."""
  features = {"image": tfds.features.Tensor(shape=shape, dtype=np.uint8)}
  if num_classes:
    features["label"] = tfds.features.ClassLabel(num_classes=num_classes)
  return tfds.features.FeaturesDict({**features, **more})
