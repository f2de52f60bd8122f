"""The distilled denoiser g_phi(u_0, y) -> x_0 (NTM.md C.12): one non-causal pass instead of inverting f_T.

A light Transformer with full attention over the N tokens of the cleanest u-level. It predicts a residual,
x_0 = u_0 + head(...), with a zero-initialised head, so before training it is the identity map (f_T starts
as the identity too). It is trained only on the NTM's own samples (ntm_jax/distill.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.models import layers


@dataclasses.dataclass(frozen=True)
class DenoiserConfig:
  depth: int = 2
  width: int = 64
  head_dim: int = 32
  mlp_ratio: int = 4
  num_classes: int = 0

  def __post_init__(self):
    if self.depth < 1:
      raise ValueError(f"distill.depth must be >= 1, got {self.depth}")


class Denoiser(nnx.Module):
  """g_phi: u_0 [B, N, c] (and labels) -> x_0 [B, N, c]."""

  def __init__(self, cfg: DenoiserConfig, num_tokens: int, token_dim: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    self.num_tokens = num_tokens
    self.input_projection = layers.linear(token_dim, cfg.width, ("token_dim", "embed"), dtype=dtype,
                                          param_dtype=param_dtype, rngs=rngs)
    self.position = layers.PositionEmbedding(num_tokens, cfg.width, param_dtype=param_dtype, rngs=rngs)
    self.class_embedding = (
        layers.embed(cfg.num_classes + 1, cfg.width, param_dtype=param_dtype, rngs=rngs)
        if cfg.num_classes else None)
    self.layers = nnx.List([
        layers.TransformerLayer(cfg.width, cfg.head_dim, cfg.mlp_ratio, dtype=dtype, param_dtype=param_dtype,
                                rngs=rngs)
        for _ in range(cfg.depth)])
    self.final_norm = layers.layer_norm(cfg.width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.head = layers.linear(cfg.width, token_dim, ("embed", "token_dim"), dtype=dtype, param_dtype=param_dtype,
                              rngs=rngs, kernel_init=nnx.initializers.zeros_init(),
                              bias_init=nnx.initializers.zeros_init())

  def __call__(self, u0_BxNxc: jax.Array, labels_B=None) -> jax.Array:
    h = self.input_projection(u0_BxNxc) + self.position()[None]
    if self.class_embedding is not None:
      if labels_B is None:
        raise ValueError("the denoiser is class-conditional: pass labels (-1 for the null class)")
      h = h + self.class_embedding(jnp.where(labels_B < 0, self.cfg.num_classes, labels_B))[:, None, :]
    full = jnp.ones((self.num_tokens, self.num_tokens), dtype=bool)  # non-causal
    for layer in self.layers:
      h = layer(h, full)
    return u0_BxNxc + self.head(self.final_norm(h)).astype(u0_BxNxc.dtype)
