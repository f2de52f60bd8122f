"""SIGTERM (a preemptible VM about to go) makes a training run save a checkpoint at the step it is on and
stop with status 143; the same command resumes from that step and ends, bit for bit, where a run that was
never interrupted ends."""

import os
import re
import signal
import subprocess
import time

import pytest

from ntm_jax.training import preemption
from tests.kill_resume_test import ROOT, assert_resumes_exactly, command, environment


def test_the_watch_catches_sigterm_and_puts_the_old_handler_back():
  previous = signal.getsignal(signal.SIGTERM)
  with preemption.PreemptionWatch() as watch:
    assert not watch.reached(1)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.1)  # Python runs the handler between bytecodes of the main thread
    assert watch.reached(2)
  assert signal.getsignal(signal.SIGTERM) is previous


def sigterm_after(workdir, env, log_path, after_step: int):
  """Starts the smoke run, sends SIGTERM once it has logged `after_step`, returns (status, output)."""
  with open(log_path, "w") as log:
    process = subprocess.Popen(command(workdir), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while f"step {after_step}/" not in open(log_path).read():
      assert process.poll() is None and time.time() < deadline, open(log_path).read()[-2000:]
      time.sleep(0.02)
    os.kill(process.pid, signal.SIGTERM)
    process.wait(timeout=120)
  return process.returncode, open(log_path).read()


@pytest.mark.slow
def test_sigterm_saves_the_step_it_arrived_at_and_the_same_command_resumes_exactly(tmp_path):
  env = environment(tmp_path / "tfds")
  straight, stopped = tmp_path / "straight", tmp_path / "stopped"
  subprocess.run(command(straight), cwd=ROOT, env=env, check=True, capture_output=True)

  status, output = sigterm_after(stopped, env, tmp_path / "stopped.log", after_step=50)
  assert status == preemption.EXIT_STATUS, output[-2000:]
  saved_step = int(re.search(r"SIGTERM: saved a checkpoint at step (\d+)", output).group(1))
  # The signal came after step 50 was logged and before the next log line: that step, no later one.
  logged = [int(s) for s in re.findall(r"step (\d+)/300", output)]
  assert 50 <= saved_step < 300 and max(logged) <= saved_step < max(logged) + 10
  assert sorted(int(s) for s in os.listdir(stopped / "checkpoints") if s.isdigit())[-1] == saved_step
  assert "Traceback" not in output

  assert_resumes_exactly(straight, stopped, saved_step, env)
