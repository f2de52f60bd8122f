"""The one interface of every generative model here: NTM (and its `gaussian` variant), the plain TarFlow
baseline and flow matching (D8, D9).

Everything outside `models/` trains, scores and samples through these methods and never asks which model
it holds:
  loss(key, images, condition, dropout_key=None, **options)   -> (scalar loss, per-example parts)
  log_likelihood(key, images, condition, importance_samples)  -> {"elbo": [B], "iw": [B]}, nats
  sample(key, num_samples, condition, **options)              -> images [B, H, W, C], model space
and, for the models that have a trajectory (NTM, flow matching), `time_grid`, `trajectory_log_prob` and
`forward_trajectory`. Bits/dim follow from `log_likelihood` the same way for every model (D7): an exact
model gives its exact log p(x) as both bounds. An option a model does not have is refused by name.
`images` are continuous, in [-1, 1] (dequantised), [B, H, W, C]; `condition` is None, int labels [B] (-1 =
the null class) or a text condition (ntm_jax.models.conditioning).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.models import flops, patches, trajectory
from ntm_jax.models.config import ModelConfig

# How an error names each sampling option a model may lack.
_OPTION_NAMES = {"num_steps": "a number of steps", "temperature": "a temperature", "guidance_scale": "guidance",
                 "denoise": "trajectory-score denoising", "denoiser": "a distilled denoiser",
                 "sampler": "a choice of sampler", "pairwise_num_steps": "pairwise (t, s) training",
                 "inversion": "a choice of inversion of f_T", "jacobi_tolerance": "a Jacobi tolerance",
                 "jacobi_max_iterations": "a Jacobi iteration cap"}


def _refuse_unknown(options: dict, accepted: tuple[str, ...], description: str) -> None:
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    what = " and ".join(_OPTION_NAMES.get(name, name) for name in unknown)
    raise ValueError(f"{what} {'is' if len(unknown) == 1 else 'are'} not implemented for {description} (options "
                     f"{unknown}; it takes {list(accepted) or 'none'})")


class GenerativeModel(nnx.Module):
  """Base of every model: `cfg` is its ModelConfig; subclasses implement `_loss`, `_sample` and
  `log_likelihood` and list the options they accept."""

  cfg: ModelConfig
  description = "this model"
  loss_options: tuple[str, ...] = ()
  sample_options: tuple[str, ...] = ("temperature",)

  @property
  def num_classes(self) -> int:
    return self.cfg.num_classes

  @property
  def condition_kind(self) -> str:
    return self.cfg.condition_kind

  # -- training -----------------------------------------------------------------------------------------
  @classmethod
  def check_loss_options(cls, cfg: ModelConfig, options: dict) -> None:
    """Raises ValueError naming a training option this model (with this config) does not have."""
    del cfg
    _refuse_unknown(options, cls.loss_options, cls.description)

  def loss(self, key: jax.Array, images_BxHxWxC: jax.Array, condition=None, *,
           dropout_key: jax.Array | None = None, **options):
    """(loss, parts): the training loss, a per-dimension NLL (batch mean), with its per-example parts."""
    self.check_loss_options(self.cfg, options)
    patches.check_images(images_BxHxWxC, self.cfg.image)
    return self._loss(key, patches.patchify(images_BxHxWxC, self.cfg.image.patch_size), condition,
                      dropout_key=dropout_key, **options)

  def _loss(self, key, x0_BxNxc, condition, *, dropout_key, **options):
    raise NotImplementedError

  # -- likelihood ---------------------------------------------------------------------------------------
  def log_likelihood(self, key: jax.Array, images_BxHxWxC: jax.Array, condition=None, *,
                     importance_samples: int = 1) -> dict[str, jax.Array]:
    """Lower bounds on log p(x | y) per example, in nats: the ELBO and the importance-weighted bound."""
    raise NotImplementedError

  # -- sampling -----------------------------------------------------------------------------------------
  def sample(self, key: jax.Array, num_samples: int, condition=None, *, dtype=jnp.float32, **options) -> jax.Array:
    """`num_samples` images [B, H, W, C] in model space (not clipped) with the given sampling options."""
    _refuse_unknown(options, self.sample_options, self.description)
    tokens = self._sample(key, num_samples, condition, dtype=dtype, **options)
    return patches.unpatchify(tokens, self.cfg.image)

  def _sample(self, key, num_samples, condition, *, dtype, **options):
    raise NotImplementedError

  def dependent_evaluations(self, **options) -> int:
    """How many network evaluations one sample with these options takes one after another (each needs the
    last one's result): what bounds a sample's latency however wide the machine. A KV-cached one-token step
    counts as one; Jacobi inversion counts its iteration cap (the run reports how many it took)."""
    _refuse_unknown(options, self.sample_options + ("denoiser",), self.description)
    return self._dependent_evaluations(**options)

  def _dependent_evaluations(self, **options) -> int:
    raise NotImplementedError

  # -- model FLOPs (ntm_jax.models.flops: the architecture's work, not XLA's count) ---------------------
  def train_flops(self) -> float:
    """Model FLOPs of one training example, forward and backward (no remat recompute, no masked attention)."""
    return flops.forward_backward(self._forward_flops())

  def sample_flops(self, *, jacobi_iterations: int | None = None, **options) -> float:
    """Model FLOPs of one sample with these options, every loop iteration counted; Jacobi inversion at its cap
    unless `jacobi_iterations` (all blocks together) says what a run took."""
    _refuse_unknown(options, self.sample_options + ("denoiser",), self.description)
    return self._sample_flops(jacobi_iterations=jacobi_iterations, **options)

  def _forward_flops(self) -> float:
    raise NotImplementedError

  def _sample_flops(self, **options) -> float:
    raise NotImplementedError

  def jacobi_iterations(self, key: jax.Array, num_samples: int, condition=None, *, dtype=jnp.float32,
                        **options) -> jax.Array:
    """The Jacobi iterations each block of f_T took (last block first) when `sample` is called with the same
    arguments and inversion="jacobi": what that path's dependent evaluations really were."""
    raise ValueError(f"{self.description} has no flow to invert by Jacobi iterations")

  # -- trajectories ---------------------------------------------------------------------------------------
  def time_grid(self, num_steps: int | None = None, dtype=jnp.float32) -> jax.Array:
    """t_0 = 0 < ... < t_T = 1 for T = `num_steps` (default: the config's)."""
    raise ValueError(f"{self.description} has no trajectory")

  def trajectory_log_prob(self, x_BxKxNxc: jax.Array, times_K: jax.Array, condition=None, **kwargs) -> dict:
    """-log p(X | y) (`nll`) and its parts for token trajectories [B, T + 1, N, c] on the grid `times_K`."""
    raise ValueError(f"{self.description} has no trajectory (its log p(x) is exact: use log_likelihood, or "
                     "bits_per_dim in the Python API)")

  def forward_trajectory(self, key: jax.Array, images_BxHxWxC: jax.Array, num_steps: int | None = None):
    """X ~ q(X | x_0) of the forward chain: [B, T + 1, H, W, C], level 0 = the images."""
    times = self.time_grid(num_steps, images_BxHxWxC.dtype)
    return trajectory.sample_trajectory(key, images_BxHxWxC, times)

  def distillation_batch(self, key: jax.Array, batch_size: int, condition, *, target: str, temperature: float):
    """(u_0, x_0 target) of the model's own samples, for the distilled denoiser (C.12)."""
    raise ValueError(f"distillation needs an NTM (a u-space trajectory to invert); this run holds "
                     f"{self.description}")


class TrajectoryModel(GenerativeModel):
  """A model with an exact trajectory density on NTM's time grid (NTM, flow matching): its likelihood
  bounds come from forward-chain trajectories (D7)."""

  def time_grid(self, num_steps: int | None = None, dtype=jnp.float32) -> jax.Array:
    return trajectory.time_grid(num_steps or self.cfg.grid.num_steps, self.cfg.grid.shift, dtype)

  def log_likelihood(self, key, images_BxHxWxC, condition=None, *, importance_samples: int = 1):
    """ELBO = E_q[log p(X)] + H[q(x_{1:T} | x_0)] (exact entropy) and IW_M = log mean_m p(X_m) / q(X_m | x_0);
    t_0 = 0, so level 0 is the image itself and both bound log p(x_0)."""
    patches.check_images(images_BxHxWxC, self.cfg.image)
    x0 = patches.patchify(images_BxHxWxC, self.cfg.image.patch_size)
    times = self.time_grid(dtype=x0.dtype)

    def one_sample(key):
      x = trajectory.sample_trajectory(key, x0, times)
      return -self.trajectory_log_prob(x, times, condition)["nll"], trajectory.log_q_trajectory(x, times)

    log_p, log_q = jax.lax.map(one_sample, jax.random.split(key, importance_samples))  # [M, B]
    elbo = jnp.mean(log_p, axis=0) + trajectory.forward_entropy(times, self.cfg.image.num_dims)
    iw = jax.scipy.special.logsumexp(log_p - log_q, axis=0) - math.log(importance_samples)
    return {"elbo": elbo, "iw": iw}
