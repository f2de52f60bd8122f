"""Sample quality for the embedded data sets, beside bits/dim: a judge trained here on the real training split.

The judge is a small scikit-learn MLP classifier on the pixels (model space, [-1, 1]). It gives
- accuracy: how often class-conditional samples are classified as the class they were drawn for;
- Frechet distance between Gaussians fitted to its hidden features of samples and of the held-out split;
- precision and recall with k-nearest-neighbour manifolds in that feature space (Kynkaanniemi et al. 2019):
  precision = share of samples inside the real manifold, recall = share of real images inside the samples'.
The same numbers for the real training images against the held-out split are the reference a perfect
generator would get (`reference`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.neural_network import MLPClassifier

from ntm_jax import data
from ntm_jax.data import dequantization


@dataclasses.dataclass
class Judge:
  classifier: MLPClassifier
  real_features: np.ndarray  # hidden features of the held-out split

  def features(self, images: np.ndarray) -> np.ndarray:
    """ReLU hidden layer of the classifier, [B, hidden]."""
    flat = np.asarray(images, np.float64).reshape(len(images), -1)
    return np.maximum(flat @ self.classifier.coefs_[0] + self.classifier.intercepts_[0], 0.0)


def split_images(name: str, split: str, pixel_levels: int, data_dir: str = "") -> tuple[np.ndarray, np.ndarray]:
  """All images of a split in model space (bin centres in [-1, 1]) and their labels."""
  source = data.load_split(name, split, data_dir)
  batch = next(data.eval_batches(source, source.num_examples))
  images = dequantization.bin_centres(batch["image"], pixel_levels, np.float64)
  return images, batch["label"]


def fit_judge(name: str, pixel_levels: int, data_dir: str = "", held_out: str = "test", seed: int = 0) -> Judge:
  train_images, train_labels = split_images(name, "train", pixel_levels, data_dir)
  classifier = MLPClassifier(hidden_layer_sizes=(128,), max_iter=300, random_state=seed)
  classifier.fit(train_images.reshape(len(train_images), -1), train_labels)
  judge = Judge(classifier, np.zeros((0,)))
  judge.real_features = judge.features(split_images(name, held_out, pixel_levels, data_dir)[0])
  return judge


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) between Gaussian fits of two feature sets."""
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  # tr (C_a C_b)^(1/2) = tr (C_a^(1/2) C_b C_a^(1/2))^(1/2): symmetric PSD throughout, so eigh is stable
  # even when dead ReLU units make the covariances singular.
  values, vectors = np.linalg.eigh(cov_a)
  root_a = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
  trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0.0, None)))
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)


def _radii(features: np.ndarray, k: int) -> np.ndarray:
  distances = np.linalg.norm(features[:, None] - features[None], axis=-1)
  return np.sort(distances, axis=1)[:, k]  # column 0 is the point itself


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
  """k-NN manifold precision (fake inside real) and recall (real inside fake)."""
  real_radii, fake_radii = _radii(real, k), _radii(fake, k)
  cross = np.linalg.norm(fake[:, None] - real[None], axis=-1)  # [fake, real]
  precision = np.mean(np.any(cross <= real_radii[None, :], axis=1))
  recall = np.mean(np.any(cross.T <= fake_radii[None, :], axis=1))
  return float(precision), float(recall)


def score(judge: Judge, samples: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
  """Quality of samples (model space [-1, 1], [B, H, W, C]) against the held-out split."""
  features = judge.features(samples)
  precision, recall = precision_recall(judge.real_features, features)
  results = {"frechet_distance": frechet_distance(features, judge.real_features), "precision": precision,
             "recall": recall, "num_samples": int(len(samples))}
  if labels is not None:
    predicted = judge.classifier.predict(np.asarray(samples, np.float64).reshape(len(samples), -1))
    results["class_accuracy"] = float(np.mean(predicted == np.asarray(labels)))
  return results
