"""A convolutional autoencoder whose latents the flows can train on (the latent space of STARFlow and NTM's
text-to-image models), trained here by its own config (configs/autoencoder.py).

  encoder   conv 3x3 -> [residual block, stride-2 conv] x log2(downsample) -> residual block -> conv to C_z
  decoder   conv 3x3 -> residual block -> [nearest x2 upsample, conv, residual block] x log2(downsample)
            -> conv to the image channels
Training minimises the L2 reconstruction error of images in [-1, 1] with latent noise augmentation: the
decoder reconstructs from z + noise_std * std(z) * eps (per channel, the batch's std, not differentiated), so
it learns to decode the noisy latents a flow's samples are (STARFlow fine-tunes its decoder on noisy latents
for the same reason), and the encoder cannot hide information in a latent's scale. The per-channel mean and
scale of the latents, measured on the training split after training (`LatentStats`), make the latents the
flow sees unit-scale: `to_flow(encode(x))` and `decode(from_flow(z))`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.models.logical_axes import param_axes


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  """Image [H, W, C] <-> latents [H / downsample, W / downsample, latent_channels]."""

  height: int = 32
  width: int = 32
  channels: int = 3
  downsample: int = 4
  latent_channels: int = 4
  base_width: int = 64  # channels at full resolution, doubled at every downsampling stage
  noise_std: float = 0.1  # latent noise augmentation, in units of each channel's std

  def __post_init__(self):
    stages = math.log2(self.downsample) if self.downsample >= 1 else -1
    if stages != int(stages) or stages < 0:
      raise ValueError(f"autoencoder.downsample must be a power of 2, got {self.downsample}")
    if self.height % self.downsample or self.width % self.downsample:
      raise ValueError(f"autoencoder.downsample {self.downsample} does not divide the image size "
                       f"{self.height}x{self.width}")
    if self.latent_channels < 1 or self.base_width < 8 or self.base_width % 8:
      raise ValueError(f"autoencoder needs latent_channels >= 1 and base_width a multiple of 8, got {self}")
    if self.noise_std < 0:
      raise ValueError(f"autoencoder.noise_std must be >= 0, got {self.noise_std}")

  @property
  def num_stages(self) -> int:
    return int(math.log2(self.downsample))

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.height, self.width, self.channels

  @property
  def latent_shape(self) -> tuple[int, int, int]:
    return self.height // self.downsample, self.width // self.downsample, self.latent_channels


class LatentStats(nnx.Variable):
  """Measured, not learned: the per-channel mean and scale of the training split's latents."""


def _conv(in_features: int, out_features: int, *, rngs: nnx.Rngs, strides: int = 1, kernel: int = 3) -> nnx.Conv:
  return nnx.Conv(in_features, out_features, (kernel, kernel), strides=strides, padding="SAME", rngs=rngs,
                  kernel_metadata=param_axes("conv_window", "conv_window", "conv_in", "conv_out"),
                  bias_metadata=param_axes("conv_out"))


def _norm(features: int, *, rngs: nnx.Rngs) -> nnx.GroupNorm:
  return nnx.GroupNorm(features, num_groups=8, rngs=rngs, scale_metadata=param_axes("norm"),
                       bias_metadata=param_axes("norm"))


class ResidualBlock(nnx.Module):
  """x + conv(silu(norm(conv(silu(norm(x)))))), with a 1x1 projection when the width changes."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs):
    self.norm1, self.conv1 = _norm(in_features, rngs=rngs), _conv(in_features, out_features, rngs=rngs)
    self.norm2, self.conv2 = _norm(out_features, rngs=rngs), _conv(out_features, out_features, rngs=rngs)
    self.skip = _conv(in_features, out_features, rngs=rngs, kernel=1) if in_features != out_features else None

  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.conv1(jax.nn.silu(self.norm1(x)))
    h = self.conv2(jax.nn.silu(self.norm2(h)))
    return (x if self.skip is None else self.skip(x)) + h


class Autoencoder(nnx.Module):
  """Encoder and decoder of `AutoencoderConfig`, and the latent statistics that scale latents for a flow."""

  def __init__(self, cfg: AutoencoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    widths = [cfg.base_width * 2 ** i for i in range(cfg.num_stages + 1)]
    self.encoder_input = _conv(cfg.channels, widths[0], rngs=rngs)
    self.encoder_blocks = nnx.List([ResidualBlock(widths[i], widths[i], rngs=rngs) for i in range(cfg.num_stages)])
    self.downsamplers = nnx.List([_conv(widths[i], widths[i + 1], rngs=rngs, strides=2)
                                  for i in range(cfg.num_stages)])
    self.encoder_middle = ResidualBlock(widths[-1], widths[-1], rngs=rngs)
    self.encoder_norm = _norm(widths[-1], rngs=rngs)
    self.encoder_output = _conv(widths[-1], cfg.latent_channels, rngs=rngs)
    self.decoder_input = _conv(cfg.latent_channels, widths[-1], rngs=rngs)
    self.decoder_middle = ResidualBlock(widths[-1], widths[-1], rngs=rngs)
    self.upsamplers = nnx.List([_conv(widths[i + 1], widths[i], rngs=rngs) for i in reversed(range(cfg.num_stages))])
    self.decoder_blocks = nnx.List([ResidualBlock(widths[i], widths[i], rngs=rngs)
                                    for i in reversed(range(cfg.num_stages))])
    self.decoder_norm = _norm(widths[0], rngs=rngs)
    self.decoder_output = _conv(widths[0], cfg.channels, rngs=rngs)
    self.latent_mean = LatentStats(jnp.zeros((cfg.latent_channels,)), **param_axes("latent_channels"))
    self.latent_scale = LatentStats(jnp.ones((cfg.latent_channels,)), **param_axes("latent_channels"))

  def encode(self, images_BxHxWxC: jax.Array) -> jax.Array:
    """Latents [B, h, w, C_z] of images in [-1, 1] (raw: before `to_flow`)."""
    h = self.encoder_input(images_BxHxWxC)
    for block, down in zip(self.encoder_blocks, self.downsamplers):
      h = down(block(h))
    return self.encoder_output(jax.nn.silu(self.encoder_norm(self.encoder_middle(h))))

  def decode(self, latents_Bxhxwxc: jax.Array) -> jax.Array:
    """Images [B, H, W, C] (about [-1, 1]) from raw latents."""
    h = self.decoder_middle(self.decoder_input(latents_Bxhxwxc))
    for up, block in zip(self.upsamplers, self.decoder_blocks):
      h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
      h = block(up(h))
    return self.decoder_output(jax.nn.silu(self.decoder_norm(h)))

  def to_flow(self, latents: jax.Array) -> jax.Array:
    """Unit-scale latents for a flow: (z - mean) / scale per channel, with the measured statistics."""
    return (latents - self.latent_mean[...][None, None, None]) / self.latent_scale[...][None, None, None]

  def from_flow(self, flow_latents: jax.Array) -> jax.Array:
    return flow_latents * self.latent_scale[...][None, None, None] + self.latent_mean[...][None, None, None]

  def loss(self, key: jax.Array, images_BxHxWxC: jax.Array) -> tuple[jax.Array, dict]:
    """Mean squared reconstruction error from noise-augmented latents; parts: `mse` (noisy) per example."""
    if tuple(images_BxHxWxC.shape[1:]) != self.cfg.image_shape:
      raise ValueError(f"images must have shape [batch, {', '.join(map(str, self.cfg.image_shape))}] for this "
                       f"autoencoder, got {tuple(images_BxHxWxC.shape)}")
    latents = self.encode(images_BxHxWxC)
    std = jax.lax.stop_gradient(jnp.std(latents, axis=(0, 1, 2), keepdims=True))
    noisy = latents + self.cfg.noise_std * std * jax.random.normal(key, latents.shape, latents.dtype)
    error = jnp.square(self.decode(noisy) - images_BxHxWxC).reshape(images_BxHxWxC.shape[0], -1)
    per_example = jnp.mean(error, axis=1)
    return jnp.mean(per_example), {"mse": per_example, "latent_std": jnp.mean(std)}

  def reconstruct(self, images_BxHxWxC: jax.Array) -> jax.Array:
    """decode(encode(x)) without noise."""
    return self.decode(self.encode(images_BxHxWxC))
