"""Sample quality for the embedded data sets, beside bits/dim: a judge trained here on the real training split.

The judge is a small scikit-learn MLP classifier on the pixels (model space, [-1, 1]). It gives
- accuracy: how often class-conditional samples are classified as the class they were drawn for;
- Frechet distance between Gaussians fitted to its hidden features of samples and of the held-out split;
- precision and recall with k-nearest-neighbour manifolds in that feature space (ntm_jax.evaluation.frechet).
The same numbers for the real training images against the held-out split are the reference a perfect
generator would get (`reference`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from sklearn.neural_network import MLPClassifier

from ntm_jax import data
from ntm_jax.data import dequantization
from ntm_jax.evaluation.frechet import frechet_distance, precision_recall


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
