"""The flow-matching model of D9: the trajectory predictor's backbone as a velocity network v(x_t, t).

Training regresses the velocity of x_t = (1 - t) x_0 + t eps, v = eps - x_0, at t ~ U(0, 1). Few-step
samplers on NTM's grid t_T = 1 > ... > t_0 = 0:
  euler       x_s = x_t + (s - t) v(x_t, t)                               deterministic;
  ancestral   x_s ~ N(c_x x_t + c_0 x0_hat, sbar^2 I), x0_hat = x_t - t v  the Gaussian posterior of C.3.
The ancestral chain is a Gaussian trajectory model with an exact trajectory likelihood
(`trajectory_log_prob`), so the held-out bound of D7 applies to it unchanged. Its scale is NTM's
sbar = sqrt(sigma_post^2 + floor^2), so the step into t = 0 has a density too: this is the likelihood an
NTM initialised from the model starts from (ntm_jax.models.flow_matching_init).

The network is a `TrajectoryPredictor` read at one level with the time pair (t, t) and its first output
half taken as the velocity (the second half, NTM's delta, is unused and stays zero).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.models import conditioning, flops, trajectory
from ntm_jax.models.config import ModelConfig
from ntm_jax.models.generative import TrajectoryModel
from ntm_jax.models.predictor import TrajectoryPredictor, posterior_head

SAMPLERS = ("euler", "ancestral")


class FlowMatching(TrajectoryModel):
  """Velocity prediction with the predictor backbone; Euler and ancestral samplers; Gaussian-chain likelihood."""

  description = "flow matching"
  sample_options = ("num_steps", "temperature", "sampler")

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.kind != "flow_matching":
      raise ValueError(f"FlowMatching needs model.kind == 'flow_matching', got {cfg.kind!r}")
    self.cfg = cfg
    image = cfg.image
    self.predictor = TrajectoryPredictor(cfg.predictor, image.num_tokens, image.token_dim, dtype=cfg.dtype,
                                         param_dtype=cfg.param_dtype, rngs=rngs, scan_layers=cfg.scan_layers)

  def velocity(self, x_BxNxc: jax.Array, t_B: jax.Array, condition=None,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """v(x_t, t) [B, N, c]."""
    times_Bx2 = jnp.stack([t_B, t_B], axis=1).astype(x_BxNxc.dtype)
    out = self.predictor.network_output(x_BxNxc[:, None], times_Bx2, condition, dropout_key)[:, 0]
    return out[..., :x_BxNxc.shape[-1]]

  def _loss(self, key, x0, labels_B, *, dropout_key):
    """Mean squared velocity error per dimension; parts: `velocity_error` [B] summed over dimensions."""
    time_key, noise_key = jax.random.split(key)
    batch = x0.shape[0]
    t = jax.random.uniform(time_key, (batch,), x0.dtype)
    eps = jax.random.normal(noise_key, x0.shape, x0.dtype)
    x_t = (1.0 - t)[:, None, None] * x0 + t[:, None, None] * eps
    error = self.velocity(x_t, t, labels_B, dropout_key) - (eps - x0)
    velocity_error = jnp.sum(jnp.square(error).reshape(batch, -1), axis=1)
    return jnp.mean(velocity_error) / self.cfg.loss_normaliser, {"velocity_error": velocity_error}

  def posterior(self, x_BxTxNxc: jax.Array, times: jax.Array, condition=None) -> tuple[jax.Array, jax.Array]:
    """(mu, sigma) of the ancestral step from each level: index k - 1 of `x` holds x_{t_k}, and the result
    is the Gaussian over x_{t_{k-1}}; `times` is the grid [T + 1] or per example [B, T + 1]."""
    batch, num_steps = x_BxTxNxc.shape[:2]
    times_BxK = jnp.broadcast_to(times, (batch, num_steps + 1)).astype(x_BxTxNxc.dtype)
    t_BxT, s_BxT = times_BxK[:, 1:], times_BxK[:, :-1]
    flat = x_BxTxNxc.reshape((batch * num_steps,) + x_BxTxNxc.shape[2:])
    v = self.velocity(flat, t_BxT.reshape(-1), conditioning.repeat_each(condition, num_steps))
    v = v.reshape(x_BxTxNxc.shape).astype(jnp.promote_types(x_BxTxNxc.dtype, jnp.float32))
    t, s = t_BxT[:, :, None, None], s_BxT[:, :, None, None]
    x0_hat = x_BxTxNxc - t * v
    return posterior_head(x_BxTxNxc, x0_hat, jnp.zeros_like(v), t, s, self.cfg.predictor.sigma_floor)

  def trajectory_log_prob(self, x_BxKxNxc: jax.Array, times_K: jax.Array, labels_B=None):
    """-log p(X | y) of the ancestral chain and its parts (as NTM's, with f_T = identity: no log-det)."""
    mu, sigma = self.posterior(x_BxKxNxc[:, 1:], times_K, labels_B)
    batch, num_steps = mu.shape[:2]
    return trajectory.trajectory_nll_parts(x_BxKxNxc[:, -1], x_BxKxNxc[:, :-1], mu, sigma,
                                           jnp.zeros((batch, num_steps), mu.dtype))

  def _dependent_evaluations(self, *, num_steps=None, **_) -> int:
    """One velocity (or posterior) evaluation per step."""
    return num_steps or self.cfg.num_steps

  def _forward_flops(self) -> float:
    """One velocity evaluation: the predictor's backbone over one level and the prefix."""
    return flops.predictor_pass(self.cfg.predictor, self.cfg.image.num_tokens, self.cfg.image.token_dim, 1)

  def _sample_flops(self, *, num_steps=None, **_) -> float:
    return (num_steps or self.cfg.num_steps) * self._forward_flops()

  def _sample(self, key: jax.Array, batch_size: int, labels_B=None, *, num_steps: int | None = None,
              sampler: str = "euler", temperature: float = 1.0, dtype=jnp.float32) -> jax.Array:
    """Tokens [B, N, c] after T steps of the `sampler` ("euler" or "ancestral") from x_1 ~ N(0, I)."""
    if sampler not in SAMPLERS:
      raise ValueError(f"unknown flow-matching sampler {sampler!r}; choose one of {SAMPLERS}")
    image = self.cfg.image
    times = self.time_grid(num_steps, dtype)
    noise_key, step_key = jax.random.split(key)
    x = jax.random.normal(noise_key, (batch_size, image.num_tokens, image.token_dim), dtype)
    for k in range(times.shape[0] - 1, 0, -1):
      t, s = times[k], times[k - 1]
      if sampler == "euler":
        x = x + (s - t) * self.velocity(x, jnp.full((batch_size,), t), labels_B)
      else:
        mu, sigma = self.posterior(x[:, None], jnp.stack([s, t]), labels_B)
        z = jax.random.normal(jax.random.fold_in(step_key, k), x.shape, dtype)
        x = mu[:, 0] + temperature * sigma[:, 0] * z
    return x
