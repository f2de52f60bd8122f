"""A training run's console: by default the progress line (steps/s, ETA), evaluations, warnings and errors;
absl's --verbosity brings every library's INFO lines back."""

import os
import re
import subprocess
import sys

import pytest

from tests.xla_flags_for_tests import FAST_COMPILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSL_INFO = re.compile(r"^I\d{4} ", re.M)  # absl's INFO prefix: I<month><day> <time>


def train(workdir, data_dir, *flags):
  env = dict(os.environ, NTM_JAX_DATA_DIR=str(data_dir), JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = FAST_COMPILE  # one device
  done = subprocess.run([sys.executable, "-m", "ntm_jax.main", "--config=configs/digits.py:smoke,steps=2",
                         f"--workdir={workdir}", "--config.sample.num_samples=0", *flags],
                        cwd=ROOT, env=env, capture_output=True, text=True, check=True)
  return done.stdout + done.stderr


@pytest.mark.slow  # two full runs of main (about 70 s): kept out of CI's 30 minutes
def test_the_console_is_quiet_by_default_and_verbose_on_request(tmp_path):
  quiet = train(tmp_path / "quiet", tmp_path / "tfds")
  assert "step 2/2 loss" in quiet and "steps/s | ETA" in quiet and "validation bits/dim" in quiet
  assert not ABSL_INFO.search(quiet), quiet
  assert "CheckpointManager" not in quiet and "oneDNN" not in quiet
  verbose = train(tmp_path / "verbose", tmp_path / "tfds", "--verbosity=0")
  assert ABSL_INFO.search(verbose) and "CheckpointManager" in verbose
