"""The space a flow's data live in: pixels or an autoencoder's latents, and all that differs between them.

                     PixelSpace (default)                      LatentSpace (config.latent.autoencoder)
  stored examples    integer images 0..K-1                     float32 unit-scale latents (--mode=encode)
  `to_model`         uniform dequantisation to [-1, 1] (D7)    + latent.noise_std * N(0, I) (STARFlow's
                                                               noise augmentation; the decoder was trained
                                                               on such latents)
  `to_pixels`        the samples themselves                    the autoencoder's decoder
  likelihoods        bits/dim (`bpd_*`, D7)                    nats per latent dimension (`nats_per_dim_*`);
                                                               pixel bits/dim are refused (D7 needs K-level
                                                               data under the flow)
Training, evaluation, sampling, the judge and the API call these and never ask which space they are in.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ntm_jax import data
from ntm_jax.data import dequantization
from ntm_jax.latents import latent_dataset
from ntm_jax.latents.autoencoders import LoadedAutoencoder, load_autoencoder

ENCODE_COMMAND = "python -m ntm_jax.main --config=<this config> --mode=encode"


def _mean_and_se(values: np.ndarray) -> tuple[float, float]:
  return float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


@dataclasses.dataclass(frozen=True)
class PixelSpace:
  """K-level images, dequantised on device."""

  pixel_levels: int
  metric_prefix = "bpd"
  unit = "bits/dim"
  decodes = False  # whether `to_pixels` runs a network

  def to_model(self, stored: jax.Array, key: jax.Array) -> jax.Array:
    return dequantization.dequantize(stored, key, self.pixel_levels)

  def load_split(self, config, split: str, model_cfg) -> data.DataSource:
    return data.load_model_split(config, split, model_cfg.image.shape, model_cfg.condition_kind)

  def to_pixels(self, samples) -> np.ndarray:
    """Model-space samples -> images in [-1, 1] (to show with `pixel_levels` levels)."""
    return np.asarray(jax.device_get(samples))

  def per_dim(self, nll_nats: np.ndarray, num_dims: int) -> np.ndarray:
    return dequantization.bits_per_dim(nll_nats, num_dims, self.pixel_levels)

  def check_metric(self, name: str) -> None:
    if not name.startswith(self.metric_prefix + "_"):
      raise ValueError(f"eval.best_metric {name!r} is not a pixel-space result; use bpd_iw or bpd_elbo")

  def likelihood_results(self, log_likelihoods: dict[str, np.ndarray], num_dims: int) -> dict[str, float]:
    """{prefix_name: mean, prefix_name_se: its standard error} of per-example lower bounds (nats)."""
    results = {}
    for name, values in log_likelihoods.items():
      results[f"{self.metric_prefix}_{name}"], results[f"{self.metric_prefix}_{name}_se"] = _mean_and_se(
          self.per_dim(-np.asarray(values, np.float64), num_dims))
    return results


@dataclasses.dataclass(frozen=True)
class LatentSpace(PixelSpace):
  """Unit-scale latents of a trained autoencoder, read from the data set `--mode=encode` wrote."""

  autoencoder: LoadedAutoencoder = None
  noise_std: float = 0.0
  directory: str = ""
  decode_batch_size: int = 256
  metric_prefix = "nats_per_dim"
  unit = "nats per latent dim"
  decodes = True

  def to_model(self, stored: jax.Array, key: jax.Array) -> jax.Array:
    latents = stored.astype(jnp.float32)
    return latents + self.noise_std * jax.random.normal(key, latents.shape, latents.dtype)

  def _require_autoencoder(self):
    if self.autoencoder is None:
      raise ValueError("this latent space was built without its autoencoder (space_of(config, load=False), for "
                       "compiling): it cannot read latents or decode them")
    return self.autoencoder

  def load_split(self, config, split: str, model_cfg) -> data.DataSource:
    self._require_autoencoder()
    latent_dataset.check_encoded(self.directory, self.autoencoder.fingerprint, ENCODE_COMMAND)
    return data.load_model_split(config, split, model_cfg.image.shape, model_cfg.condition_kind, self.directory)

  @functools.cached_property
  def _decode(self):
    return self._require_autoencoder().decode_fn()

  def to_pixels(self, samples) -> np.ndarray:
    latents = np.asarray(jax.device_get(samples), np.float32)
    step = self.decode_batch_size
    return np.concatenate([np.asarray(self._decode(latents[i:i + step])) for i in range(0, len(latents), step)])

  def per_dim(self, nll_nats: np.ndarray, num_dims: int) -> np.ndarray:
    return nll_nats / num_dims

  def check_metric(self, name: str) -> None:
    if name.startswith("bpd"):
      raise ValueError(f"{name!r} asks for pixel bits/dim of a latent model: D7's bound needs K-level pixels "
                       "under the flow, and a latent flow models continuous latents. Use nats_per_dim_iw or "
                       "nats_per_dim_elbo (nats per latent dimension), which are not comparable to pixel bits/dim")
    super().check_metric(name)


def space_of(config, load: bool = True) -> PixelSpace:
  """The space of a run's config: pixels, or the latents of `config.latent.autoencoder` (loaded here).

  With `load=False` a latent space comes without its autoencoder: enough for the train step (which only
  adds the latent noise), as ahead-of-time compilation needs, but it cannot read data or decode.
  """
  latent = config.get("latent") or {}
  spec = latent.get("autoencoder", "")
  if not spec:
    return PixelSpace(int(config.data.pixel_levels))
  noise_std = float(latent.get("noise_std", 0.0))
  if noise_std < 0:
    raise ValueError(f"latent.noise_std must be >= 0, got {noise_std}")
  if not load:
    return LatentSpace(pixel_levels=int(config.data.pixel_levels), noise_std=noise_std)
  image = config.model.image
  autoencoder = load_autoencoder(spec, (image.height, image.width))
  model_shape = (image.height, image.width, image.channels)
  if model_shape != autoencoder.latent_shape:
    raise ValueError(f"the model's image {model_shape} is not the latent shape {autoencoder.latent_shape} of the "
                     f"autoencoder in {spec}; set config.model.image to it")
  return LatentSpace(pixel_levels=autoencoder.pixel_levels, autoencoder=autoencoder, noise_std=noise_std,
                     directory=latent_dataset.directory_for(config, autoencoder.fingerprint))
