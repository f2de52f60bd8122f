"""Keep the memory XLA:CPU frees, so that a step does not page-fault through its whole scratch buffer again.

XLA:CPU allocates one buffer for all of a program's temporaries at every execution and frees it at the end:
1.47 GB for the train step at ml-tarflow's mnist shape. glibc's malloc serves a request that large with a
fresh `mmap` (always, from the arenas of XLA's worker threads) and `munmap`s it on free, so every step
page-faults through all of it again: 358,737 minor faults and 0.5 s of kernel time in a 3.3 s step on one
core here, more where the host is busy (page faults in a VM are dear).
With one malloc arena, no `mmap` and no trimming, the freed buffer stays in the heap and the next step
reuses it: 0 faults a step, and 1.03-1.30x the images/s of every part at one thread
(`python benchmarks/vs_ml_tarflow.py --before=malloc_defaults`, README "Speed").

Only on one core: with one CPU device per core (host_cpu), every device's thread would share the one arena,
and at two cores the same run measured 0.75-1.15x (slower where a program is many small operations, as the
digits sampler), so there glibc's defaults stay.

The price is that the process keeps its peak heap until it exits, which is what a training or sampling
run on a host CPU wants anyway. `python -m ntm_jax.main` calls `reuse_freed_memory` first of all, before
numpy, jax or TensorFlow start threads of their own (an arena a thread already has is kept). It does
nothing where it could hurt or cannot act: on more than one usable core (above), on a host with an
accelerator (the host CPU then runs input pipelines, not the model), where the user set glibc's malloc
options in the environment, or off glibc.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1  # -1 as its value: never give the heap's top back to the system
_M_MMAP_MAX = -4  # 0: serve every request from the heap, never from its own mmap
_M_ARENA_MAX = -8  # 1: every thread allocates from the main arena, which is the one that can grow

# Device files of the accelerators jax runs on: TPU VMs (accel, vfio), NVIDIA and AMD GPUs.
_ACCELERATOR_DEVICES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")
_USER_MALLOC_ENV = ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
                    "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def accelerator_present() -> bool:
  """Whether jax may run on something other than the host CPU (decided before jax starts)."""
  if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
    return False
  return any(glob.glob(pattern) for pattern in _ACCELERATOR_DEVICES)


def why_not() -> str | None:
  """Why `reuse_freed_memory` would leave malloc as it is (None: it would set it)."""
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return "not glibc"
  user = [name for name in _USER_MALLOC_ENV if name in os.environ]
  if user:
    return f"the user set {', '.join(user)}"
  if accelerator_present():
    return "an accelerator is present"
  if len(os.sched_getaffinity(0)) > 1:  # host_cpu.usable_cores, which this module cannot import (it imports jax)
    return "more than one usable core"
  return None


def reuse_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed memory for reuse (see the module docstring); True where it did."""
  if why_not() is not None:
    return False
  libc = ctypes.CDLL(None)  # the C library this process already runs on
  return all(libc.mallopt(parameter, value) == 1
             for parameter, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
