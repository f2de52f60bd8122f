"""Training end to end on the embedded digits: exact resume, damaged checkpoints, NaN, and input errors."""

import json
import os

import jax
import numpy as np
import pytest

from ntm_jax import data, models
from ntm_jax.evaluation import bits_per_dim
from ntm_jax.parallel import checkpoint
from ntm_jax.parallel.checkpoint import IncompatibleCheckpointError
from ntm_jax.sampling import sampler as sample
from ntm_jax.training import distill, metric_writer, optimizer, train
from ntm_jax.training.state import initial_state
from tests.config_test import load_config

pytestmark = pytest.mark.usefixtures("private_data_dir")


def smoke_config(steps=4, variant=""):
  config = load_config("digits", ",".join(filter(None, [variant, "smoke", f"steps={steps}"])))
  config.train.eval_every = 1000  # evaluate at the end only
  config.sample.num_samples = 4
  return config


def final_params(workdir):
  config = smoke_config()
  tx = optimizer.make_optimizer(config.opt, config.train.num_steps)
  _, state = initial_state(models.model_config_from_dict(config.model), tx, config.seed)
  checkpointer = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=5)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
  restored, step = checkpointer.restore_latest(abstract)
  return restored, step


class Crash(Exception):
  pass


def crashing(iterator, crash_at):
  """The real grain iterator (so checkpoints still save its state), dying when asked for batch `crash_at`."""

  class CrashingIterator(type(iterator)):
    def __next__(self):
      self.served = getattr(self, "served", 0) + 1
      if self.served == crash_at:
        raise Crash(f"simulated crash fetching batch {crash_at}")
      return super().__next__()

  iterator.__class__ = CrashingIterator
  return iterator


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path, monkeypatch):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  config = smoke_config(steps=7)  # checkpoints at 2, 4, 6, 7
  train.train_and_evaluate(config, straight)
  real_iterator = train.data.train_iterator
  with monkeypatch.context() as patch:
    # Dies fetching step 6's batch: step 5 ran after the last checkpoint (4) and is lost.
    patch.setattr(train.data, "train_iterator", lambda *a, **k: crashing(real_iterator(*a, **k), 6))
    with pytest.raises(Crash):
      train.train_and_evaluate(config, resumed)
  assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["2", "4"]
  results = train.train_and_evaluate(config, resumed)  # the same command again
  assert np.isfinite(results["bpd_elbo"])
  a, step_a = final_params(straight)
  b, step_b = final_params(resumed)
  assert step_a == step_b == 7
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The metrics, the sample grids and the evaluation were written.
  records = metric_writer.read_metrics(straight)
  assert any("train/loss" in r for r in records) and any("train/steps_per_sec" in r for r in records)
  assert any(k.startswith("eval/validation/bpd_elbo") for r in records for k in r)
  assert os.listdir(os.path.join(straight, "samples"))
  assert any(name.startswith("events") for name in os.listdir(os.path.join(straight, "tensorboard")))
  with open(os.path.join(straight, "eval_results.json")) as f:
    final = json.load(f)
  assert final["num_examples"] == 144
  # Evaluated at steps 0 and 7: the trained step is the best on validation, and --mode=eval scores it.
  best = bits_per_dim.evaluate_checkpoint(config, straight, "validation")
  assert best["step"] == 7 and best["checkpoint"] == "best"
  assert best["bpd_iw"] == pytest.approx(final["bpd_iw"], rel=1e-6)
  # --mode=sample: a grid and the arrays from the same checkpoint, with a grid other than training's.
  config.sample.update(num_samples=6, num_steps=2, seed=3)
  out = sample.sample_checkpoint(config, straight)
  assert out["step"] == 7 and os.path.getsize(out["png"]) > 0
  arrays = np.load(out["npz"])
  assert arrays["images"].shape == (6, 8, 8, 1) and arrays["images"].dtype == np.uint8
  assert np.all(np.abs(arrays["model_space"]) <= 1.0) and np.std(arrays["model_space"]) > 0.01
  config.sample.denoise = True  # the same draws, then trajectory-score denoising of x_0
  denoised = np.load(sample.sample_checkpoint(config, straight)["npz"])["model_space"]
  assert denoised.shape == arrays["model_space"].shape and np.all(np.isfinite(denoised))
  assert np.max(np.abs(denoised - arrays["model_space"])) > 0  # a 7-step model: no quality claim


def test_damaged_newest_checkpoint_is_reported_and_the_previous_one_used(tmp_path, capsys):
  workdir = str(tmp_path)
  train.train_and_evaluate(smoke_config(steps=4), workdir)  # checkpoints at steps 2 and 4
  checkpoints = os.path.join(workdir, "checkpoints")
  assert sorted(os.listdir(checkpoints)) == ["2", "4"]
  damaged = 0
  for root, _, files in os.walk(os.path.join(checkpoints, "4")):
    for name in files:
      if name != "commit_success.txt" and "data" not in os.path.relpath(root, checkpoints):
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(max(0, os.path.getsize(os.path.join(root, name)) // 3))
        damaged += 1
  assert damaged
  capsys.readouterr()
  train.train_and_evaluate(smoke_config(steps=4), workdir)
  out = capsys.readouterr().out
  assert "checkpoint step 4" in out and "cannot be restored" in out
  assert "resumed from checkpoint step 2" in out
  moved = [name for name in os.listdir(checkpoints) if name.startswith("4.unreadable")]
  assert moved, "the damaged checkpoint must be kept, renamed, not deleted"
  assert "4" in os.listdir(checkpoints)  # retrained to step 4 and saved again


def test_distill_mode_trains_a_denoiser_that_the_sampler_then_uses(tmp_path):
  workdir = str(tmp_path)
  config = smoke_config(steps=2)
  train.train_and_evaluate(config, workdir)
  results = distill.distill(config, workdir)  # 4 smoke steps, checkpoints at 2 and 4
  assert results["denoiser_step"] == 4 and np.isfinite(results["held_out_mse"])
  assert sorted(os.listdir(os.path.join(workdir, "denoiser"))) == ["2", "4"]
  assert any("distill/mse" in record for record in metric_writer.read_metrics(workdir))
  out = sample.sample_checkpoint(config, workdir)
  assert out["distilled_denoiser_step"] == 4 and out["png"].endswith("_distilled.png")
  config.sample.use_denoiser = False
  assert sample.sample_checkpoint(config, workdir)["distilled_denoiser_step"] is None


def test_a_checkpoint_of_another_model_is_named_and_left_alone(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(smoke_config(steps=2), workdir)
  other = smoke_config(steps=4)
  other.model.predictor.width = 48
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  with pytest.raises(IncompatibleCheckpointError, match=r"does not match the configured model.*shape \(32,\) in "
                                                        r"the checkpoint but \(48,\)"):
    train.train_and_evaluate(other, workdir)
  for which in ("best", "latest"):
    with pytest.raises(IncompatibleCheckpointError, match="does not match the configured model"):
      bits_per_dim.evaluate_checkpoint(other, workdir, "validation", which=which)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before == ["2"]
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["predictor"]["width"] == 32  # the run's own config, not the refused one
  assert bits_per_dim.evaluate_checkpoint(smoke_config(steps=2), workdir, "validation")["step"] == 2


def test_a_checkpoint_of_the_old_layout_is_refused_and_left_alone(tmp_path):
  """A workdir written before the layer stacks (one `state` item per step, data.num_levels) is named."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / "old_run"
  manager = ocp.CheckpointManager(str(workdir / "checkpoints"), item_names=("state",),
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": {"w": np.ones(3)}})))
  manager.wait_until_finished()
  before = sorted(os.listdir(workdir / "checkpoints"))
  with pytest.raises(IncompatibleCheckpointError, match="written by an older ntm_jax"):
    train.train_and_evaluate(smoke_config(steps=2), str(workdir))
  assert sorted(os.listdir(workdir / "checkpoints")) == before == ["3"]
  assert not (workdir / "config.json").exists()  # the refused run wrote nothing
  old_config = smoke_config().to_dict()
  old_config["data"]["num_levels"] = old_config["data"].pop("pixel_levels")
  (workdir / "config.json").write_text(json.dumps(old_config))
  with pytest.raises(IncompatibleCheckpointError, match="written by an older ntm_jax"):
    checkpoint.read_run_config(str(workdir))
  # Its best checkpoint (the same item name as now, but layers numbered one by one) is named too.
  checkpoint.BestCheckpoint(str(workdir / "best"), "bpd_iw").offer(
      1, {"predictor": {"layers": [{"kernel": np.ones(2)}]}}, {"bpd_iw": 2.0})
  with pytest.raises(IncompatibleCheckpointError, match="written by an older ntm_jax"):
    bits_per_dim.evaluate_checkpoint(smoke_config(), str(workdir), "validation")


def test_non_finite_loss_stops_training_and_keeps_checkpoints(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  train.train_and_evaluate(smoke_config(steps=2), workdir)
  real_step = train.train_step

  def poisoned_step(state, batch, base_key, **kwargs):
    new_state, metrics = real_step(state, batch, base_key, **kwargs)
    metrics["loss"] = jax.numpy.where(state["step"] >= 2, jax.numpy.nan, metrics["loss"])
    return new_state, metrics

  monkeypatch.setattr(train, "train_step", poisoned_step)
  with pytest.raises(train.NonFiniteLossError, match="the loss is nan at step 3.*last good checkpoint \\(step 2\\)"):
    train.train_and_evaluate(smoke_config(steps=6), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
  _, step = final_params(workdir)
  assert step == 2


def test_batch_size_must_divide_the_devices(tmp_path):
  config = smoke_config()
  config.data.batch_size = jax.device_count() + 1
  with pytest.raises(ValueError, match=f"batch_size {jax.device_count() + 1} is not divisible by the "
                                       f"{jax.device_count()} devices"):
    train.train_and_evaluate(config, str(tmp_path))


def test_image_shape_mismatch_is_named(tmp_path):
  config = smoke_config()
  config.model.image.height = 16
  config.model.image.width = 16
  with pytest.raises(ValueError, match=r"images of shape \(8, 8, 1\).*expects \(16, 16, 1\)"):
    train.train_and_evaluate(config, str(tmp_path))


def test_missing_data_set_says_how_to_prepare_it(tmp_path):
  config = smoke_config()
  config.data.name = "mnist"  # a TFDS name that is not prepared here
  with pytest.raises(FileNotFoundError, match="tfds build mnist --file_format=array_record"):
    train.train_and_evaluate(config, str(tmp_path))


@pytest.mark.parametrize("which, message", [("best", "no best checkpoint"),
                                                 ("latest", "no checkpoint to evaluate")])
def test_eval_and_sample_without_checkpoint(tmp_path, which, message):
  with pytest.raises(FileNotFoundError, match=message):
    bits_per_dim.evaluate_checkpoint(smoke_config(), str(tmp_path), which=which)
  with pytest.raises(FileNotFoundError, match=message):
    sample.sample_checkpoint(smoke_config(), str(tmp_path), which=which)


def test_digits_splits_follow_the_documented_protocol():
  sizes = {split: data.load_split("digits", split).num_examples for split in ("train", "validation", "test")}
  assert sizes == {"train": 1293, "validation": 144, "test": 360}
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split
  _, expected_test = train_test_split(load_digits().data, test_size=0.2, random_state=0)
  test = data.load_split("digits", "test")
  ours = np.stack([test.source[i]["image"].reshape(-1) for i in range(test.num_examples)])
  # TFDS may reorder examples; the set of test images must be the protocol's.
  assert sorted(map(bytes, ours.astype(np.uint8))) == sorted(map(bytes, expected_test.astype(np.uint8)))
