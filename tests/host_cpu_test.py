"""One CPU device per usable core (ntm_jax.parallel.host_cpu): how many, and that a user's choice is kept."""

import os
import subprocess
import sys

import ml_collections

from ntm_jax.config_args import load_config_file
from ntm_jax.parallel import host_cpu
from tests.xla_flags_for_tests import FAST_COMPILE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_devices_divide_every_batch_and_never_exceed_the_cores():
  assert host_cpu.devices_for([64, 360, 64], 2) == 2
  assert host_cpu.devices_for([64, 360], 8) == 8
  assert host_cpu.devices_for([64, 360], 6) == 4  # 6 and 5 do not divide 64
  assert host_cpu.devices_for([63], 2) == 1
  assert host_cpu.devices_for([], 3) == 3
  assert host_cpu.devices_for([64], 1) == 1


def test_config_batch_sizes_reads_every_batch_a_run_puts_on_the_mesh():
  config = load_config_file(os.path.join(ROOT, "configs", "digits.py"))
  assert host_cpu.config_batch_sizes(config) == [config.data.batch_size, config.eval.batch_size,
                                                 config.sample.num_samples, config.distill.batch_size]
  assert host_cpu.config_batch_sizes(ml_collections.ConfigDict({"data": {"batch_size": 12}})) == [12]


def test_the_test_run_keeps_its_own_device_count():
  # conftest asks for 8 devices through XLA_FLAGS: a user's (or a test's) choice is left alone.
  assert host_cpu.user_chose_device_count()
  assert host_cpu.use_cores([64], cores=2) is None


def _devices_in_fresh_process(code: str, env_extra: dict) -> str:
  env = dict(os.environ, XLA_FLAGS=FAST_COMPILE, JAX_PLATFORMS="cpu")  # no device count of the test run's
  env.update(env_extra)
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout.strip()


def test_use_cores_gives_one_device_per_core_before_the_backends_start():
  code = ("import jax; from ntm_jax.parallel import host_cpu; "
          "print(host_cpu.use_cores([64], cores=2), jax.device_count(), host_cpu.use_cores([64], cores=2))")
  # Set before the backends: 2 devices. Asked again once they run: left as it is (None).
  assert _devices_in_fresh_process(code, {}) == "2 2 None"
  # A device count in XLA_FLAGS wins.
  assert _devices_in_fresh_process(code, {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"}) == "None 3 None"
