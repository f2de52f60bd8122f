"""Metric writers: TensorBoard (clu) + console logging, and a JSON-lines file that notebooks and tests read.

Only process 0 writes; every other process gets a logging-only writer (clu's `just_logging`).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from clu import metric_writers
from clu.metric_writers import interface


class JsonlWriter(interface.MetricWriter):
  """Appends `{"step": s, name: value, ...}` lines to `<workdir>/metrics.jsonl` (scalars only)."""

  def __init__(self, path: str):
    self._path = path

  def write_scalars(self, step, scalars):
    record = {"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}
    with open(self._path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    pass

  def flush(self):
    pass

  def close(self):
    pass


def create_writer(workdir: str) -> metric_writers.MetricWriter:
  """TensorBoard events in `<workdir>/tensorboard`, console logs, and `<workdir>/metrics.jsonl`."""
  if jax.process_index() > 0:
    return metric_writers.create_default_writer(None, just_logging=True)
  tensorboard = metric_writers.create_default_writer(os.path.join(workdir, "tensorboard"), asynchronous=False)
  return metric_writers.MultiWriter([tensorboard, JsonlWriter(os.path.join(workdir, "metrics.jsonl"))])


def read_metrics(workdir: str) -> list[dict]:
  """The records of `<workdir>/metrics.jsonl`, in order."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
