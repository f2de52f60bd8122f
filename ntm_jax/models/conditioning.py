"""The condition y of p(x | y): nothing, a class label, or a text (D4), and its null form for guidance.

A class condition is an int array [B] (-1 = the null class). A text condition is a dict of arrays
  text_tokens [B, L, E]  the frozen encoder's token embeddings (zero at padding)
  text_mask   [B, L]     True for real tokens
  text_pooled [B, E]     the sentence embedding
whose null form (a dropped caption) has no real tokens: the model then uses its learned null embedding.
Both kinds are pytrees, so they pass through jit, sharding and the sampler unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TEXT_KEYS = ("text_tokens", "text_mask", "text_pooled")


def is_text(condition) -> bool:
  return isinstance(condition, dict)


def from_batch(batch: dict, kind: str):
  """The condition stored in a data batch for a model conditioned on `kind` ("none", "label", "text")."""
  if kind == "none":
    return None
  if kind == "label":
    return batch["label"]
  return {key: batch[key] for key in TEXT_KEYS}


def null_like(condition):
  """The unconditional branch of guidance: the null class, or a text with no tokens."""
  if is_text(condition):
    return jax.tree.map(jnp.zeros_like, condition)
  return jnp.full_like(condition, -1)


def drop(key: jax.Array, condition, rate: float):
  """Replaces each example's condition by the null one with probability `rate` (training, for guidance)."""
  if condition is None or rate == 0.0:
    return condition
  batch = jax.tree.leaves(condition)[0].shape[0]
  dropped = jax.random.bernoulli(key, rate, (batch,))
  if not is_text(condition):
    return jnp.where(dropped, -1, condition)
  keep = lambda x: jnp.where(dropped.reshape((batch,) + (1,) * (x.ndim - 1)), jnp.zeros_like(x), x)
  return jax.tree.map(keep, condition)


def concat(first, second):
  """Two conditions as one batch (the conditional and unconditional branches of guidance)."""
  return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), first, second)


def has_text(condition) -> jax.Array:
  """[B] bool: whether each example has a caption (False for a dropped or empty one)."""
  return jnp.any(condition["text_mask"], axis=-1)


def repeat_each(condition, times: int):
  """Each example's condition `times` times in a row ([B] -> [B * times]), for a batch folded with levels."""
  if condition is None:
    return None
  return jax.tree.map(lambda x: jnp.repeat(x, times, axis=0), condition)
