"""The Python API (ntm_jax.load): sampling, per-image bits/dim and trajectory log-densities, uint8 in and out."""

import math
import pathlib
import re
import textwrap

import numpy as np
import pytest

import ntm_jax
from ntm_jax import data, latents
from ntm_jax.evaluation import bits_per_dim
from ntm_jax.models import trajectory
from ntm_jax.parallel import checkpoint
from ntm_jax.training import train
from tests.config_test import load_config

# One xdist worker runs the whole module (pyproject: --dist=loadgroup), so its trained module fixtures are
# built once, not once per worker.
pytestmark = [pytest.mark.usefixtures("private_data_dir"), pytest.mark.xdist_group("api")]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
  """A class-conditional digits NTM trained for a few steps (what the API needs: a workdir)."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = load_config("digits", "conditional,smoke,steps=4")
  config.train.eval_every = 1000
  config.sample.num_samples = 4
  train.train_and_evaluate(config, workdir)
  return config, workdir


def validation_levels(config):
  source = data.load_split(config.data.name, "validation", config.data.data_dir)
  batch = next(data.eval_batches(source, source.num_examples))
  return batch["image"].astype(np.uint8), batch["label"]


def test_sample_gives_uint8_images_on_the_data_sets_levels(digits_run):
  _, workdir = digits_run
  model = ntm_jax.load(workdir)
  assert model.step == 4 and model.condition_kind == "label" and "T = 4" in repr(model)
  images = model.sample(6, labels=[0, 1, 2, 3, 4, 5], seed=1)
  assert images.shape == (6, 8, 8, 1) and images.dtype == np.uint8
  assert set(np.unique(images)) <= {round(k * 255 / 16) for k in range(17)}  # 17 levels stretched to 0..255
  np.testing.assert_array_equal(images, model.sample(6, labels=[0, 1, 2, 3, 4, 5], seed=1))
  assert np.any(images != model.sample(6, labels=[0, 1, 2, 3, 4, 5], seed=2))
  assert model.sample(3, labels=7, steps=2, guidance=1.0).shape == (3, 8, 8, 1)
  with pytest.raises(ValueError, match="class-conditional: pass labels"):
    model.sample(2)
  with pytest.raises(ValueError, match="pass labels, not prompts"):
    model.sample(2, prompts=["a seven"])


def test_bits_per_dim_per_image_agrees_with_the_held_out_evaluation(digits_run):
  config, workdir = digits_run
  model = ntm_jax.load(workdir)
  levels, labels = validation_levels(config)
  stretched = np.round(levels.astype(np.float64) * 255 / 16).astype(np.uint8)
  bpd = model.bits_per_dim(stretched, labels=labels, importance_samples=4)
  assert bpd.shape == (len(levels),) and bpd.dtype == np.float64
  # Integer levels as stored in the data set are the same images.
  np.testing.assert_allclose(model.bits_per_dim(levels, labels=labels, importance_samples=4, levels=True), bpd)
  # The split's mean matches ntm_jax.evaluation.bits_per_dim on the same checkpoint (other random draws: within 4 SE).
  graphdef, params, _, model_cfg = checkpoint.restore_params(config, workdir, "best")
  source = data.load_split(config.data.name, "validation", config.data.data_dir)
  reference = bits_per_dim.evaluate_bits_per_dim(graphdef, params, model_cfg, source, space=latents.PixelSpace(17),
                                                 batch_size=144, importance_samples=4, seed=11)
  stderr = math.hypot(reference["bpd_iw_se"], bpd.std(ddof=1) / math.sqrt(len(bpd)))
  assert abs(bpd.mean() - reference["bpd_iw"]) < 4 * stderr
  with pytest.raises(ValueError, match=r"images must have shape \[batch, 8, 8, 1\]"):
    model.bits_per_dim(np.zeros((2, 28, 28, 1), np.uint8), labels=0)
  with pytest.raises(ValueError, match="must be integers"):
    model.bits_per_dim(np.zeros((2, 8, 8, 1), np.float32), labels=0)
  with pytest.raises(ValueError, match=r"values must lie in 0..16"):
    model.bits_per_dim(np.full((2, 8, 8, 1), 17, np.uint8), labels=0, levels=True)


def test_trajectory_log_prob_averages_to_the_elbo(digits_run):
  config, workdir = digits_run
  model = ntm_jax.load(workdir)
  levels, labels = validation_levels(config)
  levels, labels = np.repeat(levels[:8], 64, axis=0), np.repeat(labels[:8], 64)
  x = model.forward_trajectory(levels, seed=3, levels=True)
  assert x.shape == (512, 5, 8, 8, 1) and np.all(x[:, 0] >= -1) and np.all(x[:, 0] <= 1)
  log_p = model.trajectory_log_prob(x, labels=labels)
  # ELBO = E_q[log p(X)] + H[q]: the same bits/dim as bits_per_dim(bound="elbo") on average.
  times = trajectory.time_grid(4, config.model.grid.shift)
  elbo_bpd = -(log_p + float(trajectory.forward_entropy(times, 64))) / (64 * math.log(2)) + math.log2(17 / 2)
  api_bpd = model.bits_per_dim(levels, labels=labels, importance_samples=1, bound="elbo", levels=True, seed=4)
  stderr = math.hypot(elbo_bpd.std(), api_bpd.std()) / math.sqrt(len(levels))
  assert abs(elbo_bpd.mean() - api_bpd.mean()) < 4 * stderr
  with pytest.raises(ValueError, match=r"trajectory must have shape \[batch, T \+ 1, 8, 8, 1\]"):
    model.trajectory_log_prob(x[:, :, :4], labels=labels)


def test_load_names_a_directory_that_is_not_a_run(tmp_path, digits_run):
  with pytest.raises(FileNotFoundError, match="not a training workdir"):
    ntm_jax.load(str(tmp_path))
  _, workdir = digits_run
  assert ntm_jax.load(f"{workdir}/checkpoints").step == 4  # the newest resume checkpoint


def test_the_readme_example_runs(tmp_path, capsys):
  """The README's API block, pointed at a freshly trained unconditional digits run."""
  workdir = str(tmp_path / "digits")
  config = load_config("digits", "smoke,steps=2")
  config.train.eval_every = 1000
  config.sample.num_samples = 4
  train.train_and_evaluate(config, workdir)
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  block = re.search(r"```python\n(  import ntm_jax\n.*?)  ```", readme, re.S).group(1)
  code = textwrap.dedent(block).replace('"workdirs/digits"', repr(workdir))
  capsys.readouterr()
  exec(compile(code, "README.md", "exec"), {})  # pylint: disable=exec-used
  printed = capsys.readouterr().out
  assert printed.startswith("(16, 8, 8, 1) ")


def test_trajectory_log_prob_keeps_the_callers_precision(digits_run):
  config, workdir = digits_run
  model = ntm_jax.load(workdir)
  levels, labels = validation_levels(config)
  x32 = model.forward_trajectory(levels[:4], seed=0, levels=True)
  assert x32.dtype == np.float32
  x64 = x32.astype(np.float64)
  log_p32 = model.trajectory_log_prob(x32, labels=labels[:4])
  log_p64 = model.trajectory_log_prob(x64, labels=labels[:4])
  np.testing.assert_allclose(log_p64, log_p32, rtol=1e-5)
  # A relative change of 1e-10 is below float32's resolution: only a float64 computation sees it.
  nudged = x64 * (1.0 + 1e-10)
  assert np.all(model.trajectory_log_prob(nudged, labels=labels[:4]) != log_p64)
  np.testing.assert_array_equal(model.trajectory_log_prob(nudged.astype(np.float32), labels=labels[:4]), log_p32)
  with pytest.raises(ValueError, match="floating point"):
    model.trajectory_log_prob(np.zeros(x32.shape, np.int32), labels=labels[:4])
