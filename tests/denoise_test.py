"""Trajectory score denoising (C.11): exact on Gaussian data, and it never looks at the data level."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from ntm_jax.models import denoising, trajectory
from tests import helpers


def test_tweedie_gives_the_exact_posterior_mean_on_gaussian_data(x64):
  """x_0 ~ N(m, v0) per dimension: every noisy level's estimate equals E[x_0 | x_{t_1..t_T}]."""
  mean0, var0, dims = 0.3, 0.5, 6
  times = trajectory.time_grid(4, shift=0.5, dtype=jnp.float64)
  alpha = 1.0 - times[1:]
  cov = var0 * jnp.outer(alpha, alpha) + trajectory.markov_covariance(times[1:])  # noisy levels, [T, T]
  x0 = mean0 + math.sqrt(var0) * jax.random.normal(jax.random.key(0), (3, dims), jnp.float64)
  x = trajectory.sample_trajectory(jax.random.key(1), x0, times)[:, 1:]  # [B, T, dims]

  def log_prob(x_noisy):
    resid = jnp.moveaxis(x_noisy, 1, 2) - (alpha * mean0)[None, None, :]  # [B, dims, T]
    quad = jnp.einsum("bdk,kl,bdl->b", resid, jnp.linalg.inv(cov), resid)
    return -0.5 * quad - 0.5 * dims * (jnp.linalg.slogdet(cov)[1] + 4 * math.log(2 * math.pi))

  estimates = denoising.tweedie_x0(log_prob, x, times[1:])  # [B, 3 interior levels, dims]
  assert estimates.shape == (3, 3, dims)
  gain = var0 * jnp.linalg.solve(cov, alpha)  # E[x0 | X] = m + v0 alpha^T cov^-1 (X - alpha m)
  exact = mean0 + jnp.einsum("k,bdk->bd", gain, jnp.moveaxis(x, 1, 2) - (alpha * mean0)[None, None, :])
  for level in range(3):
    np.testing.assert_allclose(estimates[:, level], exact, atol=1e-10, rtol=0)
  assert float(jnp.max(jnp.abs(exact - x[:, 0] / alpha[0]))) > 1e-3  # the correction is not trivial


def test_ntm_noisy_level_density_does_not_depend_on_the_data_level(x64):
  model = helpers.tiny_model(3, num_steps=3)
  out = model.sample_trajectory(jax.random.key(0), 2, decode_all_levels=True, dtype=jnp.float64)
  times = model.time_grid(dtype=jnp.float64)
  grad = jax.grad(lambda x: jnp.sum(denoising.noisy_levels_log_prob(model, x, times)))(out["x"])
  np.testing.assert_array_equal(grad[:, 0], jnp.zeros_like(grad[:, 0]))
  assert float(jnp.max(jnp.abs(grad[:, 1:]))) > 1e-6
  estimates = denoising.denoise_trajectory(model, out["x"], times)
  assert estimates.shape == (2, 2) + out["x"].shape[2:] and bool(jnp.all(jnp.isfinite(estimates)))
