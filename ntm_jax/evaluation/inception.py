"""InceptionV3 as FID measures it (pool3, 2048 features) in Flax NNX, with the standard preprocessing.

The network is the 2015-12-05 TensorFlow Inception graph that FID was defined on (Heusel et al. 2017), in
the layout torchvision and pytorch-fid name: a stem of five convolutions and two max pools, then the
Mixed_5b..Mixed_7c blocks (A x3, B, C x4, D, E x2) and a global average pool. What makes it the FID variant
and not torchvision's ImageNet network:
  - every convolution is conv -> batch norm (eps 1e-3, the graph's scale fixed at 1) -> ReLU, without bias;
  - the blocks' 3x3 average pools leave the padding out of the average (count_include_pad=False);
  - the last block (Mixed_7c) pools its branch with a 3x3 max pool, not an average.
Weights are never shipped or downloaded: `ntm_jax.evaluation.inception_weights` loads the files a user brings.

`preprocess` does what the TensorFlow graph did before its first convolution: images (uint8, NHWC, one or
three channels) are resized to 299 x 299 by TensorFlow's legacy bilinear resize (source pixel i * in / out,
no half-pixel offset, edges clamped) on 0..255 values and mapped to (x - 128) / 128.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

FEATURES = 2048
INPUT_SIZE = 299
BATCH_NORM_EPS = 1e-3
# FID features are compared across machines and papers: full float32 matmuls on every backend (TPUs would
# otherwise multiply convolutions in bfloat16 passes).
PRECISION = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class ConvSpec:
  name: str
  in_channels: int
  out_channels: int
  kernel: tuple[int, int]
  stride: int = 1
  padding: tuple[int, int] = (0, 0)


def _conv(name, cin, cout, kernel, stride=1, padding=0) -> ConvSpec:
  kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
  padding = (padding, padding) if isinstance(padding, int) else padding
  return ConvSpec(name, cin, cout, kernel, stride, padding)


class ConvBatchNorm(nnx.Module):
  """conv (no bias) -> batch norm in inference form -> ReLU; parameters in torch's names and layouts."""

  def __init__(self, spec: ConvSpec):
    self.spec = spec
    kh, kw = spec.kernel
    # Deterministic placeholders (the loader overwrites every one); torch's [out, in, kh, kw] is kept so the
    # file's tensors load without a transpose that could hide a mismatch.
    self.weight = nnx.Param(jnp.zeros((spec.out_channels, spec.in_channels, kh, kw), jnp.float32))
    self.scale = nnx.Param(jnp.ones((spec.out_channels,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((spec.out_channels,), jnp.float32))
    self.mean = nnx.Param(jnp.zeros((spec.out_channels,), jnp.float32))
    self.var = nnx.Param(jnp.ones((spec.out_channels,), jnp.float32))

  def __call__(self, x):
    (ph, pw), s = self.spec.padding, self.spec.stride
    y = jax.lax.conv_general_dilated(x, self.weight[...], (s, s), ((ph, ph), (pw, pw)),
                                     dimension_numbers=("NHWC", "OIHW", "NHWC"), precision=PRECISION)
    multiplier = self.scale[...] * jax.lax.rsqrt(self.var[...] + BATCH_NORM_EPS)
    shift = self.bias[...] - self.mean[...] * multiplier
    return jax.nn.relu(y * multiplier[None, None, None, :] + shift[None, None, None, :])


def max_pool(x, window: int = 3, stride: int = 2, padding: int = 0):
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1), pad)


def average_pool_without_padding(x, window: int = 3):
  """3x3, stride 1, padding 1, dividing by the number of real pixels under the window."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  dims, strides = (1, window, window, 1), (1, 1, 1, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, pad)
  count = jax.lax.reduce_window(jnp.ones_like(x[:1, :, :, :1]), 0.0, jax.lax.add, dims, strides, pad)
  return total / count


class Block(nnx.Module):
  """One Mixed block: named convolutions, and how its branches run and concatenate (`design`: A to E)."""

  def __init__(self, design: str, specs: list[ConvSpec], max_pool_branch: bool = False):
    self.design, self.max_pool_branch = design, max_pool_branch
    self.convs = nnx.Dict({s.name: ConvBatchNorm(s) for s in specs})

  def _pool_branch(self, x):
    if self.max_pool_branch:  # Mixed_7c: the FID graph's max pool
      return self.convs["branch_pool"](max_pool(x, 3, 1, 1))
    return self.convs["branch_pool"](average_pool_without_padding(x))

  def __call__(self, x):
    c = self.convs
    if self.design == "A":
      branches = [c["branch1x1"](x), c["branch5x5_2"](c["branch5x5_1"](x)),
                  c["branch3x3dbl_3"](c["branch3x3dbl_2"](c["branch3x3dbl_1"](x))), self._pool_branch(x)]
    elif self.design == "B":
      branches = [c["branch3x3"](x), c["branch3x3dbl_3"](c["branch3x3dbl_2"](c["branch3x3dbl_1"](x))),
                  max_pool(x)]
    elif self.design == "C":
      seven = c["branch7x7_3"](c["branch7x7_2"](c["branch7x7_1"](x)))
      double = x
      for i in range(1, 6):
        double = c[f"branch7x7dbl_{i}"](double)
      branches = [c["branch1x1"](x), seven, double, self._pool_branch(x)]
    elif self.design == "D":
      seven = x
      for i in range(1, 5):
        seven = c[f"branch7x7x3_{i}"](seven)
      branches = [c["branch3x3_2"](c["branch3x3_1"](x)), seven, max_pool(x)]
    else:  # "E"
      a = c["branch3x3_1"](x)
      b = c["branch3x3dbl_2"](c["branch3x3dbl_1"](x))
      branches = [c["branch1x1"](x), c["branch3x3_2a"](a), c["branch3x3_2b"](a), c["branch3x3dbl_3a"](b),
                  c["branch3x3dbl_3b"](b), self._pool_branch(x)]
    return jnp.concatenate(branches, axis=-1)


def _block_a(cin, pool):
  return [_conv("branch1x1", cin, 64, 1), _conv("branch5x5_1", cin, 48, 1), _conv("branch5x5_2", 48, 64, 5, 1, 2),
          _conv("branch3x3dbl_1", cin, 64, 1), _conv("branch3x3dbl_2", 64, 96, 3, 1, 1),
          _conv("branch3x3dbl_3", 96, 96, 3, 1, 1), _conv("branch_pool", cin, pool, 1)]


def _block_b(cin):
  return [_conv("branch3x3", cin, 384, 3, 2), _conv("branch3x3dbl_1", cin, 64, 1),
          _conv("branch3x3dbl_2", 64, 96, 3, 1, 1), _conv("branch3x3dbl_3", 96, 96, 3, 2)]


def _block_c(cin, c7):
  row, column = ((1, 7), (0, 3)), ((7, 1), (3, 0))
  return [_conv("branch1x1", cin, 192, 1), _conv("branch7x7_1", cin, c7, 1),
          _conv("branch7x7_2", c7, c7, row[0], 1, row[1]), _conv("branch7x7_3", c7, 192, column[0], 1, column[1]),
          _conv("branch7x7dbl_1", cin, c7, 1), _conv("branch7x7dbl_2", c7, c7, column[0], 1, column[1]),
          _conv("branch7x7dbl_3", c7, c7, row[0], 1, row[1]), _conv("branch7x7dbl_4", c7, c7, column[0], 1, column[1]),
          _conv("branch7x7dbl_5", c7, 192, row[0], 1, row[1]), _conv("branch_pool", cin, 192, 1)]


def _block_d(cin):
  return [_conv("branch3x3_1", cin, 192, 1), _conv("branch3x3_2", 192, 320, 3, 2),
          _conv("branch7x7x3_1", cin, 192, 1), _conv("branch7x7x3_2", 192, 192, (1, 7), 1, (0, 3)),
          _conv("branch7x7x3_3", 192, 192, (7, 1), 1, (3, 0)), _conv("branch7x7x3_4", 192, 192, 3, 2)]


def _block_e(cin):
  return [_conv("branch1x1", cin, 320, 1), _conv("branch3x3_1", cin, 384, 1),
          _conv("branch3x3_2a", 384, 384, (1, 3), 1, (0, 1)), _conv("branch3x3_2b", 384, 384, (3, 1), 1, (1, 0)),
          _conv("branch3x3dbl_1", cin, 448, 1), _conv("branch3x3dbl_2", 448, 384, 3, 1, 1),
          _conv("branch3x3dbl_3a", 384, 384, (1, 3), 1, (0, 1)),
          _conv("branch3x3dbl_3b", 384, 384, (3, 1), 1, (1, 0)), _conv("branch_pool", cin, 192, 1)]


STEM = [_conv("Conv2d_1a_3x3", 3, 32, 3, 2), _conv("Conv2d_2a_3x3", 32, 32, 3),
        _conv("Conv2d_2b_3x3", 32, 64, 3, 1, 1), _conv("Conv2d_3b_1x1", 64, 80, 1), _conv("Conv2d_4a_3x3", 80, 192, 3)]
# (name, design, convolutions, pools its branch by max): the blocks in order, their input channels chained.
BLOCKS = [("Mixed_5b", "A", _block_a(192, 32), False), ("Mixed_5c", "A", _block_a(256, 64), False),
          ("Mixed_5d", "A", _block_a(288, 64), False), ("Mixed_6a", "B", _block_b(288), False),
          ("Mixed_6b", "C", _block_c(768, 128), False), ("Mixed_6c", "C", _block_c(768, 160), False),
          ("Mixed_6d", "C", _block_c(768, 160), False), ("Mixed_6e", "C", _block_c(768, 192), False),
          ("Mixed_7a", "D", _block_d(768), False), ("Mixed_7b", "E", _block_e(1280), False),
          ("Mixed_7c", "E", _block_e(2048), True)]


class InceptionV3(nnx.Module):
  """pool3 features [B, 2048] of preprocessed images [B, 299, 299, 3] in [-1, 1)."""

  def __init__(self):
    self.stem = nnx.Dict({s.name: ConvBatchNorm(s) for s in STEM})
    self.blocks = nnx.Dict({name: Block(design, specs, by_max) for name, design, specs, by_max in BLOCKS})

  def __call__(self, x):
    s = self.stem
    x = s["Conv2d_2b_3x3"](s["Conv2d_2a_3x3"](s["Conv2d_1a_3x3"](x)))
    x = max_pool(x)
    x = max_pool(s["Conv2d_4a_3x3"](s["Conv2d_3b_1x1"](x)))
    for name, *_ in BLOCKS:
      x = self.blocks[name](x)
    return jnp.mean(x, axis=(1, 2))  # the graph's 8x8 average pool over the final 8x8 map


def legacy_bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """[out, in] weights of TensorFlow's legacy bilinear resize along one axis (align_corners=False)."""
  source = np.arange(size_out, dtype=np.float64) * (size_in / size_out)
  low = np.floor(source).astype(np.int64)
  high = np.minimum(low + 1, size_in - 1)
  frac = source - low
  matrix = np.zeros((size_out, size_in), np.float64)
  np.add.at(matrix, (np.arange(size_out), low), 1.0 - frac)
  np.add.at(matrix, (np.arange(size_out), high), frac)
  return matrix.astype(np.float32)


def preprocess(images_uint8, size: int = INPUT_SIZE):
  """uint8 [B, H, W, C] (C = 1 or 3) -> the network's input [B, size, size, 3], (pixel - 128) / 128."""
  images = jnp.asarray(images_uint8)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"FID features need uint8 images [batch, height, width, 1 or 3 channels], got shape "
                     f"{tuple(images.shape)}")
  x = images.astype(jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)  # grey images as the three equal channels Inception was trained on
  rows = jnp.asarray(legacy_bilinear_matrix(x.shape[1], size))
  columns = jnp.asarray(legacy_bilinear_matrix(x.shape[2], size))
  x = jnp.einsum("oh,bhwc,pw->bopc", rows, x, columns, precision=PRECISION)
  return jnp.clip((x - 128.0) / 128.0, -1.0, 127.0 / 128.0)
