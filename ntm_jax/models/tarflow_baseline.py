"""The plain TarFlow baseline of D8: the same flow blocks stacked as one flow with a N(0, I) prior.

log p(x | y) = log N(f(x); 0, I) + log|det df/dx|, exact; sampling inverts every block token by token.
Optionally class-conditional (class embedding added to every token of every block, as in TarFlow).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.models import likelihood, patches
from ntm_jax.models.config import ModelConfig
from ntm_jax.models.tarflow import Transporter


class TarFlowBaseline(nnx.Module):
  """A plain TarFlow over tokens [B, N, c]: exact log-likelihood, autoregressive sampling."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    if cfg.kind != "tarflow":
      raise ValueError(f"TarFlowBaseline needs model.kind == 'tarflow', got {cfg.kind!r}")
    self.cfg = cfg
    # A single flow over data has no level time to condition on.
    flow_cfg = dataclasses.replace(cfg.transporter, time_conditioned=False)
    self.flow = Transporter(flow_cfg, cfg.image.num_tokens, cfg.image.token_dim, dtype=cfg.dtype,
                            param_dtype=cfg.param_dtype, rngs=rngs)

  @property
  def num_classes(self) -> int:
    return self.cfg.transporter.num_classes

  @property
  def condition_kind(self) -> str:
    return self.cfg.condition_kind

  def log_prob(self, x_BxNxc: jax.Array, labels_B=None, dropout_key=None) -> dict[str, jax.Array]:
    """-log p(x | y) per example with its parts `prior` and `flow_logdet` (dropout only with a key)."""
    t_dummy = jnp.zeros(x_BxNxc.shape[:1], x_BxNxc.dtype)
    z, logdet = self.flow.forward(x_BxNxc, t_dummy, labels_B, dropout_key)
    prior = likelihood.standard_normal_nll(z)
    return {"prior": prior, "flow_logdet": logdet, "nll": prior - logdet, "z": z}

  def loss(self, key: jax.Array, images_BxHxWxC: jax.Array, labels_B=None, dropout_key=None):
    """Training loss: -log p(x | y) / D, batch mean; `key` is unused (the same signature as NTM.loss)."""
    del key
    image = self.cfg.image
    patches.check_images(images_BxHxWxC, image)
    parts = self.log_prob(patches.patchify(images_BxHxWxC, image.patch_size), labels_B, dropout_key)
    return jnp.mean(parts["nll"]) / image.num_dims, parts

  def sample(self, key: jax.Array, batch_size: int, labels_B=None, *, temperature: float = 1.0,
             dtype=jnp.float32) -> jax.Array:
    """x = f^-1(temperature * z), z ~ N(0, I): N sequential one-token steps per block."""
    image = self.cfg.image
    z = temperature * jax.random.normal(key, (batch_size, image.num_tokens, image.token_dim), dtype)
    return self.flow.inverse(z, jnp.zeros((batch_size,), dtype), labels_B)
