"""One XLA CPU device per usable core, so that a run on a host CPU keeps every core busy.

XLA:CPU runs one program's operations one after another and spreads only some of them (the larger
matmuls) over its threads: on two cores a ntm_jax step kept mostly one busy where PyTorch kept both. With
one CPU device per core the mesh's `data` axis splits each batch over devices that run at once, and the
same sharded code that runs on a TPU pod fills the cores: side by side on two cores, 1.41-1.64x the exact
log-likelihood's images/s (benchmarks/vs_ml_tarflow.py, README "Speed").

`use_cores` must run before jax starts its backends (before the first array or `jax.devices()`), which is
what `python -m ntm_jax.main` does. A device count the user chose (`XLA_FLAGS` with
`--xla_force_host_platform_device_count`, or `jax_num_cpu_devices`) is left alone.
"""

from __future__ import annotations

import math
import os

import jax
from absl import logging

_USER_DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def usable_cores() -> int:
  """The cores this process may run on (its affinity mask, which taskset and containers narrow)."""
  return len(os.sched_getaffinity(0))


def devices_for(batch_sizes: list[int], cores: int) -> int:
  """The most devices, at most `cores`, that divide every batch size (each device takes an equal share)."""
  common = math.gcd(*batch_sizes) if batch_sizes else 0  # no batch: any count divides
  return max(n for n in range(1, max(cores, 1) + 1) if common % n == 0)


def config_batch_sizes(config) -> list[int]:
  """Every batch a run's config may put on the mesh: training, evaluation, sampling, distillation."""
  sizes = []
  for section, key in (("data", "batch_size"), ("eval", "batch_size"), ("sample", "num_samples"),
                       ("distill", "batch_size")):
    value = config.get(section, {}).get(key)
    if isinstance(value, int) and value > 0:
      sizes.append(value)
  return sizes


def user_chose_device_count() -> bool:
  return (_USER_DEVICE_COUNT_FLAG in os.environ.get("XLA_FLAGS", "")
          or jax.config.jax_num_cpu_devices not in (None, -1))


def use_cores(batch_sizes: list[int], cores: int | None = None) -> int | None:
  """Asks jax for one CPU device per usable core (as many as divide `batch_sizes`); returns the count set,
  or None where the user chose one or jax's backends have already started."""
  if user_chose_device_count():
    return None
  count = devices_for(batch_sizes, usable_cores() if cores is None else cores)
  try:
    jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:  # the backends are running: too late to change, keep what they have
    logging.info("jax's backends have started; CPU devices left as they are")
    return None
  return count
