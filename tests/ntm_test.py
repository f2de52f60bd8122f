"""The exact trajectory likelihood of the whole model (NTM.md C.5, C.6; tests T5-T9)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from ntm_jax.models import attention, trajectory
from ntm_jax.models.predictor import TrajectoryPredictor, posterior_head
from tests import helpers


def _random_trajectory(model, batch, seed):
  image = model.cfg.image
  times = model.time_grid(dtype=jnp.float64)
  x0 = jax.random.normal(jax.random.key(seed), (batch, image.num_tokens, image.token_dim), jnp.float64)
  return trajectory.sample_trajectory(jax.random.key(seed + 1), x0, times), times


def _brute_force_log_prob(model, trajectory_1xKxNxc, times, labels=None):
  """log N(Phi(X); 0, I) + log|det dPhi/dX| with Phi: X -> (x_1, z_T, ..., z_1) and a jacfwd Jacobian."""
  shape = trajectory_1xKxNxc.shape

  def phi(flat):
    x = flat.reshape(shape)
    z = model.trajectory_log_prob(x, times, labels)["z"]
    return jnp.concatenate([x[:, -1].reshape(-1), z.reshape(-1)])

  flat = trajectory_1xKxNxc.reshape(-1)
  sign, logabsdet = jnp.linalg.slogdet(jax.jit(jax.jacfwd(phi))(flat))
  assert float(sign) != 0.0
  return -trajectory.standard_normal_nll(phi(flat)[None])[0] + logabsdet


# CI runs T = 3 with classes; `-m slow` adds T = 2 unconditional (the leaky-predictor test below checks T = 2).
@pytest.mark.parametrize("num_steps,num_classes", [pytest.param(2, 0, marks=pytest.mark.slow), (3, 3)])
def test_trajectory_log_prob_equals_change_of_variables(x64, num_steps, num_classes):
  model = helpers.tiny_model(0, num_steps=num_steps, num_classes=num_classes)
  x, times = _random_trajectory(model, 2, seed=3)
  labels = jnp.array([2, -1]) if num_classes else None
  nll = model.trajectory_log_prob(x, times, labels)["nll"]
  for b in range(2):
    brute = _brute_force_log_prob(model, x[b:b + 1], times, None if labels is None else labels[b:b + 1])
    np.testing.assert_allclose(-nll[b], brute, atol=1e-8, rtol=0)


def test_a_leaky_predictor_breaks_the_change_of_variables_check(x64, monkeypatch):
  """Full attention across levels lets transition k see level k - 1: the analytic log-det is then wrong."""
  model = helpers.tiny_model(0, num_steps=2)
  x, times = _random_trajectory(model, 1, seed=3)
  exact_gap = abs(float(-model.trajectory_log_prob(x, times)["nll"][0] - _brute_force_log_prob(model, x, times)))
  assert exact_gap < 1e-8

  def full_attention(self, num_steps):
    return attention.Mask.full(num_steps * self.num_tokens)

  monkeypatch.setattr(TrajectoryPredictor, "attention_mask", full_attention)
  leaky_gap = abs(float(-model.trajectory_log_prob(x, times)["nll"][0] - _brute_force_log_prob(model, x, times)))
  assert leaky_gap > 1e-3, f"the exactness check did not notice the leak (gap {leaky_gap})"


@pytest.mark.parametrize("transition", [1, 2])
def test_each_transition_density_integrates_to_one(x64, transition):
  """D = 2: integrate exp(log p(x_{k-1} | x_{>=k})) over a grid, for three conditioning trajectories."""
  model = helpers.tiny_model(4, scale=0.2, height=1, width=2, num_steps=2)
  x, times = _random_trajectory(model, 3, seed=11)
  # The widest conditional here has a u-space scale of about 2; +-15 holds all its mass, and a spacing of
  # 0.075 resolves the narrowest one (u-space scale about 0.2; a Riemann sum of a smooth density converges
  # very fast: on this draw the worst mass is 1 - 1.4e-5).
  axis = jnp.linspace(-15.0, 15.0, 401)
  cell = float(axis[1] - axis[0]) ** 2
  grid = jnp.stack(jnp.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2, 1)
  nll_fn = jax.jit(lambda traj: model.trajectory_log_prob(traj, times)["transition_nll"][:, transition - 1])
  chunk = 32_768
  for b in range(3):
    trajectories = jnp.broadcast_to(x[b], (grid.shape[0],) + x.shape[1:]).at[:, transition - 1].set(grid)
    mass = cell * sum(float(jnp.sum(jnp.exp(-nll_fn(trajectories[i:i + chunk]))))
                      for i in range(0, grid.shape[0], chunk))
    assert abs(mass - 1.0) < 1e-3, f"trajectory {b}: mass {mass}"


def _gaussian_step_nll(x_s, x_t, x0, t, s):
  """-log q(x_s | x_t, x_0) by conditioning the joint Gaussian (x_s, x_t) | x_0 (independent of C.3)."""
  var_s, var_t, cov = s * s, t * t, (1 - t) / (1 - s) * s * s
  mean = (1 - s) * x0 + cov / var_t * (x_t - (1 - t) * x0)
  var = var_s - cov * cov / var_t
  return -np.sum(stats.norm.logpdf(np.asarray(x_s), np.asarray(mean), math.sqrt(var)))


def test_identity_transporter_fed_the_true_posterior_gives_the_gaussian_posterior_nll(x64):
  model = helpers.tiny_model(0, num_blocks=0, num_steps=4)  # the `gaussian` baseline: f_T = identity
  x, times = _random_trajectory(model, 2, seed=5)
  u, logdet = model.transport(x, times)
  np.testing.assert_array_equal(u, x)
  x0 = x[:, 0:1]
  t, s = times[None, 1:, None, None], times[None, :-1, None, None]
  mu, sigma = posterior_head(u[:, 1:], x0, 0.0, t, s, sigma_floor=0.0)
  parts = trajectory.trajectory_nll_parts(x[:, -1], u[:, :-1], mu, sigma, logdet[:, :-1])
  for k in range(2, 5):  # transitions with s > 0 (into t = 0 the posterior is a point mass)
    for b in range(2):
      expected = _gaussian_step_nll(x[b, k - 1], x[b, k], x[b, 0], float(times[k]), float(times[k - 1]))
      np.testing.assert_allclose(parts["transition_nll"][b, k - 1], expected, rtol=1e-12)


def test_gaussian_data_analytic_model_reproduces_the_exact_trajectory_density(x64):
  """x_0 ~ N(m, v0): the trajectory is jointly Gaussian; the posterior-form head with analytic (h, delta)
  and f_T = identity must give exactly its log-density."""
  mean0, var0, dims = 0.3, 0.5, 8
  model = helpers.tiny_model(0, num_blocks=0, num_steps=4, sigma_floor=0.02)
  times = np.asarray(model.time_grid(dtype=jnp.float64))
  alpha = 1.0 - times
  joint_cov = var0 * np.outer(alpha, alpha) + np.asarray(trajectory.markov_covariance(jnp.asarray(times)))
  x0 = mean0 + math.sqrt(var0) * jax.random.normal(jax.random.key(0), (3, dims, 1), jnp.float64)
  x = trajectory.sample_trajectory(jax.random.key(1), x0, jnp.asarray(times))

  mus, sigmas = [], []
  for k in range(1, len(times)):  # the true reverse step p(x_{k-1} | x_k) in head form
    t, s = times[k], times[k - 1]
    slope = joint_cov[k - 1, k] / joint_cov[k, k]
    true_mean = alpha[k - 1] * mean0 + slope * (x[:, k] - alpha[k] * mean0)
    true_std = math.sqrt(joint_cov[k - 1, k - 1] - slope * joint_cov[k - 1, k])
    c_x, c_0, sigma_post = (float(c) for c in trajectory.posterior_coefficients(t, s))
    sigma_bar = math.sqrt(sigma_post ** 2 + 0.02 ** 2)
    h = (true_mean - c_x * x[:, k]) / c_0
    delta = 4.0 * math.atanh(math.log(true_std / sigma_bar) / 4.0)
    mu, sigma = posterior_head(x[:, k], h, delta, t, s, 0.02)
    mus.append(mu)
    sigmas.append(sigma)
  u, logdet = model.transport(x, jnp.asarray(times))
  parts = trajectory.trajectory_nll_parts(x[:, -1], u[:, :-1], jnp.stack(mus, 1), jnp.stack(sigmas, 1),
                                          logdet[:, :-1])
  per_dim = np.moveaxis(np.asarray(x)[..., 0], 1, 2)  # [B, dims, T + 1]
  exact = stats.multivariate_normal(alpha * mean0, joint_cov).logpdf(per_dim).sum(axis=1)
  np.testing.assert_allclose(-parts["nll"], exact, rtol=1e-10)


def test_sampled_trajectory_re_encodes_to_the_same_noise(x64):
  model = helpers.tiny_model(6, num_steps=3, num_classes=2)
  labels = jnp.array([0, 1, -1])
  out = model.sample_trajectory(jax.random.key(3), 3, labels, decode_all_levels=True, dtype=jnp.float64)
  np.testing.assert_allclose(out["x"][:, 0], out["x0"], atol=1e-10)
  parts = model.trajectory_log_prob(out["x"], model.time_grid(dtype=jnp.float64), labels)
  np.testing.assert_allclose(parts["z"], out["z"], atol=1e-8, rtol=0)


def test_loss_is_the_per_dimension_trajectory_nll(x64):
  model = helpers.tiny_model(0, num_steps=2)
  images = jax.random.uniform(jax.random.key(0), (4, 2, 4, 1), jnp.float64, -1, 1)
  graphdef, params = nnx.split(model)
  loss_fn = jax.jit(lambda p: nnx.merge(graphdef, p).loss(jax.random.key(1), images))
  loss, parts = loss_fn(params)
  np.testing.assert_allclose(loss, jnp.mean(parts["nll"]) / (3 * 8), rtol=1e-12)
  grads = jax.jit(jax.grad(lambda p: loss_fn(p)[0]))(params)
  leaves = jax.tree.leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)
