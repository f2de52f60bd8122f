"""The distilled denoiser g_phi(u_0, y) -> x_0 (NTM.md C.12): one non-causal pass instead of inverting f_T.

A light Transformer with full attention over the N tokens of the cleanest u-level. It predicts a residual,
x_0 = u_0 + head(...), with a zero-initialised head, so before training it is the identity map (f_T starts
as the identity too). The condition is added to every token: a class embedding, or for a text model a
projection of the caption's sentence embedding (a learned null for the empty caption). It is trained only on
the NTM's own samples (ntm_jax/training/distill.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.models import attention, conditioning, layers
from ntm_jax.models.config import StackConfig
from ntm_jax.models.transformer import TokenTransformer


@dataclasses.dataclass(frozen=True)
class DenoiserConfig(StackConfig):
  depth: int = 2
  width: int = 64
  head_dim: int = 32
  num_classes: int = 0
  text_dim: int = 0  # > 0: conditioned on a caption's sentence embedding of this width

  def __post_init__(self):
    self._check_stack("distill")
    if self.depth < 1:
      raise ValueError(f"distill.depth must be >= 1, got {self.depth}")
    if self.num_classes and self.text_dim:
      raise ValueError("a denoiser is conditioned on class labels or on text, not both")

  @classmethod
  def from_section(cls, section, num_classes: int, text_dim: int = 0) -> DenoiserConfig:
    """The architecture from the config's `distill` section (which also holds its training settings)."""
    return cls(depth=section.depth, width=section.width, head_dim=section.head_dim, mlp_ratio=section.mlp_ratio,
               num_classes=num_classes, text_dim=text_dim, attention=section.get("attention", "auto"))


class Denoiser(nnx.Module):
  """g_phi: u_0 [B, N, c] (and labels or a text condition) -> x_0 [B, N, c]."""

  def __init__(self, cfg: DenoiserConfig, num_tokens: int, token_dim: int, *, dtype=jnp.float32,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.cfg = cfg
    self.num_tokens = num_tokens
    self.network = TokenTransformer(num_tokens, token_dim, token_dim, cfg.depth, cfg.width, cfg.head_dim,
                                    cfg.mlp_ratio, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                    attention=cfg.attention)
    self.class_embedding = (layers.ClassEmbedding(cfg.num_classes, cfg.width, param_dtype=param_dtype, rngs=rngs)
                            if cfg.num_classes else None)
    self.text_embedding = (
        layers.SentenceEmbedding(cfg.text_dim, cfg.width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if cfg.text_dim else None)

  @classmethod
  def for_model(cls, section, model_cfg, seed: int = 0) -> Denoiser:
    """The denoiser of `section`'s architecture (the config's `distill`) for a model's tokens and classes."""
    image = model_cfg.image
    text_dim = model_cfg.predictor.text_dim if model_cfg.condition_kind == "text" else 0
    return cls(DenoiserConfig.from_section(section, model_cfg.num_classes, text_dim), image.num_tokens,
               image.token_dim, rngs=nnx.Rngs(seed))

  def __call__(self, u0_BxNxc: jax.Array, labels_B=None) -> jax.Array:
    h = self.network.embed(u0_BxNxc, self.network.position()[None])
    if self.class_embedding is not None:
      h = h + self.class_embedding(labels_B)[:, None, :]
    if self.text_embedding is not None:
      if not conditioning.is_text(labels_B):
        raise ValueError("this denoiser is text-conditional: pass a text condition (ntm_jax.models.conditioning)")
      h = h + self.text_embedding(labels_B)[:, None, :].astype(h.dtype)
    h = self.network.transformer(h, attention.Mask.full(self.num_tokens))  # non-causal
    return u0_BxNxc + self.network.head(h).astype(u0_BxNxc.dtype)
