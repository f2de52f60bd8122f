"""Forward + backward time of the exact training loss, side by side for NTM and the two D8 baselines.

  python benchmarks/nll_step.py [--config=configs/digits.py] [--batch_size=64] [--repeats=20]

Uses the model section of a config (default: digits, T = 4, 8x8x1 images, patch 2), float32.
Prints a table and writes benchmarks/results/nll_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.config_args import load_config_file
from ntm_jax.models import build_model, model_config_from_dict


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
  parser.add_argument("--out", default="benchmarks/results/nll_step.json")
  args = parser.parse_args()

  rows = {}
  for variant in ("ntm", "gaussian", "tarflow"):
    model_cfg = model_config_from_dict(load_config_file(args.config, variant).model)
    rows[variant] = time_loss_and_grad(model_cfg, args.batch_size, args.repeats)
    rows[variant]["num_steps_T"] = model_cfg.grid.num_steps if model_cfg.kind == "ntm" else None

  print(f"forward+backward of the exact NLL, {args.config}, batch {args.batch_size}, float32, "
        f"{jax.devices()[0].platform}")
  print(f"{'model':10s} {'params':>9s} {'compile s':>10s} {'median ms':>10s} {'images/s':>9s}")
  for name, row in rows.items():
    print(f"{name:10s} {row['parameters']:9d} {row['compile_s']:10.2f} {row['median_ms']:10.2f} "
          f"{row['images_per_s']:9.1f}")
  ntm_ms = rows["ntm"]["median_ms"]
  print(f"ratios (time / ntm): gaussian {rows['gaussian']['median_ms'] / ntm_ms:.2f}, "
        f"tarflow {rows['tarflow']['median_ms'] / ntm_ms:.2f}")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"config": args.config, "batch_size": args.batch_size, "repeats": args.repeats,
               "machine": platform.processor() or platform.machine(), "jax": jax.__version__,
               "results": rows}, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
