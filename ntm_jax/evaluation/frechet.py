"""Distances between a feature set of samples and one of real images: the Frechet distance of their Gaussian
fits (FID when the features are Inception's) and k-nearest-neighbour precision and recall (Kynkaanniemi et
al. 2019). Used by the small judge (sample_quality) and by FID (fid)."""

from __future__ import annotations

import numpy as np


def gaussian_fit(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and unbiased covariance, in float64 (float32 sums over 50,000 features lose FID's last digits)."""
  features = np.asarray(features, np.float64)
  return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance_of_fits(mu_a, cov_a, mu_b, cov_b) -> float:
  """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))."""
  # tr (C_a C_b)^(1/2) = tr (C_a^(1/2) C_b C_a^(1/2))^(1/2): symmetric PSD throughout, so eigh is stable even
  # when the covariances are singular (dead ReLU units, fewer samples than dimensions), where sqrtm of the
  # non-symmetric product returns complex noise.
  values, vectors = np.linalg.eigh(cov_a)
  root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
  trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0.0, None)))
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """The Frechet distance between Gaussian fits of two feature sets [N, D]."""
  return frechet_distance_of_fits(*gaussian_fit(a), *gaussian_fit(b))


def _pairwise_distances(a: np.ndarray, b: np.ndarray, rows: int = 1024):
  """Euclidean distances [len(a), len(b)], a block of rows at a time (never a [N, M, D] array)."""
  b_squared = np.sum(b * b, axis=1)
  for start in range(0, len(a), rows):
    block = a[start:start + rows]
    squared = np.sum(block * block, axis=1)[:, None] + b_squared[None, :] - 2.0 * block @ b.T
    yield start, np.sqrt(np.clip(squared, 0.0, None))


def _radii(features: np.ndarray, k: int) -> np.ndarray:
  """Distance of each point to its k-th nearest neighbour (itself excluded)."""
  radii = np.empty(len(features))
  for start, distances in _pairwise_distances(features, features):
    radii[start:start + len(distances)] = np.partition(distances, k, axis=1)[:, k]  # column k: 0 is itself
  return radii


def _share_inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> float:
  inside = np.zeros(len(points), bool)
  for start, distances in _pairwise_distances(points, centres):
    inside[start:start + len(distances)] = np.any(distances <= radii[None, :], axis=1)
  return float(np.mean(inside))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
  """Precision: share of samples inside the real images' k-NN manifold; recall: share of real images inside
  the samples' manifold."""
  real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
  return _share_inside(fake, real, _radii(real, k)), _share_inside(real, fake, _radii(fake, k))
