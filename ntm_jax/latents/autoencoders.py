"""Loading the autoencoder whose latents a flow trains on (`config.latent.autoencoder`):
  DIR                 one trained here by configs/autoencoder.py, named by its workdir;
  sd_vae:PATH         a pretrained SD / DiT VAE in diffusers' format: the diffusion_pytorch_model.safetensors
                      file, or the directory that holds it (with diffusers' config.json beside it, read for
                      the architecture and scaling factor; without one, the SD VAE's). Nothing is downloaded.
The loaded autoencoder carries a fingerprint of what fixes its latents (the workdir, best step and latent
statistics; or the weights file's bytes and config), so a latent data set encoded by another state of it is
refused instead of read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ntm_jax.models.autoencoder import Autoencoder, AutoencoderConfig, LatentStats
from ntm_jax.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from ntm_jax.parallel import checkpoint

STATS_FILE = "latent_stats.json"
SD_VAE_PREFIX = "sd_vae:"
SAFETENSORS_FILE = "diffusion_pytorch_model.safetensors"


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

  module: Autoencoder | AutoencoderKL  # encode, decode, to_flow, from_flow
  spec: str                # what the config named
  step: int                # the training step of a run of ours; 0 for a pretrained file
  fingerprint: str         # 12 hex digits of what fixes the latents
  image_shape: tuple[int, int, int]
  latent_shape: tuple[int, int, int]
  pixel_levels: int = 256  # the levels of the images it was trained on (integers 0..K-1 -> [-1, 1])

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


def load_autoencoder(spec: str, latent_hw: tuple[int, int] | None = None) -> LoadedAutoencoder:
  """The autoencoder named by `spec` (see the module docstring). A convolutional VAE takes any image size:
  `latent_hw`, the flow's latent height and width, fixes the image shape for it."""
  if not spec:
    raise ValueError("no autoencoder named (config.latent.autoencoder is empty)")
  if spec.startswith(SD_VAE_PREFIX):
    return load_sd_vae(spec, latent_hw)
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
                           model.cfg.image_shape, model.cfg.latent_shape, int(config.data.pixel_levels))


# -- pretrained VAEs in diffusers' format -------------------------------------------------------------------
def kl_config_from_diffusers(values: dict) -> AutoencoderKLConfig:
  """Our AutoencoderKLConfig from a diffusers AutoencoderKL config.json, refusing what it does not build."""
  for key, allowed in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
    if any(block_type != allowed for block_type in values.get(key, [allowed])):
      raise ValueError(f"config.json {key} {values[key]} is not supported: only {allowed} blocks (the SD / DiT VAE)")
  for key in ("use_quant_conv", "use_post_quant_conv"):
    if values.get(key, True) is False:
      raise ValueError(f"config.json {key}=false is not supported (the SD / DiT VAE has both quant convs)")
  if values.get("act_fn", "silu") != "silu":
    raise ValueError(f"config.json act_fn {values['act_fn']!r} is not supported (only silu)")
  names = {f.name for f in dataclasses.fields(AutoencoderKLConfig)}
  kwargs = {k: v for k, v in values.items() if k in names and v is not None}
  return AutoencoderKLConfig(**kwargs)


def _diffusers_key(path: tuple) -> tuple[str, str]:
  """(diffusers state-dict key, kind) of one of our parameters' paths."""
  *module, leaf = [str(p) for p in path]
  if module[-1] == "to_out":
    module.append("0")  # diffusers' to_out is a ModuleList [Linear, Dropout]
  kind = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
  return ".".join(module) + "." + kind, leaf


# Older diffusers files name the mid-block attention's projections differently.
_DEPRECATED_ATTENTION_NAMES = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}


def _to_flax(name: str, leaf: str, tensor: np.ndarray, expected: tuple[int, ...]) -> np.ndarray:
  if leaf == "kernel" and len(expected) == 4:       # conv: torch [out, in, kh, kw] -> [kh, kw, in, out]
    tensor = tensor.transpose(2, 3, 1, 0) if tensor.ndim == 4 else tensor
  elif leaf == "kernel":                            # dense: torch [out, in] (or a 1x1 conv) -> [in, out]
    tensor = tensor.reshape(tensor.shape[0], -1).T if tensor.ndim in (2, 4) else tensor
  if tuple(tensor.shape) != tuple(expected):
    raise ValueError(f"tensor {name!r} has shape {tuple(tensor.shape)} in the file, but this architecture "
                     f"needs {tuple(expected)} (after transposing to Flax's layout): the file is of another "
                     "architecture (check config.json beside it)")
  return tensor


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file  # noqa: PLC0415  (only for pretrained VAEs)
  try:
    return load_file(path)
  except Exception as error:  # safetensors raises its own error type for a damaged header or body
    raise checkpoint.IncompatibleCheckpointError(
        f"{path} is not a readable safetensors file ({type(error).__name__}: {str(error)[:200]})") from error


def load_kl_weights(model: AutoencoderKL, tensors: dict[str, np.ndarray], path: str) -> AutoencoderKL:
  """`model` with every parameter taken from diffusers-named `tensors`; a missing, misshapen or unused
  tensor is an error that names it."""
  graphdef, params = nnx.split(model, nnx.Param)
  flat = nnx.to_flat_state(params)
  used, values = set(), []
  for path, variable in flat:
    name, leaf = _diffusers_key(path)
    if name not in tensors:
      old = name
      for new_name, deprecated in _DEPRECATED_ATTENTION_NAMES.items():
        old = old.replace(new_name, deprecated)
      if old not in tensors:
        raise ValueError(f"{path} has no tensor {name!r} (the VAE's architecture needs it): the file is "
                         "incomplete or of another architecture")
      name = old
    used.add(name)
    values.append(jnp.asarray(_to_flax(name, leaf, np.asarray(tensors[name], np.float32), variable.shape)))
  unused = sorted(set(tensors) - used)
  if unused:
    raise ValueError(f"{path} holds {len(unused)} tensor(s) this architecture does not use, e.g. {unused[:3]}: "
                     "it is of another architecture (check config.json beside it)")
  for (_, variable), value in zip(flat, values):
    variable[...] = value
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def load_sd_vae(spec: str, latent_hw: tuple[int, int] | None) -> LoadedAutoencoder:
  path = spec[len(SD_VAE_PREFIX):]
  if os.path.isdir(path):
    path = os.path.join(path, SAFETENSORS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no VAE weights at {path} (latent.autoencoder={spec!r}; give the diffusers "
                            f"{SAFETENSORS_FILE} file or its directory; nothing is downloaded)")
  config_path = os.path.join(os.path.dirname(path), "config.json")
  values = {}
  if os.path.isfile(config_path):
    with open(config_path) as f:
      values = json.load(f)
  cfg = kl_config_from_diffusers(values)
  model = load_kl_weights(AutoencoderKL(cfg, rngs=nnx.Rngs(0)), read_safetensors(path), path)
  digest = hashlib.sha256(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 24), b""):
      digest.update(chunk)
  h, w = latent_hw or (32, 32)
  return LoadedAutoencoder(model, spec, 0, digest.hexdigest()[:12],
                           (h * cfg.downsample, w * cfg.downsample, cfg.out_channels), (h, w, cfg.latent_channels))
