"""The building blocks of every network here: projections, attention with masks and a KV cache, MLP,
embeddings of time, position and sentence.

Attention takes a mask (ntm_jax.models.attention.Mask) so the same layer serves the transporter's causal
scan, the predictor's block-causal trajectory and the denoiser's full attention, with the implementation
(XLA, splash, cuDNN) its stack was configured with. Autoregressive decoding goes through `Attention.decode`,
which writes into a preallocated key/value cache with static shapes (`KVCache`), so it runs under `jax.lax`
loops, and attends with the XLA path over a dense mask (a few queries at a time: nothing for a kernel to
fuse). Layers are stacked in ntm_jax.models.transformer.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.models import attention, conditioning, projection
from ntm_jax.models.logical_axes import constrain, param_axes


def linear(in_features: int, out_features: int, axes: tuple, *, dtype, param_dtype, rngs: nnx.Rngs,
           **kwargs) -> nnx.Linear:
  """nnx.Linear whose kernel has logical axes `axes` and whose bias has the output axis, its matmul
  ntm_jax.models.projection's (a backward pass without transposes on the CPU)."""
  return nnx.Linear(in_features, out_features, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                    dot_general=projection.linear_dot_general,
                    kernel_metadata=param_axes(*axes), bias_metadata=param_axes(axes[1]), **kwargs)


def layer_norm(width: int, *, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """nnx.LayerNorm with replicated scale and bias (tiny, read by every shard)."""
  return nnx.LayerNorm(width, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                       scale_metadata=param_axes("norm"), bias_metadata=param_axes("norm"))


class ClassEmbedding(nnx.Module):
  """A learned embedding per class plus one for the null class (label -1, dropped for guidance), initialised
  at 0.01 N(0, 1) as TarFlow's; added to every token of a class-conditional network."""

  def __init__(self, num_classes: int, width: int, *, param_dtype, rngs: nnx.Rngs):
    self.num_classes = num_classes
    self.table = nnx.Embed(num_classes + 1, width, param_dtype=param_dtype, rngs=rngs,
                           embedding_init=nnx.initializers.normal(0.01),
                           embedding_metadata=param_axes("classes", "embed"))

  def __call__(self, labels_B) -> jax.Array:
    """[B, width] for int labels [B] (-1 = the null class)."""
    if labels_B is None or conditioning.is_text(labels_B):
      raise ValueError("this network is class-conditional: pass labels (-1 for the null class)")
    return self.table(jnp.where(labels_B < 0, self.num_classes, labels_B))


def compute_dtype_at_least_f32(dtype) -> jnp.dtype:
  """The dtype for numerically sensitive sums (softmax, log-dets): never below float32."""
  return jnp.promote_types(dtype, jnp.float32)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
  """Keys and values of attention, [B, L, heads, head_dim] per layer (a stack adds a leading layer axis),
  filled left to right."""

  keys: jax.Array
  values: jax.Array

  @classmethod
  def zeros(cls, shape: tuple[int, ...], dtype) -> KVCache:
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


class Attention(nnx.Module):
  """Multi-head self-attention under a mask, by `implementation` (ntm_jax.models.attention), with a KV-cached
  decode path.

  The projections keep the head axis explicit ([width, 3, heads, head_dim] and [heads, head_dim, width]) so
  heads shard over the 'tensor' mesh axis without splitting a fused q|k|v dimension.
  """

  def __init__(self, width: int, head_dim: int, *, dtype, param_dtype, rngs: nnx.Rngs,
               implementation: str = "auto"):
    attention.resolve(implementation)  # refuses an unknown name now, not at the first trace
    if width % head_dim:
      raise ValueError(f"width {width} is not a multiple of head_dim {head_dim}")
    self.num_heads = width // head_dim
    self.head_dim = head_dim
    self.dtype = dtype
    self.implementation = implementation
    # LeCun-normal over the true fan-in (width, and heads x head_dim = width), as nnx.Linear would.
    qkv_init = nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2, 3))
    out_init = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
    self.qkv_kernel = nnx.Param(qkv_init(rngs.params(), (width, 3, self.num_heads, head_dim), param_dtype),
                                **param_axes("embed", "qkv", "heads", "head_dim"))
    self.qkv_bias = nnx.Param(jnp.zeros((3, self.num_heads, head_dim), param_dtype),
                              **param_axes("qkv", "heads", "head_dim"))
    self.output_kernel = nnx.Param(out_init(rngs.params(), (self.num_heads, head_dim, width), param_dtype),
                                   **param_axes("heads", "head_dim", "embed"))
    self.output_bias = nnx.Param(jnp.zeros((width,), param_dtype), **param_axes("embed"))

  def _split_heads(self, x_BxLxD):
    kernel = self.qkv_kernel[...].astype(self.dtype)
    qkv = projection.project(x_BxLxD.astype(self.dtype), kernel, 1)  # [B, L, 3, heads, head_dim]
    qkv = qkv + self.qkv_bias[...].astype(self.dtype)[None, None]
    qkv = constrain(qkv, ("batch", "tokens", "qkv", "heads", "head_dim"))
    return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

  def _project_out(self, out_BxQxHxK):
    out = projection.project(out_BxQxHxK, self.output_kernel[...].astype(self.dtype), 2)
    return out + self.output_bias[...].astype(self.dtype)[None, None]

  def __call__(self, x_BxLxD: jax.Array, mask: attention.Mask) -> jax.Array:
    q, k, v = self._split_heads(x_BxLxD)
    return self._project_out(attention.attend(q, k, v, mask, self.implementation))

  def decode(self, x_BxSxD: jax.Array, cache: KVCache, layer, start, mask_SxL: jax.Array):
    """Writes S new tokens' keys and values at position `start` of this layer's rows of a stack's cache
    ([depth, B, L, heads, head_dim]; this layer is row `layer`), in place, and attends over them.

    `mask_SxL` says which cache positions each new token may see; positions not yet written must be
    masked out by the caller. Returns (output, the updated cache).
    """
    q, k, v = self._split_heads(x_BxSxD)
    write = lambda stacked, rows: jax.lax.dynamic_update_slice(  # noqa: E731
        stacked, rows.astype(stacked.dtype)[None], (layer, 0, start, 0, 0))
    cache = KVCache(write(cache.keys, k), write(cache.values, v))
    out = attention.reference(q, cache.keys[layer], cache.values[layer], mask_SxL)
    return self._project_out(out), cache


class MLP(nnx.Module):
  """Two-layer GELU feed-forward block; the hidden units shard over 'tensor'."""

  def __init__(self, width: int, hidden: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.up = linear(width, hidden, ("embed", "mlp"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.down = linear(hidden, width, ("mlp", "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = constrain(jax.nn.gelu(self.up(x)), ("batch", "tokens", "mlp"))
    return self.down(hidden)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Inverted dropout; the identity when `key` is None (evaluation, sampling, the exactness tests)."""
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def split_or_none(key: jax.Array | None, num: int) -> list:
  """`num` keys from `key`, or `num` Nones when there is no key (no dropout)."""
  return [None] * num if key is None else list(jax.random.split(key, num))


def fourier_features(t_B: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal features of a time t in [0, 1] (scaled by 1000, as in DiT), [B, dim]."""
  half = dim // 2
  frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half) / half)
  angles = 1000.0 * t_B[:, None].astype(frequencies.dtype) * frequencies[None, :]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


class TimeEmbedding(nnx.Module):
  """Embeds one or more times (each in [0, 1]) with Fourier features and a two-layer MLP."""

  def __init__(self, num_times: int, width: int, *, dtype, param_dtype, rngs: nnx.Rngs,
               frequency_dim: int = 128):
    self.frequency_dim = frequency_dim
    self.hidden = linear(num_times * frequency_dim, width, ("time_features", "embed"), dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)
    self.output = linear(width, width, ("embed", None), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.param_dtype = param_dtype

  def __call__(self, *times_B: jax.Array) -> jax.Array:
    features = jnp.concatenate([fourier_features(t, self.frequency_dim) for t in times_B], axis=-1)
    return self.output(jax.nn.silu(self.hidden(features.astype(self.param_dtype))))


class PositionEmbedding(nnx.Module):
  """Learned embedding of the spatial token position, [N, width], initialised at 0.01 N(0, 1)."""

  def __init__(self, num_tokens: int, width: int, *, param_dtype, rngs: nnx.Rngs):
    self.table = nnx.Param(0.01 * jax.random.normal(rngs.params(), (num_tokens, width), param_dtype),
                           **param_axes("tokens", "embed"))

  def __call__(self) -> jax.Array:
    return self.table[...]


class SentenceEmbedding(nnx.Module):
  """A projection of the sentence embedding of a text condition, added to every token like a class
  embedding; examples without a caption (dropped for guidance) get a learned null embedding instead."""

  def __init__(self, text_dim: int, width: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.projection = linear(text_dim, width, ("text_dim", "embed"), dtype=dtype, param_dtype=param_dtype,
                             rngs=rngs)
    self.null = nnx.Param(jnp.zeros((width,), param_dtype), **param_axes("embed"))

  def __call__(self, condition: dict) -> jax.Array:
    """[B, width] for a text condition (ntm_jax.models.conditioning)."""
    projected = self.projection(condition["text_pooled"])
    has_text = conditioning.has_text(condition)[:, None]
    return jnp.where(has_text, projected, self.null[...].astype(projected.dtype)[None])
