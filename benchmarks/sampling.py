"""Sampling speed and quality, side by side in one run: NTM's paths against the plain TarFlow baseline.

  python benchmarks/sampling.py [--conditional --ntm_workdir=workdirs/digits_ntm_cond \
      --tarflow_workdir=workdirs/digits_tarflow_cond --mnist_ntm_workdir=workdirs/mnist_ntm \
      --mnist_tarflow_workdir=workdirs/mnist_tarflow] [--smoke]

Speed (images/s at batch 64, after compilation, median of --repeats) on the digits and mnist5k configs:
  ntm/inversion   T predictor steps, then the KV-cached autoregressive inversion of f_T (D6);
  ntm/distilled   T predictor steps, then the distilled denoiser g(u_0) instead of the inversion (C.12);
  ntm/denoised    the inversion of every level plus trajectory-score denoising (C.11);
  tarflow         the plain TarFlow baseline's token-by-token inversion of every block.
Also NTM's sampling time against T (1, 2, 4, 8, 16) and against the number of tokens, and the KV-cached
against the cache-free inverse of f_T at 64 tokens. With trained workdirs, each path's samples are scored by
ntm_jax.evaluation.sample_quality against the test split (Frechet distance, precision, recall; class accuracy when the
models are class-conditional, sampled with labels cycling 0..9, and then also a guided row). Speed of
untrained models is the same as trained ones; quality needs the workdirs. Prints tables, writes JSON.
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
from benchmarks.common import median_seconds  # noqa: E402
from ntm_jax.evaluation import sample_quality  # noqa: E402
from ntm_jax.models import build_model, model_config_from_dict  # noqa: E402
from ntm_jax.models.denoiser import Denoiser  # noqa: E402
from ntm_jax.parallel import checkpoint  # noqa: E402
from ntm_jax.sampling import sampler as sample  # noqa: E402

BATCH = 64
SMOKE = False  # --smoke: every config at its tiny `smoke` size


def load_config(name, arg=""):
  return common.load_config(name, ",".join(filter(None, [arg, "smoke" if SMOKE else ""])))


def model_and_params(config, workdir=None):
  """(graphdef, params, model config): a trained checkpoint's EMA parameters, or a fresh model's."""
  if workdir:
    graphdef, params, _, model_cfg = checkpoint.restore_params(config, workdir, "best")
    return graphdef, params, model_cfg
  model_cfg = model_config_from_dict(config.model)
  graphdef, params = nnx.split(build_model(model_cfg, rngs=nnx.Rngs(0)))
  return graphdef, params, model_cfg


def denoiser_for(config, model_cfg, workdir=None):
  """(graphdef, params, trained?): the workdir's distilled denoiser, or a fresh one (same cost, no quality)."""
  restored = sample.restore_denoiser(config, workdir, model_cfg) if workdir else None
  if restored is not None:
    return restored[0], restored[1], True
  return (*nnx.split(Denoiser.for_model(config.distill, model_cfg)), False)


def class_cycle(model_cfg, batch):
  """Labels 0, 1, ..., 9, 0, ... for a class-conditional model; None for an unconditional one."""
  num_classes = model_cfg.num_classes
  return jnp.arange(batch, dtype=jnp.int32) % num_classes if num_classes else None


def sample_fns(data_name: str, ntm_workdir=None, tarflow_workdir=None, conditional=False, batch=None):
  """{path: (fn(key) -> images, labels or None, parameter count)} for the sampling paths.

  Conditional checkpoints are sampled with the labels cycling over the classes, and then also get
  the guided path (scale 1, twice the predictor work) as a quality row.
  """
  batch = batch or BATCH
  suffix = ",conditional" if conditional else ""
  ntm_config = load_config(data_name, suffix[1:])
  graphdef, params, model_cfg = model_and_params(ntm_config, ntm_workdir)
  labels = class_cycle(model_cfg, batch)
  den_graphdef, den_params, den_trained = denoiser_for(ntm_config, model_cfg, ntm_workdir)
  tf_config = load_config(data_name, "tarflow" + suffix)
  tf_graphdef, tf_params, tf_cfg = model_and_params(tf_config, tarflow_workdir)
  tf_labels = class_cycle(tf_cfg, batch)
  count = lambda tree: int(sum(x.size for x in jax.tree.leaves(tree)))
  inversion = sample.make_sample_fn(graphdef, batch)
  distilled = sample.make_sample_fn(graphdef, batch, denoiser_graphdef=den_graphdef)
  denoised = sample.make_sample_fn(graphdef, batch, {"denoise": True})
  tarflow = sample.make_sample_fn(tf_graphdef, batch)
  fns = {
      "ntm/inversion": (lambda key: inversion(params, key, labels), labels, count(params)),
      "ntm/distilled": (lambda key: distilled(params, key, labels, den_params), labels,
                        count(params) + count(den_params)),
      "ntm/denoised": (lambda key: denoised(params, key, labels), labels, count(params)),
      "tarflow": (lambda key: tarflow(tf_params, key, tf_labels), tf_labels, count(tf_params)),
  }
  if labels is not None:
    guided = sample.make_sample_fn(graphdef, batch, {"guidance_scale": 1.0})
    fns["ntm/inversion, guidance 1"] = (lambda key: guided(params, key, labels), labels, count(params))
  if ntm_workdir and not den_trained:
    print(f"  note: {ntm_workdir} has no distilled denoiser; ntm/distilled is timed untrained, not scored")
    fns["ntm/distilled"] += ("untrained",)
  return fns


def speed_table(data_name, repeats, ntm_workdir=None, tarflow_workdir=None, conditional=False, batch=None):
  batch = batch or BATCH
  rows = {}
  fns = sample_fns(data_name, ntm_workdir, tarflow_workdir, conditional, batch)
  for path, (fn, _, num_params, *_) in fns.items():
    seconds = median_seconds(lambda: fn(jax.random.key(0)), repeats)
    rows[path] = {"parameters": num_params, "ms_per_batch": round(1e3 * seconds, 1),
                  "images_per_s": round(batch / seconds, 1)}
    print(f"  {data_name} batch {batch} {path}: {rows[path]}", flush=True)
  base = rows["ntm/inversion"]["images_per_s"]
  ratios = {"ntm_inversion_over_tarflow": round(base / rows["tarflow"]["images_per_s"], 2),
            "ntm_distilled_over_ntm_inversion": round(rows["ntm/distilled"]["images_per_s"] / base, 2)}
  return rows, ratios, fns


def quality_table(fns, data_name: str, num_samples: int):
  """Each path's samples scored by a judge trained on the real training split, against the test split."""
  config = load_config(data_name, "")
  judge = sample_quality.fit_judge(config.data.name, config.data.pixel_levels)
  real, real_labels = sample_quality.split_images(config.data.name, "train", config.data.pixel_levels)
  rows = {"real training images (reference)": sample_quality.score(judge, real[:num_samples],
                                                                   real_labels[:num_samples])}
  print(f"  quality reference: {rows['real training images (reference)']}", flush=True)
  for path, (fn, labels, _, *untrained) in fns.items():
    if untrained:
      continue
    num_batches = -(-num_samples // BATCH)
    samples = np.concatenate([np.asarray(fn(jax.random.key(100 + i))) for i in range(num_batches)])
    all_labels = None if labels is None else np.tile(np.asarray(labels), num_batches)[:num_samples]
    rows[path] = sample_quality.score(judge, samples[:num_samples], all_labels)
    print(f"  quality {path}: {rows[path]}", flush=True)
  return rows


def sequential_depth_and_work(data_name: str) -> dict:
  """Per image, from the configs (not measured): the longest chain of dependent Transformer-layer
  evaluations (what bounds latency on a parallel accelerator) and the token-layer evaluations weighted by
  width^2 (what bounds throughput on this FLOP-bound CPU), for each path."""
  ntm, tf = load_config(data_name, "").model, load_config(data_name, "tarflow").model
  den = load_config(data_name, "").distill
  n = ntm.image.height * ntm.image.width // ntm.image.patch_size ** 2
  steps = ntm.grid.num_steps
  transporter = ntm.transporter.num_blocks * ntm.transporter.layers_per_block
  flow = tf.transporter.num_blocks * tf.transporter.layers_per_block
  w_t, w_p, w_f = ntm.transporter.width, ntm.predictor.width, tf.transporter.width
  predictor = steps * ntm.predictor.depth
  rows = {
      "ntm/inversion": {"sequential_layers": transporter + predictor + transporter * n,
                        "work": n * (2 * transporter * w_t ** 2 + predictor * w_p ** 2)},
      "ntm/distilled": {"sequential_layers": transporter + predictor + den.depth,
                        "work": n * (transporter * w_t ** 2 + predictor * w_p ** 2 + den.depth * den.width ** 2)},
      "tarflow": {"sequential_layers": flow * n, "work": n * flow * w_f ** 2},
  }
  base = rows["tarflow"]["work"]
  for row in rows.values():
    row["work_relative_to_tarflow"] = round(row.pop("work") / base, 2)
  return rows


def deep_predictor_shape(repeats):
  """The paper's shape at equal parameters (untrained, speed only): NTM with a 2 x 1-layer f_T and an
  8-layer predictor against a 5 x 2-layer TarFlow, digits at patch 1 (64 tokens), batch 64 and batch 1."""
  rows = {}
  for batch in _batches():
    for path in ("ntm/inversion", "ntm/distilled", "tarflow"):
      config = load_config("digits", "tarflow" if path == "tarflow" else "")
      config.model.image.patch_size = 1
      if path == "tarflow":
        config.model.transporter.update(num_blocks=5, layers_per_block=2)
      else:
        config.model.transporter.update(num_blocks=2, layers_per_block=1)
        config.model.predictor.depth = 8
      graphdef, params, model_cfg = model_and_params(config)
      count = int(sum(x.size for x in jax.tree.leaves(params)))
      if path == "ntm/distilled":
        den_graphdef, den_params = nnx.split(Denoiser.for_model(config.distill, model_cfg))
        fn = sample.make_sample_fn(graphdef, batch, denoiser_graphdef=den_graphdef)
        run = lambda: fn(params, jax.random.key(0), None, den_params)  # noqa: B023  (called at once)
        count += int(sum(x.size for x in jax.tree.leaves(den_params)))
      else:
        fn = sample.make_sample_fn(graphdef, batch)
        run = lambda: fn(params, jax.random.key(0), None)  # noqa: B023
      rows[f"batch {batch}/{path}"] = {"parameters": count, "ms_per_batch": round(1e3 * median_seconds(run, repeats), 2)}
      print(f"  {path} batch {batch}: {rows[f'batch {batch}/{path}']}", flush=True)
  for batch in _batches():
    tarflow_ms = rows[f"batch {batch}/tarflow"]["ms_per_batch"]
    for path in ("ntm/inversion", "ntm/distilled"):
      rows[f"batch {batch}/{path}"]["speedup_over_tarflow"] = round(tarflow_ms / rows[f"batch {batch}/{path}"]["ms_per_batch"], 2)
  return rows


def _batches():
  """The batch sizes of the shape comparison: the benchmark's batch and 1 (the smoke run: its batch only)."""
  return (BATCH,) if SMOKE else (BATCH, 1)


def cost_against_steps(repeats):
  config = load_config("digits", "")
  graphdef, params, model_cfg = model_and_params(config)
  rows = {}
  for num_steps in (1, 2) if SMOKE else (1, 2, 4, 8, 16):
    fn = sample.make_sample_fn(graphdef, BATCH, {"num_steps": num_steps})
    rows[num_steps] = round(1e3 * median_seconds(lambda: fn(params, jax.random.key(0), None), repeats), 1)
  return rows


def cost_against_tokens(repeats):
  """Digits at patch 2 (16 tokens) and patch 1 (64 tokens), NTM and TarFlow: ms per batch."""
  rows = {}
  for patch in (2,) if SMOKE else (2, 1):
    for variant in ("", "tarflow"):
      config = load_config("digits", variant)
      config.model.image.patch_size = patch
      graphdef, params, model_cfg = model_and_params(config)
      fn = sample.make_sample_fn(graphdef, BATCH)
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


def print_tables(results):
  header = (f"{'data/path':34s} {'params':>9s} {'ms/64':>7s} {'img/s@64':>9s} {'ms@1':>6s} {'seq.layers':>10s} "
            f"{'work':>5s} {'accuracy':>8s} {'Frechet':>8s} {'prec':>5s} {'recall':>6s}")
  print("\n" + header)
  dash = "-"
  for data_name in ("digits", "mnist5k"):
    quality = results.get(f"{data_name}_quality", {})
    batch1 = results.get(f"{data_name}_batch1", {})
    depth = results.get(f"{data_name}_depth_and_work", {})
    for path, row in results.get(data_name, {}).items():
      q, one, d = quality.get(path, {}), batch1.get(path), depth.get(path)
      accuracy = f"{q['class_accuracy']:8.3f}" if "class_accuracy" in q else f"{dash:>8s}"
      scores = (f"{q['frechet_distance']:8.2f} {q['precision']:5.2f} {q['recall']:6.2f}" if q
                else f"{dash:>8s} {dash:>5s} {dash:>6s}")
      latency = f"{one['ms_per_batch']:6.1f}" if one else f"{dash:>6s}"
      shape = f"{d['sequential_layers']:10d} {d['work_relative_to_tarflow']:5.2f}" if d else f"{dash:>10s} {dash:>5s}"
      print(f"{data_name + '/' + path:34s} {row['parameters']:9d} {row['ms_per_batch']:7.1f} "
            f"{row['images_per_s']:9.1f} {latency} {shape} {accuracy} {scores}")
    if "real training images (reference)" in quality:
      q = quality["real training images (reference)"]
      accuracy = f"{q['class_accuracy']:8.3f}" if "class_accuracy" in q else f"{dash:>8s}"
      print(f"{data_name + '/real training images':34s} {'':9s} {'':7s} {'':9s} {'':6s} {'':10s} {'':5s} "
            f"{accuracy} {q['frechet_distance']:8.2f} {q['precision']:5.2f} {q['recall']:6.2f}")
    for suffix in ("_ratios", "_batch1_ratios"):
      if data_name + suffix in results:
        print(f"  {data_name}{suffix}: {results[data_name + suffix]}")
  print("seq.layers: longest chain of dependent layer evaluations per image; work: token-layer evaluations x "
        "width^2 relative to tarflow (both from the configs, not measured)")
  print(f"ms per batch of 64 against T (NTM, digits): {results['ms_against_T']}")
  print(f"ms per batch of 64 against tokens: {results['ms_against_tokens']}")
  print(f"inverse of f_T at 64 tokens, batch 64: {results['inverse_64_tokens']}")
  print("the paper's shape at equal parameters (untrained, 64 tokens): "
        + "; ".join(f"{k} {v['ms_per_batch']} ms" + (f" ({v['speedup_over_tarflow']}x tarflow)"
                                                      if "speedup_over_tarflow" in v else "")
                    for k, v in results["deep_predictor_shape"].items()))


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--ntm_workdir", default=None, help="trained digits NTM (conditional gives accuracy)")
  parser.add_argument("--tarflow_workdir", default=None, help="trained digits TarFlow baseline")
  parser.add_argument("--conditional", action="store_true", help="the digits workdirs are class-conditional")
  parser.add_argument("--mnist_ntm_workdir", default=None)
  parser.add_argument("--mnist_tarflow_workdir", default=None)
  parser.add_argument("--quality_samples", type=int, default=360, help="samples scored per path")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--skip_mnist", action="store_true")
  parser.add_argument("--out", default="benchmarks/results/sampling.json")
  parser.add_argument("--smoke", action="store_true", help="tiny untrained models, digits only, 1 repeat (CI)")
  args = parser.parse_args()
  global SMOKE, BATCH  # pylint: disable=global-statement
  if args.smoke:
    SMOKE, BATCH, args.repeats, args.skip_mnist = True, 8, 1, True

  results = {"batch_size": BATCH, "repeats": args.repeats, "jax": jax.__version__,
             "workdirs": {k: v for k, v in vars(args).items() if k.endswith("workdir")}}
  datasets = [("digits", args.ntm_workdir, args.tarflow_workdir, args.conditional)]
  if not args.skip_mnist:
    datasets.append(("mnist5k", args.mnist_ntm_workdir, args.mnist_tarflow_workdir, False))
  for data_name, ntm_workdir, tarflow_workdir, conditional in datasets:
    config_name = "mnist" if data_name == "mnist5k" else data_name
    print(f"speed, {data_name}" + ("" if ntm_workdir else " (untrained parameters)") + ":")
    results[data_name], results[f"{data_name}_ratios"], fns = speed_table(config_name, args.repeats, ntm_workdir,
                                                                          tarflow_workdir, conditional)
    if ntm_workdir and tarflow_workdir:
      print(f"quality, {data_name} ({args.quality_samples} samples per path against the test split):")
      results[f"{data_name}_quality"] = quality_table(fns, config_name, args.quality_samples)
  for data_name, ntm_workdir, tarflow_workdir, conditional in datasets:
    config_name = "mnist" if data_name == "mnist5k" else data_name
    print(f"latency, {data_name} (batch 1):")
    results[f"{data_name}_batch1"], results[f"{data_name}_batch1_ratios"], _ = speed_table(
        config_name, args.repeats, ntm_workdir, tarflow_workdir, conditional, batch=1)
    results[f"{data_name}_depth_and_work"] = sequential_depth_and_work(config_name)
    print(" ", results[f"{data_name}_depth_and_work"])
  print("the paper's shape (deep predictor, shallow f_T) against TarFlow at equal parameters, 64 tokens:")
  results["deep_predictor_shape"] = deep_predictor_shape(args.repeats)
  print("cost against T (NTM, digits, ms per batch of 64):")
  results["ms_against_T"] = cost_against_steps(args.repeats)
  print(" ", results["ms_against_T"])
  print("cost against tokens (ms per batch of 64):")
  results["ms_against_tokens"] = cost_against_tokens(args.repeats)
  print(" ", results["ms_against_tokens"])
  print("KV-cached against cache-free inverse of f_T, 64 tokens:")
  results["inverse_64_tokens"] = cached_against_uncached_inverse(args.repeats)
  print(" ", results["inverse_64_tokens"])
  print_tables(results)
  common.write_json(args.out, results)


if __name__ == "__main__":
  main()
