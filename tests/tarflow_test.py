"""Exactness of the TarFlow transporter (NTM.md 5.2, T1-T3), in float64 on tiny models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import helpers

# (height, width, channels, patch): 8 tokens of 1 number, and 4 tokens of 4 numbers (2x2 patches).
SHAPES = [(2, 4, 1, 1), (4, 4, 1, 2)]


def _transporter_and_inputs(shape, seed=0):
  height, width, channels, patch = shape
  model = helpers.tiny_model(seed, height=height, width=width, channels=channels, patch_size=patch)
  image = model.cfg.image
  x = jax.random.normal(jax.random.key(seed + 7), (3, image.num_tokens, image.token_dim), jnp.float64)
  t = jnp.array([0.0, 0.4, 1.0])
  return model.transporter, x, t


@pytest.mark.parametrize("shape", SHAPES)
def test_round_trips_to_1e_10(x64, shape):
  transporter, x, t = _transporter_and_inputs(shape)
  u, _ = transporter.forward(x, t)
  assert float(jnp.max(jnp.abs(u - x))) > 1e-2, "randomised transporter should not be the identity"
  for use_cache in (True, False):
    np.testing.assert_allclose(transporter.inverse(u, t, use_cache=use_cache), x, atol=1e-10, rtol=0)
    u_back, _ = transporter.forward(transporter.inverse(x, t, use_cache=use_cache), t)
    np.testing.assert_allclose(u_back, x, atol=1e-10, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_cached_and_cache_free_inverses_agree(x64, shape):
  transporter, x, t = _transporter_and_inputs(shape, seed=3)
  np.testing.assert_allclose(
      transporter.inverse(x, t, use_cache=True), transporter.inverse(x, t, use_cache=False),
      atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_logdet_equals_brute_force_slogdet(x64, shape):
  transporter, x, t = _transporter_and_inputs(shape, seed=5)
  _, logdet = transporter.forward(x, t)
  for b in range(x.shape[0]):
    flat_map = lambda v: transporter.forward(v.reshape((1,) + x.shape[1:]), t[b:b + 1])[0].reshape(-1)
    sign, brute = jnp.linalg.slogdet(jax.jacfwd(flat_map)(x[b].reshape(-1)))
    assert float(sign) != 0.0
    np.testing.assert_allclose(logdet[b], brute, atol=1e-8, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_each_block_is_lower_triangular_in_its_scan_order(x64, shape):
  transporter, x, t = _transporter_and_inputs(shape, seed=9)
  for block in transporter.blocks:
    def scan_ordered_map(v):
      x_scan = v.reshape((1,) + x.shape[1:])
      z, _ = block.forward(block.from_scan_order(x_scan), t[1:2])
      return block.to_scan_order(z).reshape(-1)

    jacobian = jax.jacfwd(scan_ordered_map)(block.to_scan_order(x[1:2]).reshape(-1))
    assert np.all(np.triu(np.asarray(jacobian), k=1) == 0.0), "a token depends on a later token"
    token_dim = x.shape[-1]
    # Within a token the map is elementwise: the diagonal carries 1 / sigma, token 0 is the identity.
    np.testing.assert_array_equal(np.diag(jacobian)[:token_dim], np.ones(token_dim))
    _, logdet = block.forward(x[1:2], t[1:2])
    np.testing.assert_allclose(np.sum(np.log(np.diag(jacobian))), logdet[0], atol=1e-10)
    assert np.any(np.tril(np.asarray(jacobian), k=-token_dim) != 0.0), "no token depends on earlier ones"


def test_a_fresh_transporter_is_exactly_the_identity(x64):
  model = helpers.tiny_model(0, scale=0.0)
  x = jax.random.normal(jax.random.key(1), (2, 8, 1), jnp.float64)
  u, logdet = model.transporter.forward(x, jnp.array([0.25, 1.0]))
  np.testing.assert_array_equal(u, x)
  np.testing.assert_array_equal(logdet, np.zeros(2))


def test_tarflow_baseline_is_exact_and_invertible(x64):
  model = helpers.tiny_model(2, kind="tarflow", num_blocks=3, num_classes=3)
  x = jax.random.normal(jax.random.key(4), (2, 8, 1), jnp.float64)
  labels = jnp.array([1, -1])
  parts = model.log_prob(x, labels)
  np.testing.assert_allclose(model.flow.inverse(parts["z"], jnp.zeros(2), labels), x, atol=1e-10, rtol=0)
  flat = lambda v: model.log_prob(v.reshape(1, 8, 1), labels[:1])["z"].reshape(-1)
  _, brute = jnp.linalg.slogdet(jax.jacfwd(flat)(x[0].reshape(-1)))
  np.testing.assert_allclose(parts["flow_logdet"][0], brute, atol=1e-8, rtol=0)
  other = model.log_prob(x, jnp.array([2, 2]))["nll"]
  assert float(jnp.abs(other[0] - parts["nll"][0])) > 1e-6, "the class label has no effect"
