"""A small Python API for notebooks and other programs: load a trained run, sample, score images exactly.

  import ntm_jax
  model = ntm_jax.load("workdirs/digits")            # a workdir: its best checkpoint (or checkpoint="latest")
  images = model.sample(16, seed=0)                  # uint8 [16, H, W, C] in 0..255, 4 steps by default
  bpd = model.bits_per_dim(images)                   # float64 [16]: the held-out bound of D7, per image
  x = model.forward_trajectory(images, seed=0)       # X ~ q(X | x_0): [16, T + 1, H, W, C], level 0 = data
  log_p = model.trajectory_log_prob(x)               # float64 [16]: the exact log p(X) in nats

Images are uint8 in 0..255 both ways. A data set with K < 256 levels (digits: 17) is shown stretched to
0..255 and read back to the nearest of its K levels; `levels=True` passes integer levels 0..K-1 as stored
in the data set instead. Conditional models take `labels` (class models) or `prompts` (text models).
A latent model (trained on an autoencoder's latents, ntm_jax.latents) takes and gives images too: they are
encoded on the way in and decoded on the way out; its likelihoods are `nats_per_latent_dim` (pixel bits/dim
are refused, D7), and its trajectories live in latent space.
Everything runs jitted on the default devices; programs are cached per batch shape. Every model answers
through the same interface (ntm_jax.models.generative), so nothing here depends on which model a run holds.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ntm_jax import latents, models
from ntm_jax.data import dequantization, text_features
from ntm_jax.evaluation import bits_per_dim
from ntm_jax.models import patches
from ntm_jax.parallel import checkpoint as run_checkpoint
from ntm_jax.sampling import images
from ntm_jax.sampling import sampler as sampling


def load(path: str, checkpoint: str = "best") -> "Model":
  """The EMA parameters of a run: `path` is its workdir, or its `best` / `checkpoints` directory inside it."""
  path = os.path.abspath(path)
  name = os.path.basename(path)
  if not os.path.isfile(os.path.join(path, "config.json")) and name in ("best", "checkpoints"):
    path, checkpoint = os.path.dirname(path), ("best" if name == "best" else "latest")
  config = run_checkpoint.read_run_config(path)
  graphdef, params, step, model_cfg = run_checkpoint.restore_params(config, path, checkpoint)
  return Model(config, graphdef, params, step, model_cfg, path)


class Model:
  """A trained NTM (or baseline) with numpy-in, numpy-out sampling and likelihoods."""

  def __init__(self, config, graphdef, params, step, model_cfg, workdir):
    self.config, self.graphdef, self.params = config, graphdef, params
    self.step, self.model_cfg, self.workdir = step, model_cfg, workdir
    self.space = latents.space_of(config)  # pixels, or the latents of the run's autoencoder
    self.is_latent = isinstance(self.space, latents.LatentSpace)
    self.pixel_levels = self.space.pixel_levels
    self.kind = model_cfg.kind  # what the run holds ("ntm", "tarflow", "flow_matching"), for display
    self.condition_kind = model_cfg.condition_kind
    image = model_cfg.image
    self.model_shape = (image.height, image.width, image.channels)  # what the flow models: pixels or latents
    self.image_shape = self.space.autoencoder.image_shape if self.is_latent else self.model_shape
    # (graphdef, params, step) of the run's distilled denoiser (--mode=distill), or None.
    self.denoiser = (sampling.restore_denoiser(config, workdir, model_cfg) if sampling.takes_denoiser(model_cfg)
                     else None)

  def __repr__(self):
    latent = f", latents {self.model_shape}" if self.is_latent else ""
    return (f"ntm_jax.Model({self.kind}, {self.condition_kind} condition, images {self.image_shape}{latent}, "
            f"T = {self.model_cfg.num_steps}, step {self.step}, {self.workdir})")

  # -- sampling ------------------------------------------------------------------------------------------
  def sample(self, n: int, labels=None, prompts: Sequence[str] | None = None, steps: int | None = None,
             guidance: float = 0.0, seed: int = 0, temperature: float = 1.0, denoise: bool = False,
             sampler: str = "", inversion: str = "sequential", use_denoiser: bool = True) -> np.ndarray:
    """`n` images as uint8 [n, H, W, C]: `steps` trajectory steps (default the model's T), Gaussian guidance
    of scale `guidance` for conditional models, `denoise` for trajectory-score denoising of x_0 (C.11),
    `sampler` ("euler" or "ancestral") for flow matching, and f_T inverted token by token or by Jacobi
    iterations (`inversion`), unless the run has a distilled denoiser and `use_denoiser` (then it replaces the
    inversion); an option the model lacks is refused by name."""
    condition = self._condition(n, labels, prompts)
    options = sampling.sample_options({}, num_steps=steps or 0, guidance_scale=float(guidance),
                                     temperature=float(temperature), denoise=bool(denoise), sampler=sampler,
                                     inversion=inversion)
    denoiser = self.denoiser if use_denoiser and not denoise else None
    fn = self._sample_fn(n, tuple(sorted(options.items())), denoiser is not None)
    model_space = fn(self.params, jax.random.key(seed), condition, denoiser[1] if denoiser else None)
    return images.to_uint8(self.space.to_pixels(model_space), self.pixel_levels)

  @functools.lru_cache(maxsize=16)
  def _sample_fn(self, n, options, with_denoiser: bool):
    return sampling.make_sample_fn(self.graphdef, n, dict(options),
                                   denoiser_graphdef=self.denoiser[0] if with_denoiser else None)

  # -- likelihoods ---------------------------------------------------------------------------------------
  def bits_per_dim(self, images_uint8, labels=None, prompts: Sequence[str] | None = None,
                   importance_samples: int = 16, seed: int = 0, levels: bool = False,
                   bound: str = "iw") -> np.ndarray:
    """Bits/dim per image (float64 [B]): the importance-weighted bound with M = `importance_samples`
    (`bound="iw"`) or the single-draw ELBO (`"elbo"`), one dequantisation draw per image (D7). Pixel models
    only: a latent model refuses (see `nats_per_latent_dim`)."""
    self.space.check_metric(f"bpd_{bound}")
    return self._per_dim(images_uint8, labels, prompts, importance_samples, seed, levels, bound)

  def nats_per_latent_dim(self, images_uint8, labels=None, prompts: Sequence[str] | None = None,
                          importance_samples: int = 16, seed: int = 0, bound: str = "iw") -> np.ndarray:
    """A latent model's lower bound on log p(z | y) of each image's noise-augmented latent, in nats per latent
    dimension (float64 [B]); not comparable to pixel bits/dim."""
    if not self.is_latent:
      raise ValueError("nats_per_latent_dim is for latent models; this model is in pixel space (bits_per_dim)")
    return self._per_dim(images_uint8, labels, prompts, importance_samples, seed, False, bound)

  def _per_dim(self, images_uint8, labels, prompts, importance_samples, seed, levels, bound) -> np.ndarray:
    if bound not in ("iw", "elbo"):
      raise ValueError(f"bound must be 'iw' or 'elbo', got {bound!r}")
    stored = self._stored(images_uint8, levels)
    condition = self._condition(stored.shape[0], labels, prompts)
    fn = self._bound_fn(int(importance_samples))
    nats = np.asarray(fn(self.params, stored, condition, jax.random.key(seed))[bound], np.float64)
    return self.space.per_dim(-nats, int(np.prod(self.model_shape)))

  @functools.lru_cache(maxsize=8)
  def _bound_fn(self, importance_samples):
    return bits_per_dim.make_bound_fn(self.graphdef, self.space, importance_samples)

  def forward_trajectory(self, images_uint8, seed: int = 0, steps: int | None = None,
                         levels: bool = False) -> np.ndarray:
    """X ~ q(X | x_0) of the forward chain for dequantised images (a latent model: their noise-augmented
    latents): float32 [B, T + 1, h, w, c], model space."""
    stored = self._stored(images_uint8, levels)
    dequant_key, chain_key = jax.random.split(jax.random.key(seed))
    x0 = self.space.to_model(stored, dequant_key)
    return np.asarray(nnx.merge(self.graphdef, self.params).forward_trajectory(chain_key, x0, steps))

  def trajectory_log_prob(self, trajectory_x, labels=None, prompts: Sequence[str] | None = None) -> np.ndarray:
    """The exact log p(X | y) in nats (float64 [B]) of x-space trajectories [B, T + 1, H, W, C] on the
    model's grid with T = the trajectory's (level 0 = data, level T = noise).

    Computed in the trajectory's precision: a float64 trajectory is scored by the model in float64 (its
    parameters cast up, under jax's x64 mode); any other floating-point trajectory in float32.
    """
    x = np.asarray(trajectory_x)
    if x.ndim != 5 or tuple(x.shape[2:]) != self.model_shape:
      raise ValueError(f"a trajectory must have shape [batch, T + 1, {', '.join(map(str, self.model_shape))}], "
                       f"got {tuple(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f"a trajectory must be floating point (model space), got {x.dtype}")
    condition = self._condition(x.shape[0], labels, prompts)
    double = x.dtype == np.float64
    x = x if double else x.astype(np.float32)
    with jax.enable_x64(double):
      fn, params = self._log_prob_fn(x.shape[1] - 1, double)
      return np.asarray(fn(params, jnp.asarray(x), condition), np.float64)

  @functools.lru_cache(maxsize=8)
  def _log_prob_fn(self, num_steps, double: bool):
    """(jitted fn(params, x, condition) -> log p(X), the parameters it takes), in float64 if `double`."""
    graphdef, params, cfg = self.graphdef, self.params, self.model_cfg
    if double:
      cfg = dataclasses.replace(cfg, dtype=jnp.float64, param_dtype=jnp.float64)
      graphdef = models.abstract_model(cfg)[0]
      params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), params)

    def log_prob(params, x, condition):
      model = nnx.merge(graphdef, params)
      tokens = patches.patchify(x, cfg.image.patch_size)
      return -model.trajectory_log_prob(tokens, model.time_grid(num_steps, tokens.dtype), condition)["nll"]

    return jax.jit(log_prob), params

  # -- inputs --------------------------------------------------------------------------------------------
  def _stored(self, images_uint8, levels: bool) -> jax.Array:
    """What the data set would store for these images: integer levels, or a latent model's latents."""
    images_int = self._to_levels(images_uint8, levels)
    if not self.is_latent:
      return jnp.asarray(images_int)
    return self._encode(dequantization.bin_centres(jnp.asarray(images_int), self.pixel_levels))

  @functools.cached_property
  def _encode(self):
    return self.space.autoencoder.encode_fn()

  def _to_levels(self, images_uint8, levels: bool) -> np.ndarray:
    """Integer levels 0..K-1 [B, H, W, C] from uint8 images (stretched to 0..255, or levels if `levels`)."""
    array = np.asarray(images_uint8)
    if array.ndim == 3 and self.image_shape[-1] == 1 and tuple(array.shape[1:]) == self.image_shape[:2]:
      array = array[..., None]  # [B, H, W] for a one-channel model
    if array.ndim != 4 or tuple(array.shape[1:]) != self.image_shape:
      raise ValueError(f"images must have shape [batch, {', '.join(map(str, self.image_shape))}], got "
                       f"{tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.integer):
      raise ValueError(f"images must be integers (uint8 in 0..255, or levels with levels=True), got {array.dtype}")
    top = self.pixel_levels - 1 if levels else 255
    if array.min() < 0 or array.max() > top:
      raise ValueError(f"image values must lie in 0..{top}, got {array.min()}..{array.max()}")
    if levels:
      return array.astype(np.int32)
    return np.round(array.astype(np.float64) * (self.pixel_levels - 1) / 255.0).astype(np.int32)

  def _condition(self, n: int, labels, prompts):
    if self.condition_kind == "none":
      if labels is not None or prompts is not None:
        raise ValueError("the model is unconditional: pass neither labels nor prompts")
      return None
    if self.condition_kind == "label":
      if prompts is not None:
        raise ValueError("the model is class-conditional: pass labels, not prompts")
      if labels is None:
        raise ValueError("the model is class-conditional: pass labels (an int or one per image; -1 = none)")
      labels = np.broadcast_to(np.asarray(labels, np.int32), (n,))
      return jnp.asarray(labels)
    if labels is not None:
      raise ValueError("the model is text-conditional: pass prompts, not labels")
    if prompts is None:
      raise ValueError("the model is text-conditional: pass prompts (one, or one per image)")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    prompts = [prompts[i % len(prompts)] for i in range(n)]
    encoded = text_features.encode_prompts(prompts, int(self.config.text.max_tokens))
    return {key: jnp.asarray(value) for key, value in encoded.items()}
