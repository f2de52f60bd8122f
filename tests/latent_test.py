"""Latent text-to-image: the autoencoder (model, training, loading), `--mode=encode`, and flows trained,
evaluated, sampled and judged over latents, with the errors a user can meet on the way."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ntm_jax
from ntm_jax import data, latents, modes
from ntm_jax.data import text_features
from ntm_jax.latents import latent_dataset
from ntm_jax.models.autoencoder import Autoencoder, AutoencoderConfig
from ntm_jax.parallel import checkpoint
from ntm_jax.training import autoencoder as autoencoder_training
from tests.config_test import load_config

# One xdist worker runs the whole module (pyproject: --dist=loadgroup), so its trained module fixtures are
# built once, not once per worker.
pytestmark = [pytest.mark.usefixtures("private_data_dir"), pytest.mark.xdist_group("latent")]


def test_this_module_is_one_xdist_group(request):
  """Under xdist, --dist=loadgroup names the group in every test id; with pytest 9.2 and xdist 3.8 it did not
  (xdist sets a node attribute pytest no longer reads), so this module's fixtures were trained on both
  workers and CI took 30 instead of about 20 minutes. constraints.txt pins a pytest with which it works."""
  if request.config.getvalue("loadgroup"):
    assert request.node.nodeid.endswith("@latent")


# -- the module --------------------------------------------------------------------------------------------
def test_autoencoder_shapes_and_config_errors():
  cfg = AutoencoderConfig(height=16, width=8, channels=3, downsample=4, latent_channels=2, base_width=8)
  model = Autoencoder(cfg, rngs=nnx.Rngs(0))
  x = jax.random.uniform(jax.random.key(0), (2, 16, 8, 3), minval=-1, maxval=1)
  z = model.encode(x)
  assert z.shape == (2, 4, 2, 2) == (2,) + cfg.latent_shape
  assert model.decode(z).shape == x.shape
  np.testing.assert_allclose(model.from_flow(model.to_flow(z)), z, atol=1e-6)
  with pytest.raises(ValueError, match="power of 2"):
    AutoencoderConfig(downsample=3)
  with pytest.raises(ValueError, match="does not divide"):
    AutoencoderConfig(height=20, downsample=8)
  with pytest.raises(ValueError, match=r"images must have shape \[batch, 16, 8, 3\]"):
    model.loss(jax.random.key(0), jnp.zeros((2, 8, 8, 3)))
  with pytest.raises(ValueError, match="unknown config key.*'depth'"):
    latents.autoencoders.autoencoder_config({"height": 32, "depth": 3})


def test_noise_augmentation_is_in_units_of_each_channels_std():
  cfg = AutoencoderConfig(height=8, width=8, downsample=2, latent_channels=2, base_width=8, noise_std=0.0)
  model = Autoencoder(cfg, rngs=nnx.Rngs(1))
  x = jax.random.uniform(jax.random.key(2), (4, 8, 8, 3), minval=-1, maxval=1)
  clean, parts = model.loss(jax.random.key(3), x)
  np.testing.assert_allclose(clean, jnp.mean(jnp.square(model.reconstruct(x) - x)), rtol=1e-6)
  noisy_model = Autoencoder(AutoencoderConfig(**{**cfg.__dict__, "noise_std": 0.5}), rngs=nnx.Rngs(1))
  noisy, _ = noisy_model.loss(jax.random.key(3), x)
  assert float(noisy) != pytest.approx(float(clean), rel=1e-4)
  # Scaling the encoder's output layer scales the latents, and the noise with them: the decoder sees the same
  # relative corruption, so the encoder cannot escape the noise by growing its latents.
  assert parts["latent_std"] > 0


# -- training and loading ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_autoencoder(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("autoencoder"))
  config = load_config("autoencoder", "smoke")
  results = autoencoder_training.train_autoencoder(config, workdir)
  return workdir, results


def test_autoencoder_run_writes_checkpoints_grids_and_latent_statistics(trained_autoencoder):
  workdir, results = trained_autoencoder
  assert np.isfinite(results["mse"]) and results["best_step"] in (0, 4)
  assert sorted(os.listdir(os.path.join(workdir, "reconstructions"))) == ["step_0000000.png", "step_0000004.png"]
  with open(os.path.join(workdir, "best", "latent_stats.json")) as f:
    stats = json.load(f)
  assert stats["num_examples"] == 20_000 and len(stats["mean"]) == len(stats["scale"]) == 4
  loaded = latents.load_autoencoder(workdir)
  np.testing.assert_allclose(loaded.module.latent_scale[...], stats["scale"], rtol=1e-6)
  assert loaded.latent_shape == (8, 8, 4) and loaded.image_shape == (32, 32, 3)
  assert latents.load_autoencoder(workdir).fingerprint == loaded.fingerprint


@pytest.mark.slow  # the resume itself is the train loop's, tested bit for bit in tests/train_test.py
def test_autoencoder_resumes_where_it_stopped(trained_autoencoder, tmp_path):
  workdir, _ = trained_autoencoder
  config = load_config("autoencoder", "smoke,steps=6")
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  out = autoencoder_training.train_autoencoder(config, resumed)
  steps = sorted(int(name) for name in os.listdir(os.path.join(resumed, "checkpoints")) if name.isdigit())
  assert steps[-1] == 6 and 4 in steps and np.isfinite(out["mse"])


def test_autoencoder_load_errors(trained_autoencoder, tmp_path):
  workdir, _ = trained_autoencoder
  with pytest.raises(FileNotFoundError, match="no config.json"):
    latents.load_autoencoder(str(tmp_path / "nowhere"))
  pixel_run = tmp_path / "pixel_run"
  pixel_run.mkdir()
  (pixel_run / "config.json").write_text(load_config("t2i", "smoke").to_json())
  with pytest.raises(ValueError, match="holds no autoencoder run"):
    latents.load_autoencoder(str(pixel_run))
  # Another architecture's config beside these checkpoints: refused by name, nothing written.
  other = tmp_path / "other_architecture"
  shutil.copytree(workdir, other)
  config = json.loads((other / "config.json").read_text())
  config["autoencoder"]["base_width"] = 16
  (other / "config.json").write_text(json.dumps(config))
  before = sorted(os.listdir(other / "best"))
  with pytest.raises(checkpoint.IncompatibleCheckpointError, match="does not restore"):
    latents.load_autoencoder(str(other))
  assert sorted(os.listdir(other / "best")) == before
  unfinished = tmp_path / "unfinished"
  shutil.copytree(workdir, unfinished)
  os.remove(unfinished / "best" / "latent_stats.json")
  with pytest.raises(FileNotFoundError, match="train it to the end"):
    latents.load_autoencoder(str(unfinished))


# -- encoding ----------------------------------------------------------------------------------------------
def latent_t2i(autoencoder_workdir, extra=""):
  config = load_config("t2i", f"smoke,steps=4,latent={autoencoder_workdir}" + (f",{extra}" if extra else ""))
  config.train.eval_every = 1000
  config.sample.num_samples = 4
  return config


@pytest.fixture(scope="module")
def encoded(trained_autoencoder, tmp_path_factory):
  workdir, _ = trained_autoencoder
  config = latent_t2i(workdir)
  modes.run("encode", config, str(tmp_path_factory.mktemp("encode_run")))
  return config


def test_encode_writes_unit_scale_latents_with_the_same_captions(trained_autoencoder, encoded, capsys):
  workdir, _ = trained_autoencoder
  space = latents.space_of(encoded)
  record = latent_dataset.read_record(space.directory)
  assert record["splits"] == {"train": 20_000, "validation": 1_000, "test": 1_000}
  train_latents = data.load_directory_split(space.directory, "train")
  pixels = data.load_split("shapes", "train")
  assert train_latents.num_examples == 20_000 and train_latents.image_shape == (8, 8, 4)
  # Every example keeps its caption and holds the latent of its own image.
  encode = space.autoencoder.encode_fn()
  for i in (0, 7, 19_999):
    latent, source = train_latents.source[i], pixels.source[i]
    assert text_features.caption_text(latent["caption"]) == text_features.caption_text(source["caption"])
    x = 2.0 * (np.asarray(source["image"], np.float32)[None] + 0.5) / 256 - 1.0
    np.testing.assert_allclose(latent["image"], np.asarray(encode(x))[0], atol=1e-5)
  # The statistics were measured on this split: its flow latents have mean 0 and std 1 per channel.
  z = np.stack([train_latents.source[i]["image"] for i in range(0, 20_000, 10)]).reshape(-1, 4)
  np.testing.assert_allclose(z.mean(0), 0.0, atol=0.05)
  np.testing.assert_allclose(z.std(0), 1.0, atol=0.05)
  # A second encode by the same autoencoder state leaves the data set as it is.
  capsys.readouterr()
  modes.run("encode", encoded, workdir)
  assert "already in" in capsys.readouterr().out


def test_latent_data_errors(trained_autoencoder, encoded, tmp_path):
  workdir, _ = trained_autoencoder
  not_encoded = latent_t2i(workdir)
  not_encoded.latent.data_dir = str(tmp_path / "empty")
  model_cfg = ntm_jax.models.model_config_from_dict(not_encoded.model)
  with pytest.raises(FileNotFoundError, match="no latent data set.*--mode=encode"):
    latents.space_of(not_encoded).load_split(not_encoded, "train", model_cfg)
  wrong_shape = latent_t2i(workdir, "latent_channels=3")
  with pytest.raises(ValueError, match=r"not the latent shape \(8, 8, 4\)"):
    latents.space_of(wrong_shape)
  # Latents of another autoencoder state under this one's directory: refused by fingerprint.
  space = latents.space_of(encoded)
  record = latent_dataset.read_record(space.directory)
  with pytest.raises(ValueError, match="another autoencoder state"):
    latent_dataset.check_encoded(space.directory, "0" * 12, "encode")
  assert latent_dataset.read_record(space.directory) == record
  digits = latent_t2i(workdir)
  digits.data.name = "digits"
  digits.latent.data_dir = str(tmp_path / "digits_latents")
  with pytest.raises(ValueError, match=r"images of shape \(8, 8, 1\).*encodes \(32, 32, 3\)"):
    modes.run("encode", digits, str(tmp_path / "digits_run"))


# -- flows over latents ------------------------------------------------------------------------------------
def test_latent_ntm_trains_evaluates_samples_and_judges_in_latent_units(encoded, tmp_path, capsys):
  workdir = str(tmp_path / "latent_ntm")
  modes.run("train", encoded, workdir)
  results = json.loads(open(os.path.join(workdir, "eval_results.json")).read())
  assert np.isfinite(results["nats_per_dim_iw"]) and not any(k.startswith("bpd") for k in results)
  grid = os.path.join(workdir, "samples", "step_0000004.png")
  assert os.path.isfile(grid)
  capsys.readouterr()
  modes.run("eval", encoded, workdir, "test")
  assert "test nats per latent dim of step" in capsys.readouterr().out
  modes.run("sample", encoded, workdir)
  npz = np.load(os.path.join(workdir, "samples", "sample_4_T4_w0_seed0.npz"))
  assert npz["images"].shape == (4, 32, 32, 3) and npz["model_space"].shape == (4, 8, 8, 4)
  encoded.judge.update(prompts_per_category=1, samples_per_prompt=1, batch_size=6)
  modes.run("judge", encoded, workdir)
  assert "overall" in capsys.readouterr().out
  # The API decodes samples, encodes images for likelihoods and refuses pixel bits/dim (D7).
  model = ntm_jax.load(workdir)
  images = model.sample(2, prompts="a red circle")
  assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
  nats = model.nats_per_latent_dim(images, prompts="a red circle", importance_samples=2)
  assert nats.shape == (2,) and np.all(np.isfinite(nats))
  with pytest.raises(ValueError, match="pixel bits/dim of a latent model"):
    model.bits_per_dim(images, prompts="a red circle")
  assert model.forward_trajectory(images, steps=4).shape == (2, 5, 8, 8, 4)


def test_pixel_bits_per_dim_is_refused_for_a_latent_run(encoded, tmp_path):
  config = latent_t2i(encoded.latent.autoencoder)
  config.eval.best_metric = "bpd_iw"
  workdir = tmp_path / "refused"
  with pytest.raises(ValueError, match="D7"):
    modes.run("train", config, str(workdir))
  assert not (workdir / "checkpoints").exists()


def test_latent_presets_compile_without_their_autoencoder():
  """The pod presets name a VAE the CPU does not have: compiling their step needs only the latent shape."""
  config = load_config("t2i", "smoke,latent=/no/such/autoencoder")
  space = latents.space_of(config, load=False)
  stored = jnp.zeros((2, 8, 8, 4))
  noisy = space.to_model(stored, jax.random.key(0))
  assert noisy.shape == stored.shape and 0.05 < float(jnp.std(noisy)) < 0.2
  with pytest.raises(ValueError, match="without its autoencoder"):
    space.to_pixels(stored)
  with pytest.raises(FileNotFoundError, match="no config.json"):
    latents.space_of(config)
