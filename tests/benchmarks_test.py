"""Every script in benchmarks/ runs at its smoke size (`--smoke`) and writes its JSON, so none goes stale."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.xla_flags_for_tests import FAST_COMPILE

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name != "common.py")

pytestmark = pytest.mark.usefixtures("private_data_dir")


def test_every_benchmark_has_a_smoke_size():
  assert len(SCRIPTS) >= 8, SCRIPTS
  for name in SCRIPTS:
    assert '"--smoke"' in (ROOT / "benchmarks" / name).read_text(), f"benchmarks/{name} has no --smoke flag"


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_runs_at_smoke_size(name, tmp_path):
  out = tmp_path / "result.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = FAST_COMPILE  # one device, as a user runs them
  done = subprocess.run([sys.executable, f"benchmarks/{name}", "--smoke", f"--out={out}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=1200, check=False)
  assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
  assert json.loads(out.read_text()), f"benchmarks/{name} wrote an empty result"
