"""Residual dropout (training only) keeps every exactness property, and is off unless a key is passed."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers

NUM_STEPS = 3


def _trajectory(model, seed=0):
  image = model.cfg.image
  shape = (2, NUM_STEPS + 1, image.num_tokens, image.token_dim)
  return jax.random.normal(jax.random.key(seed), shape, jnp.float64)


def test_without_a_key_dropout_changes_nothing(x64):
  with_dropout = helpers.tiny_model(0, num_steps=NUM_STEPS, dropout=0.5)
  without = helpers.tiny_model(0, num_steps=NUM_STEPS, dropout=0.0)
  x, times = _trajectory(with_dropout), with_dropout.time_grid(NUM_STEPS, jnp.float64)
  np.testing.assert_array_equal(with_dropout.trajectory_log_prob(x, times)["nll"],
                                without.trajectory_log_prob(x, times)["nll"])
  thinned = with_dropout.trajectory_log_prob(x, times, dropout_key=jax.random.key(3))["nll"]
  assert np.all(np.abs(thinned - without.trajectory_log_prob(x, times)["nll"]) > 1e-6)


def test_the_predictor_stays_block_causal_under_dropout(x64):
  model = helpers.tiny_model(1, num_steps=NUM_STEPS, dropout=0.5)
  u = _trajectory(model, seed=1)[:1, 1:]
  times = model.time_grid(NUM_STEPS, jnp.float64)
  jac = jax.jacrev(lambda u_: jnp.stack(model.predictor(u_, times, dropout_key=jax.random.key(4))))(u)
  jac = np.abs(np.asarray(jac))  # [2, 1, T, N, c, 1, T, N, c]
  for k_out in range(NUM_STEPS):
    for k_in in range(NUM_STEPS):
      influence = jac[:, :, k_out, :, :, :, k_in].max()
      assert (influence == 0.0) if k_in < k_out else (influence > 1e-6), (k_out, k_in)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_thinned_transporter_is_still_an_exact_flow(x64, seed):
  model = helpers.tiny_model(seed, dropout=0.5)
  image = model.cfg.image
  x = jax.random.normal(jax.random.key(seed + 10), (1, image.num_tokens, image.token_dim), jnp.float64)
  t = jnp.array([0.3])
  key = jax.random.key(seed + 20)

  def flat_forward(x_flat):
    return model.transporter.forward(x_flat.reshape(x.shape), t, dropout_key=key)[0].reshape(-1)

  _, logdet = model.transporter.forward(x, t, dropout_key=key)
  _, brute_force = jnp.linalg.slogdet(jax.jacfwd(flat_forward)(x.reshape(-1)))
  np.testing.assert_allclose(float(logdet[0]), float(brute_force), atol=1e-8)
  _, deterministic = model.transporter.forward(x, t)
  assert abs(float(logdet[0] - deterministic[0])) > 1e-6  # the key really thins the network
