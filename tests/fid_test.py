"""FID: the Frechet distance and precision/recall against direct formulas, the reference-statistics files and
their errors, and (under -m slow) --mode=fid_stats and --mode=fid end to end with deterministic Inception weights."""

import json

import numpy as np
import pytest
import scipy.linalg

from ntm_jax import modes
from ntm_jax.data.builders import mnist5k
from ntm_jax.evaluation import fid, frechet
from ntm_jax.training import train
from tests.config_test import load_config
from tests.data_test import write_fake_mnist_csv

pytestmark = pytest.mark.usefixtures("private_data_dir")


def test_frechet_distance_equals_the_closed_form_and_scipys_sqrtm():
  rng = np.random.default_rng(0)
  mu_a, mu_b = rng.standard_normal(6), rng.standard_normal(6)
  var_a, var_b = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
  closed = np.sum((mu_a - mu_b) ** 2) + np.sum(var_a + var_b - 2 * np.sqrt(var_a * var_b))
  assert frechet.frechet_distance_of_fits(mu_a, np.diag(var_a), mu_b, np.diag(var_b)) == pytest.approx(closed)
  a, b = rng.standard_normal((500, 6)), rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6)) + 1.0
  (ma, ca), (mb, cb) = frechet.gaussian_fit(a), frechet.gaussian_fit(b)
  scipy_fid = np.sum((ma - mb) ** 2) + np.trace(ca + cb - 2 * np.real(scipy.linalg.sqrtm(ca @ cb)))
  assert frechet.frechet_distance(a, b) == pytest.approx(scipy_fid, rel=1e-9)
  assert frechet.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_blocked_precision_recall_equals_the_direct_count():
  rng = np.random.default_rng(1)
  real, fake = rng.standard_normal((1500, 5)), rng.standard_normal((1300, 5)) * 0.7 + 0.3  # several row blocks
  k = 3

  def radii(x):
    return np.sort(np.linalg.norm(x[:, None] - x[None], axis=-1), axis=1)[:, k]

  cross = np.linalg.norm(fake[:, None] - real[None], axis=-1)
  precision = np.mean(np.any(cross <= radii(real)[None], axis=1))
  recall = np.mean(np.any(cross.T <= radii(fake)[None], axis=1))
  assert frechet.precision_recall(real, fake, k) == pytest.approx((precision, recall), abs=1e-12)
  assert 0.5 < precision < 1.0 and 0.3 < recall < 1.0


def test_fewer_images_than_a_full_rank_covariance_needs_is_refused():
  with pytest.raises(fid.TooFewImagesError, match="2048 images give a rank-deficient covariance.*at least 2049"):
    fid.check_full_rank(2048, "fid.num_samples")
  fid.check_full_rank(2049, "fid.num_samples")
  config = load_config("digits", "smoke")  # digits' train split has 1,293 images: FID cannot be defined on it
  with pytest.raises(fid.TooFewImagesError, match=r"'digits' split 'train': 1293 images"):
    modes.run("fid_stats", config, "unused")


def _stats_file(path, **meta):
  values = {"version": 1, "data": "digits", "split": "train", "image_shape": [8, 8, 1], "num_images": 3000,
            "input_size": 299, "weights": "abc", **meta}
  np.savez(path, mu=np.zeros(2048), sigma=np.eye(2048), features=np.zeros((4, 2048), np.float32),
           meta=json.dumps(values))
  return str(path)


def test_reference_statistics_of_another_data_set_resolution_or_network_are_refused(tmp_path):
  config = load_config("digits", "smoke")
  good = _stats_file(tmp_path / "good.npz")
  assert fid.load_reference_statistics(good, config, "abc", (8, 8, 1))["num_images"] == 3000
  for meta, message in (({"data": "shapes"}, "data = 'shapes', but this run has data = 'digits'"),
                        ({"image_shape": [32, 32, 3]}, r"image_shape = \[32, 32, 3\], but this run has image_shape"),
                        ({"input_size": 75}, "input_size = 75, but this run has input_size = 299"),
                        ({"weights": "other"}, "weights = 'other', but this run has weights = 'abc'")):
    path = _stats_file(tmp_path / "bad.npz", **meta)
    with pytest.raises(fid.ReferenceStatisticsError, match=message):
      fid.load_reference_statistics(path, config, "abc", (8, 8, 1))
  other = tmp_path / "other.npz"
  np.savez(other, images=np.zeros(3))
  with pytest.raises(fid.ReferenceStatisticsError, match="not an FID reference-statistics file"):
    fid.load_reference_statistics(str(other), config, "abc", (8, 8, 1))
  truncated = tmp_path / "truncated.npz"
  truncated.write_bytes(open(good, "rb").read()[:5000])  # a copy cut short
  with pytest.raises(fid.ReferenceStatisticsError, match="not an FID reference-statistics file"):
    fid.load_reference_statistics(str(truncated), config, "abc", (8, 8, 1))
  with pytest.raises(FileNotFoundError, match="compute them once with .*--mode=fid_stats"):
    fid.load_reference_statistics(str(tmp_path / "missing.npz"), config, "abc", (8, 8, 1))


def test_fid_without_weights_says_what_to_bring():
  config = load_config("digits", "smoke")
  config.fid.num_samples = 2049
  with pytest.raises(FileNotFoundError, match="fid.inception_weights is empty.*nothing is downloaded"):
    modes.run("fid", config, "unused")


@pytest.mark.slow
def test_fid_stats_and_fid_modes_end_to_end(tmp_path, monkeypatch):
  """A 2-step mnist model (fake mnist5k digits) against its training split, Inception at 75 x 75 with the
  deterministic reference weights: the statistics are written once, and the FID run records its settings."""
  from tests.inception_test import REFERENCE  # pylint: disable=import-outside-toplevel
  from tests.inception_reference_weights import reference_weights  # pylint: disable=import-outside-toplevel
  csv = tmp_path / "mnist_5k.csv.gz"
  write_fake_mnist_csv(csv, rows=3600)  # train split: 2,100 images
  monkeypatch.setattr(mnist5k, "mnist5k_csv_path", lambda: str(csv))
  with np.load(REFERENCE) as stored:
    weights = reference_weights(list(zip(stored["names"].tolist(), json.loads(str(stored["shapes"])))))
  np.savez(tmp_path / "inception.npz", **weights)
  config = load_config("mnist", "conditional,smoke,steps=2")
  config.train.eval_every = 1000
  config.sample.num_samples = 4
  config.fid.update(inception_weights=str(tmp_path / "inception.npz"), input_size=75, batch_size=525,
                    num_samples=2100, stats_dir=str(tmp_path / "stats"))
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  stats = fid.compute_reference_statistics(config)
  assert stats["num_images"] == 2100 and stats["data"] == "mnist5k" and stats["image_shape"] == [28, 28, 1]
  results = fid.fid_of_checkpoint(config, workdir)
  assert results["reference"] == stats["path"] and results["num_samples"] == 2100
  assert np.isfinite(results["fid"]) and results["fid"] > 0 and 0 <= results["precision"] <= 1
  assert results["num_steps_T"] == 4 and results["seed"] == 0 and results["step"] == 2
  with open(results["json"]) as f:
    assert json.load(f)["fid"] == pytest.approx(results["fid"])
  # The data set against its own statistics: FID 0.
  with np.load(stats["path"]) as s:
    assert frechet.frechet_distance_of_fits(s["mu"], s["sigma"], s["mu"], s["sigma"]) == pytest.approx(0, abs=1e-6)
