"""Where the time of one jitted train step goes: XLA CPU ops grouped by kind, from a real profiler trace.

  python benchmarks/profile_step.py [--size=mnist-size|digits] [--variant=ntm|tarflow] [--steps=3] [--smoke]

Traces a few steps with `jax.profiler.trace`, reads the per-op durations back from the Perfetto trace,
and classifies every op of the compiled module from its HLO: matrix multiplies (a dot, or a fusion that
contains one), elementwise and reduction fusions (layer norm, GELU, softmax, the flow's affine maps, AdamW,
EMA), copies and transposes, and the rest. For the matmuls it also counts their FLOPs, so their own
GFLOP/s can be set beside the matmul ceiling. Prints a table and writes benchmarks/results/profile_*.json.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import os
import re
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from benchmarks.train_throughput import compiled_train_step, mnist_size  # noqa: E402

_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*\))?.*\{\s*$")
_SHAPE = re.compile(r"[a-z]\w*\[([\d,]*)\]")


def _dims(shape_text: str) -> list[int]:
  match = _SHAPE.search(shape_text)
  return [int(d) for d in match.group(1).split(",") if d] if match else []


def parse_hlo(hlo_text: str):
  """{computation: [(name, opcode, result shape, rest of line)]} from an HLO module's text."""
  computations, current = {}, None
  for line in hlo_text.splitlines():
    if current is None or line.startswith(("ENTRY", "%")) and line.rstrip().endswith("{"):
      match = _COMPUTATION.match(line)
      if match:
        current = computations.setdefault(match.group(1), [])
        continue
    if line.strip() == "}":
      current = None
      continue
    match = _INSTRUCTION.match(line)
    if match and current is not None:
      current.append(match.groups())
  return computations


def dot_flops(result_shape: str, rest: str, shapes: dict[str, str]) -> float:
  """2 * |output| * |contracted dims| for one dot instruction."""
  contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", rest)
  lhs_name = re.match(r"\s*(?:[a-z]\w*\[[\d,]*\](?:\{[^}]*\})?\s+)?%?([\w.\-]+)", rest)
  if not contracting or not lhs_name:
    return 0.0
  lhs_dims = _dims(shapes.get(lhs_name.group(1), "")) or _dims(rest)
  size = math.prod(lhs_dims[int(d)] for d in contracting.group(1).split(",") if d) if lhs_dims else 0
  return 2.0 * math.prod(_dims(result_shape)) * size


def classify(computations):
  """{op name: (category, matmul FLOPs)} for every instruction that can appear as a thunk."""
  shapes = {name: shape for body in computations.values() for name, shape, _, _ in body}
  flops_of = {}

  def computation_flops(name, seen=()):
    if name in flops_of:
      return flops_of[name]
    total = 0.0
    for inst_name, shape, opcode, rest in computations.get(name, []):
      if opcode in ("dot", "convolution"):
        total += dot_flops(shape, rest, shapes)
      for called in re.findall(r"(?:calls|to_apply|body)=%?([\w.\-]+)", rest):
        if called not in seen:
          total += computation_flops(called, seen + (name,))
    flops_of[name] = total
    return total

  table = {}
  for body in computations.values():
    for name, shape, opcode, rest in body:
      called = re.findall(r"calls=%?([\w.\-]+)", rest)
      flops = (dot_flops(shape, rest, shapes) if opcode in ("dot", "convolution")
               else sum(computation_flops(c) for c in called))
      if flops > 0:
        category = "matmul (dots and fusions with a dot)"
      elif opcode in ("copy", "transpose", "bitcast", "copy-start", "copy-done") or (
          opcode == "fusion" and name.startswith(("transpose", "copy"))):
        category = "copy / transpose"
      elif opcode in ("fusion", "reduce", "add", "multiply", "exponential", "select", "broadcast", "divide",
                      "subtract", "tanh", "log", "maximum", "reduce-window", "compare", "convert"):
        category = "elementwise and reductions"
      elif opcode in ("rng-bit-generator", "rng", "custom-call") and "rng" in rest.lower():
        category = "random numbers"
      else:
        category = f"other ({opcode})"
      table[name] = (category, flops)
  return table


def trace_op_times(fn, steps: int) -> tuple[dict[str, float], float]:
  """Summed duration (s) of every XLA op over `steps` calls, and the wall time of those calls."""
  jax.block_until_ready(fn())
  with tempfile.TemporaryDirectory() as directory:
    with jax.profiler.trace(directory, create_perfetto_trace=True):
      start = time.perf_counter()
      for _ in range(steps):
        jax.block_until_ready(fn())
      wall = time.perf_counter() - start
    path = glob.glob(os.path.join(directory, "**", "*perfetto_trace.json.gz"), recursive=True)[0]
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  durations = collections.Counter()
  for event in events:
    args = event.get("args") or {}
    if event.get("ph") == "X" and "hlo_op" in args:
      durations[args["hlo_op"]] += event.get("dur", 0.0) * 1e-6
  return durations, wall


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="mnist-size", choices=["mnist-size", "digits"])
  parser.add_argument("--variant", default="ntm", choices=["ntm", "tarflow"])
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--out", default=None)
  parser.add_argument("--smoke", action="store_true", help="the tiny digits model, one step (what CI runs)")
  args = parser.parse_args()
  if args.smoke:
    args.size, args.steps = "digits", 1

  config = common.load_config("digits", ",".join(filter(None, [args.variant, "smoke" if args.smoke else ""])))
  config.data.batch_size = 16 if args.smoke else 64
  if args.size == "mnist-size":
    config = mnist_size(config, args.variant)
  compiled, state, batch, key = compiled_train_step(config)
  table = classify(parse_hlo(compiled.as_text()))
  holder = {"state": state}

  def step():  # the step donates its state: run it on a chain of states, as training does
    holder["state"], metrics = compiled(holder["state"], batch, key)
    return metrics

  durations, wall = trace_op_times(step, args.steps)

  by_category = collections.defaultdict(lambda: {"seconds": 0.0, "flops": 0.0, "ops": 0})
  for op, seconds in durations.items():
    category, flops = table.get(op, ("unmatched in the HLO", 0.0))
    entry = by_category[category]
    entry["seconds"] += seconds / args.steps
    entry["flops"] += flops
    entry["ops"] += 1
  op_total = sum(entry["seconds"] for entry in by_category.values())
  ceiling = common.matmul_ceiling(2 if args.smoke else 5, 256 if args.smoke else 2048)
  rows = {}
  print(f"{args.size}/{args.variant}: {1e3 * wall / args.steps:.0f} ms per step (wall, traced); "
        f"op time {1e3 * op_total:.0f} ms per step; matmul ceiling {ceiling / 1e9:.0f} GFLOP/s")
  print(f"{'category':40s} {'ops':>5s} {'ms/step':>9s} {'share':>7s} {'GFLOP/s':>8s}")
  for category, entry in sorted(by_category.items(), key=lambda item: -item[1]["seconds"]):
    rate = entry["flops"] / entry["seconds"] / 1e9 if entry["flops"] and entry["seconds"] else 0.0
    rows[category] = {"ms_per_step": round(1e3 * entry["seconds"], 2), "ops": entry["ops"],
                      "share_of_op_time": round(entry["seconds"] / op_total, 4),
                      "gflop_per_s": round(rate, 1)}
    print(f"{category:40s} {entry['ops']:5d} {1e3 * entry['seconds']:9.1f} {100 * entry['seconds'] / op_total:6.1f}% "
          f"{rate:8.1f}")
  slowest = sorted(durations.items(), key=lambda item: -item[1])[:10]
  print("slowest ops:", ", ".join(f"{op} ({table.get(op, ('?',))[0].split(' ')[0]}) "
                                   f"{1e3 * s / args.steps:.1f} ms" for op, s in slowest))
  common.write_json(args.out or f"benchmarks/results/profile_{args.size}_{args.variant}.json", {
      "size": args.size, "variant": args.variant, "wall_ms_per_step": round(1e3 * wall / args.steps, 1),
      "op_ms_per_step": round(1e3 * op_total, 1), "matmul_ceiling_gflop_per_s": round(ceiling / 1e9, 1),
      "jax": jax.__version__, "categories": rows,
      "slowest_ops": [[op, round(1e3 * s / args.steps, 2)] for op, s in slowest]})


if __name__ == "__main__":
  main()
