"""The four-step sampler: the KV cache over levels gives the reference sampler's output, with and without guidance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntm_jax.sampling import sampler as sample
from tests import helpers


@pytest.mark.parametrize("num_classes, markov", [(0, False), (3, False), (0, True)])
def test_level_cache_matches_the_uncached_sampler(x64, num_classes, markov):
  model = helpers.tiny_model(4, num_steps=3, num_classes=num_classes, markov=markov)
  labels = jnp.array([0, 2, -1]) if num_classes else None
  draw = lambda **kw: model.sample_trajectory(jax.random.key(5), 3, labels, dtype=jnp.float64, **kw)
  cached, reference = draw(use_cache=True), draw(use_cache=False)
  np.testing.assert_allclose(cached["u"], reference["u"], atol=1e-10, rtol=0)
  np.testing.assert_allclose(cached["x0"], reference["x0"], atol=1e-10, rtol=0)


def test_guidance_scale_zero_is_the_identity_and_a_positive_scale_matches_the_reference(x64):
  model = helpers.tiny_model(7, num_steps=2, num_classes=3)
  labels = jnp.array([0, 1, 2, 1])
  draw = lambda **kw: model.sample_trajectory(jax.random.key(8), 4, labels, dtype=jnp.float64, **kw)
  plain = draw()
  np.testing.assert_array_equal(draw(guidance_scale=0.0)["x0"], plain["x0"])
  guided = draw(guidance_scale=2.0)
  np.testing.assert_allclose(guided["x0"], draw(guidance_scale=2.0, use_cache=False)["x0"], atol=1e-10, rtol=0)
  assert float(jnp.max(jnp.abs(guided["x0"] - plain["x0"]))) > 1e-4  # guidance does something


def test_guidance_needs_labels_and_a_conditional_model(x64):
  with pytest.raises(ValueError, match="guidance needs a conditional model"):
    helpers.tiny_model(0, num_steps=2).sample_trajectory(jax.random.key(0), 2, guidance_scale=1.0)


def test_sample_labels_are_parsed_and_checked():
  np.testing.assert_array_equal(sample.parse_labels("", 5, 3), [0, 1, 2, 0, 1])
  np.testing.assert_array_equal(sample.parse_labels("2,-1", 3, 3), [2, -1, 2])
  assert sample.parse_labels("", 4, 0) is None
  with pytest.raises(ValueError, match="outside 0..2"):
    sample.parse_labels("3", 2, 3)
  with pytest.raises(ValueError, match="unconditional"):
    sample.parse_labels("1", 2, 0)
