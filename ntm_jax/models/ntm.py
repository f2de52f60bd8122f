"""The Normalizing Trajectory Model: transporter f_T + trajectory predictor f_P (NTM.md C.4-C.9, D1-D6).

Training sees one pass of f_T over all T + 1 levels ([B (T + 1), N, c]) and one pass of f_P over the
T conditioning levels ([B, T N] tokens), and returns the exact trajectory NLL with its parts.
The `gaussian` baseline of D8 is this model with `transporter.num_blocks = 0` (f_T = identity).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.models import conditioning, denoising, flops, guidance, layers, trajectory
from ntm_jax.models.config import ModelConfig
from ntm_jax.models.generative import TrajectoryModel
from ntm_jax.models.predictor import TrajectoryPredictor
from ntm_jax.models.transporter import JACOBI_TOLERANCE, Transporter, inversion_evaluations, inversion_options

DISTILLATION_TARGETS = ("inverse", "denoised")


def check_distillation_target(target: str) -> None:
  if target not in DISTILLATION_TARGETS:
    raise ValueError(f"distill.target must be one of {DISTILLATION_TARGETS}, got {target!r}")


def _refuse_jacobi_extras(options: dict) -> None:
  """Options that change what is inverted (or skip the inversion) have no Jacobi iterations to count."""
  extra = sorted(set(options) - {"inversion"})
  if extra or options.get("inversion", "jacobi") != "jacobi":
    raise ValueError(f"Jacobi iterations are counted for inversion='jacobi' alone, not with {options}")


def _check_pairwise(cfg: ModelConfig) -> None:
  if not cfg.predictor.markov:
    raise ValueError("pairwise training (train.pairwise_num_steps) needs model.predictor.markov=True: one "
                     "transition sees only x_t")


class NTM(TrajectoryModel):
  """Exact trajectory likelihood and level-by-level sampling, on token trajectories [B, T + 1, N, c]."""

  description = "NTM"
  loss_options = ("pairwise_num_steps",)
  sample_options = ("num_steps", "temperature", "guidance_scale", "denoise", "denoiser", "inversion",
                    "jacobi_tolerance", "jacobi_max_iterations")

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.kind != "ntm":
      raise ValueError(f"NTM needs model.kind == 'ntm', got {cfg.kind!r}")
    self.cfg = cfg
    image = cfg.image
    kwargs = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs, scan_layers=cfg.scan_layers)
    self.transporter = Transporter(cfg.transporter, image.num_tokens, image.token_dim, **kwargs)
    self.predictor = TrajectoryPredictor(cfg.predictor, image.num_tokens, image.token_dim, **kwargs)

  def transport(self, x_BxKxNxc: jax.Array, times_K: jax.Array,
                dropout_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """f_T on every level in one batched call: (u [B, K, N, c], log|det| [B, K])."""
    batch, trajectory_length = x_BxKxNxc.shape[:2]
    t_rows = jnp.broadcast_to(times_K.astype(x_BxKxNxc.dtype), (batch, trajectory_length)).reshape(-1)
    u, logdet = self.transporter.forward(x_BxKxNxc.reshape((-1,) + x_BxKxNxc.shape[2:]), t_rows,
                                         dropout_key=dropout_key)
    return u.reshape(x_BxKxNxc.shape[:2] + u.shape[1:]), logdet.reshape(batch, trajectory_length)

  def trajectory_log_prob(self, x_BxKxNxc: jax.Array, times_K: jax.Array, labels_B=None,
                          dropout_key: jax.Array | None = None):
    """-log p(X | y) and its parts for token trajectories X [B, T + 1, N, c] on the grid `times_K`.

    Level 0 is the data end, level T the noise end (t_T = 1); see `trajectory.trajectory_nll_parts`.
    A `dropout_key` turns on residual dropout (training only; the result is then not the model's density).
    """
    num_steps = x_BxKxNxc.shape[1] - 1
    if num_steps < 1 or times_K.shape[-1] != num_steps + 1:
      raise ValueError(
          f"a trajectory of {x_BxKxNxc.shape[1]} levels needs T >= 1 and a grid of T + 1 = "
          f"{num_steps + 1} times, got times of shape {times_K.shape}")
    transport_key, predictor_key = layers.split_or_none(dropout_key, 2)
    u, logdet = self.transport(x_BxKxNxc, times_K, transport_key)
    mu, sigma = self.predictor(u[:, 1:], times_K, labels_B, predictor_key)
    return trajectory.trajectory_nll_parts(x_BxKxNxc[:, -1], u[:, :-1], mu, sigma, logdet[:, :-1])

  def _loss(self, key, x0, labels_B, *, dropout_key, pairwise_num_steps: tuple[int, ...] = ()):
    """The trajectory NLL per dimension, -log p(X | y) / ((T + 1) D), batch mean (D5).

    Parts: those of `trajectory_log_prob` per example, plus `conditioning_x` [B, T, N, c] (x_{t_k} at index
    k - 1), `times` [B, T + 1] and `mu` [B, T, N, c] for the mean alignment of C.8. With
    `pairwise_num_steps` (for example (4, 8, 16)) each example is one transition of a randomly drawn grid
    instead (C.7 pairwise mode, `pairwise_nll`).
    """
    num_dims = self.cfg.image.num_dims
    if pairwise_num_steps:
      parts = self.pairwise_nll(key, x0, pairwise_num_steps, labels_B, dropout_key=dropout_key)
      per_dim = parts["nll"] / ((parts.pop("num_steps_T") + 1) * num_dims)
      return jnp.mean(per_dim), parts
    times = self.time_grid(None, x0.dtype)
    x = trajectory.sample_trajectory(key, x0, times)
    parts = self.trajectory_log_prob(x, times, labels_B, dropout_key)
    parts.update(conditioning_x=x[:, 1:], times=jnp.broadcast_to(times, (x.shape[0], times.shape[0])))
    return jnp.mean(parts["nll"]) / self.cfg.loss_normaliser, parts

  @classmethod
  def check_loss_options(cls, cfg: ModelConfig, options: dict) -> None:
    super().check_loss_options(cfg, options)
    if options.get("pairwise_num_steps"):
      _check_pairwise(cfg)

  def pairwise_nll(self, key: jax.Array, x0_BxNxc: jax.Array, num_steps_choices: tuple[int, ...], labels_B=None,
                   dropout_key: jax.Array | None = None, num_steps_B: jax.Array | None = None):
    """C.7 pairwise mode: an unbiased one-transition estimate of each example's trajectory NLL.

    Per example: T from `num_steps_choices` (or `num_steps_B`), k uniform in 1..T, t = t_k, s = t_{k-1};
    x_s = (1 - s) x_0 + s eps_1 and x_t = r x_s + sqrt(v) eps_2 (the chain's exact pair marginal). Then
      nll = E[prior] + T (-log p(x_s | x_t)),
    whose expectation over k and the noise is E[-log p(X)] on that grid, because a Markov model's
    trajectory NLL is the prior plus its T transitions. The prior enters as its expectation
    D/2 (1 + log 2 pi) (it has no parameters). Needs `predictor.markov`: a block-causal predictor's
    transition also reads the noisier levels, which a pair does not have.
    """
    _check_pairwise(self.cfg)
    batch = x0_BxNxc.shape[0]
    choice_key, level_key, noise_key = jax.random.split(key, 3)
    if num_steps_B is None:
      choices = jnp.asarray(num_steps_choices, jnp.int32)
      num_steps_B = choices[jax.random.randint(choice_key, (batch,), 0, choices.shape[0])]
    k_B = jax.random.randint(level_key, (batch,), 1, num_steps_B + 1)
    dtype = x0_BxNxc.dtype
    t_B = trajectory.grid_time(k_B.astype(dtype), num_steps_B.astype(dtype), self.cfg.grid.shift)
    s_B = trajectory.grid_time((k_B - 1).astype(dtype), num_steps_B.astype(dtype), self.cfg.grid.shift)
    eps_s, eps_t = jax.random.normal(noise_key, (2,) + x0_BxNxc.shape, dtype)
    column = lambda a: a[:, None, None]
    x_s = column(1.0 - s_B) * x0_BxNxc + column(s_B) * eps_s
    r, v = trajectory.transition(t_B, s_B)
    x_t = column(r) * x_s + column(jnp.sqrt(v)) * eps_t
    times_Bx2 = jnp.stack([s_B, t_B], axis=1)
    parts = self.trajectory_log_prob(jnp.stack([x_s, x_t], axis=1), times_Bx2, labels_B, dropout_key)
    scale = num_steps_B.astype(parts["nll"].dtype)
    expected_prior = 0.5 * x0_BxNxc[0].size * (1.0 + math.log(2 * math.pi))
    transition = parts["transition_nll"][:, 0]
    return {
        "prior": jnp.full((batch,), expected_prior, transition.dtype),
        "gaussian": scale * parts["gaussian"], "log_sigma_p": scale * parts["log_sigma_p"],
        "transporter_logdet": scale * parts["transporter_logdet"],
        "transition_nll": transition, "nll": expected_prior + scale * transition, "num_steps_T": num_steps_B,
        "mu": parts["mu"], "conditioning_x": x_t[:, None], "times": times_Bx2,
    }

  def sample_trajectory(self, key: jax.Array, batch_size: int, labels_B=None, *, num_steps: int | None = None,
                        temperature: float = 1.0, guidance_scale: float = 0.0, use_cache: bool = True,
                        decode_all_levels: bool = False, invert: bool = True, inversion: dict | None = None,
                        dtype=jnp.float32) -> dict[str, jax.Array]:
    """D6: x_1 ~ N(0, I), u_T = f_T(x_1; 1), T predictor steps in u-space, then one inversion of f_T.

    With `use_cache` the predictor decodes level by level from a KV cache over levels (N new tokens per
    step); without it, it is re-run on the whole partially filled trajectory at each step (the reference
    the tests compare against: the block-causal mask hides the not-yet-decoded zero levels). A
    `guidance_scale` w > 0 applies STARFlow's Gaussian guidance (C.10) to every step's (mu, sigma),
    using the null label (or the empty caption) for the unconditional branch. `labels_B` is the
    condition: class labels or a text condition (ntm_jax.models.conditioning).

    Returns a dict with `x0` [B, N, c] (unless `invert` is False: a distilled denoiser replaces the
    inversion), `u` [B, T + 1, N, c], `z` [B, T, N, c] (the standard normal draws, level order), and, if
    `decode_all_levels`, `x` [B, T + 1, N, c] (every level inverted). `inversion` holds Transporter.inverse's
    method options (default: token by token).
    """
    inversion = inversion or {}
    image = self.cfg.image
    times = self.time_grid(num_steps, dtype)
    num_steps = times.shape[0] - 1
    noise_key, step_key = jax.random.split(key)
    token_shape = (batch_size, image.num_tokens, image.token_dim)
    x_noise = jax.random.normal(noise_key, token_shape, dtype)
    u_noise, _ = self.transporter.forward(x_noise, jnp.ones((batch_size,), dtype))
    z = jax.random.normal(step_key, (batch_size, num_steps) + token_shape[1:], dtype)

    guided = guidance_scale != 0.0
    if guided and (self.condition_kind == "none" or labels_B is None):
      raise ValueError("guidance needs a conditional model (classes or text) and a condition to guide towards")
    # Guidance runs the conditional and the unconditional (null) branch as one batch of 2B.
    branch_labels = conditioning.concat(labels_B, conditioning.null_like(labels_B)) if guided else labels_B

    def gaussian_step(mu, sigma):
      if guided:
        (mu_c, mu_u), (sigma_c, sigma_u) = jnp.split(mu, 2), jnp.split(sigma, 2)
        mu, sigma = guidance.gaussian_guidance(mu_c, sigma_c, mu_u, sigma_u, guidance_scale)
      return mu, sigma

    def branches(x):
      return jnp.concatenate([x, x]) if guided else x

    u = jnp.zeros((batch_size, num_steps + 1) + token_shape[1:], u_noise.dtype).at[:, num_steps].set(u_noise)
    if use_cache:
      cache = self.predictor.init_cache(branches(u_noise).shape[0], num_steps, u_noise.dtype, branch_labels)
      for k in range(num_steps, 0, -1):
        mu, sigma, cache = self.predictor.decode_level(branches(u[:, k]), k, times, cache, branch_labels)
        mu, sigma = gaussian_step(mu, sigma)
        u = u.at[:, k - 1].set(mu + temperature * sigma * z[:, k - 1])
    else:
      for k in range(num_steps, 0, -1):
        mu, sigma = self.predictor(branches(u[:, 1:]), times, branch_labels)
        mu, sigma = gaussian_step(mu[:, k - 1], sigma[:, k - 1])
        u = u.at[:, k - 1].set(mu + temperature * sigma * z[:, k - 1])

    out = {"u": u, "z": z}
    if invert:
      out["x0"] = self.transporter.inverse(u[:, 0], jnp.zeros((batch_size,), dtype), **inversion)
    if decode_all_levels:
      t_rows = jnp.broadcast_to(times, (batch_size, num_steps + 1)).reshape(-1)
      x_all = self.transporter.inverse(u.reshape((-1,) + token_shape[1:]), t_rows, **inversion)
      out["x"] = x_all.reshape(u.shape).at[:, num_steps].set(x_noise)
    return out

  def _sample(self, key, num_samples, condition=None, *, num_steps=None, temperature=1.0, guidance_scale=0.0,
              denoise=False, denoiser=None, inversion="sequential", jacobi_tolerance=JACOBI_TOLERANCE,
              jacobi_max_iterations=0, dtype=jnp.float32):
    """x_0 tokens: the inversion of f_T (token by token, or by Jacobi iterations: `inversion`), its replacement
    by a distilled `denoiser` g(u_0, y) (C.12), or the trajectory-score estimate at the cleanest noisy level
    (`denoise`, C.11: every level inverted)."""
    if denoise and denoiser is not None:
      raise ValueError("choose one of sample.denoise (score denoising) and the distilled denoiser")
    out = self.sample_trajectory(key, num_samples, condition, num_steps=num_steps, temperature=temperature,
                                 guidance_scale=guidance_scale, decode_all_levels=denoise,
                                 invert=denoiser is None, dtype=dtype,
                                 inversion=inversion_options(inversion, jacobi_tolerance, jacobi_max_iterations))
    if denoiser is not None:
      return denoiser(out["u"][:, 0], condition)
    if denoise:
      times = self.time_grid(num_steps, out["x"].dtype)
      return denoising.denoise_trajectory(self, out["x"], times, condition)[:, 0]
    return out["x0"]

  def _dependent_evaluations(self, *, num_steps=None, denoise=False, denoiser=None, inversion="sequential",
                             jacobi_max_iterations=0, **_) -> int:
    """f_T(x_1) (if f_T has blocks), the caption prefill (text models), T predictor levels, then the
    inversion of f_T (token by token or Jacobi; score denoising inverts every level at once and adds one
    predictor pass), or one pass of a distilled denoiser."""
    image, blocks = self.cfg.image, self.cfg.transporter.num_blocks
    count = (1 if blocks else 0) + (1 if self.condition_kind == "text" else 0)
    count += num_steps or self.cfg.num_steps
    if denoiser is not None:
      return count + 1
    count += inversion_evaluations(blocks, image.num_tokens, inversion, jacobi_max_iterations)
    return count + (1 if denoise else 0)

  def _forward_flops(self) -> float:
    """f_T over the T + 1 levels and the predictor over T levels and the prefix (the full-trajectory loss)."""
    cfg, image = self.cfg, self.cfg.image
    transport = (cfg.num_steps + 1) * flops.flow_forward(cfg.transporter, image.num_tokens, image.token_dim)
    return transport + flops.predictor_pass(cfg.predictor, image.num_tokens, image.token_dim, cfg.num_steps)

  def _sample_flops(self, *, num_steps=None, guidance_scale=0.0, denoise=False, denoiser=None,
                    inversion="sequential", jacobi_iterations=None, **_) -> float:
    """f_T(x_1), the caption prefill and T predictor levels (both branches under guidance), then the inversion
    of f_T, or the denoiser; score denoising inverts u_0 and every level and adds one predictor pass."""
    cfg, image = self.cfg, self.cfg.image
    num_steps = num_steps or cfg.num_steps
    tokens, token_dim = image.num_tokens, image.token_dim
    predictor = flops.predictor_pass(cfg.predictor, tokens, token_dim, num_steps)
    total = flops.flow_forward(cfg.transporter, tokens, token_dim) + (2 if guidance_scale else 1) * predictor
    if denoiser is not None:
      return total + flops.denoiser_pass(denoiser.cfg, tokens, token_dim)
    inverse = flops.flow_inverse(cfg.transporter, tokens, token_dim, inversion, jacobi_iterations)
    if denoise:
      return total + (num_steps + 2) * inverse + predictor
    return total + inverse

  def jacobi_iterations(self, key, num_samples, condition=None, *, dtype=jnp.float32, num_steps=None,
                        temperature=1.0, guidance_scale=0.0, jacobi_tolerance=JACOBI_TOLERANCE,
                        jacobi_max_iterations=0, **options):
    _refuse_jacobi_extras(options)
    out = self.sample_trajectory(key, num_samples, condition, num_steps=num_steps, temperature=temperature,
                                 guidance_scale=guidance_scale, invert=False, dtype=dtype)
    return self.transporter.inverse_jacobi(out["u"][:, 0], jnp.zeros((num_samples,), dtype), tolerance=jacobi_tolerance,
                                           max_iterations=jacobi_max_iterations)[1]

  def distillation_batch(self, key, batch_size, condition, *, target: str, temperature: float):
    """(u_0, x_0 target) of one batch of the model's own samples: the target is the exact inversion
    f_T^-1(u_0) ("inverse") or the trajectory-score estimate of x_0 ("denoised", C.11)."""
    check_distillation_target(target)
    out = self.sample_trajectory(key, batch_size, condition, temperature=temperature,
                                 decode_all_levels=target == "denoised")
    if target == "denoised":
      x0 = denoising.denoise_trajectory(self, out["x"], self.time_grid(dtype=out["x"].dtype), condition)[:, 0]
    else:
      x0 = out["x0"]
    return jax.lax.stop_gradient(out["u"][:, 0]), jax.lax.stop_gradient(x0)
