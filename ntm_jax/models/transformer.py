"""One Transformer stack for every network here: the predictor, each transporter block and the denoiser.

`depth` identical pre-LayerNorm layers whose parameters are stacked on a leading "layers" axis and applied
with `jax.lax.scan`, so a 28-layer network is one traced layer (compiles in the time of one), or unrolled
(`scan=False`: the same parameters, one straight-line program, which XLA:CPU can run faster for tiny
models). `remat` picks what the backward pass keeps: "none" (every activation), "save_matmuls" (the outputs
of the weight matmuls, jax's dots_with_no_batch_dims_saveable: attention's batched einsums, norms and GELU
are recomputed) or "full" (only each layer's input). Autoregressive decoding keeps one KV cache per layer,
stacked the same way ([depth, B, L, heads, head_dim]), carried through the layers and written in place.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.models import attention as attention_lib
from ntm_jax.models import layers
from ntm_jax.models.config import REMAT_POLICIES
from ntm_jax.models.logical_axes import constrain

# What jax.checkpoint keeps for each policy that ntm_jax.models.config accepts.
SAVED_BY_REMAT = {
    "none": None,
    "save_matmuls": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}
assert tuple(SAVED_BY_REMAT) == REMAT_POLICIES


class TransformerLayer(nnx.Module):
  """Pre-LayerNorm Transformer layer: x + drop(attn(LN(x))), then x + drop(mlp(LN(x))).

  Residual dropout is active only when the caller passes a `dropout_key` (training), so every density
  the model reports outside training is the deterministic one.
  """

  def __init__(self, width: int, head_dim: int, mlp_ratio: int, *, dtype, param_dtype, rngs: nnx.Rngs,
               dropout_rate: float = 0.0, attention: str = "auto"):
    self.dropout_rate = dropout_rate
    norm = lambda: layers.layer_norm(width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attention_norm = norm()
    self.attention = layers.Attention(width, head_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                      implementation=attention)
    self.mlp_norm = norm()
    self.mlp = layers.MLP(width, mlp_ratio * width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x_BxLxD: jax.Array, mask: attention_lib.Mask,
               dropout_key: jax.Array | None = None) -> jax.Array:
    attention_key, mlp_key = layers.split_or_none(dropout_key, 2)
    x_BxLxD = constrain(x_BxLxD, ("batch", "tokens", "embed_act"))
    attended = self.attention(self.attention_norm(x_BxLxD), mask)
    x_BxLxD = x_BxLxD + layers.dropout(attended, self.dropout_rate, attention_key)
    return x_BxLxD + layers.dropout(self.mlp(self.mlp_norm(x_BxLxD)), self.dropout_rate, mlp_key)

  def decode(self, x_BxSxD: jax.Array, cache: layers.KVCache, layer, start, mask_SxL: jax.Array):
    """(outputs, updated cache) for S new tokens at `start` of row `layer` of a stack's cache."""
    attended, cache = self.attention.decode(self.attention_norm(x_BxSxD), cache, layer, start, mask_SxL)
    x_BxSxD = x_BxSxD + attended
    return x_BxSxD + self.mlp(self.mlp_norm(x_BxSxD)), cache


class TransformerStack(nnx.Module):
  """`depth` TransformerLayers with stacked parameters: forward pass and KV-cached decoding."""

  def __init__(self, depth: int, width: int, head_dim: int, mlp_ratio: int, *, dtype, param_dtype,
               rngs: nnx.Rngs, dropout_rate: float = 0.0, remat: str = "none", scan: bool = True,
               attention: str = "auto"):
    if depth < 1:
      raise ValueError(f"a Transformer stack needs depth >= 1, got {depth}")
    if remat not in SAVED_BY_REMAT:
      raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {remat!r}")
    self.depth, self.remat, self.scan = depth, remat, scan
    self.dtype = dtype
    self.num_heads, self.head_dim = width // head_dim, head_dim

    @nnx.split_rngs(splits=depth)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def stacked(layer_rngs):
      return TransformerLayer(width, head_dim, mlp_ratio, dtype=dtype, param_dtype=param_dtype, rngs=layer_rngs,
                              dropout_rate=dropout_rate, attention=attention)

    self.layers = stacked(rngs)
    for _, variable in nnx.iter_graph(self.layers):  # the new leading axis is the layer index
      if isinstance(variable, nnx.Variable):
        variable.set_metadata(logical_axes=("layers",) + tuple(variable.get_metadata()["logical_axes"]))

  def _scan(self, body, carry, xs):
    """Runs body(carry, layer, x) -> (carry, y) over the layers (and `xs`, stacked the same way)."""
    graphdef, params = nnx.split(self.layers)

    def step(carry, sliced):
      layer_params, x = sliced
      return body(carry, nnx.merge(graphdef, layer_params), x)

    with attention_lib.repeated(self.depth):  # the kernels' cost estimate: the body runs `depth` times
      return jax.lax.scan(step, carry, (params, xs), unroll=1 if self.scan else True)

  def __call__(self, x_BxLxD: jax.Array, mask: attention_lib.Mask,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """All layers over a sequence, each token attending where `mask` allows."""

    def body(h, layer, key):
      return layer(h, mask, key), None

    # The residual stream in the compute dtype (bfloat16 on the TPU presets): float32 embedding tables would
    # otherwise promote it, doubling the bytes every layer moves.
    x_BxLxD = x_BxLxD.astype(self.dtype or x_BxLxD.dtype)

    if self.remat != "none":
      # Inside scan the loop already keeps XLA from merging the recomputation away (jax's advice).
      body = jax.checkpoint(body, policy=SAVED_BY_REMAT[self.remat], prevent_cse=not self.scan)
    keys = jax.random.split(dropout_key, self.depth) if dropout_key is not None else None
    with attention_lib.recomputed(self.remat != "none"):  # the kernels' cost estimate counts the recompute
      out, _ = self._scan(body, x_BxLxD, keys)
    return out

  def init_cache(self, batch: int, length: int, dtype) -> layers.KVCache:
    """Empty keys and values for `length` positions, every layer: [depth, batch, length, heads, head_dim]."""
    return layers.KVCache.zeros((self.depth, batch, length, self.num_heads, self.head_dim), dtype)

  def decode(self, x_BxSxD: jax.Array, cache: layers.KVCache, start, mask_SxL: jax.Array):
    """S new tokens through every layer, their keys and values written at position `start` of each layer's
    cache (in place: the stacked cache is carried through the layers, not rebuilt).

    `mask_SxL` ([S, L] or [B, 1, S, L]) says which cache positions each new token may see; positions not
    yet written must be masked out by the caller. Returns (outputs [B, S, width], the updated cache).
    """

    def body(carry, layer, index):
      h, cache = carry
      return layer.decode(h, cache, index, start, mask_SxL), None

    (out, cache), _ = self._scan(body, (x_BxSxD.astype(self.dtype or x_BxSxD.dtype), cache), jnp.arange(self.depth))
    return out, cache


class TokenTransformer(nnx.Module):
  """Tokens in, tokens out: input projection + learned position, the stack, a final LayerNorm, and an output
  projection whose weights and bias start at zero (so every network built on it starts at exactly zero
  output: the identity flow block, the posterior-form head, the identity denoiser)."""

  def __init__(self, num_tokens: int, token_dim: int, out_dim: int, depth: int, width: int, head_dim: int,
               mlp_ratio: int, *, dtype, param_dtype, rngs: nnx.Rngs, dropout_rate: float = 0.0,
               remat: str = "none", scan: bool = True, attention: str = "auto"):
    self.input_projection = layers.linear(token_dim, width, ("token_dim", "embed"), dtype=dtype,
                                          param_dtype=param_dtype, rngs=rngs)
    self.position = layers.PositionEmbedding(num_tokens, width, param_dtype=param_dtype, rngs=rngs)
    self.transformer = TransformerStack(depth, width, head_dim, mlp_ratio, dtype=dtype, param_dtype=param_dtype,
                                        rngs=rngs, dropout_rate=dropout_rate, remat=remat, scan=scan,
                                        attention=attention)
    self.final_norm = layers.layer_norm(width, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.output_projection = layers.linear(
        width, out_dim, ("embed", "token_dim"), dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        kernel_init=nnx.initializers.zeros_init(), bias_init=nnx.initializers.zeros_init())

  def embed(self, tokens: jax.Array, position: jax.Array) -> jax.Array:
    """proj(tokens) + `position` (this network's table, or the rows of it the caller picked)."""
    return self.input_projection(tokens) + position

  def head(self, h: jax.Array) -> jax.Array:
    return self.output_projection(self.final_norm(h))
