"""`--mode=encode`: a data set's images -> a latent TFDS data set (array_record) with the same other features.

Every split of `config.data.name` (TFDS, `folder:`, `shapes`, `mnist5k`, ...) is encoded by the autoencoder of
`config.latent.autoencoder` into unit-scale latents (float32 [h, w, c], stored as the "image" feature), and
captions, labels or text embeddings are copied as they are. Each process encodes a contiguous share of
every split into its own shard; process 0 writes the TFDS metadata and then the record that marks the data
set finished (ntm_jax.latents.latent_dataset). Training, evaluation and sampling then read it through the
run's LatentSpace.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from jax.experimental import multihost_utils

from ntm_jax import data
from ntm_jax.data import dequantization
from ntm_jax.latents import latent_dataset
from ntm_jax.latents.space import LatentSpace, space_of

DATASET_NAME = "latents"
FILE_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def _latent_features(source_features: tfds.features.FeaturesDict, latent_shape) -> tfds.features.FeaturesDict:
  features = dict(source_features)
  features["image"] = tfds.features.Tensor(shape=tuple(latent_shape), dtype=np.float32)
  return tfds.features.FeaturesDict(features)


def _share(num_examples: int, process: int, num_processes: int) -> range:
  return range(process * num_examples // num_processes, (process + 1) * num_examples // num_processes)


def encode_dataset(config, batch_size: int = 0) -> dict:
  """Encodes every split of `config.data.name`; returns {directory, splits: {split: count}, seconds}.

  A data set already encoded by the same autoencoder state is left as it is.
  """
  space = space_of(config)
  if not isinstance(space, LatentSpace):
    raise ValueError("--mode=encode needs config.latent.autoencoder (the autoencoder whose latents to write)")
  autoencoder, directory = space.autoencoder, space.directory
  record = latent_dataset.read_record(directory)
  if record is not None and record.get("fingerprint") == autoencoder.fingerprint:
    print(f"latents of {config.data.name!r} by this autoencoder are already in {directory}", flush=True)
    return {"directory": directory, "splits": record["splits"], "seconds": 0.0}
  builder = data.load_builder(config.data.name, config.data.data_dir)
  features = _latent_features(builder.info.features, autoencoder.latent_shape)
  process, num_processes = jax.process_index(), jax.process_count()
  os.makedirs(directory, exist_ok=True)
  encode = autoencoder.encode_fn()
  batch_size = batch_size or config.eval.batch_size
  levels = autoencoder.pixel_levels
  start, split_infos, counts = time.perf_counter(), [], {}
  for split, split_info in builder.info.splits.items():
    source = data.split_of_builder(builder, config.data.name, split)
    if source.image_shape != autoencoder.image_shape:
      raise ValueError(f"data set {config.data.name!r} has images of shape {source.image_shape}, but the "
                       f"autoencoder in {autoencoder.spec} encodes {autoencoder.image_shape}")
    mine = _share(source.num_examples, process, num_processes)
    template = tfds.core.ShardedFileTemplate(data_dir=directory, template=FILE_TEMPLATE,
                                             dataset_name=DATASET_NAME, split=split, filetype_suffix="array_record")
    writer = array_record_module.ArrayRecordWriter(
        os.fspath(template.sharded_filepath(shard_index=process, num_shards=num_processes)), "group_size:1")
    split_start = last_report = time.perf_counter()
    for first in range(mine.start, mine.stop, batch_size):
      examples = [source.source[i] for i in range(first, min(first + batch_size, mine.stop))]
      pixels = np.stack([np.asarray(e["image"]) for e in examples]).astype(np.float32)
      padded = np.concatenate([pixels, np.repeat(pixels[-1:], batch_size - len(pixels), axis=0)])
      latents = np.asarray(encode(dequantization.bin_centres(padded, levels)))[:len(examples)]
      for example, latent in zip(examples, latents):
        writer.write(features.serialize_example({**example, "image": latent}))
      done = min(first + batch_size, mine.stop) - mine.start
      if time.perf_counter() - last_report < 10 and done < len(mine):
        continue  # progress every 10 s
      last_report = time.perf_counter()
      rate = done / max(time.perf_counter() - split_start, 1e-9)
      print(f"encode {split}: {done}/{len(mine)} images | {rate:.0f} images/s | ETA "
            f"{(len(mine) - done) / rate / 60:.1f} min", flush=True)
    writer.close()
    lengths = [len(_share(source.num_examples, p, num_processes)) for p in range(num_processes)]
    split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=0,
                                           filename_template=template))
    counts[split] = split_info.num_examples
  multihost_utils.sync_global_devices("ntm_jax encode: all shards written")
  if process == 0:
    tfds.folder_dataset.write_metadata(
        data_dir=directory, features=features, split_infos=split_infos, check_data=False,
        description=f"latents of {config.data.name} by the autoencoder {autoencoder.spec} (step "
                    f"{autoencoder.step}), written by ntm_jax --mode=encode")
    with open(os.path.join(directory, latent_dataset.RECORD_FILE), "w") as f:
      json.dump({"fingerprint": autoencoder.fingerprint, "autoencoder": autoencoder.spec,
                 "autoencoder_step": autoencoder.step, "source": config.data.name,
                 "latent_shape": list(autoencoder.latent_shape), "splits": counts}, f, indent=2)
  multihost_utils.sync_global_devices("ntm_jax encode: metadata written")
  return {"directory": directory, "splits": counts, "seconds": time.perf_counter() - start}
