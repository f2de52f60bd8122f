"""glibc's malloc set to keep what XLA:CPU frees (ntm_jax.parallel.host_malloc): a jitted program's scratch buffer
is reused from one call to the next instead of being page-faulted in again, and a user's own setting wins."""

import json
import os
import subprocess
import sys

from ntm_jax.parallel import host_malloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A program whose 64 MB temporary (tanh of the input, read twice by a dot) is above glibc's largest mmap threshold
# (32 MB), so that with malloc's defaults every call maps it afresh. Prints the page faults of each call.
_FAULTS_PER_CALL = """
import json, resource, sys
from ntm_jax.parallel import host_malloc
done = host_malloc.reuse_freed_memory() if sys.argv[1] == "reuse" else False
import jax, jax.numpy as jnp
jax.config.update("jax_cpu_enable_async_dispatch", False)  # one call at a time: one scratch buffer alive
f = jax.jit(lambda x: jnp.tanh(x).T @ jnp.tanh(x))
x = jnp.ones((65536, 256), jnp.float32)
faults = []
for _ in range(11):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(f(x))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"set": done, "faults": faults, "fewest_after_warmup": min(faults[3:])}))
"""


def _run(mode: str, **env_extra) -> dict:
  """The snippet's result in a fresh process pinned to one core (where reuse_freed_memory acts)."""
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES",) and not k.startswith("MALLOC_")}
  env.update(JAX_PLATFORMS="cpu", **env_extra)
  done = subprocess.run([sys.executable, "-c", _FAULTS_PER_CALL, mode], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300, check=False,
                        preexec_fn=lambda: os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:1]))
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_scratch_buffer_is_reused_rather_than_faulted_in_at_every_call():
  if host_malloc.why_not() == "not glibc":
    return  # nothing to set off glibc; the rest of this file still checks the decision
  defaults, reused = _run("defaults"), _run("reuse")
  temporary_pages = 64 * 2**20 // 4096
  assert defaults["fewest_after_warmup"] >= 0.9 * temporary_pages, defaults  # glibc maps it afresh every call
  # Reused: calls that fault none of it. (Some calls still grow the heap when the machine is busy, so this
  # checks that reuse happens, not that every call reuses.)
  assert reused["set"] and reused["fewest_after_warmup"] < 0.05 * temporary_pages, reused


def test_a_users_malloc_settings_are_left_alone():
  assert _run("reuse", MALLOC_ARENA_MAX="4")["set"] is False
  assert _run("reuse", GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")["set"] is False


def test_it_stays_off_where_an_accelerator_runs_the_model(monkeypatch):
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  monkeypatch.setattr(host_malloc.glob, "glob", lambda pattern: ["/dev/accel0"] if "accel" in pattern else [])
  assert host_malloc.accelerator_present()
  for name in ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX"):
    monkeypatch.delenv(name, raising=False)
  if host_malloc.why_not() != "not glibc":
    assert host_malloc.why_not() == "an accelerator is present"
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # the user asked for the CPU: the host runs the model after all
  assert not host_malloc.accelerator_present()


def test_it_stays_off_on_more_than_one_core(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  for name in ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(host_malloc.os, "sched_getaffinity", lambda pid: {0, 1})
  if host_malloc.why_not() != "not glibc":
    assert host_malloc.why_not() == "more than one usable core"
    assert host_malloc.reuse_freed_memory() is False
