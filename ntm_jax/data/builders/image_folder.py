"""TFDS builder for a user's own folder of images (PNG/JPEG/BMP), read with PIL, no TensorFlow needed.

  data.name = "folder:/path/to/images"
Class labels come from first-level sub-folder names (sorted) when there are sub-folders, else there are
none. All images must have the same size and mode (L = 1 channel, RGB = 3). Splits are carved
deterministically by a hash of each file's relative path: 10% test, 10% validation, 80% train. Each
folder is built once into its own directory under the TFDS data dir (keyed by the folder's path).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")


def list_images(folder: str) -> tuple[list[str], list[str]]:
  """(relative paths of every image, sorted class names or [] if the images sit at the top level)."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"image folder {folder!r} does not exist")
  paths = sorted(
      os.path.relpath(os.path.join(root, name), folder)
      for root, _, files in os.walk(folder) for name in files if name.lower().endswith(_EXTENSIONS))
  if not paths:
    raise ValueError(f"image folder {folder!r} holds no {'/'.join(_EXTENSIONS)} files")
  classes = sorted({p.split(os.sep)[0] for p in paths if os.sep in p})
  if classes and any(os.sep not in p for p in paths):
    raise ValueError(f"image folder {folder!r} mixes top-level images with class sub-folders")
  return paths, classes


def split_of(relative_path: str) -> str:
  bucket = int(hashlib.sha256(relative_path.encode()).hexdigest(), 16) % 10
  return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def read_image(path: str) -> np.ndarray:
  image = np.asarray(Image.open(path))
  return image[..., None] if image.ndim == 2 else image


def make_image_folder_builder(folder: str, data_dir: str) -> tfds.core.DatasetBuilder:
  folder = os.path.abspath(folder)
  paths, classes = list_images(folder)
  shape = read_image(os.path.join(folder, paths[0])).shape
  features = {"image": tfds.features.Tensor(shape=shape, dtype=np.uint8)}
  if classes:
    features["label"] = tfds.features.ClassLabel(names=classes)

  class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A folder of images as a TFDS data set (array_record)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=hashlib.sha256(folder.encode()).hexdigest()[:16],
                                               description=folder)]

    def _info(self):
      return self.dataset_info_from_configs(description=f"images from {folder}",
                                            features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {split: self._generate_examples(split) for split in ("train", "validation", "test")}

    def _generate_examples(self, split):
      for relative in paths:
        if split_of(relative) != split:
          continue
        image = read_image(os.path.join(folder, relative))
        if image.shape != shape:
          raise ValueError(f"{relative} has shape {image.shape}, but the folder's first image has {shape}")
        example = {"image": image.astype(np.uint8)}
        if classes:
          example["label"] = relative.split(os.sep)[0]
        yield relative, example

  return ImageFolder(data_dir=data_dir, file_format="array_record")
