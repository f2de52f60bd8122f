"""STARFlow's Gaussian guidance (NTM.md A.8, C.10; test T11)."""

import jax
import jax.numpy as jnp
import numpy as np

from ntm_jax.models.guidance import gaussian_guidance


def _random_gaussians(seed, shape=(1000,)):
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  return (jax.random.normal(k1, shape), jnp.exp(0.5 * jax.random.normal(k2, shape)),
          jax.random.normal(k3, shape), jnp.exp(0.5 * jax.random.normal(k4, shape)))


def test_scale_zero_is_the_identity():
  mu_c, sigma_c, mu_u, sigma_u = _random_gaussians(0)
  mu, sigma = gaussian_guidance(mu_c, sigma_c, mu_u, sigma_u, 0.0)
  np.testing.assert_array_equal(mu, mu_c)
  np.testing.assert_array_equal(sigma, sigma_c)


def test_guidance_only_sharpens_and_clips_the_variance_ratio():
  mu_c, sigma_c, mu_u, sigma_u = _random_gaussians(1)
  for scale in (0.5, 1.0, 3.0):
    mu, sigma = gaussian_guidance(mu_c, sigma_c, mu_u, sigma_u, scale)
    assert bool(jnp.all(sigma <= sigma_c)) and bool(jnp.all(jnp.isfinite(mu)))
    wider = sigma_c >= sigma_u  # ratio clipped at 1: sigma unchanged, mean extrapolated
    np.testing.assert_allclose(sigma[wider], sigma_c[wider], rtol=1e-6)
    np.testing.assert_allclose(mu[wider], ((1 + scale) * mu_c - scale * mu_u)[wider], rtol=1e-5, atol=1e-6)


def test_matches_numerically_normalised_product_density(x64):
  """For sigma_c < sigma_u, p_c^(1 + w) p_u^(-w) renormalised on a grid has the formula's mean and std."""
  mu_c, sigma_c, mu_u, sigma_u, w = 0.4, 0.5, -0.3, 0.9, 2.0
  x = jnp.linspace(-10, 10, 200_001)
  log_density = (1 + w) * (-0.5 * ((x - mu_c) / sigma_c) ** 2) - w * (-0.5 * ((x - mu_u) / sigma_u) ** 2)
  density = jnp.exp(log_density - log_density.max())
  density = density / density.sum()
  mean = float(jnp.sum(density * x))
  std = float(jnp.sqrt(jnp.sum(density * (x - mean) ** 2)))
  mu, sigma = gaussian_guidance(jnp.float64(mu_c), jnp.float64(sigma_c), jnp.float64(mu_u),
                                jnp.float64(sigma_u), w)
  np.testing.assert_allclose([float(mu), float(sigma)], [mean, std], atol=1e-6)
