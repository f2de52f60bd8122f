"""Few-step sampling, path by path, side by side in one run: images/s at batch 1 and 64 after compilation
(median of --repeats), each path's dependent network evaluations per image (and the Jacobi iterations it
took), and its quality beside it.

  python benchmarks/few_step_sampling.py --digits_ntm_workdir=workdirs/digits_ntm_cond \
      --digits_tarflow_workdir=workdirs/digits_tarflow_cond --text_ntm_workdir=workdirs/t2i_latent_ntm_ho \
      --text_tarflow_workdir=workdirs/t2i_latent_tarflow_ho --latent=workdirs/autoencoder_shapes
  python benchmarks/few_step_sampling.py --smoke      # tiny untrained models, one batch size, timed only (CI)

Paths, named GROUP/PATH in the JSON: tarflow (the baseline's token-by-token inversion), ntm/sequential (T
predictor levels, then f_T inverted token by token), ntm/jacobi (the same, f_T inverted by Jacobi iterations
to sample.jacobi_tolerance), ntm/distilled (the distilled denoiser instead of the inversion). Groups:
  digits      configs/digits.py (class-conditional if the workdirs are): quality is the class accuracy and
              Frechet distance of ntm_jax.evaluation.sample_quality's judge against the test split;
  text        configs/t2i.py (with --latent, over its latents): quality is the shapes judge's overall score on
              the seen and the held-out prompts (`--mode=judge`); sampling is timed in model space (a latent
              model's decoding, the same for every path, is not in it);
  tokens64, tokens256  untrained digits-shaped models at 64 and 256 tokens, speed only. An untrained f_T is
              the identity, which Jacobi inverts in one iteration, so these rows time Jacobi with a negative
              tolerance: N - 1 iterations a block, its worst case.
A workdir without a distilled denoiser (--mode=distill) gets an untrained one: timed, not scored. Prints a
table, writes JSON.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from ntm_jax.data import text_features  # noqa: E402
from ntm_jax.data.builders import shapes_prompts  # noqa: E402
from ntm_jax.evaluation import prompt_following, sample_quality  # noqa: E402
from ntm_jax.models import build_model, model_config_from_dict  # noqa: E402
from ntm_jax.models.denoiser import Denoiser  # noqa: E402
from ntm_jax.parallel import checkpoint  # noqa: E402
from ntm_jax.sampling import sampler  # noqa: E402

PATHS = ("tarflow", "ntm/sequential", "ntm/jacobi", "ntm/distilled")


def restore_or_build(config, workdir):
  """(graphdef, params, model config, trained?) of a run's best EMA parameters, or of a fresh model."""
  if workdir:
    graphdef, params, _, model_cfg = checkpoint.restore_params(config, workdir, "best")
    return graphdef, params, model_cfg, True
  model_cfg = model_config_from_dict(config.model)
  return (*nnx.split(build_model(model_cfg, rngs=nnx.Rngs(0))), model_cfg, False)


def conditions(config, model_cfg, batch: int):
  """The condition of a batch: labels cycling over the classes, seen prompts (cycled) for text, or None."""
  if model_cfg.condition_kind == "text":
    prompts = [p.caption() for p in shapes_prompts.seen_prompts(20)]
    return text_features.encode_prompts([prompts[i % len(prompts)] for i in range(batch)], config.text.max_tokens)
  if model_cfg.condition_kind == "label":
    return jnp.arange(batch, dtype=jnp.int32) % model_cfg.num_classes
  return None


def paths_of(group: dict) -> dict:
  """{path: (graphdef, params, options, denoiser (graphdef, params) or None, scored?)} of one group."""
  ntm, tarflow, denoiser = group["ntm"], group["tarflow"], group["denoiser"]
  jacobi = {"inversion": "jacobi", "jacobi_tolerance": group["jacobi_tolerance"]}
  return {
      "tarflow": (tarflow[0], tarflow[1], {}, None, tarflow[3]),
      "ntm/sequential": (ntm[0], ntm[1], {}, None, ntm[3]),
      "ntm/jacobi": (ntm[0], ntm[1], jacobi, None, ntm[3]),
      "ntm/distilled": (ntm[0], ntm[1], {}, denoiser[:2], ntm[3] and denoiser[2]),
  }


def make_group(config_name: str, arg: str, ntm_workdir=None, tarflow_workdir=None, modify=None,
               jacobi_tolerance=None) -> dict:
  """The NTM, TarFlow and denoiser of one group (restored where workdirs are given)."""
  configs = {variant: common.load_config(config_name, ",".join(filter(None, [variant, arg])))
             for variant in ("", "tarflow")}
  for config in configs.values():
    if modify:
      modify(config)
  ntm = restore_or_build(configs[""], ntm_workdir)
  tarflow = restore_or_build(configs["tarflow"], tarflow_workdir)
  restored = sampler.restore_denoiser(configs[""], ntm_workdir, ntm[2]) if ntm_workdir else None
  denoiser = ((restored[0], restored[1], True) if restored
              else (*nnx.split(Denoiser.for_model(configs[""].distill, ntm[2])), False))
  tolerance = configs[""].sample.jacobi_tolerance if jacobi_tolerance is None else jacobi_tolerance
  return {"config": configs[""], "ntm": ntm, "tarflow": tarflow, "denoiser": denoiser,
          "jacobi_tolerance": tolerance}


def time_paths(name: str, group: dict, batches, repeats: int) -> dict:
  rows = {}
  config = group["config"]
  for path, (graphdef, params, options, denoiser, _) in paths_of(group).items():
    model_cfg = group["tarflow" if path == "tarflow" else "ntm"][2]
    row = {"dependent_evaluations": sampler.dependent_evaluations(graphdef, params, options, denoiser),
           "model_gflops_per_image": sampler.model_gflops_per_image(graphdef, params, options, denoiser)}
    for batch in batches:
      condition = conditions(config, model_cfg, batch)
      fn = sampler.make_sample_fn(graphdef, batch, options, denoiser_graphdef=denoiser[0] if denoiser else None)
      run = lambda: fn(params, jax.random.key(0), condition, denoiser[1] if denoiser else None)  # noqa: B023
      seconds = common.median_seconds(run, repeats)
      row[f"batch{batch}_ms"] = round(1e3 * seconds, 2)
      row[f"batch{batch}_images_per_s"] = round(batch / seconds, 1)
    if options.get("inversion") == "jacobi":
      batch = max(batches)
      count = jax.jit(lambda p, k, c: nnx.merge(graphdef, p).jacobi_iterations(k, batch, c, **options))  # noqa: B023
      iterations = jax.device_get(count(params, jax.random.key(0), conditions(config, model_cfg, batch)))
      row["jacobi_iterations_per_block"] = [int(i) for i in iterations]
      # The cap counts N - 1 a block; what this batch took:
      row["dependent_evaluations_taken"] = row["dependent_evaluations"] - int(
          model_cfg.transporter.num_blocks * (model_cfg.image.num_tokens - 1) - sum(iterations))
      row["model_gflops_per_image_taken"] = sampler.model_gflops_per_image(graphdef, params, options,
                                                                           jacobi_iterations=sum(iterations))
    rows[f"{name}/{path}"] = row
    print(f"  {name}/{path}: {row}", flush=True)
  return rows


def digits_quality(name: str, group: dict, num_samples: int) -> dict:
  """Class accuracy (conditional models) and Frechet distance of each scored path's samples."""
  config = group["config"]
  judge = sample_quality.fit_judge(config.data.name, config.data.pixel_levels)
  rows = {}
  for path, (graphdef, params, options, denoiser, scored) in paths_of(group).items():
    if not scored:
      continue
    model_cfg = group["tarflow" if path == "tarflow" else "ntm"][2]
    batch = 64
    condition = conditions(config, model_cfg, batch)
    fn = sampler.make_sample_fn(graphdef, batch, options, denoiser_graphdef=denoiser[0] if denoiser else None)
    draws = -(-num_samples // batch)
    samples = np.concatenate([np.asarray(fn(params, jax.random.key(100 + i), condition,
                                            denoiser[1] if denoiser else None)) for i in range(draws)])
    labels = None if condition is None else np.tile(np.asarray(condition), draws)[:num_samples]
    rows[f"{name}/{path}"] = sample_quality.score(judge, samples[:num_samples], labels)
    print(f"  quality {name}/{path}: {rows[f'{name}/{path}']}", flush=True)
  return rows


def text_quality(name: str, group: dict, workdirs: dict, prompts_per_category: int, samples_per_prompt: int) -> dict:
  """The shapes judge's overall scores (seen, held out) of each scored path, through `--mode=judge`."""
  rows = {}
  for path, (_, _, options, denoiser, scored) in paths_of(group).items():
    if not scored:
      continue
    config = common.load_config("t2i", workdirs["arg_tarflow" if path == "tarflow" else "arg"])
    config.judge.update(prompts_per_category=prompts_per_category, samples_per_prompt=samples_per_prompt,
                        guidance_scales="0")
    config.sample.update(use_denoiser=denoiser is not None, **options)
    judged = prompt_following.judge_checkpoint(config, workdirs["tarflow" if path == "tarflow" else "ntm"])
    rows[f"{name}/{path}"] = {"seen_overall": judged["by_guidance_scale"]["0"]["overall"],
                              "held_out_overall": judged["held_out_by_guidance_scale"]["0"]["overall"],
                              "num_images": len(shapes_prompts.seen_prompts(prompts_per_category))
                              * samples_per_prompt}
    print(f"  quality {name}/{path}: {rows[f'{name}/{path}']}", flush=True)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--digits_ntm_workdir")
  parser.add_argument("--digits_tarflow_workdir")
  parser.add_argument("--conditional", action="store_true", help="the digits workdirs are class-conditional")
  parser.add_argument("--text_ntm_workdir")
  parser.add_argument("--text_tarflow_workdir")
  parser.add_argument("--latent", default="", help="the autoencoder workdir of the text runs (latent=DIR)")
  parser.add_argument("--quality_samples", type=int, default=360)
  parser.add_argument("--prompts_per_category", type=int, default=20)
  parser.add_argument("--samples_per_prompt", type=int, default=4)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="benchmarks/results/few_step_sampling.json")
  parser.add_argument("--smoke", action="store_true", help="tiny untrained models, one batch size, timed only (CI)")
  args = parser.parse_args()
  smoke = "smoke" if args.smoke else ""
  batches = (2,) if args.smoke else (1, 64)  # the smoke run compiles each path once: CI's time is short
  if args.smoke:  # untrained tiny models, timed only: CI's 30 minutes are nearly spent
    args.repeats = 1

  results = {"batches": list(batches), "repeats": args.repeats, "device": str(jax.devices()[0]), "rows": {},
             "quality": {}}
  digits_arg = ",".join(filter(None, ["conditional" if args.conditional else "", smoke]))
  digits = make_group("digits", digits_arg, args.digits_ntm_workdir, args.digits_tarflow_workdir)
  print("digits:", flush=True)
  results["rows"] |= time_paths("digits", digits, batches, args.repeats)
  if args.digits_ntm_workdir and args.digits_tarflow_workdir:
    results["quality"] |= digits_quality("digits", digits, args.quality_samples)

  latent = f"latent={args.latent}" if args.latent else ""
  text_args = {"arg": ",".join(filter(None, [latent, smoke])),
               "arg_tarflow": ",".join(filter(None, ["tarflow", latent, smoke])),
               "ntm": args.text_ntm_workdir, "tarflow": args.text_tarflow_workdir}
  if args.text_ntm_workdir or args.smoke:
    text = make_group("t2i", text_args["arg"], args.text_ntm_workdir, args.text_tarflow_workdir)
    print("text:", flush=True)
    results["rows"] |= time_paths("text", text, batches, args.repeats)
    if args.text_ntm_workdir and args.text_tarflow_workdir:
      results["quality"] |= text_quality("text", text, text_args, args.prompts_per_category, args.samples_per_prompt)

  for tokens, side in () if args.smoke else ((64, 8), (256, 16)):  # the smoke run has the same code in digits
    def shape(config, side=side):
      config.model.image.update(height=side, width=side, patch_size=1)
    group = make_group("digits", smoke, modify=shape, jacobi_tolerance=-1.0)  # every iteration up to the cap
    print(f"{tokens} tokens (untrained, Jacobi at its cap):", flush=True)
    results["rows"] |= time_paths(f"tokens{tokens}", group, batches, args.repeats)

  header = (f"{'path':24s} {'dep. evals':>10s} {'MFLOP/img':>10s} "
            + " ".join(f"{'img/s@' + str(b):>10s}" for b in batches))
  print("\n" + header + f" {'x tarflow@1':>11s} {'quality':>28s}")
  for name, row in results["rows"].items():
    group = name.split("/")[0]
    base = results["rows"][f"{group}/tarflow"][f"batch{batches[0]}_images_per_s"]
    q = results["quality"].get(name, {})
    quality = (f"accuracy {q['class_accuracy']:.3f} FD {q['frechet_distance']:.2f}" if "class_accuracy" in q
               else f"FD {q['frechet_distance']:.2f}" if "frechet_distance" in q
               else f"judge {q['seen_overall']:.3f} / {q['held_out_overall']:.3f}" if q else "-")
    evals = str(row.get("dependent_evaluations_taken", row["dependent_evaluations"]))
    mflops = 1e3 * row.get("model_gflops_per_image_taken", row["model_gflops_per_image"])
    print(f"{name:24s} {evals:>10s} {mflops:>10.1f} " + " ".join(f"{row[f'batch{b}_images_per_s']:>10.1f}" for b in batches)
          + f" {row[f'batch{batches[0]}_images_per_s'] / base:>11.2f} {quality:>28s}")
  print("dep. evals, MFLOP/img: dependent network evaluations and model FLOPs per image (for Jacobi: what this "
        "batch took); judge: seen / held-out prompts")
  common.write_json(args.out, results)


if __name__ == "__main__":
  main()
