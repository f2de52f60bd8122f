"""Trajectory (joint-score) denoising (NTM.md C.11): E[x_0 | noisy levels] from the exact trajectory score.

The noisy levels of the forward chain are X_k = (1 - t_k) x_0 + noise with noise covariance S (the Markov
covariance across levels, `trajectory.markov_covariance`). Multivariate Tweedie:
  x0_hat^(k) = (X_k + sum_j S_kj grad_{X_j} log p(X)) / (1 - t_k),   for 0 < t_k < 1,
where p(X) is the density of the noisy levels alone. NTM gives it exactly: the trajectory density without
its last transition into t = 0, log p(x_{t_1}, ..., x_{t_T}) = log p(x_1) + sum_{k >= 2} log p(x_{k-1} | ...).
(Differentiating the full trajectory density instead would condition on the sampled x_0 itself.) Under the
true score every level gives the same estimate; we return them all and use the cleanest noisy level.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from ntm_jax.models import trajectory


def tweedie_x0(log_prob_fn: Callable[[jax.Array], jax.Array], x_noisy_BxKx_: jax.Array,
               times_noisy_K: jax.Array) -> jax.Array:
  """Estimates of x_0 from each noisy level with 0 < t < 1: [B, K - 1, ...] (noisy levels in order).

  Args:
    log_prob_fn: X [B, K, ...] -> log p(X) per example [B] (examples independent).
    x_noisy_BxKx_: the noisy levels x_{t_1}, ..., x_{t_T}.
    times_noisy_K: their times 0 < t_1 < ... < t_T = 1.
  """
  score = jax.grad(lambda x: jnp.sum(log_prob_fn(x)))(x_noisy_BxKx_)
  cov_KxK = trajectory.markov_covariance(times_noisy_K).astype(score.dtype)
  shift = jnp.einsum("kj,bj...->bk...", cov_KxK, score)
  # The grid ends at t_T = 1 exactly (D1): that level is pure noise and carries no estimate of x_0.
  scale = (1.0 - times_noisy_K[:-1]).reshape((1, -1) + (1,) * (x_noisy_BxKx_.ndim - 2))
  return (x_noisy_BxKx_[:, :-1] + shift[:, :-1]) / scale


def noisy_levels_log_prob(model, x_BxKxNxc: jax.Array, times_K: jax.Array, labels_B=None) -> jax.Array:
  """log p(x_{t_1}, ..., x_{t_T}) of an NTM, per example: the trajectory density minus its last transition.

  Level 0 of `x_BxKxNxc` is ignored (the block-causal predictor never lets it touch the other terms).
  """
  parts = model.trajectory_log_prob(x_BxKxNxc, times_K, labels_B)
  return -(parts["prior"] + jnp.sum(parts["transition_nll"][:, 1:], axis=1))


def denoise_trajectory(model, x_BxKxNxc: jax.Array, times_K: jax.Array, labels_B=None) -> jax.Array:
  """x0_hat [B, K_interior, N, c] from a whole x-space trajectory (level 0 first), one estimate per noisy level."""

  def log_prob(x_noisy):
    full = jnp.concatenate([x_BxKxNxc[:, :1], x_noisy], axis=1)
    return noisy_levels_log_prob(model, full, times_K, labels_B)

  return tweedie_x0(log_prob, x_BxKxNxc[:, 1:], times_K[1:])
