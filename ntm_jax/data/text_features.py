"""Text features for a captioned data set: what the input pipeline adds to each example (D4).

Two modes (`config.text.encoder`):
  minilm       the data set has a `caption` string; the frozen MiniLM encoder embeds every distinct
               caption of the split once, up front, and each example looks its caption up.
  precomputed  the data set already holds `text_embedding` [L, E] (and optionally `text_mask` [L]),
               computed offline by any encoder (how T5 or Gemma features are used at scale).
Either way the example gains `text_tokens`, `text_mask` and `text_pooled` (ntm_jax.models.conditioning) and
loses the caption string, which cannot go to a device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from ntm_jax.text import minilm

ENCODERS = ("minilm", "precomputed")


def caption_text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True)
class CaptionTable:
  """Embeddings of a fixed set of captions, looked up by caption."""

  row_of: dict[str, int]
  embeddings: minilm.TextEmbeddings

  @classmethod
  def encode(cls, captions: Sequence[str], max_tokens: int) -> CaptionTable:
    distinct = sorted(set(captions))
    embeddings = minilm.get_encoder(max_tokens).encode(distinct)
    return cls({caption: row for row, caption in enumerate(distinct)}, embeddings)

  def features(self, caption: str) -> dict[str, np.ndarray]:
    row = self.row_of.get(caption)
    if row is None:
      raise KeyError(f"caption {caption!r} is not in the table (it was built from another split?)")
    e = self.embeddings
    return {"text_tokens": e.tokens[row], "text_mask": e.mask[row], "text_pooled": e.pooled[row]}


def encode_prompts(prompts: Sequence[str], max_tokens: int) -> dict[str, np.ndarray]:
  """A batch text condition for sampling-time prompts."""
  e = minilm.get_encoder(max_tokens).encode(list(prompts))
  return {"text_tokens": e.tokens, "text_mask": e.mask, "text_pooled": e.pooled}


def precomputed_features(example: dict, max_tokens: int) -> dict[str, np.ndarray]:
  """Text features from a stored `text_embedding` [L, E] (padded or cut to `max_tokens`)."""
  tokens = np.asarray(example["text_embedding"], np.float32)
  if tokens.ndim != 2:
    raise ValueError(f"text_embedding must be [tokens, width], got shape {tokens.shape}")
  mask = (np.asarray(example["text_mask"], bool) if "text_mask" in example
          else np.ones(tokens.shape[0], bool))
  tokens, mask = tokens[:max_tokens], mask[:max_tokens]
  pad = max_tokens - tokens.shape[0]
  tokens = np.pad(tokens * mask[:, None], ((0, pad), (0, 0)))
  mask = np.pad(mask, (0, pad))
  mean = tokens.sum(0) / max(mask.sum(), 1)
  pooled = mean / max(float(np.linalg.norm(mean)), 1e-12)
  return {"text_tokens": tokens, "text_mask": mask, "text_pooled": pooled.astype(np.float32)}


def make_text_features(source, num_examples: int, features: Sequence[str], encoder: str,
                       max_tokens: int, name: str) -> Callable[[dict], dict]:
  """A function example -> text features for one split of data set `name` (see the module docstring)."""
  if encoder not in ENCODERS:
    raise ValueError(f"unknown text.encoder {encoder!r}; choose one of {ENCODERS}")
  if encoder == "precomputed":
    if "text_embedding" not in features:
      raise ValueError(f"text.encoder='precomputed' needs a `text_embedding` feature; data set {name!r} has "
                       f"{sorted(features)}")
    return lambda example: precomputed_features(example, max_tokens)
  if "caption" not in features:
    raise ValueError(f"a text-conditional model needs a `caption` feature (or text.encoder='precomputed' with "
                     f"`text_embedding`); data set {name!r} has {sorted(features)}")
  captions = [caption_text(source[i]["caption"]) for i in range(num_examples)]
  table = CaptionTable.encode(captions, max_tokens)
  logging.info("encoded %d distinct captions of %d examples of %s", len(table.row_of), num_examples, name)
  return lambda example: table.features(caption_text(example["caption"]))
