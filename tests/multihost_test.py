"""A real multi-process job on one machine: 2 processes x 4 CPU devices, joined by jax.distributed (gloo)."""

import json
import pathlib
import socket
import subprocess
import sys

import pytest

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_job(num_processes, tmp_path):
  out = tmp_path / f"out_{num_processes}.json"
  port = str(free_port())
  procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), str(num_processes), port, str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(num_processes)]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
  return json.loads(out.read_text())


def test_two_processes_train_exactly_like_one(tmp_path):
  two = run_job(2, tmp_path)
  one = run_job(1, tmp_path)
  assert two["process_count"] == 2 and two["device_count"] == 8 and one["process_count"] == 1
  assert two["losses"] == pytest.approx(one["losses"], rel=1e-6)
  assert two["checksum"] == pytest.approx(one["checksum"], rel=1e-6)
