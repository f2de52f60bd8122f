"""Text-to-image end to end on `shapes`: data builders, text features, training with captions, prompts at
sampling, the judge mode, and the errors a user can meet (no caption feature, a missing data set)."""

import dataclasses
import json
import os

import numpy as np
import pytest

import ntm_jax
from ntm_jax import data, models
from ntm_jax.data import text_features
from ntm_jax.data.builders import mnist5k, shapes_prompts, shapes_scenes
from ntm_jax.evaluation import prompt_following as shapes_eval
from ntm_jax.models.denoiser import Denoiser
from ntm_jax.sampling import sampler as sample
from ntm_jax.training import distill, train
from tests import helpers
from tests.config_test import load_config
from tests.data_test import write_fake_mnist_csv

pytestmark = pytest.mark.usefixtures("private_data_dir")


def t2i_smoke(steps=4):
  config = load_config("t2i", f"smoke,steps={steps}")
  config.train.eval_every = 1000
  config.sample.num_samples = 4
  return config


def test_shapes_builder_has_the_documented_splits_and_captions():
  splits = {name: data.load_split("shapes", name) for name in ("train", "validation", "test")}
  assert {k: v.num_examples for k, v in splits.items()} == {"train": 20_000, "validation": 1_000, "test": 1_000}
  test = splits["test"]
  assert test.image_shape == (32, 32, 3) and "caption" in test.features and not test.has_labels
  # The stored images and captions are the scenes the seeded generator draws (TFDS reorders examples).
  images, prompts = shapes_scenes.make_scenes(1_000, seed=2)
  expected = {p.caption(): set() for p in prompts}
  for image, prompt in zip(images, prompts):
    expected[prompt.caption()].add(image.tobytes())
  for i in range(0, 1_000, 97):
    example = test.source[i]
    assert np.asarray(example["image"]).tobytes() in expected[text_features.caption_text(example["caption"])]


def test_captioned_mnist5k_builder(tmp_path, monkeypatch):
  csv = tmp_path / "mnist_5k.csv.gz"
  write_fake_mnist_csv(csv, rows=2000)
  monkeypatch.setattr(mnist5k, "mnist5k_csv_path", lambda: str(csv))
  source = data.load_split("mnist5k", "validation")
  captions = {text_features.caption_text(source.source[i]["caption"]) for i in range(source.num_examples)}
  labels = {int(source.source[i]["label"]) for i in range(source.num_examples)}
  assert "a handwritten seven" in captions and "the digit 7" in captions and labels == set(range(10))
  for i in range(20):
    example = source.source[i]
    label = int(example["label"])
    caption = text_features.caption_text(example["caption"])
    assert caption in {t.format(name=mnist5k.DIGIT_NAMES[label], digit=label) for t in mnist5k.CAPTION_TEMPLATES}


def test_caption_table_and_precomputed_embeddings():
  table = text_features.CaptionTable.encode(["two squares", "a red circle", "two squares"], max_tokens=8)
  assert len(table.row_of) == 2
  features = table.features("a red circle")
  assert features["text_tokens"].shape == (8, 384) and features["text_mask"].sum() == 5  # [CLS] a red circle [SEP]
  with pytest.raises(KeyError, match="not in the table"):
    table.features("a blue moon")
  stored = {"text_embedding": np.ones((3, 4), np.float32), "text_mask": np.array([1, 1, 0])}
  padded = text_features.precomputed_features(stored, max_tokens=5)
  np.testing.assert_array_equal(padded["text_mask"], [True, True, False, False, False])
  np.testing.assert_array_equal(padded["text_tokens"][2:], 0.0)
  np.testing.assert_allclose(padded["text_pooled"], np.full(4, 0.5))
  assert text_features.precomputed_features(stored, max_tokens=2)["text_tokens"].shape == (2, 4)


def test_text_model_on_a_data_set_without_captions_is_refused(tmp_path):
  config = t2i_smoke()
  config.data.name = "digits"
  config.model.image.update(height=8, width=8, channels=1, patch_size=2)
  with pytest.raises(ValueError, match="needs a `caption` feature"):
    train.train_and_evaluate(config, str(tmp_path))


def test_a_named_data_set_that_is_missing_says_how_to_prepare_it(tmp_path):
  config = load_config("t2i", "smoke,data=my_captions")
  with pytest.raises(ValueError, match="tfds build my_captions --file_format=array_record"):
    train.train_and_evaluate(config, str(tmp_path))


def test_t2i_trains_samples_prompts_and_is_judged(tmp_path):
  workdir = str(tmp_path / "t2i")
  config = t2i_smoke(steps=4)
  results = train.train_and_evaluate(config, workdir)
  assert np.isfinite(results["bpd_elbo"])
  assert os.path.exists(os.path.join(workdir, "samples", "step_0000004.png"))

  config.sample.prompts = "a red circle left of a blue square|two green triangles"
  config.sample.guidance_scale = 2.0
  out = sample.sample_checkpoint(config, workdir)
  saved = np.load(out["npz"])
  assert saved["images"].shape == (4, 32, 32, 3)
  assert list(saved["captions"]) == ["a red circle left of a blue square", "two green triangles"] * 2

  prompts_file = tmp_path / "prompts.txt"
  prompts_file.write_text("three squares\n\na yellow circle\n")
  config.sample.prompts, config.sample.prompts_file = "", str(prompts_file)
  assert list(np.load(sample.sample_checkpoint(config, workdir)["npz"])["captions"]) == [
      "three squares", "a yellow circle"] * 2

  config.judge.update(prompts_per_category=1, samples_per_prompt=2, batch_size=8, guidance_scales="0,3")
  judged = shapes_eval.judge_checkpoint(config, workdir)
  assert set(judged["by_guidance_scale"]) == set(judged["held_out_by_guidance_scale"]) == {"0", "3"}
  for scores in judged["by_guidance_scale"].values():
    assert set(shapes_scenes.CATEGORIES) <= set(scores) and 0.0 <= scores["overall"] <= 1.0
  for scores in judged["held_out_by_guidance_scale"].values():
    assert set(scores) - {"overall", "seconds"} == set(shapes_prompts.HELD_OUT_CATEGORIES)
  assert judged["held_out_compositions_kept_out_of_training"]  # the t2i config holds them out on shapes
  with open(os.path.join(workdir, "judge_best_temp1.json")) as f:
    assert json.load(f)["num_prompts"] == 6
  assert os.path.exists(os.path.join(workdir, "judge_best_w3_temp1.png"))
  assert os.path.exists(os.path.join(workdir, "judge_best_held_out_w3_temp1.png"))

  config.sample.labels = "3"
  with pytest.raises(ValueError, match="text-conditional: use sample.prompts"):
    sample.sample_checkpoint(config, workdir)
  config.sample.labels = ""

  # Distillation (C.12) for a text model: a caption-conditioned denoiser that sample, judge and the API use.
  sequential = sample.sample_checkpoint(config, workdir)
  assert sequential["dependent_evaluations"] == 1 + 1 + 4 + 2 * 15
  config.sample.inversion = "jacobi"
  jacobi = sample.sample_checkpoint(config, workdir)
  assert len(jacobi["jacobi_iterations"]) == 2 and all(1 <= i <= 15 for i in jacobi["jacobi_iterations"])
  # Model FLOPs: Jacobi's cap (2 x 15 full passes) costs more than the token-by-token inverse, what it took less.
  assert jacobi["model_gflops_per_image_taken"] < jacobi["model_gflops_per_image"]
  assert sequential["model_gflops_per_image"] < jacobi["model_gflops_per_image"]
  config.sample.inversion = "sequential"
  results = distill.distill(config, workdir)  # 4 smoke steps
  assert results["denoiser_step"] == 4 and np.isfinite(results["held_out_mse"])
  out = sample.sample_checkpoint(config, workdir)
  assert out["distilled_denoiser_step"] == 4 and out["png"].endswith("_distilled.png")
  # f_T(x_1), the caption prefill, T = 4 levels and the denoiser's one pass (the inversion took 2 x 15).
  assert out["dependent_evaluations"] == 7
  config.judge.update(prompts_per_category=1, samples_per_prompt=1, batch_size=6, guidance_scales="0")
  assert shapes_eval.judge_checkpoint(config, workdir)["distilled_denoiser_step"] == 4
  model = ntm_jax.load(workdir)
  assert model.denoiser is not None and model.denoiser[2] == 4
  prompts = ["a red circle", "two squares"]
  assert model.sample(2, prompts=prompts, seed=1).shape == (2, 32, 32, 3)
  exact = model.sample(2, prompts=prompts, seed=1, use_denoiser=False).astype(int)
  jacobi = model.sample(2, prompts=prompts, seed=1, use_denoiser=False, inversion="jacobi").astype(int)
  assert np.abs(jacobi - exact).max() <= 1  # Jacobi's tolerance of 1e-4 in [-1, 1] is below a level


def test_the_caption_bank_keeps_each_caption_once_and_its_frequency():
  captions = ["a circle"] * 6 + ["two squares"] * 2
  examples = [{"caption": c} for c in captions]
  split = data.with_text_features(data.DataSource(examples, 8, (32, 32, 3), False, features=("image", "caption")),
                                  "test", "minilm", 16)
  bank = distill.caption_bank(split, size=8)
  assert bank["features"]["text_pooled"].shape[0] == 2 and bank["rows"].shape == (8,)
  assert sorted(np.bincount(bank["rows"]).tolist()) == [2, 6]
  # The text condition changes the denoiser's output (a zero head would hide it: randomise first).
  model_cfg = models.model_config_from_dict(t2i_smoke().model)
  denoiser = helpers.randomize(Denoiser.for_model(t2i_smoke().distill, model_cfg), seed=2, scale=0.3)
  u0 = np.random.default_rng(0).normal(size=(2, model_cfg.image.num_tokens, model_cfg.image.token_dim))
  two_captions = {name: value[[0, 1]] for name, value in bank["features"].items()}
  same_u0 = np.asarray(denoiser(u0[:1].repeat(2, 0).astype(np.float32), two_captions))
  assert np.isfinite(same_u0).all() and np.abs(same_u0[0] - same_u0[1]).max() > 1e-4


def test_judge_prompt_sets_are_fixed_balanced_and_apart():
  seen, held_out = shapes_prompts.seen_prompts(5), shapes_prompts.held_out_prompts(5)
  assert [p.caption() for p in seen] == [p.caption() for p in shapes_prompts.seen_prompts(5)]
  assert {c: sum(p.category == c for p in seen) for c in shapes_scenes.CATEGORIES} == dict.fromkeys(
      shapes_scenes.CATEGORIES, 5)
  assert {c: sum(p.category == c for p in held_out) for c in shapes_prompts.HELD_OUT_CATEGORIES} == dict.fromkeys(
      shapes_prompts.HELD_OUT_CATEGORIES, 5)
  assert not any(shapes_prompts.is_held_out(p.caption()) for p in seen)
  assert all(shapes_prompts.is_held_out(p.caption()) for p in held_out)
  # Whole words: a held-out pair inside a longer caption counts, a mirror or a partial match does not.
  assert shapes_prompts.is_held_out("a green circle and a red triangle")
  assert not shapes_prompts.is_held_out("a circle and a square")
  assert not shapes_prompts.is_held_out("a dark red triangles")


def test_held_out_compositions_leave_training_and_validation_but_not_test():
  config = t2i_smoke()
  shape = (32, 32, 3)
  splits = {split: data.load_model_split(config, split, shape, "text") for split in ("train", "validation", "test")}
  full = {split: data.load_split("shapes", split) for split in splits}
  for split, source in splits.items():
    captions = [text_features.caption_text(source.source[i]["caption"]) for i in range(source.num_examples)]
    held_out = sum(map(shapes_prompts.is_held_out, captions))
    if split == "test":
      assert source.num_examples == full[split].num_examples and held_out > 0
    else:
      assert held_out == 0 and 0.7 * full[split].num_examples < source.num_examples < full[split].num_examples
  # The kept examples are whole examples of the full split, in its order.
  first = splits["train"].source[0]
  assert any(np.array_equal(first["image"], full["train"].source[i]["image"]) for i in range(5))
  config.data.hold_out_compositions = False
  assert data.load_model_split(config, "train", shape, "text").num_examples == full["train"].num_examples


def test_prompts_for_a_class_model_are_refused():
  config = load_config("digits", "smoke,conditional")
  config.sample.prompts = "a seven"
  with pytest.raises(ValueError, match="not text-conditional"):
    sample.sampling_condition(config, models.model_config_from_dict(config.model), 4)


def test_precomputed_text_embeddings_flow_through_the_pipeline():
  examples = [{"image": np.full((2, 2, 3), i, np.uint8), "text_embedding": np.full((3, 5), i + 1.0, np.float32)}
              for i in range(6)]
  source = data.DataSource(examples, 6, (2, 2, 3), False, features=("image", "text_embedding"))
  with_text = data.with_text_features(source, "mine", encoder="precomputed", max_tokens=4)
  batch = next(data.eval_batches(with_text, 4))
  assert batch["text_tokens"].shape == (4, 4, 5) and batch["text_mask"].sum() == 12
  np.testing.assert_allclose(np.linalg.norm(batch["text_pooled"], axis=-1), 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="needs a `text_embedding` feature"):
    data.with_text_features(dataclasses.replace(source, features=("image",)), "mine", "precomputed", 4)
  with pytest.raises(ValueError, match="unknown text.encoder 't5'"):
    data.with_text_features(source, "mine", "t5", 4)
