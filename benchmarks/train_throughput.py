"""Train-step throughput (images/s) and effective FLOP/s, beside the float32 matmul ceiling of this machine.

  python benchmarks/train_throughput.py [--repeats=10] [--smoke]

Times the full jitted train step (forward, backward, AdamW, EMA) of NTM and the TarFlow baseline on
the digits config and on an mnist-size config (28x28, patch 4, width 256, batch 64, float32), and a
2048^3 float32 matmul measured in the same run. FLOPs per step come from XLA's cost analysis of the
compiled step. Prints a table and writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from ntm_jax.parallel import mesh as mesh_lib  # noqa: E402
from ntm_jax.training import train  # noqa: E402


def compiled_train_step(config):
  """(the compiled train step of `config` on one device, its state, a batch of random images, a key)."""
  config.mesh.update(data=1, fsdp=1, tensor=1)
  setup = train.build_training(config, mesh_lib.make_mesh(config.mesh.to_dict(), jax.devices()[:1]))
  image = setup.model_cfg.image
  batch = {"image": jax.random.randint(jax.random.key(0), (config.data.batch_size, image.height, image.width,
                                                           image.channels), 0, config.data.pixel_levels)}
  key = jax.random.key(0)
  compiled = setup.step_fn.lower(setup.state, batch, key).compile()
  return compiled, setup.state, batch, key


def mnist_size(config, variant):
  config.model.image.update(height=28, width=28, patch_size=4)
  config.data.pixel_levels = 256
  if variant == "tarflow":
    config.model.transporter.update(num_blocks=4, layers_per_block=4, width=256, head_dim=64)
  else:
    config.model.transporter.update(num_blocks=2, layers_per_block=4, width=256, head_dim=64)
    config.model.predictor.update(depth=8, width=256, head_dim=64)
  return config


def measure(config, repeats):
  compiled, state, batch, key = compiled_train_step(config)
  cost = compiled.cost_analysis()
  flops = float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])
  # The step donates its state: time it on a chain of states, as training runs it.
  holder = {"state": state}

  def step():
    holder["state"], metrics = compiled(holder["state"], batch, key)
    return metrics

  seconds = common.median_seconds(step, repeats)
  batch_size = config.data.batch_size
  return {"parameters": int(sum(x.size for x in jax.tree.leaves(holder["state"]["params"]))),
          "batch_size": batch_size, "step_ms": round(1e3 * seconds, 1), "images_per_s": round(batch_size / seconds, 1),
          "gflop_per_step": round(flops / 1e9, 2), "gflop_per_s": round(flops / seconds / 1e9, 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--out", default="benchmarks/results/train_throughput.json")
  parser.add_argument("--smoke", action="store_true", help="tiny digits models, 2 repeats (what CI runs)")
  args = parser.parse_args()
  if args.smoke:
    args.repeats = 2

  matmul_size = 256 if args.smoke else 2048
  ceiling = common.matmul_ceiling(args.repeats, matmul_size)
  rows = {}
  for size in ("digits",) if args.smoke else ("digits", "mnist-size"):
    for variant in ("ntm", "tarflow"):
      config = common.load_config("digits", ",".join(filter(None, [variant, "smoke" if args.smoke else ""])))
      config.data.batch_size = 16 if args.smoke else 64
      if size == "mnist-size":
        config = mnist_size(config, variant)
      rows[f"{size}/{variant}"] = row = measure(config, args.repeats)
      row["fraction_of_ceiling"] = round(row["gflop_per_s"] * 1e9 / ceiling, 3)
      print(f"measured {size}/{variant}: {row}", flush=True)

  print(f"\nfloat32 matmul ceiling ({matmul_size}^3, jax.jit): {ceiling / 1e9:.1f} GFLOP/s on "
        f"{jax.devices()[0].platform}")
  print(f"{'config':22s} {'params':>9s} {'ms/step':>8s} {'images/s':>9s} {'GFLOP/step':>11s} {'GFLOP/s':>8s} "
        f"{'of ceiling':>10s}")
  for name, row in rows.items():
    print(f"{name:22s} {row['parameters']:9d} {row['step_ms']:8.1f} {row['images_per_s']:9.1f} "
          f"{row['gflop_per_step']:11.2f} {row['gflop_per_s']:8.1f} {100 * row['fraction_of_ceiling']:9.1f}%")
  common.write_json(args.out, {"matmul_ceiling_gflop_per_s": round(ceiling / 1e9, 1), "repeats": args.repeats,
                               "jax": jax.__version__, "results": rows})


if __name__ == "__main__":
  main()
