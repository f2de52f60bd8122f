"""Keep XLA:CPU from page-faulting through its scratch buffer at every step.

XLA:CPU allocates one buffer for all of a program's temporaries at every execution and frees it at the end:
1.47 GB for the train step at ml-tarflow's mnist shape. glibc's malloc serves a request that large with a
fresh `mmap` (always, from the arenas of XLA's worker threads) and `munmap`s it on free, so every step
page-faults through all of it again: 358,737 minor faults and 0.5 s of kernel time in a 3.3 s step on one
core here, more where the host is busy (page faults in a VM are dear).

On one core, `reuse_freed_memory`: with one malloc arena, no `mmap` and no trimming, the freed buffer stays in
the heap and the next step reuses it: 0 faults a step, and 1.03-1.30x the images/s of every part at one thread
(`python benchmarks/vs_ml_tarflow.py --before=malloc_defaults`, README "Speed"). The price is that the process
keeps its peak heap until it exits, which is what a training or sampling run on a host CPU wants anyway.

On more cores, `restart_with_huge_pages`: there one CPU device per core (host_cpu) runs on its own thread, and
one shared arena measured 0.75-1.15x (slower where a program is many small operations, as the digits sampler).
Each thread's arena gives its heaps back to the system whenever they empty, so the faults stay (31,453 a call
for ml-tarflow's digits train step on two devices). Instead the process restarts itself (`execve`, same pid)
with glibc's `glibc.malloc.hugetlb=1`, which asks the kernel for transparent huge pages on everything malloc
maps: a fault then brings in 2 MiB instead of 4 KiB (773 faults a step there; 1.41x and 1.21x the images/s of
the digits and mnist train steps at two threads, 0.94-1.13x the other parts; `--before=small_pages`, README
"Speed"). glibc reads its tunables only when a process starts, hence the restart, before jax, numpy or
TensorFlow are imported. The restarted process then takes the tunable out of its environment (glibc has read
it), so that the processes it starts decide for themselves, and it never restarts twice.

`python -m ntm_jax.main` calls `use_for_host_cpu` first of all, before numpy, jax or TensorFlow start threads of
their own (an arena a thread already has is kept). Neither acts where it could hurt or cannot act: on a host
with an accelerator (the host CPU then runs input pipelines, not the model), where the user set glibc's malloc
options in the environment, or off glibc; the huge pages also not where the kernel's transparent huge pages
are not `madvise` (`always` gives them without asking, `never` refuses them), glibc is older than 2.35, or the
command line cannot simply run again (inside IPython or Jupyter, a script read from standard input).
Both count usable cores, not CPU devices: a run kept on one device on two cores gets the huge pages too.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform
import re
import sys

# mallopt(3) parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1  # -1 as its value: never give the heap's top back to the system
_M_MMAP_MAX = -4  # 0: serve every request from the heap, never from its own mmap
_M_ARENA_MAX = -8  # 1: every thread allocates from the main arena, which is the one that can grow

# Device files of the accelerators jax runs on: TPU VMs (accel, vfio), NVIDIA and AMD GPUs.
_ACCELERATOR_DEVICES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia[0-9]*", "/dev/kfd")
# glibc's tunable that has malloc madvise(MADV_HUGEPAGE) what it maps (glibc 2.35 and later).
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
# Set beside the tunable by the restart and taken out by the restarted process: at most one restart.
_RESTARTED = "NTM_JAX_RESTARTED_ON_HUGE_PAGES"
_TRANSPARENT_HUGE_PAGES = "/sys/kernel/mm/transparent_hugepage/enabled"
_USER_MALLOC_ENV = ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
                    "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def accelerator_present() -> bool:
  """Whether jax may run on something other than the host CPU (decided before jax starts)."""
  if os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu":
    return False
  return any(glob.glob(pattern) for pattern in _ACCELERATOR_DEVICES)


def transparent_huge_pages() -> str | None:
  """The kernel's transparent-huge-page mode (`always`, `madvise` or `never`; None where it has none)."""
  try:
    with open(_TRANSPARENT_HUGE_PAGES) as f:
      text = f.read()
  except OSError:
    return None
  chosen = [word[1:-1] for word in text.split() if word.startswith("[") and word.endswith("]")]
  return chosen[0] if chosen else None


def _why_not_on_this_host() -> str | None:
  """What rules out both settings here (None: nothing)."""
  if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
    return "not glibc"
  user = [name for name in _USER_MALLOC_ENV if name in os.environ]
  if user:
    return f"the user set {', '.join(user)}"
  if accelerator_present():
    return "an accelerator is present"
  return None


def _usable_cores() -> int:
  return len(os.sched_getaffinity(0))  # host_cpu.usable_cores, which this module cannot import (it imports jax)


def why_not() -> str | None:
  """Why `reuse_freed_memory` would leave malloc as it is (None: it would set it)."""
  reason = _why_not_on_this_host()
  if reason is None and _usable_cores() > 1:
    return "more than one usable core"
  return reason


def _why_not_restartable() -> str | None:
  """Why running this process's command line again would not be this run (None: it would)."""
  if not sys.executable:
    return "no interpreter path to restart"
  if "IPython" in sys.modules or "ipykernel" in sys.modules:
    return "inside IPython or Jupyter"
  if sys.argv[:1] in ([""], ["-"]):
    return "an interactive session or a script read from standard input"
  arguments = sys.argv[1:]
  if arguments and sys.orig_argv[-len(arguments):] != arguments:
    return "sys.argv is not the command line the interpreter started with"
  return None


def why_not_huge_pages() -> str | None:
  """Why `restart_with_huge_pages` would not restart (None: it would)."""
  if os.environ.get("GLIBC_TUNABLES") == HUGE_PAGES_TUNABLE:
    return "already set"
  if _RESTARTED in os.environ:
    return "restarted once already"
  reason = _why_not_on_this_host()
  if reason is not None:
    return reason
  if _usable_cores() == 1:
    return "one usable core (reuse_freed_memory acts there)"
  version = platform.libc_ver()[1]
  major_minor = re.match(r"(\d+)\.(\d+)", version)
  if not major_minor or (int(major_minor[1]), int(major_minor[2])) < (2, 35):
    return f"glibc {version} has no glibc.malloc.hugetlb (2.35 and later)"
  mode = transparent_huge_pages()
  if mode != "madvise":
    return f"the kernel's transparent huge pages are {mode or 'absent'}, not madvise"
  return _why_not_restartable()


def reuse_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed memory for reuse (see the module docstring); True where it did."""
  if why_not() is not None:
    return False
  libc = ctypes.CDLL(None)  # the C library this process already runs on
  return all(libc.mallopt(parameter, value) == 1
             for parameter, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))


def restart_with_huge_pages() -> str:
  """Restarts this process's command line with glibc's malloc on huge pages (see the module docstring); returns
  only where it does not restart, with the reason ("already set": the process runs with them)."""
  reason = why_not_huge_pages()
  if reason is None:
    for stream in (sys.stdout, sys.stderr):  # what was printed so far, before execve drops the buffers
      if stream is not None:
        stream.flush()
    try:
      os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]],
                dict(os.environ, GLIBC_TUNABLES=HUGE_PAGES_TUNABLE, **{_RESTARTED: "1"}))
    except OSError as error:  # the process goes on as it is
      reason = f"the restart failed: {error}"
  return reason


def use_for_host_cpu() -> str:
  """The setting for this host, applied (the first call of a process, before anything starts a thread): what
  was done, for the log."""
  if os.environ.pop(_RESTARTED, None) is not None:  # this is the restart
    if os.environ.get("GLIBC_TUNABLES") != HUGE_PAGES_TUNABLE:
      return "glibc's defaults (the restart's GLIBC_TUNABLES were changed)"
    del os.environ["GLIBC_TUNABLES"]  # read by glibc at start; the processes this one starts decide for themselves
    return "transparent huge pages"
  if reuse_freed_memory():
    return "one malloc arena, freed memory kept"
  reason = restart_with_huge_pages()
  return "transparent huge pages" if reason == "already set" else f"glibc's defaults ({reason})"
