"""Computes the reference outputs of diffusers' PyTorch AutoencoderKL that tests/autoencoder_kl_test.py checks
our Flax AutoencoderKL (ntm_jax/models/autoencoder_kl.py) against.

Run once, outside ntm_jax's environment (CI needs no torch):
  python -m venv /tmp/refenv && /tmp/refenv/bin/pip install --no-deps torch==2.13.0+cpu && \
      /tmp/refenv/bin/pip install diffusers==0.31.0 safetensors numpy filelock typing-extensions sympy networkx \
      jinja2 fsspec huggingface_hub importlib_metadata regex requests Pillow
  /tmp/refenv/bin/python tests/data/make_autoencoder_kl_reference.py
The model is the SD VAE's architecture (config below) with the deterministic weights of
tests/kl_reference_weights.py (no weights are downloaded or stored). It writes
tests/data/autoencoder_kl_reference.npz: the state-dict names and shapes, the SD config as JSON, two 64x64
images (NHWC, [-1, 1]), and diffusers' posterior mean and log-variance and the decoded mean (NHWC).
"""

import json
import os
import sys

import numpy as np
import torch
from diffusers import AutoencoderKL

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from tests.kl_reference_weights import reference_weights  # noqa: E402

SD_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "block_out_channels": [128, 256, 512, 512], "act_fn": "silu", "sample_size": 256, "scaling_factor": 0.18215,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def main():
  torch.manual_seed(0)
  model = AutoencoderKL(**SD_VAE_CONFIG).eval()
  names_and_shapes = sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())
  weights = reference_weights(names_and_shapes)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
  images = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    posterior = model.encode(torch.from_numpy(images).permute(0, 3, 1, 2)).latent_dist
    decoded = model.decode(posterior.mean).sample
  nhwc = lambda t: t.permute(0, 2, 3, 1).numpy().astype(np.float32)
  out = os.path.join(ROOT, "tests", "data", "autoencoder_kl_reference.npz")
  np.savez_compressed(
      out, names=np.asarray([n for n, _ in names_and_shapes]),
      shapes=np.asarray(json.dumps([s for _, s in names_and_shapes])), config=np.asarray(json.dumps(SD_VAE_CONFIG)),
      images=images, mean=nhwc(posterior.mean), logvar=nhwc(posterior.logvar), decoded=nhwc(decoded),
      versions=np.asarray(json.dumps({"torch": torch.__version__, "diffusers": __import__("diffusers").__version__})))
  print(f"wrote {out}: mean |z| {np.abs(nhwc(posterior.mean)).mean():.4f}, decoded range "
        f"{decoded.min():.3f}..{decoded.max():.3f}")


if __name__ == "__main__":
  main()
