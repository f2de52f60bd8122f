"""The predictor's block-causal mask, tested by gradients that must be exactly zero (NTM.md C.6, T4)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers

NUM_STEPS = 3


def _jacobians(model, seed=0):
  """d(mu, sigma) of every transition w.r.t. every conditioning level: [T_out, T_in] max-abs entries."""
  image = model.cfg.image
  u = jax.random.normal(jax.random.key(seed), (1, NUM_STEPS, image.num_tokens, image.token_dim), jnp.float64)
  times = model.time_grid(NUM_STEPS, jnp.float64)
  labels = jnp.array([1]) if model.num_classes else None

  def mu_and_log_sigma(u_levels):
    mu, sigma = model.predictor(u_levels, times, labels)
    return jnp.stack([mu, jnp.log(sigma)])  # [2, 1, T, N, c]

  jac = jax.jacrev(mu_and_log_sigma)(u)  # [2, 1, T, N, c, 1, T, N, c]
  jac = np.abs(np.asarray(jac))
  # influence[k_out, k_in]: largest |d output at transition k_out / d input level k_in| (level order).
  return np.array([[jac[:, :, k_out, :, :, :, k_in].max() for k_in in range(NUM_STEPS)]
                   for k_out in range(NUM_STEPS)])


@pytest.mark.parametrize("num_classes, x0_skip", [(0, 0.0), (4, 0.0), (0, 0.5)])
def test_block_causal_mask_gives_exactly_zero_gradient_to_cleaner_levels(x64, num_classes, x0_skip):
  model = helpers.tiny_model(0, num_steps=NUM_STEPS, num_classes=num_classes, x0_skip_data_std=x0_skip)
  influence = _jacobians(model)
  for k_out in range(NUM_STEPS):      # index k_out models level k_out from conditioning level k_out + 1
    for k_in in range(NUM_STEPS):     # index k_in holds level k_in + 1
      if k_in < k_out:                # a cleaner conditioning level than the one read
        assert influence[k_out, k_in] == 0.0, (k_out, k_in)
      else:                           # the level itself and every noisier level must be seen
        assert influence[k_out, k_in] > 1e-6, (k_out, k_in)


def test_markov_predictor_sees_only_its_own_level(x64):
  model = helpers.tiny_model(1, num_steps=NUM_STEPS, markov=True)
  influence = _jacobians(model, seed=1)
  off_diagonal = influence[~np.eye(NUM_STEPS, dtype=bool)]
  np.testing.assert_array_equal(off_diagonal, np.zeros_like(off_diagonal))
  assert np.all(np.diag(influence) > 1e-6)


@pytest.mark.parametrize("x0_skip", [0.0, 0.5])
def test_a_fresh_predictor_outputs_the_posterior_with_x0_hat_zero_or_edm_skip(x64, x0_skip):
  """A zero head gives h = 0, or h = EDM's c_skip(t) u_t with `x0_skip_data_std`; sigma is the posterior's."""
  model = helpers.tiny_model(0, scale=0.0, num_steps=NUM_STEPS, sigma_floor=0.02, x0_skip_data_std=x0_skip)
  image = model.cfg.image
  u = jax.random.normal(jax.random.key(2), (2, NUM_STEPS, image.num_tokens, image.token_dim), jnp.float64)
  times = model.time_grid(NUM_STEPS, jnp.float64)
  mu, sigma = model.predictor(u, times)
  for k in range(1, NUM_STEPS + 1):
    t, s = float(times[k]), float(times[k - 1])
    r = (1 - t) / (1 - s)
    v = t * t - r * r * s * s
    c_x, c_0 = r * s * s / (t * t), (1 - s) * v / (t * t)
    c_skip = x0_skip ** 2 * (1 - t) / ((1 - t) ** 2 * x0_skip ** 2 + t * t)
    np.testing.assert_allclose(mu[:, k - 1], (c_x + c_0 * c_skip) * u[:, k - 1], atol=1e-14)
    np.testing.assert_allclose(sigma[:, k - 1], np.sqrt(v * s * s / (t * t) + 0.02 ** 2), atol=1e-14)
