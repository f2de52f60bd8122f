"""Loading the autoencoder whose latents a flow trains on: one trained here (configs/autoencoder.py), named
by its workdir.

The loaded autoencoder carries a fingerprint of what fixes its latents (its workdir, best step and latent
statistics), so a latent data set encoded by another state of it is refused instead of read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.models.autoencoder import Autoencoder, AutoencoderConfig, LatentStats
from ntm_jax.parallel import checkpoint

STATS_FILE = "latent_stats.json"


def autoencoder_config(section) -> AutoencoderConfig:
  """The typed config of `config.autoencoder`, refusing keys it does not have."""
  values = dict(section)
  known = {f.name for f in dataclasses.fields(AutoencoderConfig)}
  unknown = sorted(set(values) - known)
  if unknown:
    raise ValueError(f"unknown config key(s) in autoencoder: {unknown}; known keys: {sorted(known)}")
  return AutoencoderConfig(**values)


@dataclasses.dataclass(frozen=True)
class LoadedAutoencoder:
  """A trained autoencoder ready to encode images to flow latents and decode them back."""

  module: Autoencoder
  spec: str                # what the config named (the autoencoder's workdir)
  step: int
  fingerprint: str         # 12 hex digits of what fixes the latents
  pixel_levels: int = 256  # the levels of the images it was trained on (integers 0..K-1 -> [-1, 1])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.module.cfg.image_shape

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    return self.module.cfg.latent_shape

  def encode_fn(self):
    """A jitted fn(images in [-1, 1]) -> unit-scale flow latents."""
    graphdef, state = nnx.split(self.module)
    fn = jax.jit(lambda s, x: (lambda m: m.to_flow(m.encode(x)))(nnx.merge(graphdef, s)))
    return lambda images: fn(state, images)

  def decode_fn(self):
    """A jitted fn(flow latents) -> images in about [-1, 1]."""
    graphdef, state = nnx.split(self.module)
    fn = jax.jit(lambda s, z: (lambda m: m.decode(m.from_flow(z)))(nnx.merge(graphdef, s)))
    return lambda latents: fn(state, latents)


def load_autoencoder(spec: str) -> LoadedAutoencoder:
  """The trained autoencoder named by `spec`: the workdir of a configs/autoencoder.py run, with its best EMA
  parameters and the latent statistics measured after its training."""
  if not spec:
    raise ValueError("no autoencoder named (config.latent.autoencoder is empty)")
  workdir = spec
  config = checkpoint.read_run_config(workdir, "an autoencoder's workdir (python -m ntm_jax.main "
                                      "--config=configs/autoencoder.py --workdir=...)")
  if config.get("trainer") != "autoencoder":
    raise ValueError(f"{workdir} holds no autoencoder run (its config.json has no trainer='autoencoder')")
  model = Autoencoder(autoencoder_config(config.autoencoder), rngs=nnx.Rngs(0))
  graphdef, params, stats = nnx.split(model, nnx.Param, LatentStats)
  best = checkpoint.BestCheckpoint(os.path.join(workdir, "best"), "mse", read_only=True)
  try:
    params, step = best.restore(jax.eval_shape(lambda: params))
  except Exception as error:  # orbax raises several types for a damaged or foreign checkpoint
    raise checkpoint.IncompatibleCheckpointError(
        f"the autoencoder checkpoint in {best.directory} does not restore into the architecture of its "
        f"config.json ({type(error).__name__}: {str(error)[:300]})") from error
  stats_path = os.path.join(best.directory, STATS_FILE)
  if params is None or not os.path.isfile(stats_path):
    raise FileNotFoundError(f"no trained autoencoder in {workdir} (a best checkpoint and best/{STATS_FILE}); "
                            "train it to the end first (--mode=train)")
  with open(stats_path) as f:
    measured = json.load(f)
  if measured["step"] != step:
    raise ValueError(f"{stats_path} holds the statistics of step {measured['step']}, but the best checkpoint is "
                     f"step {step}: finish the training run so they are measured again")
  model = nnx.merge(graphdef, params, stats)
  model.latent_mean[...] = jnp.asarray(measured["mean"], jnp.float32)
  model.latent_scale[...] = jnp.asarray(measured["scale"], jnp.float32)
  identity = json.dumps({"workdir": os.path.abspath(workdir), "step": step, "mean": measured["mean"],
                         "scale": measured["scale"]}, sort_keys=True)
  return LoadedAutoencoder(model, spec, step, hashlib.sha256(identity.encode()).hexdigest()[:12],
                           int(config.data.pixel_levels))
