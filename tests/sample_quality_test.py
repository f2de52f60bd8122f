"""Sample-quality metrics: they separate real held-out-like images from corrupted ones."""


import numpy as np
import pytest

from ntm_jax.evaluation import sample_quality

pytestmark = pytest.mark.usefixtures("private_data_dir")


def test_precision_recall_and_frechet_distance_on_known_sets():
  rng = np.random.default_rng(0)
  real = rng.normal(size=(200, 5))
  assert sample_quality.precision_recall(real, real) == (1.0, 1.0)
  assert sample_quality.frechet_distance(real, real) == pytest.approx(0.0, abs=1e-6)
  far = real + 10.0
  assert sample_quality.precision_recall(real, far) == (0.0, 0.0)
  assert sample_quality.frechet_distance(real, far) == pytest.approx(500.0, rel=1e-6)  # 5 dims x 10^2
  collapsed = np.repeat(real[:1], 200, axis=0)  # one mode only: precise, no recall
  precision, recall = sample_quality.precision_recall(real, collapsed)
  assert precision == 1.0 and recall < 0.1


def test_the_judge_scores_real_digits_well_and_noise_badly():
  judge = sample_quality.fit_judge("digits", 17)
  train_images, train_labels = sample_quality.split_images("digits", "train", 17)
  real = sample_quality.score(judge, train_images[:360], train_labels[:360])
  noise = sample_quality.score(judge, np.random.default_rng(0).uniform(-1, 1, (360, 8, 8, 1)),
                               train_labels[:360])
  assert real["class_accuracy"] > 0.95 and noise["class_accuracy"] < 0.3
  assert real["frechet_distance"] < 0.2 * noise["frechet_distance"]
  assert real["precision"] > 0.7 and real["recall"] > 0.7 and noise["precision"] < 0.1
