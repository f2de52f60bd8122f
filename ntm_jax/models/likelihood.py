"""The exact trajectory log-likelihood of NTM, assembled from its parts (NTM.md C.5).

With the Markov map Phi: X -> (x_1, z_T, ..., z_1), z_k = (f_T(x_{k-1}) - mu_k) / sigma_k, whose Jacobian is
block lower-triangular in noise-to-data order,
  -log p(X | y) = [1/2 |x_1|^2 + D/2 log 2 pi]                                 prior (x-space, D5)
                + sum_k [1/2 |z_k|^2 + D/2 log 2 pi]                          gaussian
                + sum_k sum_i log sigma_{k,i}                                  log_sigma_p
                - sum_k log|det df_T/dx (x_{k-1})|                             transporter_logdet
All parts are per example, in nats, in at least float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def standard_normal_nll(x_Bx_: jax.Array) -> jax.Array:
  """-log N(x; 0, I) summed over all but the batch axis."""
  flat = x_Bx_.reshape(x_Bx_.shape[0], -1)
  return 0.5 * jnp.sum(flat * flat, axis=1) + flat.shape[1] * _HALF_LOG_2PI


def trajectory_nll_parts(x_noise_Bx_: jax.Array, u_targets_BxTx_: jax.Array, mu_BxTx_: jax.Array,
                         sigma_BxTx_: jax.Array, transporter_logdet_BxT: jax.Array) -> dict[str, jax.Array]:
  """Per-example parts of -log p(X) given the transported targets and the predicted Gaussians.

  Args:
    x_noise_Bx_: the noisiest level x_{t_T} = x_1 (x-space).
    u_targets_BxTx_: f_T(x_{k-1}) for k = 1..T, in level order (index k - 1).
    mu_BxTx_, sigma_BxTx_: the predictor's Gaussian over each target, aligned with `u_targets`.
    transporter_logdet_BxT: log|det df_T/dx| at each target level.

  Returns:
    dict with the summed parts `prior`, `gaussian`, `log_sigma_p`, `transporter_logdet` and `nll` [B],
    `transition_nll` [B, T] (-log p(x_{k-1} | x_{>=k}) at index k - 1), `z` and `mu` [B, T, ...].
  """
  z = (u_targets_BxTx_ - mu_BxTx_) / sigma_BxTx_
  batch, num_levels = z.shape[:2]
  flat_z = z.reshape(batch, num_levels, -1)
  gaussian_BxT = 0.5 * jnp.sum(flat_z * flat_z, axis=2) + flat_z.shape[2] * _HALF_LOG_2PI
  log_sigma_BxT = jnp.sum(jnp.log(sigma_BxTx_).reshape(batch, num_levels, -1), axis=2)
  prior = standard_normal_nll(x_noise_Bx_)
  # -log p(x_{k-1} | x_k, ..., x_T): each one a normalised density over x_{k-1}.
  transition_nll_BxT = gaussian_BxT + log_sigma_BxT - transporter_logdet_BxT
  return {
      "prior": prior,
      "gaussian": jnp.sum(gaussian_BxT, axis=1),
      "log_sigma_p": jnp.sum(log_sigma_BxT, axis=1),
      "transporter_logdet": jnp.sum(transporter_logdet_BxT, axis=1),
      "transition_nll": transition_nll_BxT,
      "nll": prior + jnp.sum(transition_nll_BxT, axis=1),
      "z": z,
      "mu": mu_BxTx_,
  }
