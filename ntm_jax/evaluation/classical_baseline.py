"""A classical reference for held-out bits/dim: scikit-learn's GaussianMixture (full covariance).

Fit on the same uniformly dequantised training images as the flows (scaled to [-1, 1]), choose the number
of components and the covariance regulariser on the validation split, report the test split with the same
BPD formula (D7).

  python -m ntm_jax.evaluation.classical_baseline --data=digits --components=1,2,5,10,20 --reg_covar=1e-6,1e-3,1e-2
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
from sklearn.mixture import GaussianMixture

from ntm_jax import data
from ntm_jax.data import dequantization


def dequantized_split(name: str, split: str, pixel_levels: int, seed: int) -> np.ndarray:
  source = data.load_split(name, split)
  images = np.stack([np.asarray(source.source[i]["image"], np.float64) for i in range(source.num_examples)])
  noise = np.random.default_rng(seed).uniform(size=images.shape)
  return (2.0 * (images + noise) / pixel_levels - 1.0).reshape(len(images), -1)


def gaussian_mixture_bpd(train_x, eval_x, pixel_levels: int, components: int, seed: int = 0,
                         reg_covar: float = 1e-6) -> tuple[float, float]:
  """(mean, standard error) of bits/dim of `eval_x` under a full-covariance mixture fit on `train_x`."""
  mixture = GaussianMixture(components, covariance_type="full", random_state=seed, max_iter=500,
                            reg_covar=reg_covar).fit(train_x)
  bpd = dequantization.bits_per_dim(-mixture.score_samples(eval_x), eval_x.shape[1], pixel_levels)
  return float(np.mean(bpd)), float(np.std(bpd, ddof=1) / math.sqrt(len(bpd)))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--data", default="digits")
  parser.add_argument("--pixel_levels", type=int, default=17)
  parser.add_argument("--components", default="1,2,5,10,20")
  parser.add_argument("--reg_covar", default="1e-6,1e-3,1e-2")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  train_x = dequantized_split(args.data, "train", args.pixel_levels, args.seed)
  validation_x = dequantized_split(args.data, "validation", args.pixel_levels, args.seed + 1)
  test_x = dequantized_split(args.data, "test", args.pixel_levels, args.seed + 2)
  rows = []
  for components in map(int, args.components.split(",")):
    for reg_covar in map(float, args.reg_covar.split(",")):
      validation, _ = gaussian_mixture_bpd(train_x, validation_x, args.pixel_levels, components, args.seed, reg_covar)
      rows.append((validation, components, reg_covar))
      print(f"{components:3d} components, reg_covar {reg_covar:g}: validation {validation:.4f} bits/dim", flush=True)
  _, best, best_reg = min(rows)
  test, test_se = gaussian_mixture_bpd(train_x, test_x, args.pixel_levels, best, args.seed, best_reg)
  print(f"selected {best} components, reg_covar {best_reg:g} on validation: test {test:.4f} +- {test_se:.4f} "
        f"bits/dim ({len(test_x)} images)")
  print(json.dumps({"data": args.data, "components": best, "reg_covar": best_reg, "test_bpd": test,
                    "test_bpd_se": test_se}))


if __name__ == "__main__":
  main()
