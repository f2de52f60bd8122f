"""GenEval-style evaluation of a text-to-image model on `shapes` (--mode=judge).

Two fixed prompt sets, the same for every model (ntm_jax.data.builders.shapes_prompts): the seen prompts,
`prompts_per_category` of each of the six categories with no held-out composition, and the held-out prompts,
as many of each category but single_object, each naming a composition that a model trained with
`data.hold_out_compositions` never read in a caption. Every prompt is sampled `samples_per_prompt` times; the
shapes judge (ntm_jax.evaluation.shapes_judge) checks every image against its prompt. Reported: the share of
images that pass, per category and overall (the mean over categories), for each guidance scale asked for,
for the seen prompts (`by_guidance_scale`) and the held-out ones (`held_out_by_guidance_scale`).
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from ntm_jax import latents
from ntm_jax.data import text_features
from ntm_jax.data.builders import shapes_prompts, shapes_scenes
from ntm_jax.evaluation import shapes_judge
from ntm_jax.parallel import checkpoint
from ntm_jax.parallel import mesh as mesh_lib
from ntm_jax.sampling import images, sampler

PROMPT_SETS = {"by_guidance_scale": shapes_prompts.seen_prompts,
               "held_out_by_guidance_scale": shapes_prompts.held_out_prompts}


def parse_scales(text: str, default: float) -> list[float]:
  return [float(v) for v in text.split(",") if v.strip()] if text else [default]


def captions_held_out_in_training(workdir: str) -> bool:
  """Whether the run in `workdir` was trained with data.hold_out_compositions (read from its stored config)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return False
  with open(path) as f:
    return bool(json.load(f).get("data", {}).get("hold_out_compositions", False))


def judge_checkpoint(config: ml_collections.ConfigDict, workdir: str, which: str = "best") -> dict:
  """Samples both prompt sets from a checkpoint's EMA parameters and scores them; writes judge_*.json/png."""
  if config.data.name != "shapes":
    raise ValueError(f"--mode=judge scores `shapes` models; this config trains on {config.data.name!r}")
  space = latents.space_of(config)  # a latent model's samples are decoded before they are judged
  mesh = mesh_lib.make_mesh(config.mesh.to_dict())
  graphdef, params, step, model_cfg = checkpoint.restore_params(config, workdir, which, mesh)
  if model_cfg.condition_kind != "text":
    raise ValueError("--mode=judge needs a text-conditional model")
  spec = config.judge
  batch = spec.batch_size
  denoiser = sampler.denoiser_to_use(config, workdir, model_cfg, mesh)  # replaces the inversion of f_T
  replicated = NamedSharding(mesh, PartitionSpec())
  scales = parse_scales(spec.guidance_scales, config.sample.guidance_scale)
  # Each set's prompts and their text condition, encoded once for every guidance scale.
  prompt_sets = {}
  for key_name, make_prompts in PROMPT_SETS.items():
    all_prompts = [p for p in make_prompts(spec.prompts_per_category) for _ in range(spec.samples_per_prompt)]
    prompt_sets[key_name] = (all_prompts, text_features.encode_prompts([p.caption() for p in all_prompts],
                                                                       config.text.max_tokens))
  results = {"step": step, "kind": model_cfg.kind,
             "num_prompts": len(prompt_sets["by_guidance_scale"][0]) // spec.samples_per_prompt,
             "temperature": config.sample.temperature,
             "denoise": config.sample.denoise, "samples_per_prompt": spec.samples_per_prompt,
             "num_steps_T": config.sample.num_steps or model_cfg.num_steps,
             "held_out_compositions_kept_out_of_training": captions_held_out_in_training(workdir),
             "distilled_denoiser_step": denoiser[2] if denoiser else None,
             "dependent_evaluations": sampler.dependent_evaluations(
                 graphdef, params, sampler.sample_options(config.sample), denoiser)}
  suffix = (f"_temp{config.sample.temperature:g}" + ("_denoised" if config.sample.denoise else "")
            + ("_distilled" if denoiser else ""))
  for scale in scales:
    options = sampler.sample_options(config.sample, guidance_scale=scale)
    sample_fn = sampler.make_sample_fn(graphdef, batch, options, out_sharding=replicated,
                                       denoiser_graphdef=denoiser[0] if denoiser else None)
    for key_name, (all_prompts, condition) in prompt_sets.items():
      start, samples = time.perf_counter(), []
      for index, first in enumerate(range(0, len(all_prompts), batch)):
        rows = np.arange(first, first + batch) % len(all_prompts)  # the last batch wraps around
        chunk = {k: v[rows] for k, v in condition.items()}
        # The held-out set draws its own keys, so neither set's samples depend on the other's size.
        key = jax.random.fold_in(jax.random.key(config.sample.seed + (key_name != "by_guidance_scale")), index)
        with mesh_lib.use(mesh):
          out = np.asarray(jax.device_get(sample_fn(params, key, chunk, denoiser[1] if denoiser else None)))
        samples.append(out[:len(all_prompts) - first])
      uint8 = images.to_uint8(space.to_pixels(np.concatenate(samples)), space.pixel_levels)
      scores = shapes_judge.score(uint8, all_prompts)
      scores["seconds"] = time.perf_counter() - start
      results.setdefault(key_name, {})[f"{scale:g}"] = scores
      if jax.process_index() == 0:
        held_out = "_held_out" if key_name != "by_guidance_scale" else ""
        stem = os.path.join(workdir, f"judge_{which}{held_out}_w{scale:g}{suffix}")
        shown = slice(0, len(all_prompts), spec.samples_per_prompt)  # one image per prompt
        images.save_grid_png(uint8[shown][:36], stem + ".png", scale=4,
                             captions=[p.caption() for p in all_prompts[shown]][:36])
  if jax.process_index() == 0:
    with open(os.path.join(workdir, f"judge_{which}{suffix}.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results


def format_results(results: dict) -> str:
  categories = list(shapes_scenes.CATEGORIES)
  lines = [f"{'prompts':>8} {'guidance':>8} " + " ".join(f"{c:>13}" for c in categories) + f" {'overall':>8}"]
  for key_name, name in (("by_guidance_scale", "seen"), ("held_out_by_guidance_scale", "held out")):
    for scale, scores in results.get(key_name, {}).items():
      lines.append(f"{name:>8} {scale:>8} " + " ".join(f"{scores[c]:>13.3f}" if c in scores else f"{'-':>13}"
                                                       for c in categories) + f" {scores['overall']:>8.3f}")
  return "\n".join(lines)
