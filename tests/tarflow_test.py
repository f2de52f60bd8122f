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
def test_jacobi_inverse_equals_the_token_by_token_inverse(x64, shape):
  transporter, x, t = _transporter_and_inputs(shape, seed=4)
  num_tokens = x.shape[1]
  sequential = transporter.inverse(x, t)
  # At most N - 1 iterations per block, exact by causality whatever the values: tolerance 0 runs them all.
  exact, iterations = transporter.inverse_jacobi(x, t, tolerance=0.0)
  np.testing.assert_allclose(exact, sequential, atol=1e-10, rtol=0)
  assert iterations.tolist() == [num_tokens - 1] * len(transporter.blocks)
  # With a tolerance it stops once nothing moves, and reports how many iterations that took.
  early, iterations = transporter.inverse_jacobi(x, t, tolerance=1e-12)
  np.testing.assert_allclose(early, sequential, atol=1e-10, rtol=0)
  assert all(1 <= int(i) <= num_tokens - 1 for i in iterations)
  # A cap below N - 1 stops there (then the result is approximate).
  _, capped = transporter.inverse_jacobi(x, t, tolerance=0.0, max_iterations=2)
  assert capped.tolist() == [2] * len(transporter.blocks)


@pytest.mark.parametrize("kind", ["ntm", "tarflow"])
def test_sampling_with_jacobi_inversion_equals_sampling_token_by_token(x64, kind):
  model = helpers.tiny_model(6, kind=kind)
  key = jax.random.key(8)
  sequential = model.sample(key, 3)
  np.testing.assert_allclose(model.sample(key, 3, inversion="jacobi", jacobi_tolerance=0.0), sequential,
                             atol=1e-10, rtol=0)
  np.testing.assert_allclose(model.sample(key, 3, inversion="jacobi", jacobi_tolerance=1e-13), sequential,
                             atol=1e-10, rtol=0)
  # The iterations that path took, per block: N - 1 at tolerance 0, at least 1 and at most N - 1 otherwise.
  num_tokens = model.cfg.image.num_tokens
  exact = model.jacobi_iterations(key, 3, jacobi_tolerance=0.0)
  assert exact.tolist() == [num_tokens - 1] * model.cfg.transporter.num_blocks
  assert all(1 <= int(i) <= num_tokens - 1 for i in model.jacobi_iterations(key, 3, jacobi_tolerance=1e-4))
  with pytest.raises(ValueError, match="apply to sample.inversion='jacobi'"):
    model.sample(key, 3, jacobi_max_iterations=3)
  with pytest.raises(ValueError, match="unknown inversion 'newton'"):
    model.sample(key, 3, inversion="newton")


def test_dependent_evaluations_count_each_sampling_path(x64):
  ntm = helpers.tiny_model(0, num_steps=2)  # 2 blocks over 8 tokens
  assert ntm.dependent_evaluations() == 1 + 2 + 2 * 7  # f_T(x_1), T levels, 7 one-token steps per block
  assert ntm.dependent_evaluations(num_steps=3) == 1 + 3 + 14
  assert ntm.dependent_evaluations(inversion="jacobi", jacobi_max_iterations=3) == 1 + 2 + 2 * 3
  assert ntm.dependent_evaluations(denoiser=object()) == 1 + 2 + 1
  assert ntm.dependent_evaluations(denoise=True) == 1 + 2 + 14 + 1
  assert helpers.tiny_model(0, num_blocks=0).dependent_evaluations() == 2  # gaussian: no f_T to invert
  assert helpers.tiny_model(0, kind="tarflow", num_blocks=3).dependent_evaluations() == 3 * 7
  flow_matching = helpers.tiny_model(0, kind="flow_matching", num_blocks=0, prediction="velocity")
  assert flow_matching.dependent_evaluations(num_steps=50) == 50
  with pytest.raises(ValueError, match="guidance is not implemented for the TarFlow baseline"):
    helpers.tiny_model(0, kind="tarflow").dependent_evaluations(guidance_scale=2.0)


def test_flow_matching_refuses_an_inversion_by_name(x64):
  model = helpers.tiny_model(0, kind="flow_matching", num_blocks=0, prediction="velocity")
  with pytest.raises(ValueError, match="a choice of inversion of f_T is not implemented"):
    model.sample(jax.random.key(0), 2, inversion="jacobi")


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
