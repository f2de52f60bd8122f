"""Where a latent data set lives, and the record that ties it to the autoencoder that encoded it.

`--mode=encode` (ntm_jax.latents.encode) writes the latents of data set `config.data.name` under
  {latent.data_dir or data.data_dir or the default TFDS dir}/latents/{data set}-{autoencoder fingerprint}
as a TFDS directory (array_record shards, dataset_info.json) plus `ntm_latents.json`, written last, which
names the autoencoder, its step and fingerprint. A directory without that record is an unfinished encode.
"""

from __future__ import annotations

import json
import os
import re

from ntm_jax import data

RECORD_FILE = "ntm_latents.json"


def directory_for(config, fingerprint: str) -> str:
  root = config.latent.get("data_dir", "") or config.data.data_dir or data.default_data_dir()
  name = re.sub(r"[^A-Za-z0-9_.-]+", "_", config.data.name).strip("_")
  return os.path.join(root, "latents", f"{name}-{fingerprint}")


def read_record(directory: str) -> dict | None:
  path = os.path.join(directory, RECORD_FILE)
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_encoded(directory: str, fingerprint: str, encode_command: str) -> dict:
  """The record of the finished latent data set in `directory`, or a clear error saying how to make it."""
  record = read_record(directory)
  if record is None:
    raise FileNotFoundError(f"no latent data set in {directory} (or its encoding did not finish); make it with "
                            f"{encode_command}")
  if record.get("fingerprint") != fingerprint:
    raise ValueError(f"the latents in {directory} were encoded by another autoencoder state (fingerprint "
                     f"{record.get('fingerprint')}, this one is {fingerprint}); encode again with {encode_command}")
  return record
