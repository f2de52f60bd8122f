"""A jitted sampler over EMA parameters: images in [-1, 1] from an NTM (D6) or the TarFlow baseline.

NTM: x_1 ~ N(0, I), u_T = f_T(x_1) in one pass, T predictor steps in u-space decoded level by level
from a KV cache over levels (optionally with Gaussian guidance), then one KV-cached inversion of f_T.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.models import patches
from ntm_jax.models.config import ModelConfig


def make_sample_fn(graphdef, cfg: ModelConfig, num_samples: int, *, temperature: float = 1.0,
                   num_steps: int | None = None, guidance_scale: float = 0.0):
  """A jitted fn(params, key, labels or None) -> images [num_samples, H, W, C] in model space."""

  def sample(params, key, labels):
    model = nnx.merge(graphdef, params)
    if cfg.kind == "tarflow":
      tokens = model.sample(key, num_samples, labels, temperature=temperature)
    else:
      tokens = model.sample_trajectory(key, num_samples, labels, num_steps=num_steps, temperature=temperature,
                                       guidance_scale=guidance_scale)["x0"]
    return jnp.clip(patches.unpatchify(tokens, cfg.image), -1.0, 1.0)

  return jax.jit(sample)


def grid_labels(num_samples: int, num_classes: int):
  """Labels 0, 1, ..., num_classes - 1, 0, 1, ... for a class-conditional grid (None if unconditional)."""
  return jnp.arange(num_samples) % num_classes if num_classes else None
