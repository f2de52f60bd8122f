"""Scaled dot-product attention: one function, three implementations, chosen by config (`attention`).

- "xla": einsum -> float32 softmax -> einsum with the dense mask; the reference, and the CPU's default.
- "splash": Pallas splash attention (jax.experimental.pallas.ops.tpu.splash_attention), the TPU's default.
  It never writes the [B, heads, L, L] scores to HBM, and it skips every (query block, key block) tile its
  static mask rules out, so block-causal attention costs its density. Off a TPU it runs in the Pallas
  interpreter (the tests).
- "cudnn": jax.nn.dot_product_attention, which runs cuDNN's fused kernel on a GPU for bfloat16 and float16
  (the GPU's default) and its XLA form elsewhere, so its wrapper is tested on the CPU too.
- "auto": by the platform of the mesh being traced for (a TPU topology compiled ahead of time counts as TPU).

Every implementation reads one `Mask`: a static [L, L] pattern (the same for every example, so the kernel
can plan its tiles at trace time) and optional per-example segment ids (a token sees only keys of its own
segment: how padded caption tokens are kept out). A masked key gets exactly zero weight and exactly zero
gradient in every implementation, which the causality tests check.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from ntm_jax.models import logical_axes

IMPLEMENTATIONS = ("auto", "xla", "splash", "cudnn")
_AUTO = {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn", "rocm": "cudnn"}
# The kernel's tile: its sequence blocks must be multiples of the TPU's 128 lanes.
SPLASH_ALIGNMENT = 128


@dataclasses.dataclass(frozen=True)
class Mask:
  """Which keys each query may attend to: `allowed` [L, L] (numpy, static) and, optionally, per-example
  `segment_ids` [B, L] (a query attends only to keys of its own segment)."""

  allowed: np.ndarray
  segment_ids: jax.Array | None = None

  @classmethod
  def full(cls, length: int) -> Mask:
    return cls(np.ones((length, length), bool))

  @classmethod
  def causal(cls, length: int) -> Mask:
    """Self-inclusive lower-triangular: position i attends to positions <= i."""
    return cls(np.tril(np.ones((length, length), bool)))

  @classmethod
  def block_causal(cls, num_blocks: int, block_size: int, *, within_block_only: bool = False) -> Mask:
    """Blocks of `block_size` tokens; block b attends to blocks <= b (or only to b). Full inside a block."""
    block_of = np.arange(num_blocks * block_size) // block_size
    if within_block_only:
      return cls(block_of[:, None] == block_of[None, :])
    return cls(block_of[:, None] >= block_of[None, :])

  def with_prefix(self, prefix_valid_BxP: jax.Array) -> Mask:
    """This mask behind a prefix of P tokens (a caption) that every token sees where `prefix_valid` is True.

    Prefix tokens see only the prefix, never what follows, so the prefix cannot carry anything from one
    token to another. Invalid (padding) prefix tokens form their own segment: no valid token sees them,
    and they see only each other, so no row is empty and nothing visible depends on them.
    """
    if self.segment_ids is not None:
      raise ValueError("a mask takes one prefix")
    batch, prefix = prefix_valid_BxP.shape
    length = self.allowed.shape[0]
    allowed = np.zeros((prefix + length, prefix + length), bool)
    allowed[:, :prefix] = True
    allowed[prefix:, prefix:] = self.allowed
    padding = jnp.logical_not(prefix_valid_BxP).astype(jnp.int32)
    segment_ids = jnp.concatenate([padding, jnp.zeros((batch, length), jnp.int32)], axis=1)
    return Mask(allowed, segment_ids)

  def dense(self) -> jax.Array:
    """The boolean mask every implementation applies: [L, L], or [B, 1, L, L] with segment ids."""
    allowed = jnp.asarray(self.allowed)
    if self.segment_ids is None:
      return allowed
    same = self.segment_ids[:, :, None] == self.segment_ids[:, None, :]
    return (allowed[None] & same)[:, None]


def resolve(implementation: str) -> str:
  """The implementation "auto" stands for under the current mesh's platform (else the default backend)."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {implementation!r}; choose one of {IMPLEMENTATIONS}")
  if implementation != "auto":
    return implementation
  return _AUTO.get(_platform(), "xla")


def _platform() -> str:
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    return mesh.abstract_device.platform
  return jax.default_backend()


def attend(q_BxLxHxK: jax.Array, k_BxLxHxK: jax.Array, v_BxLxHxK: jax.Array, mask: Mask,
           implementation: str = "auto") -> jax.Array:
  """softmax(q k^T / sqrt(K) + mask) v, [B, L, heads, K]; the softmax is never below float32."""
  implementation = resolve(implementation)
  if implementation == "splash":
    return _splash(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask)
  if implementation == "cudnn":
    return _dot_product_attention(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask)
  return reference(q_BxLxHxK, k_BxLxHxK, v_BxLxHxK, mask.dense())


def reference(q_BxQxHxK, k_BxLxHxK, v_BxLxHxK, mask_QxL) -> jax.Array:
  """The XLA path over a dense mask ([Q, L] or [B, 1, Q, L]); also the KV-cached decode's attention."""
  softmax_dtype = jnp.promote_types(q_BxQxHxK.dtype, jnp.float32)
  logits = jnp.einsum("bqhk,blhk->bhql", q_BxQxHxK, k_BxLxHxK, preferred_element_type=softmax_dtype)
  logits = logits / math.sqrt(q_BxQxHxK.shape[-1])
  # A finite "minus infinity": exp underflows to exactly 0, so masked keys get exactly zero weight
  # and exactly zero gradient, which the causality tests rely on.
  logits = jnp.where(mask_QxL, logits, jnp.finfo(softmax_dtype).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v_BxLxHxK.dtype)
  return jnp.einsum("bhql,blhk->bqhk", weights, v_BxLxHxK)


# -- cuDNN (jax.nn.dot_product_attention) ------------------------------------------------------------------
def _dot_product_attention(q, k, v, mask: Mask) -> jax.Array:
  causal = mask.segment_ids is None and np.array_equal(mask.allowed, np.tril(np.ones_like(mask.allowed)))
  dense = None if causal else mask.dense()
  if dense is not None and dense.ndim == 2:
    dense = dense[None, None]
  # cuDNN's fused kernel takes half precision only; otherwise the same call runs its XLA form.
  fused = _platform() in ("gpu", "cuda") and q.dtype in (jnp.bfloat16, jnp.float16)
  return jax.nn.dot_product_attention(q, k, v, mask=dense, is_causal=causal,
                                      implementation="cudnn" if fused else None)


# -- splash (Pallas, TPU) ----------------------------------------------------------------------------------
def _padded_length(length: int) -> int:
  return -(-length // SPLASH_ALIGNMENT) * SPLASH_ALIGNMENT


def _block(padded: int) -> int:
  """The largest tile of 512, 256 or 128 that divides the padded length."""
  return next(b for b in (512, 256, SPLASH_ALIGNMENT) if padded % b == 0)


def _wide_block(padded: int) -> int:
  """The largest multiple of 128 up to 512 that divides the padded length (384 for the predictor's 1,152)."""
  return next(b for b in range(512, 0, -SPLASH_ALIGNMENT) if padded % b == 0)


@dataclasses.dataclass(frozen=True)
class SplashTiles:
  """Query and key tile sizes of the forward pass and of the fused backward. A pass re-reads the operands of
  its inner loop once per outer tile: the forward reads keys and values once per query tile, the backward
  reads queries and output gradients once per key tile and writes a partial dq per key tile. So the wide
  tile goes on the outer side of each pass; the inner side stays narrow, to skip masked tiles finely."""

  forward_q: int
  forward_kv: int
  backward_q: int
  backward_kv: int

  @classmethod
  def for_length(cls, padded: int) -> SplashTiles:
    wide, narrow = _wide_block(padded), _block(padded)
    return cls(forward_q=wide, forward_kv=narrow, backward_q=narrow, backward_kv=wide)


def _padded_pattern(allowed: np.ndarray) -> np.ndarray:
  """`allowed` padded to the kernel's alignment: real queries never see padding; padding sees only padding
  (so its rows are never empty)."""
  length = allowed.shape[0]
  padded = _padded_length(length)
  out = np.zeros((padded, padded), bool)
  out[:length, :length] = allowed
  out[length:, length:] = True
  return out


def _splash_modules():
  """Pallas' TPU kernels, imported only where splash runs."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel  # noqa: PLC0415
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask  # noqa: PLC0415
  return splash_attention_kernel, splash_attention_mask


def _splash_kernel(pattern: np.ndarray, num_heads: int, interpret: bool):
  """The kernel for one static pattern. Made inside the trace that runs it: its tile tables are staged into
  that trace (a kernel cached across traces would carry another trace's values)."""
  kernel_lib, mask_lib = _splash_modules()
  tiles = SplashTiles.for_length(pattern.shape[0])
  sizes = kernel_lib.BlockSizes(block_q=tiles.forward_q, block_kv=tiles.forward_kv,
                                block_kv_compute=tiles.forward_kv, block_q_dkv=tiles.backward_q,
                                block_kv_dkv=tiles.backward_kv,
                                # it must divide the key tile (384 and 256 make 128)
                                block_kv_dkv_compute=math.gcd(tiles.backward_q, tiles.backward_kv),
                                use_fused_bwd_kernel=True)
  heads = mask_lib.MultiHeadMask([mask_lib.NumpyMask(pattern)] * num_heads)
  return kernel_lib.make_splash_mha(heads, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _splash(q, k, v, mask: Mask) -> jax.Array:
  batch, length, num_heads, head_dim = q.shape
  pattern = _padded_pattern(mask.allowed)
  padded = pattern.shape[0]
  _record_kernel_cost(pattern, batch, num_heads, head_dim, q.dtype)
  segment_ids = mask.segment_ids
  qkv_names, segment_names = ("batch", "tokens", "heads", "head_dim"), ("batch", "tokens")
  qkv_spec = logical_axes.spec_for(qkv_names, q.shape)
  local_heads = num_heads // _shards(qkv_spec, 2)
  interpret = _platform() != "tpu"

  def local(q, k, v, segment_ids):
    kernel = _splash_kernel(pattern, local_heads, interpret)
    pad = lambda x: jnp.pad(x, ((0, 0), (0, padded - length)) + ((0, 0),) * (x.ndim - 2))  # noqa: E731
    # The kernel takes [heads, L, K] per example and applies no scale.
    q, k, v = (jnp.swapaxes(pad(x), 1, 2) for x in (q / math.sqrt(head_dim), k, v))
    if segment_ids is None:
      out = jax.vmap(kernel)(q, k, v)
    else:
      segments = _splash_modules()[0].SegmentIds
      out = jax.vmap(lambda q, k, v, i: kernel(q, k, v, segment_ids=segments(i, i)))(q, k, v, pad(segment_ids))
    return jnp.swapaxes(out, 1, 2)[:, :length]

  if qkv_spec is None:  # no mesh: one device
    return local(q, k, v, segment_ids)
  # A Pallas kernel is opaque to XLA's partitioner: run it per shard (examples and heads are independent).
  segment_spec = logical_axes.spec_for(segment_names, (batch, length))
  specs = (qkv_spec,) * 3 + ((segment_spec,) if segment_ids is not None else ())
  per_shard = jax.shard_map(lambda *a: local(*a[:3], a[3] if len(a) > 3 else None), in_specs=specs,
                            out_specs=qkv_spec, check_vma=False)
  return per_shard(q, k, v, *(() if segment_ids is None else (segment_ids,)))


def _shards(spec, dim: int) -> int:
  """How many shards `spec` splits dimension `dim` into on the current mesh."""
  entry = spec[dim] if spec is not None and dim < len(spec) else None
  if entry is None:
    return 1
  mesh = jax.sharding.get_abstract_mesh()
  names = entry if isinstance(entry, tuple) else (entry,)
  return math.prod(mesh.shape[name] for name in names)


# -- the kernels' cost, for the compile report --------------------------------------------------------------
@dataclasses.dataclass
class KernelCost:
  """What the splash kernels traced in a program do, forward and backward (XLA counts a kernel as nothing),
  every layer of a stack counted (XLA's own counts take a scanned stack's layer once)."""

  backward: bool = False
  repeats: int = 1  # how many times what is being traced runs (see `repeated`)
  forward_runs: int = 1  # 2 where remat recomputes the forward in the backward pass (see `recomputed`)
  flops: float = 0.0
  hbm_bytes: float = 0.0
  calls: int = 0


_LEDGER: contextvars.ContextVar[KernelCost | None] = contextvars.ContextVar("ntm_jax_kernel_cost", default=None)

# Matmuls of [tile, K] x [K, tile] per computed tile: forward QK^T and PV; the fused backward recomputes
# QK^T and adds dP = dO V^T, dV = P^T dO, dK = dS^T Q and dQ = dS K.
_FORWARD_MATMULS, _BACKWARD_MATMULS = 2, 5


@contextlib.contextmanager
def repeated(times: int):
  """Kernels traced inside run `times` times (a layer stack traces its layer once, for every layer)."""
  cost = _LEDGER.get()
  if cost is None:
    yield
    return
  outer = cost.repeats
  cost.repeats = outer * times
  try:
    yield
  finally:
    cost.repeats = outer


@contextlib.contextmanager
def recomputed(active: bool = True):
  """Kernels traced inside run their forward a second time in the backward pass (remat "save_matmuls" and
  "full" keep no kernel output: the compiled train step calls each forward kernel twice)."""
  cost = _LEDGER.get()
  if cost is None or not active:
    yield
    return
  outer = cost.forward_runs
  cost.forward_runs = 2
  try:
    yield
  finally:
    cost.forward_runs = outer


@contextlib.contextmanager
def kernel_costs(backward: bool):
  """Collects the cost of every splash kernel traced inside (forward, plus backward if `backward`)."""
  cost = KernelCost(backward)
  token = _LEDGER.set(cost)
  try:
    yield cost
  finally:
    _LEDGER.reset(token)


def _visited(pattern: np.ndarray, block_q: int, block_kv: int) -> np.ndarray:
  """[query tiles, key tiles]: the tiles a kernel visits (any allowed pair in them)."""
  padded = pattern.shape[0]
  return pattern.reshape(padded // block_q, block_q, padded // block_kv, block_kv).any(axis=(1, 3))


def _record_kernel_cost(pattern: np.ndarray, batch: int, num_heads: int, head_dim: int, dtype) -> None:
  cost = _LEDGER.get()
  if cost is None:
    return
  padded = pattern.shape[0]
  tiles = SplashTiles.for_length(padded)
  itemsize = jnp.dtype(dtype).itemsize
  per_head = batch * num_heads * cost.repeats
  # The kernel computes every pair of a tile it visits. The forward reads each visited tile's key and value
  # blocks and passes queries and outputs once.
  forward = _visited(pattern, tiles.forward_q, tiles.forward_kv).sum()
  forward_runs = cost.forward_runs if cost.backward else 1  # remat's recompute exists only with a backward
  flops = forward_runs * _FORWARD_MATMULS * forward * tiles.forward_q * tiles.forward_kv
  elements = forward_runs * (forward * tiles.forward_kv * 2 * head_dim + 2 * padded * head_dim)
  if cost.backward:
    # The fused backward reads each visited tile's query and output-gradient blocks, reads k and v and
    # writes dk and dv once, reads each visited tile's log-sum-exp and di rows (about one more [L, K] pass at
    # these sizes: counted as one), and writes a partial dq per key tile, which XLA then sums.
    backward = _visited(pattern, tiles.backward_q, tiles.backward_kv).sum()
    flops += _BACKWARD_MATMULS * backward * tiles.backward_q * tiles.backward_kv
    elements += (backward * tiles.backward_q * 2 * head_dim + 5 * padded * head_dim
                 + padded // tiles.backward_kv * padded * head_dim)
  cost.flops += 2.0 * flops * head_dim * per_head
  cost.hbm_bytes += float(elements) * itemsize * per_head
  cost.calls += cost.repeats
