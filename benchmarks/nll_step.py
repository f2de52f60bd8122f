"""Forward + backward time of the exact training loss, side by side for NTM and the two D8 baselines.

  python benchmarks/nll_step.py [--config=configs/digits.py] [--batch_size=64] [--repeats=20]
      [--set=model.scan_layers=false ...] [--smoke]

Uses the model section of a config (default: digits, T = 4, 8x8x1 images, patch 2), float32; `--set`
overrides a field of the config (repeatable). Prints a table and writes benchmarks/results/nll_step.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import common  # noqa: E402
from ntm_jax.config_args import load_config_file  # noqa: E402
from ntm_jax.models import build_model, model_config_from_dict  # noqa: E402


def apply_overrides(config, overrides):
  """`key.path=value` strings onto a ConfigDict, converted to each field's type."""
  for override in overrides:
    path, _, raw = override.partition("=")
    *parents, leaf = path.split(".")
    node = config
    for name in parents:
      node = node[name]
    current = node[leaf]
    node[leaf] = (raw.lower() in ("1", "true") if isinstance(current, bool) else type(current)(raw))
  return config


def time_loss_and_grad(model_cfg, batch_size: int, repeats: int) -> dict:
  model = build_model(model_cfg, rngs=nnx.Rngs(0))
  graph, params = nnx.split(model)
  image = model_cfg.image
  images = jax.random.uniform(jax.random.key(1), (batch_size, image.height, image.width, image.channels),
                              jnp.float32, -1.0, 1.0)

  @jax.jit
  def loss_and_grad(params, key):
    return jax.value_and_grad(lambda p: nnx.merge(graph, p).loss(key, images)[0])(params)

  start = time.perf_counter()
  jax.block_until_ready(loss_and_grad(params, jax.random.key(0)))
  compile_seconds = time.perf_counter() - start
  seconds = []
  for i in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(loss_and_grad(params, jax.random.key(i)))
    seconds.append(time.perf_counter() - start)
  median = statistics.median(seconds)
  return {
      "parameters": int(sum(x.size for x in jax.tree.leaves(params))),
      "compile_s": round(compile_seconds, 2),
      "median_ms": round(1e3 * median, 2),
      "images_per_s": round(batch_size / median, 1),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/digits.py")
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--set", action="append", default=[], help="a config override, e.g. model.scan_layers=false")
  parser.add_argument("--out", default="benchmarks/results/nll_step.json")
  parser.add_argument("--smoke", action="store_true", help="tiny models and batch, 2 repeats (what CI runs)")
  args = parser.parse_args()
  if args.smoke:
    args.batch_size, args.repeats = 8, 2

  rows = {}
  for variant in ("ntm", "gaussian", "tarflow"):
    config = load_config_file(args.config, ",".join(filter(None, [variant, "smoke" if args.smoke else ""])))
    model_cfg = model_config_from_dict(apply_overrides(config, args.set).model)
    rows[variant] = time_loss_and_grad(model_cfg, args.batch_size, args.repeats)
    rows[variant]["num_steps_T"] = model_cfg.num_steps or None

  print(f"forward+backward of the exact NLL, {args.config}, batch {args.batch_size}, float32, "
        f"{jax.devices()[0].platform}")
  print(f"{'model':10s} {'params':>9s} {'compile s':>10s} {'median ms':>10s} {'images/s':>9s}")
  for name, row in rows.items():
    print(f"{name:10s} {row['parameters']:9d} {row['compile_s']:10.2f} {row['median_ms']:10.2f} "
          f"{row['images_per_s']:9.1f}")
  ntm_ms = rows["ntm"]["median_ms"]
  print(f"ratios (time / ntm): gaussian {rows['gaussian']['median_ms'] / ntm_ms:.2f}, "
        f"tarflow {rows['tarflow']['median_ms'] / ntm_ms:.2f}")
  common.write_json(args.out, {"config": args.config, "overrides": args.set, "batch_size": args.batch_size,
                               "repeats": args.repeats, "machine": platform.processor() or platform.machine(),
                               "jax": jax.__version__, "results": rows})


if __name__ == "__main__":
  main()
