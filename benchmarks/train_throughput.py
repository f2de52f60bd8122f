"""Train-step throughput (images/s) and effective FLOP/s, beside the float32 matmul ceiling of this machine.

  python benchmarks/train_throughput.py [--repeats=10]

Times the full jitted train step (forward, backward, AdamW, EMA) of NTM and the TarFlow baseline on
the digits config and on an mnist-size config (28x28, patch 4, width 256, batch 64, float32), and a
2048^3 float32 matmul measured in the same run. FLOPs per step come from XLA's cost analysis of the
compiled step. Prints a table and writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ntm_jax import optim, train  # noqa: E402
from ntm_jax.train_state import initial_state  # noqa: E402
from ntm_jax.models import model_config_from_dict  # noqa: E402
from tests.config_test import load_config  # noqa: E402


def median_seconds(fn, repeats):
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_ceiling(repeats: int, size: int = 2048) -> float:
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  return 2 * size ** 3 / median_seconds(lambda: matmul(a, b), repeats)


def mnist_size(config, variant):
  config.model.image.update(height=28, width=28, patch_size=4)
  config.data.num_levels = 256
  if variant == "tarflow":
    config.model.transporter.update(num_blocks=4, layers_per_block=4, width=256, head_dim=64)
  else:
    config.model.transporter.update(num_blocks=2, layers_per_block=4, width=256, head_dim=64)
    config.model.predictor.update(depth=8, width=256, head_dim=64)
  return config


def measure(config, repeats):
  model_cfg = model_config_from_dict(config.model)
  batch_size = config.data.batch_size
  optimizer = optim.make_optimizer(config.opt, 1000)
  graphdef, state = initial_state(model_cfg, optimizer, 0)
  image = model_cfg.image
  batch = {"image": jax.random.randint(jax.random.key(0), (batch_size, image.height, image.width, image.channels),
                                       0, config.data.num_levels)}
  step = jax.jit(functools.partial(
      train.train_step, graphdef=graphdef, optimizer=optimizer, num_levels=config.data.num_levels,
      label_dropout=0.0, conditional=False, ema_decay=0.999, loss_dims=train._loss_dims(model_cfg)))
  compiled = step.lower(state, batch, jax.random.key(0)).compile()
  cost = compiled.cost_analysis()
  flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
  seconds = median_seconds(lambda: compiled(state, batch, jax.random.key(0)), repeats)
  return {"parameters": int(sum(x.size for x in jax.tree.leaves(state["params"]))), "batch_size": batch_size,
          "step_ms": round(1e3 * seconds, 1), "images_per_s": round(batch_size / seconds, 1),
          "gflop_per_step": round(flops / 1e9, 2), "gflop_per_s": round(flops / seconds / 1e9, 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
  args = parser.parse_args()

  ceiling = matmul_ceiling(args.repeats)
  rows = {}
  for size in ("digits", "mnist-size"):
    for variant in ("ntm", "tarflow"):
      config = load_config("digits", variant)
      config.data.batch_size = 64
      if size == "mnist-size":
        config = mnist_size(config, variant)
      rows[f"{size}/{variant}"] = row = measure(config, args.repeats)
      row["fraction_of_ceiling"] = round(row["gflop_per_s"] * 1e9 / ceiling, 3)
      print(f"measured {size}/{variant}: {row}", flush=True)

  print(f"\nfloat32 matmul ceiling (2048^3, jax.jit): {ceiling / 1e9:.1f} GFLOP/s on {jax.devices()[0].platform}")
  print(f"{'config':22s} {'params':>9s} {'ms/step':>8s} {'images/s':>9s} {'GFLOP/step':>11s} {'GFLOP/s':>8s} "
        f"{'of ceiling':>10s}")
  for name, row in rows.items():
    print(f"{name:22s} {row['parameters']:9d} {row['step_ms']:8.1f} {row['images_per_s']:9.1f} "
          f"{row['gflop_per_step']:11.2f} {row['gflop_per_s']:8.1f} {100 * row['fraction_of_ceiling']:9.1f}%")
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"matmul_ceiling_gflop_per_s": round(ceiling / 1e9, 1), "repeats": args.repeats,
               "jax": jax.__version__, "results": rows}, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
