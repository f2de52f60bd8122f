"""FID with the standard Inception features: reference statistics of a data set (--mode=fid_stats) and the
FID, precision and recall of a checkpoint's samples against them (--mode=fid).

Settings live in `config.fid`:
  inception_weights  the weights file a user brings (ntm_jax.evaluation.inception_weights; nothing is downloaded)
  split              the data set split the reference statistics describe ("train", as ImageNet FID uses)
  reference_images   how many of its images (0: all of them)
  reference          a statistics file to compare with ("": the one --mode=fid_stats wrote for these settings)
  num_samples        samples drawn for --mode=fid (the paper's tables use 50,000; the default is 10,000)
  batch_size         images per Inception call and per sampler call (sharded over the mesh's batch axes)
  stats_dir          where reference statistics are kept ("": DATA_DIR/fid_stats beside the TFDS data)
  nearest_k          k of the precision/recall manifolds
  input_size         Inception's input resolution: 299 is FID; smaller values are for quick tests only
A Gaussian fit of 2048 features needs more than 2048 images for a full-rank covariance; fewer is an error.
"""

from __future__ import annotations

import json
import os
import time
import zipfile

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from ntm_jax import data, latents
from ntm_jax.data import dequantization, text_features
from ntm_jax.evaluation import frechet, inception, inception_weights
from ntm_jax.parallel import checkpoint
from ntm_jax.parallel import mesh as mesh_lib
from ntm_jax.sampling import images, sampler

STATS_VERSION = 1
PROGRESS_EVERY_S = 10.0


class ReferenceStatisticsError(ValueError):
  """A reference-statistics file that does not describe what the samples are compared with."""


class TooFewImagesError(ValueError):
  """Fewer images than a full-rank covariance of the features needs."""


def check_full_rank(count: int, what: str) -> None:
  if count <= inception.FEATURES:
    raise TooFewImagesError(f"{what}: {count} images give a rank-deficient covariance of the {inception.FEATURES} "
                     f"Inception features; FID needs at least {inception.FEATURES + 1} (the standard is 50,000)")


class FeatureExtractor:
  """Jitted uint8 images -> pool3 features, the batch sharded over the mesh's data axes, with progress."""

  def __init__(self, loaded: inception_weights.LoadedInception, mesh, batch_size: int, input_size: int):
    self.batch_size, self.mesh = batch_size, mesh
    graphdef, params = nnx.split(loaded.model)
    replicated = NamedSharding(mesh, PartitionSpec())
    self.params = jax.device_put(params, replicated)
    self._in_sharding = lambda shape: NamedSharding(mesh, mesh_lib.logical_to_spec(
        ("batch", None, None, None), shape, mesh))
    self._features = jax.jit(lambda p, x: nnx.merge(graphdef, p)(inception.preprocess(x, input_size)),
                             out_shardings=replicated)

  def __call__(self, batch_uint8: np.ndarray) -> np.ndarray:
    """Features [B, 2048] of one batch (padded to the batch size, so one program serves every batch)."""
    real = len(batch_uint8)
    padded = np.concatenate([batch_uint8, np.repeat(batch_uint8[-1:], self.batch_size - real, 0)])
    with mesh_lib.use(self.mesh):
      x = jax.device_put(padded, self._in_sharding(padded.shape))
      return np.asarray(self._features(self.params, x))[:real]


class ProgressLine:
  """'what: done/total images, images/s, ETA' every PROGRESS_EVERY_S seconds and at the end (process 0)."""

  def __init__(self, what: str, total: int):
    self.what, self.total, self.start, self.last = what, total, time.perf_counter(), 0.0

  def update(self, done: int) -> None:
    elapsed = time.perf_counter() - self.start
    if jax.process_index() == 0 and (elapsed - self.last >= PROGRESS_EVERY_S or done >= self.total):
      self.last = elapsed
      rate = done / max(elapsed, 1e-9)
      print(f"{self.what}: {done}/{self.total} images, {rate:.1f} images/s, "
            f"ETA {(self.total - done) / max(rate, 1e-9) / 60:.1f} min", flush=True)


# -- reference statistics --------------------------------------------------------------------------------
def reference_split(config: ml_collections.ConfigDict) -> data.DataSource:
  """The images (pixels, also for a latent model) that `config.fid` describes: data set `data.name`, split
  `fid.split`."""
  return data.load_split(config.data.name, config.fid.split, config.data.data_dir)


def uint8_batches(source: data.DataSource, count: int, batch_size: int, pixel_levels: int):
  """The first `count` images of a split in uint8 batches, K levels stretched to 0..255 as samples are."""
  for start in range(0, count, batch_size):
    levels = np.stack([np.asarray(source.source[i]["image"]) for i in range(start, min(start + batch_size, count))])
    yield images.to_uint8(dequantization.bin_centres(levels, pixel_levels, np.float64), pixel_levels)


def reference_path(config: ml_collections.ConfigDict, fingerprint: str, image_shape: tuple[int, int, int]) -> str:
  """`fid.reference` if given, else DATA_DIR/fid_stats/<data>_<split>_<H>x<W>x<C>_<weights>.npz."""
  spec = config.fid
  if spec.reference:
    return spec.reference
  directory = spec.stats_dir or os.path.join(config.data.data_dir or data.default_data_dir(), "fid_stats")
  h, w, c = image_shape
  size = f"_in{spec.input_size}" if spec.input_size != inception.INPUT_SIZE else ""
  limit = f"_first{spec.reference_images}" if spec.reference_images else ""
  return os.path.join(directory, f"{config.data.name}_{spec.split}{limit}_{h}x{w}x{c}{size}_{fingerprint}.npz")


def compute_reference_statistics(config: ml_collections.ConfigDict) -> dict:
  """--mode=fid_stats: Inception statistics of `config.fid.split`, written once to the stats directory."""
  spec = config.fid
  source = reference_split(config)
  count = min(source.num_examples, spec.reference_images) if spec.reference_images else source.num_examples
  check_full_rank(count, f"reference statistics of {config.data.name!r} split {spec.split!r}")
  loaded = inception_weights.load_inception(spec.inception_weights)
  extract = FeatureExtractor(loaded, mesh_lib.make_mesh(config.mesh.to_dict()), spec.batch_size, spec.input_size)
  progress, features, start = ProgressLine(f"Inception features of {config.data.name} {spec.split}", count), [], \
      time.perf_counter()
  for index, batch in enumerate(uint8_batches(source, count, spec.batch_size, config.data.pixel_levels)):
    features.append(extract(batch))
    progress.update(index * spec.batch_size + len(batch))
  features = np.concatenate(features)
  mu, sigma = frechet.gaussian_fit(features)
  path = reference_path(config, loaded.fingerprint, source.image_shape)
  meta = {"version": STATS_VERSION, "data": config.data.name, "split": spec.split,
          "image_shape": list(source.image_shape),
          "num_images": int(count), "input_size": int(spec.input_size), "weights": loaded.fingerprint}
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path + ".tmp.npz"  # written whole, then renamed: a stopped run leaves no half file
    np.savez(temporary, mu=mu, sigma=sigma, features=features.astype(np.float32), meta=json.dumps(meta))
    os.replace(temporary, path)
  return {"path": path, "seconds": time.perf_counter() - start, **meta}


def load_reference_statistics(path: str, config: ml_collections.ConfigDict, fingerprint: str,
                              image_shape: tuple[int, int, int]) -> dict:
  """The statistics at `path`, refused with the reason when they describe another data set, image shape,
  Inception input or weights than `config`, the samples' `image_shape` and the loaded network."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no FID reference statistics at {path}: compute them once with "
                            f"python -m ntm_jax.main --config=<this config> --mode=fid_stats")
  try:
    with np.load(path) as stored:
      meta = json.loads(str(stored["meta"]))
      statistics = {"mu": stored["mu"], "sigma": stored["sigma"], "features": stored["features"], **meta}
  except (KeyError, ValueError, OSError, zipfile.BadZipFile) as error:
    raise ReferenceStatisticsError(f"{path} is not an FID reference-statistics file ({error})") from error
  expected = {"data": config.data.name, "image_shape": list(image_shape), "input_size": config.fid.input_size,
              "weights": fingerprint}
  for key, want in expected.items():
    if statistics.get(key) != want:
      raise ReferenceStatisticsError(
          f"{path} holds statistics for {key} = {statistics.get(key)!r}, but this run has {key} = {want!r}: "
          "they are of another data set, resolution or Inception network; compute this one's with --mode=fid_stats")
  return statistics


# -- samples ---------------------------------------------------------------------------------------------
def _conditions(config, model_cfg, source: data.DataSource, count: int):
  """A function sample indices -> their condition, for `count` samples: classes cycled evenly, or the captions
  of the reference split (cycled), encoded a batch at a time."""
  if model_cfg.condition_kind != "text":
    labels = sampler.parse_labels(config.sample.labels, count, model_cfg.num_classes)
    return lambda rows: None if labels is None else labels[rows]
  captions = [text_features.caption_text(source.source[i]["caption"]) for i in range(min(count, source.num_examples))]

  def condition(rows):
    encoded = text_features.encode_prompts([captions[i % len(captions)] for i in rows], config.text.max_tokens)
    return {k: jax.numpy.asarray(v) for k, v in encoded.items()}
  return condition


def fid_of_checkpoint(config: ml_collections.ConfigDict, workdir: str, which: str = "best") -> dict:
  """--mode=fid: FID, precision and recall of `config.fid.num_samples` samples of a checkpoint against the
  reference statistics; the sampler's settings are recorded beside them in WORKDIR/fid/*.json."""
  spec, count, batch = config.fid, config.fid.num_samples, config.fid.batch_size
  check_full_rank(count, "fid.num_samples")
  loaded = inception_weights.load_inception(spec.inception_weights)
  source = reference_split(config)
  # The samples' pixel shape: the data set's (a latent model's decoder gives back the data set's images).
  image_shape = source.image_shape
  stats_path = reference_path(config, loaded.fingerprint, image_shape)
  reference = load_reference_statistics(stats_path, config, loaded.fingerprint, image_shape)
  space = latents.space_of(config)
  mesh = mesh_lib.make_mesh(config.mesh.to_dict())
  extract = FeatureExtractor(loaded, mesh, batch, spec.input_size)
  graphdef, params, step, model_cfg = checkpoint.restore_params(config, workdir, which, mesh)
  options = sampler.sample_options(config.sample)
  denoiser = sampler.denoiser_to_use(config, workdir, model_cfg, mesh)
  sample_fn = sampler.make_sample_fn(graphdef, batch, options, out_sharding=NamedSharding(mesh, PartitionSpec()),
                                     denoiser_graphdef=denoiser[0] if denoiser else None)
  condition_of = _conditions(config, model_cfg, source, count)
  seed_key = jax.random.key(config.sample.seed)
  progress, features, start = ProgressLine(f"FID samples of step {step}", count), [], time.perf_counter()
  for index, first in enumerate(range(0, count, batch)):
    condition = condition_of(np.arange(first, first + batch) % count)  # the last batch wraps around
    with mesh_lib.use(mesh):
      samples = sample_fn(params, jax.random.fold_in(seed_key, index), condition, denoiser[1] if denoiser else None)
    uint8 = images.to_uint8(space.to_pixels(samples), space.pixel_levels)[: min(batch, count - first)]
    if uint8.shape[1:] != tuple(image_shape):
      raise ReferenceStatisticsError(f"the samples are {uint8.shape[1:]} images, the reference statistics "
                                     f"describe {tuple(image_shape)} images of {config.data.name!r}")
    features.append(extract(uint8))
    progress.update(first + len(uint8))
  features = np.concatenate(features)
  mu, sigma = frechet.gaussian_fit(features)
  precision, recall = frechet.precision_recall(reference["features"], features, spec.nearest_k)
  num_steps = config.sample.num_steps or model_cfg.num_steps
  results = {
      "fid": frechet.frechet_distance_of_fits(mu, sigma, reference["mu"], reference["sigma"]),
      "precision": precision, "recall": recall, "nearest_k": int(spec.nearest_k), "num_samples": int(count),
      "step": step, "checkpoint": which, "kind": model_cfg.kind, "num_steps_T": num_steps,
      "guidance_scale": float(config.sample.guidance_scale), "temperature": float(config.sample.temperature),
      "seed": int(config.sample.seed), "inversion": config.sample.inversion, "denoise": bool(config.sample.denoise),
      "sampler_options": {k: str(v) for k, v in options.items()},
      "distilled_denoiser_step": denoiser[2] if denoiser else None,
      "reference": stats_path, "reference_split": reference["split"],
      "reference_images": reference["num_images"], "inception_weights": loaded.fingerprint,
      "input_size": int(spec.input_size), "seconds": time.perf_counter() - start}
  stem = os.path.join(workdir, "fid", f"fid_{step}_T{num_steps}_w{config.sample.guidance_scale:g}"
                      f"_seed{config.sample.seed}_n{count}" + ("_distilled" if denoiser else ""))
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    with open(stem + ".json", "w") as f:
      json.dump(results, f, indent=2)
  results["json"] = stem + ".json"
  return results
