"""Trajectory maths: the forward Markov chain, its closed forms, and the exact trajectory NLL
(NTM.md C.1, C.3, C.5, C.11, D.2).

t = 0 is data and t = 1 is noise; marginals x_t = (1 - t) x_0 + t eps. The unique Gaussian Markov chain
with these marginals and x_0-free transitions is q(x_t | x_s) = N(r x_s, v I) with
r = (1 - t) / (1 - s) and v = t^2 - r^2 s^2. All functions broadcast over their time arguments.

A trajectory is indexed by level k = 0..T (0 = data, T = noise) on the grid t_0 = 0 < ... < t_T = 1.

The model's side: with the Markov map Phi: X -> (x_1, z_T, ..., z_1), z_k = (f_T(x_{k-1}) - mu_k) / sigma_k,
whose Jacobian is block lower-triangular in noise-to-data order,
  -log p(X | y) = [1/2 |x_1|^2 + D/2 log 2 pi]                                 prior (x-space, D5)
                + sum_k [1/2 |z_k|^2 + D/2 log 2 pi]                          gaussian
                + sum_k sum_i log sigma_{k,i}                                  log_sigma_p
                - sum_k log|det df_T/dx (x_{k-1})|                             transporter_logdet
All parts are per example, in nats, in at least float32 (`trajectory_nll_parts`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def time_grid(num_steps: int, shift: float = 1.0, dtype=jnp.float32) -> jax.Array:
  """t_k = kappa u / (1 + (kappa - 1) u) with u = k / T, k = 0..T; t_0 = 0 and t_T = 1 exactly."""
  if num_steps < 1:
    raise ValueError(f"the number of steps T must be >= 1, got {num_steps}")
  return grid_time(jnp.arange(num_steps + 1, dtype=dtype), num_steps, shift)


def grid_time(k, num_steps, shift: float = 1.0):
  """t_k of the grid with T = `num_steps`, elementwise: k and T may be arrays (one grid per example)."""
  u = k / num_steps
  return shift * u / (1.0 + (shift - 1.0) * u)


def transition(t, s):
  """(r, v) of q(x_t | x_s) = N(r x_s, v I), for t > s."""
  r = (1.0 - t) / (1.0 - s)
  return r, t * t - r * r * s * s


def posterior_coefficients(t, s):
  """(c_x, c_0, sigma_post) of q(x_s | x_t, x_0) = N(c_x x_t + c_0 x_0, sigma_post^2 I), for t > s >= 0.

  At t = 1 the formulas give c_x = 0 and sigma_post = s; at s = 0 they give c_0 = 1 and sigma_post = 0.
  """
  r, v = transition(t, s)
  c_x = r * s * s / (t * t)
  c_0 = (1.0 - s) * v / (t * t)
  sigma_post = jnp.sqrt(jnp.maximum(v * s * s / (t * t), 0.0))
  return c_x, c_0, sigma_post


def sample_trajectory(key: jax.Array, x0: jax.Array, times: jax.Array) -> jax.Array:
  """Draws X ~ q(X | x_0) on the grid `times` [T + 1]: returns [B, T + 1, ...] with level 0 = x0."""
  levels = [x0]
  noise = jax.random.normal(key, (times.shape[0] - 1,) + x0.shape, x0.dtype)
  for k in range(1, times.shape[0]):
    r, v = transition(times[k], times[k - 1])
    levels.append(r * levels[-1] + jnp.sqrt(v) * noise[k - 1])
  return jnp.stack(levels, axis=1)


def log_q_trajectory(trajectory: jax.Array, times: jax.Array) -> jax.Array:
  """log q(x_{t_1..t_T} | x_0) of trajectories [B, T + 1, ...], summed per example (exact Gaussians)."""
  batch = trajectory.shape[0]
  total = jnp.zeros((batch,), jnp.promote_types(trajectory.dtype, jnp.float32))
  for k in range(1, times.shape[0]):
    r, v = transition(times[k], times[k - 1])
    residual = (trajectory[:, k] - r * trajectory[:, k - 1]).reshape(batch, -1)
    dims = residual.shape[1]
    total += -0.5 * jnp.sum(residual * residual, axis=1) / v - 0.5 * dims * jnp.log(2 * math.pi * v)
  return total


def forward_entropy(times: jax.Array, num_dims: int) -> jax.Array:
  """H[q(x_{t_1..t_T} | x_0)] = sum_k (D / 2) log(2 pi e v_k): the exact entropy term of the ELBO (D7)."""
  _, v = transition(times[1:], times[:-1])
  return 0.5 * num_dims * jnp.sum(jnp.log(2 * math.pi * math.e * v))


def markov_covariance(times: jax.Array) -> jax.Array:
  """S_jk = Cov(x_{t_j}, x_{t_k} | x_0) = t_<^2 (1 - t_>) / (1 - t_<) for grid levels (C.11); S = t^2 on the diagonal."""
  t_lo = jnp.minimum(times[:, None], times[None, :])
  t_hi = jnp.maximum(times[:, None], times[None, :])
  # (1 - t_hi) / (1 - t_lo) is 1 on the diagonal, including t = 1 where it would read 0 / 0.
  same = t_hi == t_lo
  decay = jnp.where(same, 1.0, (1.0 - t_hi) / jnp.where(same, 1.0, 1.0 - t_lo))
  return t_lo * t_lo * decay


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
  batch, num_steps = z.shape[:2]
  flat_z = z.reshape(batch, num_steps, -1)
  gaussian_BxT = 0.5 * jnp.sum(flat_z * flat_z, axis=2) + flat_z.shape[2] * _HALF_LOG_2PI
  log_sigma_BxT = jnp.sum(jnp.log(sigma_BxTx_).reshape(batch, num_steps, -1), axis=2)
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
