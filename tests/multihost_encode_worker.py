"""One process of a simulated multi-host `--mode=encode` (run by tests/multihost_test.py; not a test itself).

  python tests/multihost_encode_worker.py PROCESS_ID NUM_PROCESSES PORT AUTOENCODER_WORKDIR LATENT_DIR OUT_JSON

Each process encodes its own share of every split of the smoke t2i data into its own shard; process 0 then
reads the finished data set back and writes, per split, its shard files, example count, captions and the
latents' sum.
"""

import hashlib
import json
import os
import sys

process_id, num_processes, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
autoencoder_workdir, latent_dir, out_path = sys.argv[4], sys.argv[5], sys.argv[6]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // num_processes}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
if num_processes > 1:
  jax.distributed.initialize(f"localhost:{port}", num_processes=num_processes, process_id=process_id)

import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from ntm_jax.latents import encode  # noqa: E402
from tests.config_test import load_config  # noqa: E402

config = load_config("t2i", f"smoke,latent={autoencoder_workdir}")
config.latent.data_dir = latent_dir
result = encode.encode_dataset(config)
if process_id == 0:
  builder = tfds.builder_from_directory(result["directory"])
  splits = {}
  for split in builder.info.splits:
    source = builder.as_data_source(split)
    examples = [source[i] for i in range(len(source))]
    captions = "\n".join(str(e.get("caption", "")) for e in examples)
    splits[split] = {
        "count": len(examples),
        "shards": sorted(f for f in os.listdir(result["directory"]) if f"-{split}." in f),
        "captions_sha1": hashlib.sha1(captions.encode()).hexdigest(),
        "latent_sum": float(sum(np.asarray(e["image"], np.float64).sum() for e in examples)),
        "first_latent": np.asarray(examples[0]["image"], np.float64).ravel().tolist()}
  with open(out_path, "w") as f:
    json.dump({"process_count": jax.process_count(), "splits": splits}, f)
