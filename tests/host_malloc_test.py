"""glibc's malloc set for XLA:CPU's scratch buffer (ntm_jax.parallel.host_malloc): on one core it is reused from one
call to the next instead of being page-faulted in again, on more it is faulted in by huge pages (the process
restarted with glibc's tunable), and a user's own setting wins."""

import json
import os
import subprocess
import sys

import pytest

from ntm_jax.parallel import host_malloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A program whose 64 MB temporary (tanh of the input, read twice by a dot) is above glibc's largest mmap threshold
# (32 MB), so that with malloc's defaults every call maps it afresh. Prints the page faults of each call.
_FAULTS_PER_CALL = """
import json, os, resource, sys
from ntm_jax.parallel import host_malloc
mode = sys.argv[1]
done = host_malloc.reuse_freed_memory() if mode == "reuse" else host_malloc.use_for_host_cpu() if mode == "host" else False
import jax, jax.numpy as jnp
jax.config.update("jax_cpu_enable_async_dispatch", False)  # one call at a time: one scratch buffer alive
f = jax.jit(lambda x: jnp.tanh(x).T @ jnp.tanh(x))
x = jnp.ones((65536, 256), jnp.float32)
faults = []
for _ in range(11):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(f(x))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"set": done, "faults": faults, "fewest_after_warmup": min(faults[3:]), "pid": os.getpid(),
                  "tunables": os.environ.get("GLIBC_TUNABLES")}))
"""


def _run(mode: str, cores: int = 1, **env_extra) -> dict:
  """The snippet's result in a fresh process pinned to `cores` cores (one: where reuse_freed_memory acts), with
  the pid it was started as."""
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_malloc._RESTARTED)
         and not k.startswith("MALLOC_")}
  env.update(JAX_PLATFORMS="cpu", **env_extra)
  process = subprocess.Popen([sys.executable, "-c", _FAULTS_PER_CALL, mode], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=lambda: os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores]))
  stdout, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]
  return dict(json.loads(stdout.strip().splitlines()[-1]), started_as=process.pid)


def test_the_scratch_buffer_is_reused_rather_than_faulted_in_at_every_call():
  if host_malloc.why_not() == "not glibc":
    return  # nothing to set off glibc; the rest of this file still checks the decision
  defaults, reused = _run("defaults"), _run("reuse")
  temporary_pages = 64 * 2**20 // 4096
  assert defaults["fewest_after_warmup"] >= 0.9 * temporary_pages, defaults  # glibc maps it afresh every call
  # Reused: calls that fault none of it. (Some calls still grow the heap when the machine is busy, so this
  # checks that reuse happens, not that every call reuses.)
  assert reused["set"] and reused["fewest_after_warmup"] < 0.05 * temporary_pages, reused


def test_on_two_cores_the_process_restarts_itself_on_huge_pages():
  if len(os.sched_getaffinity(0)) < 2:
    pytest.skip("one usable core: the restart is for two or more (the one-core setting is the test above)")
  with pytest.MonkeyPatch.context() as patch:  # the decision as the snippet's process will take it
    for name in (*host_malloc._USER_MALLOC_ENV, host_malloc._RESTARTED):  # as _run leaves the snippet's env
      patch.delenv(name, raising=False)
    patch.setenv("JAX_PLATFORMS", "cpu")
    patch.setattr(host_malloc.os, "sched_getaffinity", lambda pid: {0, 1})
    patch.setattr(host_malloc, "_why_not_restartable", lambda: None)  # the snippet's `python -c` can run again
    reason = host_malloc.why_not_huge_pages()
  host = _run("host", cores=2)
  if reason is not None:  # this kernel or glibc cannot: the process runs on as it is
    assert host["set"] == f"glibc's defaults ({reason})" and host["started_as"] == host["pid"], host
    return
  defaults = _run("defaults", cores=2)
  temporary_pages = 64 * 2**20 // 4096
  assert defaults["fewest_after_warmup"] >= 0.9 * temporary_pages, defaults  # every thread arena maps it afresh
  # The same process (execve keeps the pid, so a supervisor's signals still reach it), restarted with the tunable
  # (which it then keeps from the processes it starts), and the buffer faulted in 2 MiB at a time.
  assert host["set"] == "transparent huge pages" and host["tunables"] is None, host
  assert host["pid"] == host["started_as"], host
  assert host["fewest_after_warmup"] < 0.1 * temporary_pages, host  # 544 here, against 16,385


class _Restarted(Exception):
  """What the recorder raises instead of replacing the test's process."""


@pytest.fixture
def two_core_glibc_host(monkeypatch):
  """A host where nothing rules the huge pages out but what a test changes: two cores, Linux, glibc 2.36, no
  accelerator, no malloc setting of a user's."""
  for name in (*host_malloc._USER_MALLOC_ENV, host_malloc._RESTARTED):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setattr(host_malloc, "accelerator_present", lambda: False)
  monkeypatch.setattr(host_malloc.os, "sched_getaffinity", lambda pid: {0, 1})
  monkeypatch.setattr(host_malloc.platform, "system", lambda: "Linux")
  monkeypatch.setattr(host_malloc.platform, "libc_ver", lambda: ("glibc", "2.36"))


@pytest.fixture
def restart_recorder(two_core_glibc_host, monkeypatch):
  """host_malloc's os.execve replaced by a recorder (a restart of the pytest worker would hang it), on a host
  where the huge pages would be taken: the two-core host, the kernel's madvise mode, a command line that runs
  again."""
  calls = []

  def record(executable, argv, env):
    calls.append((executable, argv, env))
    raise _Restarted

  monkeypatch.setattr(host_malloc.os, "execve", record)
  monkeypatch.setattr(host_malloc, "transparent_huge_pages", lambda: "madvise")
  monkeypatch.setattr(host_malloc.sys, "argv", ["/repo/ntm_jax/main.py", "--config=configs/digits.py"])
  monkeypatch.setattr(host_malloc.sys, "orig_argv", ["python3", "-X", "dev", "-m", "ntm_jax.main",
                                                     "--config=configs/digits.py"])
  for name in ("IPython", "ipykernel"):  # as a command-line run has them: not imported
    monkeypatch.delitem(sys.modules, name, raising=False)
  return calls


def test_the_restart_runs_the_same_command_line_once(restart_recorder, monkeypatch):
  with pytest.raises(_Restarted):
    host_malloc.use_for_host_cpu()
  (executable, argv, env), = restart_recorder
  assert executable == sys.executable
  assert argv == [sys.executable, "-X", "dev", "-m", "ntm_jax.main", "--config=configs/digits.py"]
  assert env["GLIBC_TUNABLES"] == host_malloc.HUGE_PAGES_TUNABLE and env[host_malloc._RESTARTED] == "1"
  # The restarted process: it says so, takes both out of its environment (children decide for themselves) and,
  # called again, neither restarts nor sets the one-core arena.
  for name, value in env.items():
    if name in ("GLIBC_TUNABLES", host_malloc._RESTARTED):
      monkeypatch.setenv(name, value)
  assert host_malloc.use_for_host_cpu() == "transparent huge pages"
  assert "GLIBC_TUNABLES" not in os.environ and host_malloc._RESTARTED not in os.environ
  monkeypatch.setenv(host_malloc._RESTARTED, "1")  # a restart whose tunable something else took away: no loop
  assert host_malloc.use_for_host_cpu() == "glibc's defaults (the restart's GLIBC_TUNABLES were changed)"
  assert len(restart_recorder) == 1


def test_no_restart_where_the_command_line_would_not_run_this_again(restart_recorder, monkeypatch):
  monkeypatch.setattr(host_malloc.sys, "argv", ["-"])
  assert host_malloc.use_for_host_cpu() == (
      "glibc's defaults (an interactive session or a script read from standard input)")
  monkeypatch.setattr(host_malloc.sys, "argv", ["/repo/ntm_jax/main.py", "--config=configs/t2i.py"])  # changed
  assert host_malloc.why_not_huge_pages() == "sys.argv is not the command line the interpreter started with"
  monkeypatch.setattr(host_malloc.sys, "argv", ["/repo/ntm_jax/main.py", "--config=configs/digits.py"])
  monkeypatch.setitem(sys.modules, "ipykernel", sys)  # any module under that name
  assert host_malloc.why_not_huge_pages() == "inside IPython or Jupyter"
  monkeypatch.delitem(sys.modules, "ipykernel")

  def fail(executable, argv, env):
    raise OSError(7, "Argument list too long")

  monkeypatch.setattr(host_malloc.os, "execve", fail)  # the process goes on as it is, and says why
  assert host_malloc.use_for_host_cpu() == "glibc's defaults (the restart failed: [Errno 7] Argument list too long)"
  assert not restart_recorder


def test_huge_pages_only_where_the_kernel_and_glibc_give_them_on_request(two_core_glibc_host, monkeypatch,
                                                                         tmp_path):
  monkeypatch.setattr(host_malloc, "_why_not_restartable", lambda: None)  # pytest's own command line aside
  mode_file = tmp_path / "enabled"
  monkeypatch.setattr(host_malloc, "_TRANSPARENT_HUGE_PAGES", str(mode_file))
  mode_file.write_text("always [madvise] never\n")
  assert host_malloc.transparent_huge_pages() == "madvise"
  assert host_malloc.why_not_huge_pages() is None
  mode_file.write_text("[always] madvise never\n")  # the kernel already backs large mappings with them
  assert host_malloc.why_not_huge_pages() == "the kernel's transparent huge pages are always, not madvise"
  mode_file.write_text("always madvise [never]\n")
  assert host_malloc.why_not_huge_pages() == "the kernel's transparent huge pages are never, not madvise"
  mode_file.unlink()
  assert host_malloc.why_not_huge_pages() == "the kernel's transparent huge pages are absent, not madvise"
  mode_file.write_text("always [madvise] never\n")
  monkeypatch.setattr(host_malloc.platform, "libc_ver", lambda: ("glibc", "2.34"))
  assert host_malloc.why_not_huge_pages() == "glibc 2.34 has no glibc.malloc.hugetlb (2.35 and later)"
  monkeypatch.setattr(host_malloc.platform, "libc_ver", lambda: ("glibc", "2.35-r1"))  # a distribution's suffix
  assert host_malloc.why_not_huge_pages() is None
  monkeypatch.setattr(host_malloc.platform, "libc_ver", lambda: ("glibc", "2.36"))
  monkeypatch.setattr(host_malloc.os, "sched_getaffinity", lambda pid: {0})
  assert host_malloc.why_not_huge_pages() == "one usable core (reuse_freed_memory acts there)"
  monkeypatch.setattr(host_malloc.os, "sched_getaffinity", lambda pid: {0, 1})
  monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
  assert host_malloc.why_not_huge_pages() == "the user set MALLOC_ARENA_MAX"
  monkeypatch.delenv("MALLOC_ARENA_MAX")
  monkeypatch.setenv("GLIBC_TUNABLES", host_malloc.HUGE_PAGES_TUNABLE)  # the restarted process: no second restart
  assert host_malloc.why_not_huge_pages() == "already set"
  assert host_malloc.restart_with_huge_pages() == "already set"


def test_a_users_malloc_settings_are_left_alone():
  assert _run("reuse", MALLOC_ARENA_MAX="4")["set"] is False
  assert _run("reuse", GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")["set"] is False
  if len(os.sched_getaffinity(0)) >= 2 and host_malloc.why_not() != "not glibc":  # no restart over the user's own
    on_two_cores = _run("host", cores=2, GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")
    assert on_two_cores["set"] == "glibc's defaults (the user set GLIBC_TUNABLES)", on_two_cores
    assert on_two_cores["tunables"] == "glibc.malloc.trim_threshold=0", on_two_cores


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
