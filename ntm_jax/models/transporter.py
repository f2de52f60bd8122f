"""The TarFlow transporter f_T: a stack of affine autoregressive flow blocks over tokens (NTM.md A, D3).

One `FlowBlock` (TarFlow's MetaBlock) in its scan order pi:
  h = causal_transformer(proj_in(x_pi) + pos_pi + emb(t) [+ emb(y)])   (self-inclusive causal mask)
  (a, b) = 4 tanh(proj_out(h) / 4), shifted right by one token          (token 0 passes through)
  sigma = softplus(a + c) / softplus(c) with c = softplus^-1(1),  mu = b
  z = (x_pi - mu) / sigma,   log|det dz/dx| = -sum log sigma
Because (a, b) for token i depend only on tokens < i, the Jacobian in scan order is lower triangular
with diagonal 1 / sigma. Dividing by softplus(c) makes a = 0 give sigma = 1 exactly, so a block whose
`proj_out` is zero (weights and bias, the initialisation) is exactly the identity. Blocks alternate the
scan direction (identity, flip, identity, ...).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.models import attention, conditioning, layers
from ntm_jax.models.config import TransporterConfig
from ntm_jax.models.transformer import TokenTransformer

_SOFTPLUS_INVERSE_OF_ONE = math.log(math.expm1(1.0))
_SOFT_CLIP = 4.0
INVERSION_METHODS = ("sequential", "jacobi")
# Jacobi stops when no value moved by more than this in an iteration: far below a pixel bin (2 / 256).
JACOBI_TOLERANCE = 1e-4


def inversion_options(method: str = "sequential", tolerance: float = JACOBI_TOLERANCE, max_iterations: int = 0) -> dict:
  """Transporter.inverse's options for sample.inversion; the Jacobi settings are refused without Jacobi."""
  if method != "jacobi" and (tolerance != JACOBI_TOLERANCE or max_iterations):
    raise ValueError(f"sample.jacobi_tolerance and sample.jacobi_max_iterations apply to sample.inversion='jacobi', "
                     f"not {method!r}")
  return {"method": method, "tolerance": tolerance, "max_iterations": max_iterations}


def inversion_evaluations(num_blocks: int, num_tokens: int, method: str = "sequential", max_iterations: int = 0,
                          **_) -> int:
  """Dependent network evaluations of inverting `num_blocks` blocks over `num_tokens` tokens: N - 1 one-token
  steps per block token by token, at most the iteration cap (at most N - 1) per block by Jacobi."""
  per_block = num_tokens - 1
  if method == "jacobi" and max_iterations:
    per_block = min(max_iterations, per_block)
  return num_blocks * per_block


def affine_parameters(raw_BxNx2c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mu, log_sigma) from raw outputs, computed in at least float32 (STARFlow's soft clip + softplus)."""
  raw = raw_BxNx2c.astype(layers.compute_dtype_at_least_f32(raw_BxNx2c.dtype))
  raw = _SOFT_CLIP * jnp.tanh(raw / _SOFT_CLIP)
  a, mu = jnp.split(raw, 2, axis=-1)
  offset = jnp.asarray(_SOFTPLUS_INVERSE_OF_ONE, raw.dtype)
  log_sigma = jnp.log(jax.nn.softplus(a + offset)) - jnp.log(jax.nn.softplus(offset))
  return mu, log_sigma


class FlowBlock(nnx.Module):
  """One affine autoregressive flow block with a fixed token order (TarFlow's MetaBlock)."""

  def __init__(self, cfg: TransporterConfig, num_tokens: int, token_dim: int, flip: bool, *,
               dtype, param_dtype, rngs: nnx.Rngs, scan_layers: bool = True):
    self.cfg = cfg
    self.flip = flip
    self.num_tokens = num_tokens
    self.dtype = dtype
    # Zero output projection (weights and bias): the block starts as the exact identity (D3, needed by D9).
    self.network = TokenTransformer(num_tokens, token_dim, 2 * token_dim, cfg.layers_per_block, cfg.width,
                                    cfg.head_dim, cfg.mlp_ratio, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                    dropout_rate=cfg.dropout, remat=cfg.remat, scan=scan_layers,
                                    attention=cfg.attention)
    self.time_embedding = (
        layers.TimeEmbedding(1, cfg.width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if cfg.time_conditioned else None)
    self.class_embedding = (layers.ClassEmbedding(cfg.num_classes, cfg.width, param_dtype=param_dtype, rngs=rngs)
                            if cfg.num_classes else None)
    self.text_embedding = (
        layers.SentenceEmbedding(cfg.text_dim, cfg.width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if cfg.text_dim else None)

  # -- scan order ---------------------------------------------------------------------------------
  def to_scan_order(self, x_BxNxc: jax.Array) -> jax.Array:
    return jnp.flip(x_BxNxc, axis=-2) if self.flip else x_BxNxc

  from_scan_order = to_scan_order  # a flip is its own inverse

  def _conditioning_Bxd(self, t_B: jax.Array, labels_B) -> jax.Array | None:
    """Embedding added to every token: the level time (transporter) and/or the class or text (baseline)."""
    cond = None
    if self.time_embedding is not None:
      cond = self.time_embedding(t_B)
    if self.text_embedding is not None:
      if not conditioning.is_text(labels_B):
        raise ValueError("this flow is text-conditional: pass a text condition (ntm_jax.models.conditioning)")
      text_emb = self.text_embedding(labels_B)
      cond = text_emb if cond is None else cond + text_emb
    if self.class_embedding is not None:
      label_emb = self.class_embedding(labels_B)
      cond = label_emb if cond is None else cond + label_emb
    return cond

  def _hidden(self, x_scan_BxNxc, cond_Bxd, dropout_key=None):
    h = self.network.embed(x_scan_BxNxc, self.to_scan_order(self.network.position())[None])
    if cond_Bxd is not None:
      h = h + cond_Bxd[:, None, :]
    h = self.network.transformer(h, attention.Mask.causal(self.num_tokens), dropout_key)
    return self.network.head(h)

  def _affine_from_previous(self, x_scan_BxNxc, cond_Bxd, dropout_key=None):
    """(mu, log_sigma) of every token from the tokens before it (token 0 gets zeros: the identity)."""
    raw = self._hidden(x_scan_BxNxc, cond_Bxd, dropout_key)
    # Shift right: token i is transformed by the output at i - 1.
    return affine_parameters(jnp.concatenate([jnp.zeros_like(raw[:, :1]), raw[:, :-1]], axis=1))

  # -- data -> noise --------------------------------------------------------------------------------
  def forward(self, x_BxNxc: jax.Array, t_B: jax.Array, labels_B=None,
              dropout_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """z = (x - mu) / sigma in this block's scan order; returns (z, log|det dz/dx| per example).

    With a `dropout_key` (training) the block is a randomly thinned flow, still exactly invertible.
    """
    x_scan = self.to_scan_order(x_BxNxc)
    mu, log_sigma = self._affine_from_previous(x_scan, self._conditioning_Bxd(t_B, labels_B), dropout_key)
    z_scan = (x_scan.astype(mu.dtype) - mu) * jnp.exp(-log_sigma)
    return self.from_scan_order(z_scan), -jnp.sum(log_sigma, axis=(1, 2))

  # -- noise -> data --------------------------------------------------------------------------------
  def inverse_reference(self, z_BxNxc: jax.Array, t_B: jax.Array, labels_B=None) -> jax.Array:
    """Cache-free inverse: token i + 1 from a full causal pass over the tokens decoded so far."""
    z_scan = self.to_scan_order(z_BxNxc)
    cond = self._conditioning_Bxd(t_B, labels_B)

    def decode_token(i, x_scan):
      raw_i = jax.lax.dynamic_index_in_dim(self._hidden(x_scan, cond), i, axis=1, keepdims=False)
      return self._set_next_token(x_scan, z_scan, raw_i, i)

    x_scan = jax.lax.fori_loop(0, self.num_tokens - 1, decode_token, z_scan.at[:, 1:].set(0.0))
    return self.from_scan_order(x_scan)

  def inverse(self, z_BxNxc: jax.Array, t_B: jax.Array, labels_B=None) -> jax.Array:
    """KV-cached inverse: N - 1 one-token Transformer steps under `jax.lax.fori_loop`."""
    z_scan = self.to_scan_order(z_BxNxc)
    batch = z_scan.shape[0]
    cond = self._conditioning_Bxd(t_B, labels_B)
    position_scan = self.to_scan_order(self.network.position())
    # Keys and values are computed in the compute dtype: a wider cache would only cost memory and bandwidth.
    cache_dtype = self.dtype or z_scan.dtype
    caches = self.network.transformer.init_cache(batch, self.num_tokens, cache_dtype)
    key_positions = jnp.arange(self.num_tokens)

    def decode_token(i, carry):
      x_scan, caches = carry
      token = jax.lax.dynamic_index_in_dim(x_scan, i, axis=1, keepdims=True)
      h = self.network.embed(token, jax.lax.dynamic_index_in_dim(position_scan, i, axis=0)[None])
      if cond is not None:
        h = h + cond[:, None, :]
      h, caches = self.network.transformer.decode(h, caches, i, (key_positions <= i)[None, :])
      raw_i = self.network.head(h)[:, 0]
      return self._set_next_token(x_scan, z_scan, raw_i, i), caches

    x_scan, _ = jax.lax.fori_loop(
        0, self.num_tokens - 1, decode_token, (z_scan.at[:, 1:].set(0.0), caches))
    return self.from_scan_order(x_scan)

  def inverse_jacobi(self, z_BxNxc: jax.Array, t_B: jax.Array, labels_B=None, *, tolerance: float = 0.0,
                     max_iterations: int = 0) -> tuple[jax.Array, jax.Array]:
    """Parallel (Jacobi) inverse: every token updated at once from the current guess, x <- z sigma(x) + mu(x).

    By causality token i is exact once tokens < i are, so N - 1 iterations give the exact inverse from any
    start; it stops earlier when no value moved by more than `tolerance` in the last iteration (over the
    whole batch), or at `max_iterations` (0: N - 1); a negative tolerance runs every iteration up to the cap.
    Returns (x, the number of iterations run).
    """
    z_scan = self.to_scan_order(z_BxNxc)
    cond = self._conditioning_Bxd(t_B, labels_B)
    cap = min(max_iterations or self.num_tokens - 1, self.num_tokens - 1)

    def update(x_scan):
      mu, log_sigma = self._affine_from_previous(x_scan, cond)
      return (z_scan.astype(mu.dtype) * jnp.exp(log_sigma) + mu).astype(x_scan.dtype)

    def keep_going(carry):
      _, change, iterations = carry
      return (iterations < cap) & (change > tolerance)

    def iterate(carry):
      x_scan, _, iterations = carry
      new = update(x_scan)
      return new, jnp.max(jnp.abs(new - x_scan)), iterations + 1

    # The start z is exact at token 0 (it passes through) and is the identity's inverse elsewhere.
    start = (z_scan, jnp.asarray(jnp.inf, z_scan.dtype), jnp.asarray(0, jnp.int32))
    x_scan, _, iterations = jax.lax.while_loop(keep_going, iterate, start)
    return self.from_scan_order(x_scan), iterations

  @staticmethod
  def _set_next_token(x_scan, z_scan, raw_i_Bx2c, i):
    """x_{i+1} = z_{i+1} sigma + mu, with (mu, sigma) read from the output at token i."""
    mu, log_sigma = affine_parameters(raw_i_Bx2c)
    z_next = jax.lax.dynamic_index_in_dim(z_scan, i + 1, axis=1, keepdims=False)
    x_next = z_next.astype(mu.dtype) * jnp.exp(log_sigma) + mu
    return jax.lax.dynamic_update_index_in_dim(x_scan, x_next.astype(x_scan.dtype), i + 1, axis=1)


class Transporter(nnx.Module):
  """f_T: `num_blocks` flow blocks with alternating scan directions. Zero blocks is the identity."""

  def __init__(self, cfg: TransporterConfig, num_tokens: int, token_dim: int, *, dtype, param_dtype,
               rngs: nnx.Rngs, scan_layers: bool = True):
    # Blocks differ in scan order, so they stay a list; the layers inside each block are one stack.
    self.blocks = nnx.List([
        FlowBlock(cfg, num_tokens, token_dim, flip=bool(index % 2), dtype=dtype, param_dtype=param_dtype,
                  rngs=rngs, scan_layers=scan_layers)
        for index in range(cfg.num_blocks)])

  def forward(self, x_BxNxc: jax.Array, t_B: jax.Array, labels_B=None,
              dropout_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """u = f_T(x; t) and log|det du/dx| per example (in at least float32); dropout only with a key."""
    logdet = jnp.zeros(x_BxNxc.shape[:1], layers.compute_dtype_at_least_f32(x_BxNxc.dtype))
    for block, block_key in zip(self.blocks, layers.split_or_none(dropout_key, len(self.blocks))):
      x_BxNxc, block_logdet = block.forward(x_BxNxc, t_B, labels_B, block_key)
      logdet = logdet + block_logdet
    return x_BxNxc, logdet

  def inverse(self, u_BxNxc: jax.Array, t_B: jax.Array, labels_B=None, *, use_cache: bool = True,
              method: str = "sequential", tolerance: float = 0.0, max_iterations: int = 0):
    """x = f_T^-1(u; t): the blocks in reverse order, each decoded token by token (`method` "sequential"), or
    by Jacobi iterations with `tolerance` and `max_iterations` ("jacobi", `inverse_jacobi`)."""
    if method not in INVERSION_METHODS:
      raise ValueError(f"unknown inversion {method!r}; choose one of {INVERSION_METHODS}")
    if method == "jacobi":
      return self.inverse_jacobi(u_BxNxc, t_B, labels_B, tolerance=tolerance, max_iterations=max_iterations)[0]
    for block in reversed(self.blocks):
      invert = block.inverse if use_cache else block.inverse_reference
      u_BxNxc = invert(u_BxNxc, t_B, labels_B)
    return u_BxNxc

  def inverse_jacobi(self, u_BxNxc: jax.Array, t_B: jax.Array, labels_B=None, *, tolerance: float = 0.0,
                     max_iterations: int = 0) -> tuple[jax.Array, jax.Array]:
    """x = f_T^-1(u; t) with each block inverted by Jacobi iterations (FlowBlock.inverse_jacobi); returns
    (x, iterations per block [num_blocks], in the order they ran: the last block first)."""
    counts = []
    for block in reversed(self.blocks):
      u_BxNxc, iterations = block.inverse_jacobi(u_BxNxc, t_B, labels_B, tolerance=tolerance,
                                                 max_iterations=max_iterations)
      counts.append(iterations)
    return u_BxNxc, jnp.stack(counts) if counts else jnp.zeros((0,), jnp.int32)
