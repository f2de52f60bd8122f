"""What the benchmark scripts share: the repository's configs, timing, the matmul ceiling, tiny smoke runs.

Every script takes `--smoke` (tiny sizes, a temporary output) so that tests/benchmarks_test.py can run it in
CI and none goes stale; its figures are then meaningless, only that it runs.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from ntm_jax.config_args import load_config_file  # noqa: E402


def load_config(name: str, arg: str | None = None):
  """`get_config(arg)` of configs/NAME.py (what `--config=configs/NAME.py:ARG` gives)."""
  return load_config_file(os.path.join(ROOT, "configs", f"{name}.py"), arg or None)


def median_seconds(fn, repeats: int) -> float:
  """Median wall time of `fn()` over `repeats` calls, after one call to compile and warm up."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_ceiling(repeats: int, size: int = 2048) -> float:
  """FLOP/s of a size^3 float32 matmul under jax.jit on this machine."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  return 2 * size ** 3 / median_seconds(lambda: matmul(a, b), repeats)


def write_json(path: str, payload) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=2)
  print(f"wrote {path}")


def train_smoke_run(config_name: str, arg: str, workdir: str, steps: int = 2):
  """Trains `configs/NAME.py:smoke,steps=N,ARG` into `workdir` (what a smoke benchmark scores); returns its
  config."""
  from ntm_jax.training import train  # noqa: PLC0415  (only the smoke runs train)
  config = load_config(config_name, ",".join(filter(None, ["smoke", f"steps={steps}", arg])))
  config.train.eval_every = 1000
  config.sample.num_samples = 0
  train.train_and_evaluate(config, workdir)
  return config
