"""The trajectory predictor f_P: a block-causal Transformer over all conditioning levels (NTM.md C.4-C.6, D4).

Input: the transported levels u_1..u_T. They are laid out noise to data, [u_T, u_{T-1}, ..., u_1], as T N
tokens; each token = proj(u) + spatial position + emb(t_k, t_{k-1}) [+ class or sentence embedding]. A
token of level k attends to every token of levels j >= k (itself and noisier) and to none cleaner, so the
Gaussian it predicts for level k - 1 never depends on level k - 1 or anything cleaner: the exactness
condition of C.6.

Text (D4): the caption's token embeddings, projected, go in front of the levels as a prefix of
`text_tokens` tokens that every level attends to (padding and dropped captions are masked out). Prefix
tokens attend only to the prefix, never to a level, so the prefix cannot carry a cleaner level to a
noisier one.

Head (D4), for the transition t = t_k -> s = t_{k-1} read at level k:
  mu = c_x(t, s) u_k + c_0(t, s) h,   sigma = sqrt(sigma_post(t, s)^2 + floor^2) exp(4 tanh(delta / 4)),
where h is the network's output, optionally plus c_skip(t) u_k (`x0_skip_data_std`, EDM's skip), or, with
`prediction="velocity"`, h = u_k - t v for the network's velocity v. With f_T = identity and h = x0_hat this
is exactly the Gaussian posterior of a flow-matching model (D9).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.models import attention, conditioning, layers, trajectory
from ntm_jax.models.config import PredictorConfig
from ntm_jax.models.transformer import TokenTransformer


def posterior_head(u_t, h, delta, t, s, sigma_floor: float) -> tuple[jax.Array, jax.Array]:
  """(mu, sigma) of p(u_s | u_t) in posterior form; t and s broadcast against u_t."""
  c_x, c_0, sigma_post = trajectory.posterior_coefficients(t, s)
  mu = c_x * u_t + c_0 * h
  sigma_bar = jnp.sqrt(jnp.square(sigma_post) + sigma_floor * sigma_floor)
  sigma = sigma_bar * jnp.exp(4.0 * jnp.tanh(delta / 4.0))
  return mu, jnp.broadcast_to(sigma, jnp.broadcast_shapes(mu.shape, sigma.shape))


def x0_skip_coefficient(t, data_std: float):
  """EDM's c_skip for x_t = (1 - t) x_0 + t eps: the scale of x_t that best predicts x_0 for data of std
  `data_std` (c_skip = data_std^2 (1 - t) / ((1 - t)^2 data_std^2 + t^2); 1 / (1 - t) as t -> 0, 0 at t = 1)."""
  var = data_std * data_std
  return var * (1.0 - t) / (jnp.square(1.0 - t) * var + jnp.square(t))


class TrajectoryPredictor(nnx.Module):
  """f_P: (u_1..u_T, times, condition) -> (mu, sigma) for levels 0..T-1."""

  def __init__(self, cfg: PredictorConfig, num_tokens: int, token_dim: int, *, dtype, param_dtype,
               rngs: nnx.Rngs, scan_layers: bool = True):
    self.cfg = cfg
    self.num_tokens = num_tokens
    self.dtype = dtype
    # Zero output projection: at step 0, h = 0 and delta = 0 (sigma = the posterior scale); also what D9 needs.
    self.network = TokenTransformer(num_tokens, token_dim, 2 * token_dim, cfg.depth, cfg.width, cfg.head_dim,
                                    cfg.mlp_ratio, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                    dropout_rate=cfg.dropout, remat=cfg.remat, scan=scan_layers,
                                    attention=cfg.attention)
    self.level_embedding = layers.TimeEmbedding(2, cfg.width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.class_embedding = (layers.ClassEmbedding(cfg.num_classes, cfg.width, param_dtype=param_dtype, rngs=rngs)
                            if cfg.num_classes else None)
    if cfg.text_dim:
      self.text_projection = layers.linear(cfg.text_dim, cfg.width, ("text_dim", "embed"), dtype=dtype,
                                           param_dtype=param_dtype, rngs=rngs)
      self.text_position = layers.PositionEmbedding(cfg.text_tokens, cfg.width, param_dtype=param_dtype,
                                                    rngs=rngs)
      self.sentence_embedding = layers.SentenceEmbedding(cfg.text_dim, cfg.width, dtype=dtype,
                                                         param_dtype=param_dtype, rngs=rngs)

  @property
  def prefix_length(self) -> int:
    """Tokens in front of the levels: the text prefix (0 without text)."""
    return self.cfg.text_tokens if self.cfg.text_dim else 0

  def attention_mask(self, num_steps: int) -> attention.Mask:
    """Block-causal over the T = `num_steps` levels in noise-to-data order (within-level only for `markov`)."""
    return attention.Mask.block_causal(num_steps, self.num_tokens, within_block_only=self.cfg.markov)

  def __call__(self, u_BxTxNxc: jax.Array, times: jax.Array, condition=None,
               dropout_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Gaussian parameters for every transition at once.

    Args:
      u_BxTxNxc: transported conditioning levels u_1..u_T in level order (index k - 1 holds u_k).
      times: the grid t_0..t_T, shape [T + 1] or per example [B, T + 1].
      condition: int class labels (-1 = null class) or a text condition (ntm_jax.models.conditioning); required
        iff the predictor is conditional.
      dropout_key: enables residual dropout (training only).

    Returns:
      (mu, sigma), each [B, T, N, c] in level order: index k - 1 is the Gaussian over u_{k-1}.
    """
    out = self.network_output(u_BxTxNxc, times, condition, dropout_key)
    times_BxK = jnp.broadcast_to(times, (u_BxTxNxc.shape[0], u_BxTxNxc.shape[1] + 1))
    return self._gaussian(u_BxTxNxc, out, times_BxK[:, 1:, None, None], times_BxK[:, :-1, None, None])

  def network_output(self, u_BxTxNxc: jax.Array, times: jax.Array, condition=None,
                     dropout_key: jax.Array | None = None) -> jax.Array:
    """The raw head output [B, T, N, 2c] (h or velocity, then delta), before the Gaussian of `__call__`.

    The flow-matching model reads its velocity here, with one level and times (t, t).
    """
    batch, num_steps = u_BxTxNxc.shape[:2]
    times_BxK = jnp.broadcast_to(times, (batch, num_steps + 1))
    t_BxT, s_BxT = times_BxK[:, 1:], times_BxK[:, :-1]
    h = self._embed(u_BxTxNxc, t_BxT, s_BxT, condition)
    # Noise-to-data order, flattened to one sequence of T N tokens.
    h = jnp.flip(h, axis=1).reshape(batch, num_steps * self.num_tokens, -1)
    mask = self.attention_mask(num_steps)
    if self.prefix_length:
      h = jnp.concatenate([self._text_prefix(condition), h], axis=1)
      mask = mask.with_prefix(condition["text_mask"])
    h = self.network.transformer(h, mask, dropout_key)[:, self.prefix_length:]
    return jnp.flip(self._head(h).reshape(batch, num_steps, self.num_tokens, -1), axis=1)

  # -- level-by-level decoding with a KV cache over levels (sampling, D6) ------------------------------
  def init_cache(self, batch: int, num_steps: int, dtype, condition=None) -> layers.KVCache:
    """A cache for the prefix and the T = `num_steps` levels of N tokens; a text prefix is written into it here
    (prefilled once, then every level reads it)."""
    length = self.prefix_length + num_steps * self.num_tokens
    # In the compute dtype, which keys and values are computed in (bfloat16 on the TPU presets).
    cache = self.network.transformer.init_cache(batch, length, self.dtype or dtype)
    if not self.prefix_length:
      return cache
    prefix_mask = self._prefix_rows(condition["text_mask"], length)[:, None]
    return self.network.transformer.decode(self._text_prefix(condition), cache, 0, prefix_mask)[1]

  def decode_level(self, u_k_BxNxc: jax.Array, k: int, times: jax.Array, cache: layers.KVCache,
                   condition=None) -> tuple[jax.Array, jax.Array, layers.KVCache]:
    """(mu, sigma) of u_{k-1} from level k, appending level k's keys and values to `cache`.

    Levels must be decoded from k = T down to 1 (`k` static). Level k sits at position (T - k) N of the
    noise-to-data sequence and, as in the block-causal mask, sees itself and every noisier level.
    """
    batch, num_tokens = u_k_BxNxc.shape[:2]
    prefix = self.prefix_length
    length = cache.keys.shape[2]
    num_steps = (length - prefix) // num_tokens
    start = prefix + (num_steps - k) * num_tokens
    times_B = jnp.broadcast_to(times, (batch, num_steps + 1))
    t_Bx1, s_Bx1 = times_B[:, k:k + 1], times_B[:, k - 1:k]
    h = self._embed(u_k_BxNxc[:, None], t_Bx1, s_Bx1, condition)[:, 0]
    key_positions = jnp.arange(length)
    if self.cfg.markov:
      visible = (key_positions >= start) & (key_positions < start + num_tokens)
    else:
      visible = (key_positions >= prefix) & (key_positions < start + num_tokens)
    mask = jnp.broadcast_to(visible[None, :], (num_tokens, length))
    if prefix:  # every level also sees the caption's real tokens
      text_visible = jnp.pad(condition["text_mask"], ((0, 0), (0, length - prefix)))
      mask = (mask[None] | text_visible[:, None, :])[:, None]
    h, cache = self.network.transformer.decode(h, cache, start, mask)
    mu, sigma = self._gaussian(u_k_BxNxc, self._head(h), t_Bx1[:, :, None], s_Bx1[:, :, None])
    return mu, sigma, cache

  # -- shared pieces ------------------------------------------------------------------------------------
  def _text_prefix(self, condition) -> jax.Array:
    """The caption's prefix tokens [B, P, width]: projected encoder tokens + prefix position."""
    if not conditioning.is_text(condition):
      raise ValueError("the predictor is text-conditional: pass a text condition (ntm_jax.models.conditioning)")
    tokens = condition["text_tokens"]
    if tokens.shape[1] != self.prefix_length:
      raise ValueError(f"the predictor takes {self.prefix_length} text tokens, got {tokens.shape[1]} "
                       "(set model.predictor.text_tokens to the encoder's max_tokens)")
    return self.text_projection(tokens) + self.text_position()[None]

  @staticmethod
  def _prefix_rows(text_mask_BxP: jax.Array, length: int) -> jax.Array:
    """[B, P, length]: what each prefix token sees (the real prefix tokens and itself, no level)."""
    batch, prefix = text_mask_BxP.shape
    rows = text_mask_BxP[:, None, :] | jnp.eye(prefix, dtype=bool)[None]
    return jnp.concatenate([rows, jnp.zeros((batch, prefix, length - prefix), bool)], axis=-1)

  def _embed(self, u_BxTxNxc, t_BxT, s_BxT, condition):
    """Token embeddings [B, T, N, width]: proj(u) + position + emb(t_k, t_{k-1}) [+ class or sentence]."""
    batch, num_steps = u_BxTxNxc.shape[:2]
    level_emb = self.level_embedding(t_BxT.reshape(-1), s_BxT.reshape(-1)).reshape(batch, num_steps, 1, -1)
    h = self.network.embed(u_BxTxNxc, self.network.position()[None, None]) + level_emb
    if self.class_embedding is not None:
      h = h + self.class_embedding(condition)[:, None, None, :]
    if self.cfg.text_dim:
      if not conditioning.is_text(condition):
        raise ValueError("the predictor is text-conditional: pass a text condition (ntm_jax.models.conditioning)")
      h = h + self.sentence_embedding(condition)[:, None, None, :]
    return h

  def _head(self, h):
    out = self.network.head(h)
    return out.astype(layers.compute_dtype_at_least_f32(out.dtype))

  def _gaussian(self, u, out, t, s):
    h_pred, delta = jnp.split(out, 2, axis=-1)
    u = u.astype(out.dtype)
    if self.cfg.prediction == "velocity":
      h_pred = u - t * h_pred  # x0_hat = x_t - t v for x_t = (1 - t) x_0 + t eps and v = eps - x_0
    if self.cfg.x0_skip_data_std:
      # The network gives only a correction to a scaled copy of u_t (EDM's c_skip): the last step into
      # t = 0, where mu = h, then needs no copy of the whole token through the network's width.
      h_pred = h_pred + x0_skip_coefficient(t, self.cfg.x0_skip_data_std) * u
    return posterior_head(u, h_pred, delta, t, s, self.cfg.sigma_floor)
