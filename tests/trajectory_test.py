"""The forward Markov chain and its closed forms (NTM.md C.1, C.3, C.11, D.2)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ntm_jax.models import trajectory


def test_time_grid_ends_exactly_at_data_and_noise():
  for shift in (1.0, 3.0):
    grid = np.asarray(trajectory.time_grid(4, shift))
    assert grid[0] == 0.0 and grid[-1] == 1.0
    assert np.all(np.diff(grid) > 0)
  np.testing.assert_allclose(trajectory.time_grid(4), [0, 0.25, 0.5, 0.75, 1.0])
  assert float(trajectory.time_grid(4, 3.0)[1]) > 0.25  # the shift spends more steps near the noise end
  with pytest.raises(ValueError, match="T must be >= 1"):
    trajectory.time_grid(0)


@pytest.mark.parametrize("t,s", [(0.75, 0.5), (1.0, 0.75), (0.5, 0.0), (1.0, 0.0), (0.3, 0.1)])
def test_posterior_coefficients_match_gaussian_conditioning(x64, t, s):
  """q(x_s | x_t, x_0) from the joint Gaussian of (x_s, x_t) given x_0, independently of C.3's algebra."""
  cov_st = (1 - t) / (1 - s) * s * s  # x_t = r x_s + noise and Var(x_s | x_0) = s^2
  slope = cov_st / (t * t)
  c_x, c_0, sigma_post = trajectory.posterior_coefficients(jnp.float64(t), jnp.float64(s))
  np.testing.assert_allclose(c_x, slope, atol=1e-14)
  np.testing.assert_allclose(c_0, (1 - s) - slope * (1 - t), atol=1e-14)
  np.testing.assert_allclose(sigma_post, math.sqrt(max(s * s - slope * cov_st, 0.0)), atol=1e-12)


def test_chain_has_the_right_marginals_and_markov_covariance(x64):
  times = trajectory.time_grid(4, 2.0, jnp.float64)
  x0 = jnp.full((200_000, 1), 0.7)
  paths = np.asarray(trajectory.sample_trajectory(jax.random.key(0), x0, times))[..., 0]  # [B, T + 1]
  np.testing.assert_allclose(paths.mean(0), (1 - np.asarray(times)) * 0.7, atol=0.01)
  np.testing.assert_allclose(np.cov(paths.T), trajectory.markov_covariance(times), atol=0.01)
  np.testing.assert_array_equal(paths[:, 0], 0.7)


def test_log_q_and_forward_entropy_are_exact(x64):
  times = trajectory.time_grid(3, dtype=jnp.float64)
  x0 = jax.random.normal(jax.random.key(1), (4000, 5))
  paths = trajectory.sample_trajectory(jax.random.key(2), x0, times)
  log_q = trajectory.log_q_trajectory(paths, times)
  expected = np.zeros(4000)
  for k in range(1, 4):
    r, v = trajectory.transition(times[k], times[k - 1])
    expected += stats.norm.logpdf(paths[:, k], r * paths[:, k - 1], math.sqrt(v)).sum(axis=1)
  np.testing.assert_allclose(log_q, expected, rtol=1e-10)
  entropy = float(trajectory.forward_entropy(times, 5))
  monte_carlo = -float(jnp.mean(log_q))
  assert abs(entropy - monte_carlo) < 4 * float(jnp.std(log_q)) / math.sqrt(4000)
