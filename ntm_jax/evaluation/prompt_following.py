"""GenEval-style evaluation of a text-to-image model on `shapes` (--mode=judge).

A fixed prompt set (the same for every model: `prompts_per_category` prompts of each of the six
categories, drawn with a fixed seed, ntm_jax.data.builders.shapes_scenes.fixed_prompts) is sampled
`samples_per_prompt` times; the shapes judge (ntm_jax.evaluation.shapes_judge) checks every image against
its prompt. Reported: the share of images that pass,
per category and overall (the mean over categories), for each guidance scale asked for.
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
from ntm_jax.data.builders import shapes_scenes
from ntm_jax.evaluation import shapes_judge
from ntm_jax.parallel import checkpoint
from ntm_jax.parallel import mesh as mesh_lib
from ntm_jax.sampling import images, sampler

fixed_prompts = shapes_scenes.fixed_prompts


def parse_scales(text: str, default: float) -> list[float]:
  return [float(v) for v in text.split(",") if v.strip()] if text else [default]


def judge_checkpoint(config: ml_collections.ConfigDict, workdir: str, which: str = "best") -> dict:
  """Samples the fixed prompts from a checkpoint's EMA parameters and scores them; writes judge_*.json/png."""
  if config.data.name != "shapes":
    raise ValueError(f"--mode=judge scores `shapes` models; this config trains on {config.data.name!r}")
  space = latents.space_of(config)  # a latent model's samples are decoded before they are judged
  mesh = mesh_lib.make_mesh(config.mesh.to_dict())
  graphdef, params, step, model_cfg = checkpoint.restore_params(config, workdir, which, mesh)
  if model_cfg.condition_kind != "text":
    raise ValueError("--mode=judge needs a text-conditional model")
  spec = config.judge
  prompts = fixed_prompts(spec.prompts_per_category)
  all_prompts = [p for p in prompts for _ in range(spec.samples_per_prompt)]
  condition = text_features.encode_prompts([p.caption() for p in all_prompts], config.text.max_tokens)
  batch = spec.batch_size
  replicated = NamedSharding(mesh, PartitionSpec())
  scales = parse_scales(spec.guidance_scales, config.sample.guidance_scale)
  results = {"step": step, "kind": model_cfg.kind, "num_prompts": len(prompts),
             "temperature": config.sample.temperature, "denoise": config.sample.denoise,
             "samples_per_prompt": spec.samples_per_prompt,
             "num_steps_T": config.sample.num_steps or model_cfg.num_steps, "by_guidance_scale": {}}
  for scale in scales:
    options = sampler.sample_options(config.sample, guidance_scale=scale)
    sample_fn = sampler.make_sample_fn(graphdef, batch, options, out_sharding=replicated)
    start, samples = time.perf_counter(), []
    for index, first in enumerate(range(0, len(all_prompts), batch)):
      rows = np.arange(first, first + batch) % len(all_prompts)  # the last batch wraps around
      chunk = {k: v[rows] for k, v in condition.items()}
      key = jax.random.fold_in(jax.random.key(config.sample.seed), index)
      with mesh_lib.use(mesh):
        out = np.asarray(jax.device_get(sample_fn(params, key, chunk)))
      samples.append(out[:len(all_prompts) - first])
    uint8 = images.to_uint8(space.to_pixels(np.concatenate(samples)), space.pixel_levels)
    scores = shapes_judge.score(uint8, all_prompts)
    scores["seconds"] = time.perf_counter() - start
    results["by_guidance_scale"][f"{scale:g}"] = scores
    if jax.process_index() == 0:
      stem = os.path.join(workdir, f"judge_{which}_w{scale:g}_temp{config.sample.temperature:g}"
                          + ("_denoised" if config.sample.denoise else ""))
      shown = slice(0, len(all_prompts), spec.samples_per_prompt)  # one image per prompt
      images.save_grid_png(uint8[shown][:36], stem + ".png", scale=4,
                           captions=[p.caption() for p in all_prompts[shown]][:36])
  if jax.process_index() == 0:
    suffix = f"_temp{config.sample.temperature:g}" + ("_denoised" if config.sample.denoise else "")
    with open(os.path.join(workdir, f"judge_{which}{suffix}.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results


def format_results(results: dict) -> str:
  categories = list(shapes_scenes.CATEGORIES)
  lines = [f"{'guidance':>8} " + " ".join(f"{c:>13}" for c in categories) + f" {'overall':>8}"]
  for scale, scores in results["by_guidance_scale"].items():
    lines.append(f"{scale:>8} " + " ".join(f"{scores[c]:>13.3f}" for c in categories)
                 + f" {scores['overall']:>8.3f}")
  return "\n".join(lines)
