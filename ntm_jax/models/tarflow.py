"""The plain TarFlow baseline of D8: the same flow blocks stacked as one flow with a N(0, I) prior.

log p(x | y) = log N(f(x); 0, I) + log|det df/dx|, exact; sampling inverts every block token by token.
Optionally conditioned like TarFlow: an embedding of the class (or of the caption's sentence embedding)
added to every token of every block.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.models import flops, patches, trajectory
from ntm_jax.models.config import ModelConfig
from ntm_jax.models.generative import GenerativeModel
from ntm_jax.models.transporter import JACOBI_TOLERANCE, Transporter, inversion_evaluations, inversion_options


class TarFlow(GenerativeModel):
  """A plain TarFlow over tokens [B, N, c]: exact log-likelihood, autoregressive sampling."""

  description = "the TarFlow baseline"
  sample_options = ("temperature", "inversion", "jacobi_tolerance", "jacobi_max_iterations")

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.kind != "tarflow":
      raise ValueError(f"TarFlow needs model.kind == 'tarflow', got {cfg.kind!r}")
    self.cfg = cfg
    # A single flow over data has no level time to condition on.
    flow_cfg = dataclasses.replace(cfg.transporter, time_conditioned=False)
    self.flow = Transporter(flow_cfg, cfg.image.num_tokens, cfg.image.token_dim, dtype=cfg.dtype,
                            param_dtype=cfg.param_dtype, rngs=rngs, scan_layers=cfg.scan_layers)

  def log_prob(self, x_BxNxc: jax.Array, labels_B=None, dropout_key=None) -> dict[str, jax.Array]:
    """-log p(x | y) per example with its parts `prior` and `flow_logdet` (dropout only with a key)."""
    t_dummy = jnp.zeros(x_BxNxc.shape[:1], x_BxNxc.dtype)
    z, logdet = self.flow.forward(x_BxNxc, t_dummy, labels_B, dropout_key)
    prior = trajectory.standard_normal_nll(z)
    return {"prior": prior, "flow_logdet": logdet, "nll": prior - logdet, "z": z}

  def _loss(self, key, x0_BxNxc, labels_B, *, dropout_key):
    """-log p(x | y) / D, batch mean; `key` is unused (the flow has no noise to draw)."""
    del key
    parts = self.log_prob(x0_BxNxc, labels_B, dropout_key)
    return jnp.mean(parts["nll"]) / self.cfg.loss_normaliser, parts

  def log_likelihood(self, key, images_BxHxWxC, condition=None, *, importance_samples: int = 1):
    """The exact log p(x | y), as both bounds."""
    del key, importance_samples
    patches.check_images(images_BxHxWxC, self.cfg.image)
    log_p = -self.log_prob(patches.patchify(images_BxHxWxC, self.cfg.image.patch_size), condition)["nll"]
    return {"elbo": log_p, "iw": log_p}

  def _sample(self, key, num_samples, condition=None, *, temperature: float = 1.0, inversion="sequential",
              jacobi_tolerance=JACOBI_TOLERANCE, jacobi_max_iterations=0, dtype=jnp.float32):
    """x = f^-1(temperature * z), z ~ N(0, I): N sequential one-token steps per block, or Jacobi iterations."""
    image = self.cfg.image
    z = temperature * jax.random.normal(key, (num_samples, image.num_tokens, image.token_dim), dtype)
    return self.flow.inverse(z, jnp.zeros((num_samples,), dtype), condition,
                             **inversion_options(inversion, jacobi_tolerance, jacobi_max_iterations))

  def _dependent_evaluations(self, *, inversion="sequential", jacobi_max_iterations=0, **_) -> int:
    """The inversion of the flow: its blocks one after another, each token by token (or by Jacobi)."""
    return inversion_evaluations(self.cfg.transporter.num_blocks, self.cfg.image.num_tokens, inversion,
                                 jacobi_max_iterations)

  def _forward_flops(self) -> float:
    return flops.flow_forward(self.cfg.transporter, self.cfg.image.num_tokens, self.cfg.image.token_dim)

  def _sample_flops(self, *, inversion="sequential", jacobi_iterations=None, **_) -> float:
    return flops.flow_inverse(self.cfg.transporter, self.cfg.image.num_tokens, self.cfg.image.token_dim,
                              inversion, jacobi_iterations)

  def jacobi_iterations(self, key, num_samples, condition=None, *, dtype=jnp.float32, temperature=1.0,
                        jacobi_tolerance=JACOBI_TOLERANCE, jacobi_max_iterations=0, inversion="jacobi"):
    if inversion != "jacobi":
      raise ValueError(f"Jacobi iterations are counted for inversion='jacobi', not {inversion!r}")
    image = self.cfg.image
    z = temperature * jax.random.normal(key, (num_samples, image.num_tokens, image.token_dim), dtype)
    return self.flow.inverse_jacobi(z, jnp.zeros((num_samples,), dtype), condition, tolerance=jacobi_tolerance,
                                    max_iterations=jacobi_max_iterations)[1]
