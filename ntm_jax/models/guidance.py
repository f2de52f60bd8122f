"""Classifier-free guidance on Gaussian predictions (STARFlow's formula; NTM.md A.8, C.10).

The guided density is proportional to p_c^(1 + w) p_u^(-w) for per-dimension Gaussians
p_c = N(mu_c, sigma_c^2) and p_u = N(mu_u, sigma_u^2). With ratio = min(sigma_c^2 / sigma_u^2, 1):
  sigma = sigma_c / sqrt(1 + w - w ratio),   mu = ((1 + w) mu_c - w ratio mu_u) / (1 + w - w ratio).
Clipping the ratio at 1 keeps the variance positive and never wider than sigma_c. w = 0 is the identity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gaussian_guidance(mu_cond, sigma_cond, mu_uncond, sigma_uncond, scale) -> tuple[jax.Array, jax.Array]:
  """Returns the guided (mu, sigma) for guidance scale `scale` = w >= 0."""
  ratio = jnp.minimum(jnp.square(sigma_cond / sigma_uncond), 1.0)
  precision_gain = 1.0 + scale - scale * ratio
  mu = ((1.0 + scale) * mu_cond - scale * ratio * mu_uncond) / precision_gain
  return mu, sigma_cond / jnp.sqrt(precision_gain)
