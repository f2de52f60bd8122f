"""Sampling speed and quality, side by side in one run: NTM's paths against the plain TarFlow baseline.

  python benchmarks/sampling.py [--ntm_workdir=workdirs/digits_ntm --tarflow_workdir=workdirs/digits_tarflow]

Speed (images/s at batch 64, after compilation, median of --repeats) on the digits and mnist5k configs:
  ntm/inversion   T predictor steps, then the KV-cached autoregressive inversion of f_T (D6);
  ntm/distilled   T predictor steps, then the distilled denoiser g(u_0) instead of the inversion (C.12);
  ntm/denoised    the inversion of every level plus trajectory-score denoising (C.11);
  tarflow         the plain TarFlow baseline's token-by-token inversion of every block.
Also NTM's sampling time against T (1, 2, 4, 8, 16) and against the number of tokens, and the KV-cached
against the cache-free inverse of f_T at 64 tokens. With trained workdirs (digits), each path's samples are
scored by ntm_jax.sample_quality (Frechet distance, precision, recall against the test split). Speed of
untrained models is the same as trained ones; quality needs the workdirs. Prints tables, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.train_throughput import median_seconds  # noqa: E402
from ntm_jax import distill, restore, sample, sample_quality  # noqa: E402
from ntm_jax.models import build_model, model_config_from_dict  # noqa: E402
from tests.config_test import load_config  # noqa: E402

BATCH = 64


def model_and_params(config, workdir=None):
  """(graphdef, params, model config): a trained checkpoint's EMA parameters, or a fresh model's."""
  if workdir:
    graphdef, params, _, model_cfg = restore.restore_ema_params(config, workdir, "best")
    return graphdef, params, model_cfg
  model_cfg = model_config_from_dict(config.model)
  graphdef, params = nnx.split(build_model(model_cfg, rngs=nnx.Rngs(0)))
  return graphdef, params, model_cfg


def denoiser_for(config, model_cfg, workdir=None):
  restored = distill.restore_denoiser(config, workdir, model_cfg.image, 0) if workdir else None
  if restored is not None:
    return restored[0], restored[1]
  return nnx.split(distill.build_denoiser(config, model_cfg.image, 0))


def sample_fns(data_name: str, ntm_workdir=None, tarflow_workdir=None):
  """{path: (fn(key) -> images, parameter count)} for the four sampling paths."""
  ntm_config = load_config(data_name, "")
  graphdef, params, model_cfg = model_and_params(ntm_config, ntm_workdir)
  den_graphdef, den_params = denoiser_for(ntm_config, model_cfg, ntm_workdir)
  tf_config = load_config(data_name, "tarflow")
  tf_graphdef, tf_params, tf_cfg = model_and_params(tf_config, tarflow_workdir)
  count = lambda tree: int(sum(x.size for x in jax.tree.leaves(tree)))
  inversion = sample.make_sample_fn(graphdef, model_cfg, BATCH)
  distilled = sample.make_sample_fn(graphdef, model_cfg, BATCH, denoiser_graphdef=den_graphdef)
  denoised = sample.make_sample_fn(graphdef, model_cfg, BATCH, denoise=True)
  tarflow = sample.make_sample_fn(tf_graphdef, tf_cfg, BATCH)
  return {
      "ntm/inversion": (lambda key: inversion(params, key, None), count(params)),
      "ntm/distilled": (lambda key: distilled(params, key, None, den_params), count(params) + count(den_params)),
      "ntm/denoised": (lambda key: denoised(params, key, None), count(params)),
      "tarflow": (lambda key: tarflow(tf_params, key, None), count(tf_params)),
  }


def speed_table(data_name, repeats, ntm_workdir=None, tarflow_workdir=None):
  rows = {}
  fns = sample_fns(data_name, ntm_workdir, tarflow_workdir)
  for path, (fn, num_params) in fns.items():
    seconds = median_seconds(lambda: fn(jax.random.key(0)), repeats)
    rows[path] = {"parameters": num_params, "ms_per_batch": round(1e3 * seconds, 1),
                  "images_per_s": round(BATCH / seconds, 1)}
    print(f"  {data_name} {path}: {rows[path]}", flush=True)
  base = rows["ntm/inversion"]["images_per_s"]
  ratios = {"ntm_inversion_over_tarflow": round(base / rows["tarflow"]["images_per_s"], 2),
            "ntm_distilled_over_ntm_inversion": round(rows["ntm/distilled"]["images_per_s"] / base, 2)}
  return rows, ratios, fns


def quality_table(fns, num_samples: int, num_levels: int):
  judge = sample_quality.fit_judge("digits", num_levels)
  reference = sample_quality.score(judge, sample_quality.split_images("digits", "train", num_levels)[0][:num_samples])
  rows = {"real training images (reference)": reference}
  for path, (fn, _) in fns.items():
    batches = [np.asarray(fn(jax.random.key(100 + i))) for i in range(-(-num_samples // BATCH))]
    rows[path] = sample_quality.score(judge, np.concatenate(batches)[:num_samples])
    print(f"  quality {path}: {rows[path]}", flush=True)
  return rows


def cost_against_steps(repeats):
  config = load_config("digits", "")
  graphdef, params, model_cfg = model_and_params(config)
  rows = {}
  for num_steps in (1, 2, 4, 8, 16):
    fn = sample.make_sample_fn(graphdef, model_cfg, BATCH, num_steps=num_steps)
    rows[num_steps] = round(1e3 * median_seconds(lambda: fn(params, jax.random.key(0), None), repeats), 1)
  return rows


def cost_against_tokens(repeats):
  """Digits at patch 2 (16 tokens) and patch 1 (64 tokens), NTM and TarFlow: ms per batch."""
  rows = {}
  for patch in (2, 1):
    for variant in ("", "tarflow"):
      config = load_config("digits", variant)
      config.model.image.patch_size = patch
      graphdef, params, model_cfg = model_and_params(config)
      fn = sample.make_sample_fn(graphdef, model_cfg, BATCH)
      ms = round(1e3 * median_seconds(lambda: fn(params, jax.random.key(0), None), repeats), 1)
      rows[f"{model_cfg.image.num_tokens} tokens/{variant or 'ntm'}"] = ms
  return rows


def cached_against_uncached_inverse(repeats):
  """The transporter's KV-cached inverse against its cache-free reference at 64 tokens (digits, patch 1)."""
  config = load_config("digits", "")
  config.model.image.patch_size = 1
  model = build_model(model_config_from_dict(config.model), rngs=nnx.Rngs(0))
  z = jax.random.normal(jax.random.key(0), (BATCH, 64, 1))
  t = jnp.zeros((BATCH,))
  graphdef, params = nnx.split(model.transporter)
  cached = jax.jit(lambda p, z: nnx.merge(graphdef, p).inverse(z, t, use_cache=True))
  reference = jax.jit(lambda p, z: nnx.merge(graphdef, p).inverse(z, t, use_cache=False))
  seconds = {"cached_ms": 1e3 * median_seconds(lambda: cached(params, z), repeats),
             "cache_free_ms": 1e3 * median_seconds(lambda: reference(params, z), repeats)}
  seconds["speedup"] = seconds["cache_free_ms"] / seconds["cached_ms"]
  return {k: round(v, 2) for k, v in seconds.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--ntm_workdir", default=None)
  parser.add_argument("--tarflow_workdir", default=None)
  parser.add_argument("--quality_samples", type=int, default=360)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--skip_mnist", action="store_true")
  parser.add_argument("--out", default="benchmarks/results/sampling.json")
  args = parser.parse_args()

  results = {"batch_size": BATCH, "repeats": args.repeats, "jax": jax.__version__}
  print("speed, digits:")
  results["digits"], results["digits_ratios"], fns = speed_table("digits", args.repeats, args.ntm_workdir,
                                                                 args.tarflow_workdir)
  if args.ntm_workdir and args.tarflow_workdir:
    print("quality, digits (against the 360 test images):")
    results["digits_quality"] = quality_table(fns, args.quality_samples, load_config("digits", "").data.num_levels)
  if not args.skip_mnist:
    print("speed, mnist5k (untrained parameters):")
    results["mnist5k"], results["mnist5k_ratios"], _ = speed_table("mnist", args.repeats)
  print("cost against T (NTM, digits, ms per batch of 64):")
  results["ms_against_T"] = cost_against_steps(args.repeats)
  print(" ", results["ms_against_T"])
  print("cost against tokens (ms per batch of 64):")
  results["ms_against_tokens"] = cost_against_tokens(args.repeats)
  print(" ", results["ms_against_tokens"])
  print("KV-cached against cache-free inverse of f_T, 64 tokens:")
  results["inverse_64_tokens"] = cached_against_uncached_inverse(args.repeats)
  print(" ", results["inverse_64_tokens"])

  print(f"\n{'data/path':26s} {'params':>9s} {'ms/batch':>9s} {'images/s':>9s}")
  for data_name in ("digits", "mnist5k"):
    for path, row in results.get(data_name, {}).items():
      print(f"{data_name + '/' + path:26s} {row['parameters']:9d} {row['ms_per_batch']:9.1f} "
            f"{row['images_per_s']:9.1f}")
    if f"{data_name}_ratios" in results:
      print(f"  ratios: {results[data_name + '_ratios']}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
