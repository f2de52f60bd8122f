"""A training run killed with SIGKILL between checkpoints, started again with the same command, ends with
the same parameters, bit for bit, as a run that was never interrupted."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.train_test import final_params
from tests.xla_flags_for_tests import FAST_COMPILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(workdir):
  return [sys.executable, "-m", "ntm_jax.main", "--config=configs/digits.py:smoke,steps=300", f"--workdir={workdir}",
          "--config.train.checkpoint_every=100", "--config.train.eval_every=1000", "--config.train.log_every=10",
          "--config.sample.num_samples=0"]


def environment(data_dir):
  env = dict(os.environ, NTM_JAX_DATA_DIR=str(data_dir), JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = FAST_COMPILE  # one device, as a user's run
  return env


@pytest.mark.slow
def test_sigkill_between_checkpoints_then_same_command_resumes_exactly(tmp_path):
  env = environment(tmp_path / "tfds")
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  subprocess.run(command(straight), cwd=ROOT, env=env, check=True, capture_output=True)

  log = open(tmp_path / "killed.log", "w")
  process = subprocess.Popen(command(killed), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  # Kill between checkpoints: as soon as step 100 is committed (its directory renamed into place).
  deadline = time.time() + 300
  while not (killed / "checkpoints" / "100").exists():
    assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
    time.sleep(0.02)
  os.kill(process.pid, signal.SIGKILL)
  process.wait()
  log.close()
  assert process.returncode == -signal.SIGKILL
  saved = sorted(int(s) for s in os.listdir(killed / "checkpoints") if s.isdigit())
  assert saved and max(saved) < 300, saved

  assert_resumes_exactly(straight, killed, max(saved), env)


def assert_resumes_exactly(straight, interrupted, saved_step: int, env):
  """The same command, run again in `interrupted`, resumes from `saved_step` and ends with the parameters
  of the uninterrupted run in `straight`, bit for bit."""
  rerun = subprocess.run(command(interrupted), cwd=ROOT, env=env, check=True, capture_output=True, text=True)
  assert f"resumed from checkpoint step {saved_step}" in rerun.stdout
  a, step_a = final_params(str(straight))
  b, step_b = final_params(str(interrupted))
  assert step_a == step_b == 300
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
