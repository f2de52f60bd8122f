"""Flow matching, the NTM initialised from it, mean alignment and the pairwise mode (D9, NTM.md C.7, C.8)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ntm_jax.models import flow_matching_init, trajectory
from ntm_jax.models import build_model
from tests import helpers

FM_SETTINGS = dict(prediction="velocity", markov=True, num_steps=4)


def flow_matching_model(seed=0, num_classes=0):
  """A tiny float64 flow-matching model with every weight (also the zero-initialised head) random."""
  return helpers.tiny_model(seed, kind="flow_matching", num_blocks=0, num_classes=num_classes, **FM_SETTINGS)


def ntm_from(fm, seed=5, **overrides):
  """A fresh NTM of the fine-tuning shape with its predictor taken from `fm`."""
  cfg = helpers.tiny_config(num_classes=fm.num_classes, **{**FM_SETTINGS, **overrides})
  flow_matching_init.check_compatible(cfg, fm.cfg)
  graphdef, params = nnx.split(build_model(cfg, rngs=nnx.Rngs(seed)))
  fm_graphdef, fm_params = nnx.split(fm)
  return nnx.merge(graphdef, flow_matching_init.ntm_params_from_flow_matching(graphdef, params, fm_graphdef,
                                                                              fm_params))


def data_tokens(model, batch, seed=0):
  image = model.cfg.image
  return jax.random.uniform(jax.random.key(seed), (batch, image.num_tokens, image.token_dim), jnp.float64, -1, 1)


@pytest.mark.parametrize("num_classes", [0, 3])
def test_ntm_from_flow_matching_starts_with_its_gaussian_posterior_trajectory_nll(x64, num_classes):
  fm = flow_matching_model(num_classes=num_classes)
  ntm = ntm_from(fm)
  labels = jnp.asarray([0, 1, 2, -1, 0, 1]) if num_classes else None
  x0 = data_tokens(ntm, 6)
  times = ntm.time_grid(dtype=jnp.float64)
  x = trajectory.sample_trajectory(jax.random.key(1), x0, times)
  ntm_parts = jax.jit(lambda x: ntm.trajectory_log_prob(x, times, labels))(x)
  fm_parts = jax.jit(lambda x: fm.trajectory_log_prob(x, times, labels))(x)
  np.testing.assert_allclose(ntm_parts["nll"], fm_parts["nll"], rtol=1e-12)
  np.testing.assert_allclose(ntm_parts["mu"], fm_parts["mu"], atol=1e-12)
  # f_T is the identity (to rounding: sigma = softplus(c) / softplus(c)), and sigma_P is the posterior scale
  # sbar (the delta head is zero).
  u, logdet = jax.jit(lambda x: ntm.transport(x, times))(x)
  np.testing.assert_allclose(u, x, rtol=0, atol=1e-14)
  np.testing.assert_allclose(logdet, 0.0, rtol=0, atol=1e-12)
  c_x, c_0, sigma_post = trajectory.posterior_coefficients(times[1:], times[:-1])
  sbar = np.sqrt(np.square(sigma_post) + ntm.cfg.predictor.sigma_floor ** 2)
  np.testing.assert_allclose(ntm_parts["log_sigma_p"], np.sum(np.log(sbar)) * x0[0].size, rtol=1e-12)
  # ... and the NLL really is the ancestral chain's: Gaussian steps around c_x x_t + c_0 (x_t - t v).
  t = times[1:][None, :, None, None]
  velocity = jax.jit(lambda x, t: fm.velocity(x, jnp.full((6,), t), labels))
  v = jnp.stack([velocity(x[:, k], times[k]) for k in range(1, 5)], axis=1)
  mu = c_x[None, :, None, None] * x[:, 1:] + c_0[None, :, None, None] * (x[:, 1:] - t * v)
  step_nll = -jax.scipy.stats.norm.logpdf(x[:, :-1], mu, sbar[None, :, None, None]).sum(axis=(1, 2, 3))
  prior = -jax.scipy.stats.norm.logpdf(x[:, -1]).sum(axis=(1, 2))
  np.testing.assert_allclose(fm_parts["nll"], prior + step_nll, rtol=1e-12)


def test_initialisation_refuses_an_ntm_that_could_not_start_as_the_flow_matching_model(x64):
  fm = flow_matching_model()
  with pytest.raises(ValueError, match="markov=True"):
    ntm_from(fm, markov=False)
  with pytest.raises(ValueError, match="prediction='velocity'"):
    ntm_from(fm, prediction="x0")
  with pytest.raises(ValueError, match=r"model.predictor differs .*'depth'"):
    ntm_from(fm, depth=3)
  trained_ntm = helpers.tiny_model(**FM_SETTINGS)  # a transporter that is not the identity
  graphdef, params = nnx.split(trained_ntm)
  with pytest.raises(ValueError, match="not the identity"):
    flow_matching_init.ntm_params_from_flow_matching(graphdef, params, *nnx.split(fm))


def test_mean_alignment_is_zero_at_initialisation_and_its_weight_anneals_from_2_5_to_0(x64):
  fm = flow_matching_model()
  ntm = ntm_from(fm)
  images = data_tokens(ntm, 4).reshape(4, 2, 4, 1)
  moved = helpers.randomize(ntm_from(fm), seed=9, scale=0.05)
  for options in ({}, {"pairwise_num_steps": (4, 8, 16)}):
    alignment = jax.jit(lambda model: flow_matching_init.mean_alignment_loss(
        fm, model.loss(jax.random.key(0), images, **options)[1], None))  # pylint: disable=cell-var-from-loop
    assert float(alignment(ntm)) < 1e-25
    assert float(alignment(moved)) > 1e-6
  weights = [float(flow_matching_init.alignment_weight(step, 2.5, 1000)) for step in (0, 500, 1000, 2000)]
  np.testing.assert_allclose(weights, [2.5, 1.25, 0.0, 0.0], atol=1e-12)


def test_samplers_agree_in_one_step_and_differ_in_four(x64):
  fm = flow_matching_model()
  key = jax.random.key(3)
  sample = jax.jit(lambda T, sampler: fm.sample(key, 5, num_steps=T, sampler=sampler, temperature=0.0,
                                                dtype=jnp.float64), static_argnums=(0, 1))
  one = [sample(1, s) for s in ("euler", "ancestral")]
  # T = 1: Euler gives x_1 - v(x_1, 1), the posterior mean of the step into t = 0 is x0_hat = the same.
  np.testing.assert_allclose(one[0], one[1], rtol=1e-12)
  four = [sample(4, s) for s in ("euler", "ancestral")]
  assert float(jnp.max(jnp.abs(four[0] - four[1]))) > 1e-3
  with pytest.raises(ValueError, match="unknown flow-matching sampler"):
    fm.sample(key, 2, sampler="heun")


def test_pairwise_transition_equals_the_same_transition_of_the_full_trajectory(x64):
  model = helpers.tiny_model(markov=True, num_steps=8)  # a transporter far from the identity
  times = model.time_grid(dtype=jnp.float64)
  x = trajectory.sample_trajectory(jax.random.key(1), data_tokens(model, 3), times)
  transition_nll = jax.jit(lambda x, times: model.trajectory_log_prob(x, times)["transition_nll"])
  full = transition_nll(x, times)
  for k in (1, 4, 8):
    pair = transition_nll(x[:, k - 1:k + 1], times[k - 1:k + 1])[:, 0]
    np.testing.assert_allclose(pair, full[:, k - 1], rtol=1e-12)
  with pytest.raises(ValueError, match="markov=True"):
    helpers.tiny_model(num_steps=4).pairwise_nll(jax.random.key(0), data_tokens(model, 2), (4,))


@pytest.mark.parametrize("num_steps", [4, 8, 16])
def test_pairwise_loss_is_an_unbiased_estimate_of_the_trajectory_nll(x64, num_steps):
  model = helpers.tiny_model(markov=True, num_steps=num_steps)
  x0 = jnp.tile(data_tokens(model, 4), (512, 1, 1))  # 4 images, 512 draws each per call
  times = model.time_grid(dtype=jnp.float64)
  full_fn = jax.jit(lambda key: model.trajectory_log_prob(trajectory.sample_trajectory(key, x0, times), times)["nll"])
  pairwise_fn = jax.jit(lambda key: model.pairwise_nll(key, x0, (4, 8, 16),
                                                       num_steps_B=jnp.full((x0.shape[0],), num_steps))["nll"])
  full = np.asarray(full_fn(jax.random.key(0)))  # far less variance than one transition times T
  pairwise = np.concatenate([pairwise_fn(jax.random.key(100 + seed)) for seed in range(8)])
  stderr = np.sqrt(full.var() / full.size + pairwise.var() / pairwise.size)
  assert abs(pairwise.mean() - full.mean()) < 4 * stderr, (pairwise.mean(), full.mean(), stderr)
  # The test has the power to see a wrong weighting: without the factor T the estimate is far off.
  prior = 0.5 * x0[0].size * (1 + np.log(2 * np.pi))
  unweighted = prior + (pairwise - prior) / num_steps
  assert abs(unweighted.mean() - full.mean()) > 20 * stderr


def test_pairwise_mode_draws_every_step_count_and_every_transition(x64):
  model = helpers.tiny_model(markov=True, num_steps=4, scale=0.0)
  x0 = data_tokens(model, 3000)
  parts = jax.jit(lambda x0: model.pairwise_nll(jax.random.key(0), x0, (4, 8, 16)))(x0)
  steps = np.asarray(parts["num_steps_T"])
  assert set(steps.tolist()) == {4, 8, 16}
  t, s = np.asarray(parts["times"][:, 1]), np.asarray(parts["times"][:, 0])
  for count in (4, 8, 16):
    grid = np.asarray(trajectory.time_grid(count, model.cfg.grid.shift, jnp.float64))
    chosen = steps == count
    assert set(np.round(t[chosen], 9)) == set(np.round(grid[1:], 9))  # every transition t_k -> t_{k-1}
    np.testing.assert_allclose(s[chosen], grid[np.searchsorted(grid, t[chosen] - 1e-12) - 1], atol=1e-12)
