"""Text conditioning (D4): the caption prefix keeps the trajectory likelihood exact and the sampler's
KV cache exact; padding and dropped captions carry nothing (gradients that must be exactly zero)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntm_jax.models import conditioning
from tests import helpers

NUM_STEPS, TEXT_TOKENS, TEXT_DIM = 3, 5, 6


def _text_model(seed=0, **overrides):
  return helpers.tiny_model(seed, num_steps=NUM_STEPS, text_dim=TEXT_DIM, text_tokens=TEXT_TOKENS, **overrides)


def _levels(model, batch, seed):
  image = model.cfg.image
  return jax.random.normal(jax.random.key(seed), (batch, NUM_STEPS, image.num_tokens, image.token_dim),
                           jnp.float64)


def test_prefix_keeps_the_block_causal_mask_exact(x64):
  model = _text_model()
  u = _levels(model, 1, 1)
  times = model.time_grid(NUM_STEPS, jnp.float64)
  text = helpers.text_condition(1, TEXT_TOKENS, TEXT_DIM, seed=2, lengths=[3])
  jac = jax.jacrev(lambda levels: jnp.stack(model.predictor(levels, times, text)))(u)
  jac = np.abs(np.asarray(jac))  # [2, 1, T, N, c, 1, T, N, c]
  for k_out in range(NUM_STEPS):
    for k_in in range(NUM_STEPS):
      influence = jac[:, :, k_out, :, :, :, k_in].max()
      if k_in < k_out:  # a cleaner level than the one read: must be invisible, through the prefix too
        assert influence == 0.0, (k_out, k_in)
      else:
        assert influence > 1e-6, (k_out, k_in)


def test_padding_and_dropped_captions_get_exactly_zero_gradient(x64):
  model = _text_model(1)
  u = _levels(model, 2, 3)
  times = model.time_grid(NUM_STEPS, jnp.float64)
  text = helpers.text_condition(2, TEXT_TOKENS, TEXT_DIM, seed=4, lengths=[3, 0])  # example 1: dropped

  def output(tokens, pooled):
    condition = dict(text, text_tokens=tokens, text_pooled=pooled)
    return jnp.sum(jnp.stack(model.predictor(u, times, condition)) ** 2, axis=(0, 2, 3, 4))  # [B]

  grad_tokens, grad_pooled = jax.jacrev(output, argnums=(0, 1))(text["text_tokens"], text["text_pooled"])
  grad_tokens, grad_pooled = np.asarray(grad_tokens), np.asarray(grad_pooled)  # [B_out, B_in, ...]
  assert np.abs(grad_tokens[0, 0, :3]).max() > 1e-6 and np.abs(grad_pooled[0, 0]).max() > 1e-6
  np.testing.assert_array_equal(grad_tokens[0, 0, 3:], 0.0)  # padding of example 0
  np.testing.assert_array_equal(grad_tokens[1], 0.0)         # the dropped caption: nothing reaches it
  np.testing.assert_array_equal(grad_pooled[1], 0.0)
  np.testing.assert_array_equal(grad_tokens[0, 1], 0.0)      # and examples never see each other


@pytest.mark.parametrize("guidance_scale", [0.0, 2.0])
def test_level_cache_with_a_text_prefix_matches_the_uncached_sampler(x64, guidance_scale):
  model = _text_model(2)
  text = helpers.text_condition(3, TEXT_TOKENS, TEXT_DIM, seed=5, lengths=[5, 2, 0])
  draw = lambda **kw: model.sample_trajectory(jax.random.key(6), 3, text, dtype=jnp.float64,
                                              guidance_scale=guidance_scale, **kw)
  cached, reference = draw(use_cache=True), draw(use_cache=False)
  np.testing.assert_allclose(cached["u"], reference["u"], atol=1e-10, rtol=0)
  np.testing.assert_allclose(cached["x0"], reference["x0"], atol=1e-10, rtol=0)


def test_the_caption_changes_the_samples_and_guidance_changes_them_more(x64):
  model = _text_model(3)
  text = helpers.text_condition(2, TEXT_TOKENS, TEXT_DIM, seed=7)
  draw = lambda condition, w=0.0: model.sample_trajectory(jax.random.key(8), 2, condition, dtype=jnp.float64,
                                                          guidance_scale=w)["x0"]
  plain, unconditional = draw(text), draw(conditioning.null_like(text))
  assert float(jnp.max(jnp.abs(plain - unconditional))) > 1e-4
  assert float(jnp.max(jnp.abs(draw(text, 2.0) - plain))) > 1e-4


def test_text_conditional_tarflow_baseline_round_trips(x64):
  model = helpers.tiny_model(4, kind="tarflow", text_dim=TEXT_DIM)
  image = model.cfg.image
  x = jax.random.normal(jax.random.key(9), (2, image.num_tokens, image.token_dim), jnp.float64)
  text = helpers.text_condition(2, TEXT_TOKENS, TEXT_DIM, seed=10, lengths=[4, 0])
  z, _ = model.flow.forward(x, jnp.zeros((2,), jnp.float64), text)
  np.testing.assert_allclose(model.flow.inverse(z, jnp.zeros((2,), jnp.float64), text), x, atol=1e-10)
  other = dict(text, text_pooled=text["text_pooled"] + 1.0)
  z_other, _ = model.flow.forward(x, jnp.zeros((2,), jnp.float64), other)
  assert float(jnp.max(jnp.abs(z_other[0] - z[0]))) > 1e-6   # a caption conditions the flow
  np.testing.assert_array_equal(z_other[1], z[1])             # a dropped caption ignores the embedding


def test_condition_dropout_rate_and_null_form():
  text = helpers.text_condition(4000, 2, 3, dtype=jnp.float32)
  dropped = conditioning.drop(jax.random.key(0), text, 0.1)
  rate = 1.0 - float(jnp.mean(conditioning.has_text(dropped)))
  assert 0.08 < rate < 0.12
  gone = ~conditioning.has_text(dropped)
  assert float(jnp.abs(dropped["text_pooled"][gone]).max()) == 0.0
  labels = conditioning.drop(jax.random.key(1), jnp.arange(4000) % 10, 0.1)
  assert 0.08 < float(jnp.mean(labels == -1)) < 0.12
  assert not bool(jnp.any(conditioning.has_text(conditioning.null_like(text))))


def test_text_model_refuses_labels_and_a_wrong_prefix_length(x64):
  model = _text_model(5)
  u = _levels(model, 1, 0)
  times = model.time_grid(NUM_STEPS, jnp.float64)
  with pytest.raises(ValueError, match="text-conditional"):
    model.predictor(u, times, jnp.array([1]))
  with pytest.raises(ValueError, match="takes 5 text tokens, got 4"):
    model.predictor(u, times, helpers.text_condition(1, 4, TEXT_DIM))
