"""Deterministic weights for the AutoencoderKL reference test, the same on both sides.

tests/data/make_autoencoder_kl_reference.py loads them into diffusers' PyTorch AutoencoderKL, and
tests/autoencoder_kl_test.py into ours, from the state-dict names and shapes the reference file stores; only
numpy is needed, so CI has no torch and no weights file is stored.
"""

import math

import numpy as np

SEED = 20_261_201


def reference_weights(names_and_shapes, seed: int = SEED) -> dict[str, np.ndarray]:
  """diffusers-named float32 tensors: fan-in scaled normal weights, small biases, norm scales near 1."""
  rng = np.random.default_rng(seed)
  tensors = {}
  for name, shape in names_and_shapes:
    shape = tuple(int(d) for d in shape)
    if name.endswith("bias"):
      value = 0.05 * rng.standard_normal(shape)
    elif len(shape) == 1:  # group-norm scales
      value = 1.0 + 0.1 * rng.standard_normal(shape)
    else:
      value = rng.standard_normal(shape) / math.sqrt(math.prod(shape[1:]))
    tensors[name] = value.astype(np.float32)
  return tensors
