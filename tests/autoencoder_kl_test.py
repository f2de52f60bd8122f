"""Our Flax AutoencoderKL against diffusers' PyTorch AutoencoderKL (reference values computed once by
tests/data/make_autoencoder_kl_reference.py, so CI needs no torch), and loading diffusers' safetensors files
with errors that name a missing, misshapen or foreign tensor."""

import json
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from ntm_jax import latents
from ntm_jax.latents import autoencoders
from ntm_jax.models.autoencoder_kl import AutoencoderKL, AutoencoderKLConfig
from ntm_jax.parallel import checkpoint
from tests.kl_reference_weights import reference_weights

REFERENCE = pathlib.Path(__file__).parent / "data" / "autoencoder_kl_reference.npz"


@pytest.fixture(scope="module")
def reference():
  stored = np.load(REFERENCE)
  names_and_shapes = list(zip(stored["names"].tolist(), json.loads(str(stored["shapes"]))))
  return stored, json.loads(str(stored["config"])), reference_weights(names_and_shapes)


@pytest.fixture(scope="module")
def vae_dir(reference, tmp_path_factory):
  """The reference weights as a diffusers-format directory (safetensors file and config.json)."""
  _, config, tensors = reference
  directory = tmp_path_factory.mktemp("sd_vae")
  save_file(tensors, str(directory / autoencoders.SAFETENSORS_FILE))
  (directory / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **config}))
  return directory


def test_sd_vae_equals_diffusers_within_1e4(reference, vae_dir):
  stored, _, _ = reference
  loaded = latents.load_autoencoder(f"sd_vae:{vae_dir}", (8, 8))
  assert loaded.latent_shape == (8, 8, 4) and loaded.image_shape == (64, 64, 3)
  model = loaded.module
  mean, logvar = jax.jit(lambda x: model.posterior(x))(stored["images"])
  decoded = jax.jit(model.decode)(stored["mean"])
  for name, ours in (("mean", mean), ("logvar", logvar), ("decoded", decoded)):
    want = stored[name]
    error = float(np.max(np.abs(np.asarray(ours) - want)))
    assert error <= 1e-4 * max(1.0, float(np.max(np.abs(want)))), f"{name}: max error {error:.2e}"
  # The flow latents are diffusers' scaled latents, and from_flow undoes them.
  z = loaded.encode_fn()(stored["images"])
  np.testing.assert_allclose(z, stored["mean"] * 0.18215, atol=1e-4)
  np.testing.assert_allclose(loaded.decode_fn()(z), stored["decoded"], atol=1e-4 * 3.1)


def _tiny(tmp_path, **config):
  cfg = AutoencoderKLConfig(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4)
  _, params = nnx.split(AutoencoderKL(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  tensors = {}
  for path, variable in nnx.to_flat_state(params):
    name, leaf = autoencoders._diffusers_key(path)  # pylint: disable=protected-access
    value = np.asarray(variable[...])
    value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T if value.ndim == 2 else value
    tensors[name] = np.ascontiguousarray(value)  # safetensors writes the buffer, not the strides
  (tmp_path / "config.json").write_text(json.dumps({"block_out_channels": [8, 16], "layers_per_block": 1,
                                                    "norm_num_groups": 4, **config}))
  return cfg, tensors


def test_safetensors_errors_name_the_problem(tmp_path):
  cfg, tensors = _tiny(tmp_path)
  path = tmp_path / autoencoders.SAFETENSORS_FILE
  save_file(tensors, str(path))
  loaded = latents.load_autoencoder(f"sd_vae:{path}", (4, 4))
  assert loaded.image_shape == (8, 8, 3) and loaded.module.cfg == cfg
  with pytest.raises(FileNotFoundError, match="no VAE weights.*nothing is downloaded"):
    latents.load_autoencoder(f"sd_vae:{tmp_path / 'missing.safetensors'}")
  missing = dict(tensors)
  del missing["encoder.conv_in.weight"]
  save_file(missing, str(path))
  with pytest.raises(ValueError, match="no tensor 'encoder.conv_in.weight'"):
    latents.load_autoencoder(f"sd_vae:{path}")
  wrong = dict(tensors, **{"decoder.conv_out.bias": np.zeros((4,), np.float32)})
  save_file(wrong, str(path))
  with pytest.raises(ValueError, match=r"'decoder.conv_out.bias' has shape \(4,\).*needs \(3,\)"):
    latents.load_autoencoder(f"sd_vae:{path}")
  save_file(dict(tensors, **{"extra.weight": np.zeros((2,), np.float32)}), str(path))
  with pytest.raises(ValueError, match="does not use.*extra.weight"):
    latents.load_autoencoder(f"sd_vae:{path}")
  path.write_bytes(b"not a safetensors file")
  with pytest.raises(checkpoint.IncompatibleCheckpointError, match="not a readable safetensors file"):
    latents.load_autoencoder(f"sd_vae:{path}")
  (tmp_path / "config.json").write_text(json.dumps({"down_block_types": ["CrossAttnDownBlock2D"]}))
  with pytest.raises(ValueError, match="not supported"):
    latents.load_autoencoder(f"sd_vae:{path}")


def test_older_attention_names_load_too(tmp_path):
  """Older diffusers files call the mid-block attention's projections query/key/value/proj_attn."""
  _, tensors = _tiny(tmp_path)
  renamed = {}
  for name, value in tensors.items():
    for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")):
      name = name.replace(new, old)
    renamed[name] = value
  assert any(".proj_attn." in n for n in renamed)
  save_file(renamed, str(tmp_path / autoencoders.SAFETENSORS_FILE))
  new_names = latents.load_autoencoder(f"sd_vae:{tmp_path}")
  x = jax.random.uniform(jax.random.key(0), (1, 8, 8, 3), minval=-1, maxval=1)
  reference_model = AutoencoderKL(AutoencoderKLConfig(block_out_channels=(8, 16), layers_per_block=1,
                                                      norm_num_groups=4), rngs=nnx.Rngs(0))
  np.testing.assert_allclose(new_names.module.encode(x), reference_model.encode(x), atol=1e-6)
