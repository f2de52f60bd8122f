"""Input pipeline: TFDS (array_record) data sources read by grain, integer images out.

The pipeline yields integer images ([B, H, W, C], values 0..K-1 for K pixel levels), labels, and for a
text-conditional model the caption's text features (ntm_jax.data.text_features); dequantisation to [-1, 1]
happens on device inside the jitted step (D5), so the pipeline stays deterministic and its iterator
state, saved in every checkpoint, replays exactly the batches a resumed run would have seen.

Data sets:
  digits, mnist5k   built locally on first use from data that ship inside packages (ntm_jax.data.builders)
  shapes            captioned scenes drawn by ntm_jax.data.builders.shapes, built locally on first use
  folder:PATH       a folder of images (class sub-folders optional), built locally on first use
  any other name    a TFDS data set already prepared in `data.data_dir` (array_record), by name
Latent data sets (`--mode=encode`, ntm_jax.latents) are TFDS directories read by `load_directory_split`;
their float32 "image" is a latent, passed on as it is.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Iterator

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from ntm_jax.data import text_features
from ntm_jax.data.builders import shapes_prompts
from ntm_jax.data.builders.digits import Digits
from ntm_jax.data.builders.image_folder import make_image_folder_builder
from ntm_jax.data.builders.mnist5k import Mnist5k
from ntm_jax.data.builders.shapes import Shapes

tfds.disable_progress_bar()

# Data sets built from package data on first use: name -> builder class.
EMBEDDED_BUILDERS = {"digits": Digits, "mnist5k": Mnist5k, "shapes": Shapes}


def default_data_dir() -> str:
  return os.environ.get("NTM_JAX_DATA_DIR", os.path.expanduser("~/.cache/ntm_jax/tensorflow_datasets"))


def _keep_image_and_label(example):
  image = np.asarray(example["image"])
  # Integer images stay integers (dequantised on device, D5); continuous latents stay float32.
  out = {"image": image.astype(np.int32 if np.issubdtype(image.dtype, np.integer) else np.float32)}
  if "label" in example:
    out["label"] = np.asarray(example["label"], np.int32)
  return out


@dataclasses.dataclass(frozen=True)
class DataSource:
  """One split of a data set: a random-access source of examples and how to turn each into model inputs."""

  source: object
  num_examples: int
  image_shape: tuple[int, int, int]
  has_labels: bool
  features: tuple[str, ...] = ()
  text_features: Callable[[dict], dict] | None = None  # adds text_tokens/mask/pooled (text models)

  def prepare(self, example: dict) -> dict[str, np.ndarray]:
    out = _keep_image_and_label(example)
    if self.text_features is not None:
      out.update(self.text_features(example))
    return out


def load_builder(name: str, data_dir: str = "") -> tfds.core.DatasetBuilder:
  """The TFDS builder of `name`, prepared as array_record (embedded data sets are built if needed)."""
  data_dir = data_dir or default_data_dir()
  if name in EMBEDDED_BUILDERS or name.startswith("folder:"):
    if name.startswith("folder:"):
      builder = make_image_folder_builder(name[len("folder:"):], data_dir)
    else:
      builder = EMBEDDED_BUILDERS[name](data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
      builder.download_and_prepare()
    return builder
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as error:  # tfds raises several types for unknown names
    raise ValueError(
        f"unknown data set {name!r}: use one of {sorted(EMBEDDED_BUILDERS)}, or a TFDS data set prepared "
        f"in {data_dir} (tfds build {name} --file_format=array_record --data_dir={data_dir})") from error
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"data set {name!r} is not prepared in {data_dir}; prepare it with "
        f"`tfds build {name} --file_format=array_record --data_dir={data_dir}` (nothing is downloaded at run time)")
  return builder


def load_split(name: str, split: str, data_dir: str = "") -> DataSource:
  return split_of_builder(load_builder(name, data_dir), name, split)


def load_directory_split(directory: str, split: str, name: str = "") -> DataSource:
  """One split of a TFDS data set written to `directory` (dataset_info.json and array_record shards), such as
  the latents `--mode=encode` writes."""
  if not os.path.isfile(os.path.join(directory, "dataset_info.json")):
    raise FileNotFoundError(f"no prepared data set in {directory} (no dataset_info.json)")
  return split_of_builder(tfds.builder_from_directory(directory), name or directory, split)


def split_of_builder(builder: tfds.core.DatasetBuilder, name: str, split: str) -> DataSource:
  if split not in builder.info.splits:
    raise ValueError(f"data set {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}")
  features = builder.info.features
  if "image" not in features:
    raise ValueError(f"data set {name!r} has no 'image' feature (features: {sorted(features)})")
  return DataSource(
      source=builder.as_data_source(split=split),
      num_examples=builder.info.splits[split].num_examples,
      image_shape=tuple(features["image"].shape),
      has_labels="label" in features,
      features=tuple(features.keys()))


def with_text_features(data: DataSource, name: str, encoder: str, max_tokens: int) -> DataSource:
  """`data` whose examples also carry text features (ntm_jax.data.text_features) of `max_tokens` tokens."""
  fn = text_features.make_text_features(data.source, data.num_examples, data.features, encoder, max_tokens, name)
  return dataclasses.replace(data, text_features=fn)


def check_matches_config(data: DataSource, expected: tuple[int, int, int], name: str) -> None:
  """Raises ValueError if the data set's images are not [H, W, C] = `expected` (the model config's)."""
  expected = tuple(expected)
  if data.image_shape != expected:
    raise ValueError(
        f"data set {name!r} has images of shape {data.image_shape}, but the model config expects {expected} "
        "(set config.model.image to the data set's shape)")


def load_model_split(config, split: str, image_shape: tuple[int, int, int], condition_kind: str,
                     directory: str = "") -> DataSource:
  """One split of the data set of `config.data` (or the one written to `directory`: a latent data set),
  checked against the model's [H, W, C] and its condition: class labels must be there for a class model,
  and a text model's examples gain text features. With `data.hold_out_compositions` the train and validation
  splits lose the examples whose caption names a held-out composition (the test split keeps them)."""
  if directory:
    source = load_directory_split(directory, split, f"{config.data.name} latents in {directory}")
  else:
    source = load_split(config.data.name, split, config.data.data_dir)
  check_matches_config(source, image_shape, config.data.name if not directory else f"latents in {directory}")
  if condition_kind == "label" and not source.has_labels:
    raise ValueError(f"the model is class-conditional but data set {config.data.name!r} has no labels")
  if condition_kind == "text":
    source = with_text_features(source, config.data.name, config.text.encoder, config.text.max_tokens)
  if config.data.get("hold_out_compositions", False) and split != "test":
    source = without_held_out_captions(source, config.data.name)
  return source


@dataclasses.dataclass(frozen=True)
class _Subset:
  """The examples of `source` at `indices`, as a random-access source."""

  source: object
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int):
    return self.source[int(self.indices[index])]


def without_held_out_captions(data: DataSource, name: str) -> DataSource:
  """`data` without the examples whose caption names a held-out composition (shapes_prompts.HELD_OUT)."""
  if "caption" not in data.features:
    raise ValueError(f"data.hold_out_compositions drops examples by their caption, but data set {name!r} has no "
                     f"`caption` feature (features: {sorted(data.features)})")
  keep = np.asarray([i for i in range(data.num_examples)
                     if not shapes_prompts.is_held_out(text_features.caption_text(data.source[i]["caption"]))])
  return dataclasses.replace(data, source=_Subset(data.source, keep), num_examples=len(keep))


def check_batch_size(batch_size: int, batch_devices: int | None = None) -> None:
  """The global batch is split evenly over processes and over the devices of the mesh's batch axes."""
  devices, processes = batch_devices or jax.device_count(), jax.process_count()
  if batch_size % devices:
    raise ValueError(
        f"data.batch_size {batch_size} is not divisible by the {devices} devices of the batch axes (mesh 'data' x "
        f"'fsdp'); use a multiple of {devices}")
  if batch_size % processes:
    raise ValueError(f"data.batch_size {batch_size} is not divisible by the {processes} processes")


def train_iterator(data: DataSource, batch_size: int, seed: int,
                   batch_devices: int | None = None) -> grain.DatasetIterator:
  """Endless, seeded, globally shuffled batches of this process's share of `batch_size`.

  Every process shuffles the whole split with the same seed and takes every `process_count`-th
  example, so the processes' shards are disjoint and together make the global batch.
  """
  check_batch_size(batch_size, batch_devices)
  per_process = batch_size // jax.process_count()
  dataset = (grain.MapDataset.source(data.source)
             .seed(seed)
             .shuffle()
             [jax.process_index()::jax.process_count()]
             .repeat()
             .map(data.prepare)
             .batch(per_process, drop_remainder=True))
  return iter(dataset.to_iter_dataset())


def eval_batches(data: DataSource, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """The whole split once, in order, in batches padded to `batch_size` with a `mask` (1 = real)."""
  for start in range(0, data.num_examples, batch_size):
    examples = [data.prepare(data.source[i])
                for i in range(start, min(start + batch_size, data.num_examples))]
    real = len(examples)
    examples += [examples[-1]] * (batch_size - real)
    batch = {key: np.stack([e[key] for e in examples]) for key in examples[0]}
    batch["mask"] = (np.arange(batch_size) < real).astype(np.float32)
    yield batch
