"""Data sets and pipeline pieces on data the tests make themselves."""

import gzip

import numpy as np
import pytest

from ntm_jax import data
from ntm_jax.data import dequantization as bits
from ntm_jax.data.builders.mnist5k import mnist5k_splits, read_mnist_csv
from ntm_jax.evaluation.classical_baseline import gaussian_mixture_bpd


def write_fake_mnist_csv(path, rows=200):
  rng = np.random.default_rng(0)
  table = np.concatenate([rng.integers(0, 256, (rows, 784)), np.arange(rows)[:, None] % 10], axis=1)
  with gzip.open(path, "wt") as f:
    np.savetxt(f, table, fmt="%d", delimiter=",")
  return table


def test_mnist_csv_reader_and_stratified_splits(tmp_path):
  path = tmp_path / "mnist.csv.gz"
  table = write_fake_mnist_csv(path, rows=2000)
  images, labels = read_mnist_csv(str(path))
  assert images.shape == (2000, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(images[5].reshape(-1), table[5, :784])
  np.testing.assert_array_equal(labels, table[:, -1])
  splits = mnist5k_splits(str(path))
  assert {k: len(v[1]) for k, v in splits.items()} == {"train": 500, "validation": 500, "test": 1000}
  for _, split_labels in splits.values():  # stratified: every class equally often
    assert np.all(np.bincount(split_labels, minlength=10) == len(split_labels) // 10)


def test_mnist_csv_reader_refuses_other_files(tmp_path):
  path = tmp_path / "bad.csv.gz"
  with gzip.open(path, "wt") as f:
    f.write("1,2,3\n4,5,6\n")
  with pytest.raises(ValueError, match="784 pixel values"):
    read_mnist_csv(str(path))


class ListSource(list):
  pass


def test_eval_batches_cover_the_split_once_with_a_padding_mask():
  source = data.DataSource(ListSource({"image": np.full((2, 2, 1), i), "label": i} for i in range(10)),
                           10, (2, 2, 1), True)
  batches = list(data.eval_batches(source, 4))
  assert [int(b["mask"].sum()) for b in batches] == [4, 4, 2]
  seen = np.concatenate([b["label"][b["mask"] > 0] for b in batches])
  np.testing.assert_array_equal(seen, np.arange(10))


def test_dequantisation_stays_in_its_bin_and_bpd_of_uniform_data_is_log2_k():
  import jax
  images = np.arange(17).reshape(1, 17, 1, 1)
  x = np.asarray(bits.dequantize(images, jax.random.key(0), 17))
  assert np.all(x >= -1) and np.all(x < 1)
  np.testing.assert_array_equal(np.asarray(bits.to_integer_images(x, 17)), images)
  # A uniform density on [-1, 1]^D has log p = -D log 2, hence exactly log2(K) bits per dimension.
  np.testing.assert_allclose(bits.bits_per_dim(5 * np.log(2.0), 5, 17), np.log2(17))


def test_gaussian_mixture_baseline_bits_per_dim():
  rng = np.random.default_rng(0)
  train = rng.normal(0.0, 0.1, (500, 4))
  test = rng.normal(0.0, 0.1, (200, 4))
  bpd, se = gaussian_mixture_bpd(train, test, pixel_levels=17, components=1)
  expected_nll = 4 * (0.5 * np.log(2 * np.pi * 0.01) + 0.5)  # the entropy of N(0, 0.1^2 I_4) in nats
  assert abs(bpd - bits.bits_per_dim(expected_nll, 4, 17)) < 0.1 and 0 < se < 0.1


def test_a_folder_of_images_goes_through_the_same_path(tmp_path, monkeypatch):
  from PIL import Image
  monkeypatch.setenv("NTM_JAX_DATA_DIR", str(tmp_path / "tfds"))
  rng = np.random.default_rng(0)
  for label in ("cats", "dogs"):
    (tmp_path / "images" / label).mkdir(parents=True)
    for i in range(30):
      Image.fromarray(rng.integers(0, 256, (6, 4), dtype=np.uint8)).save(tmp_path / "images" / label / f"{i}.png")
  name = f"folder:{tmp_path / 'images'}"
  splits = {s: data.load_split(name, s) for s in ("train", "validation", "test")}
  assert sum(s.num_examples for s in splits.values()) == 60
  assert splits["train"].image_shape == (6, 4, 1) and splits["train"].has_labels
  batch = next(data.train_iterator(splits["train"], 8, seed=0))
  assert batch["image"].shape == (8, 6, 4, 1) and set(np.unique(batch["label"])) <= {0, 1}
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.load_split(f"folder:{tmp_path / 'nowhere'}", "train")
