"""A real multi-process job on one machine: 2 processes x 4 CPU devices, joined by jax.distributed (gloo)."""

import json
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
ENCODE_WORKER = pathlib.Path(__file__).with_name("multihost_encode_worker.py")


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


@pytest.mark.slow  # two jax.distributed processes (about 70 s): kept out of CI's 30 minutes
def test_two_processes_train_exactly_like_one(tmp_path):
  two = run_job(2, tmp_path)
  one = run_job(1, tmp_path)
  assert two["process_count"] == 2 and two["device_count"] == 8 and one["process_count"] == 1
  assert two["losses"] == pytest.approx(one["losses"], rel=1e-6)
  assert two["checksum"] == pytest.approx(one["checksum"], rel=1e-6)


@pytest.mark.slow
def test_two_processes_encode_the_same_latent_data_set_as_one(tmp_path, private_data_dir):
  """`--mode=encode` with each process writing its own shard gives the data set one process writes."""
  from ntm_jax.training import autoencoder as autoencoder_training  # noqa: PLC0415
  from tests.config_test import load_config  # noqa: PLC0415

  autoencoder_workdir = str(tmp_path / "autoencoder")
  autoencoder_training.train_autoencoder(load_config("autoencoder", "smoke"), autoencoder_workdir)
  results = {}
  for num_processes in (2, 1):
    out, port = tmp_path / f"encode_{num_processes}.json", str(free_port())
    procs = [subprocess.Popen([sys.executable, str(ENCODE_WORKER), str(i), str(num_processes), port,
                               autoencoder_workdir, str(tmp_path / f"latents_{num_processes}"), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(num_processes)]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    results[num_processes] = json.loads(out.read_text())
  two, one = results[2], results[1]
  assert two["process_count"] == 2 and set(two["splits"]) == set(one["splits"])
  for split, written in two["splits"].items():
    alone = one["splits"][split]
    assert len(written["shards"]) == 2 and len(alone["shards"]) == 1
    assert written["count"] == alone["count"] > 0 and written["captions_sha1"] == alone["captions_sha1"]
    assert written["latent_sum"] == pytest.approx(alone["latent_sum"], rel=1e-6)
    np.testing.assert_allclose(written["first_latent"], alone["first_latent"], rtol=1e-6, atol=1e-6)
