"""The SD / DiT VAE (diffusers' `AutoencoderKL`) in Flax NNX, so a user's pretrained VAE can give the latents.

The architecture follows diffusers' configuration fields (`AutoencoderKLConfig`; the SD VAE: channels
128-256-512-512, two residual blocks per level, 4 latent channels, 8x downsampling):
  encoder   conv_in -> [residual blocks, stride-2 conv (padded right and bottom)] per level -> mid (residual,
            single-head self-attention, residual) -> GroupNorm, SiLU, conv_out to 2 x latent channels
            -> quant_conv: the posterior's mean and log-variance
  decoder   post_quant_conv -> conv_in -> mid -> [residual blocks (one more), nearest x2 + conv] per level
            -> GroupNorm, SiLU, conv_out
Images are NHWC in [-1, 1]; latents NHWC. `encode` returns the posterior mean (the deterministic latent
a flow is trained on) and `to_flow` scales it as diffusers' pipelines do, (z - shift_factor) *
scaling_factor. Parameter names mirror diffusers' state-dict keys so that a safetensors file maps onto them
one to one (ntm_jax.latents.autoencoders).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.models.logical_axes import param_axes


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig:
  """diffusers' AutoencoderKL config fields that fix the architecture (defaults: the SD VAE)."""

  in_channels: int = 3
  out_channels: int = 3
  block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
  layers_per_block: int = 2
  latent_channels: int = 4
  norm_num_groups: int = 32
  scaling_factor: float = 0.18215
  shift_factor: float = 0.0
  mid_block_add_attention: bool = True

  def __post_init__(self):
    object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
    if any(c % self.norm_num_groups for c in self.block_out_channels):
      raise ValueError(f"every block_out_channels {self.block_out_channels} must be a multiple of "
                       f"norm_num_groups {self.norm_num_groups}")

  @property
  def downsample(self) -> int:
    return 2 ** (len(self.block_out_channels) - 1)


def _conv(in_features, out_features, *, rngs, kernel=3, strides=1, padding="SAME"):
  return nnx.Conv(in_features, out_features, (kernel, kernel), strides=strides, padding=padding, rngs=rngs,
                  kernel_metadata=param_axes("conv_window", "conv_window", "conv_in", "conv_out"),
                  bias_metadata=param_axes("conv_out"))


def _norm(features, groups, *, rngs):
  # Two-pass variance, as torch computes it: the fast E[x^2] - E[x]^2 form drifts by more than the 1e-4 the
  # reference test allows after thirty layers.
  return nnx.GroupNorm(features, num_groups=groups, epsilon=1e-6, use_fast_variance=False, rngs=rngs,
                       scale_metadata=param_axes("norm"), bias_metadata=param_axes("norm"))


class ResnetBlock(nnx.Module):
  """diffusers' ResnetBlock2D without a time embedding: x + conv(silu(norm(conv(silu(norm(x))))))."""

  def __init__(self, in_features, out_features, groups, *, rngs):
    self.norm1, self.conv1 = _norm(in_features, groups, rngs=rngs), _conv(in_features, out_features, rngs=rngs)
    self.norm2, self.conv2 = _norm(out_features, groups, rngs=rngs), _conv(out_features, out_features, rngs=rngs)
    self.conv_shortcut = (_conv(in_features, out_features, kernel=1, rngs=rngs) if in_features != out_features
                          else None)

  def __call__(self, x):
    h = self.conv2(jax.nn.silu(self.norm2(self.conv1(jax.nn.silu(self.norm1(x))))))
    return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class SpatialSelfAttention(nnx.Module):
  """The mid block's single-head attention over all positions, with a residual connection."""

  def __init__(self, features, groups, *, rngs):
    self.group_norm = _norm(features, groups, rngs=rngs)
    dense = lambda: nnx.Linear(features, features, rngs=rngs, kernel_metadata=param_axes("conv_in", "conv_out"),
                               bias_metadata=param_axes("conv_out"))
    self.to_q, self.to_k, self.to_v, self.to_out = dense(), dense(), dense(), dense()

  def __call__(self, x):
    b, h, w, c = x.shape
    tokens = self.group_norm(x).reshape(b, h * w, c)
    q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
    weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / jnp.sqrt(float(c)), axis=-1)
    return x + self.to_out(jnp.einsum("bqk,bkc->bqc", weights, v)).reshape(b, h, w, c)


class MidBlock(nnx.Module):
  def __init__(self, features, groups, attention: bool, *, rngs):
    self.resnets = nnx.List([ResnetBlock(features, features, groups, rngs=rngs) for _ in range(2)])
    self.attentions = nnx.List([SpatialSelfAttention(features, groups, rngs=rngs)] if attention else [])

  def __call__(self, x):
    x = self.resnets[0](x)
    for attention in self.attentions:
      x = attention(x)
    return self.resnets[1](x)


class Downsample(nnx.Module):
  """A stride-2 3x3 conv after padding one row and column at the bottom and right (diffusers' padding=0)."""

  def __init__(self, features, *, rngs):
    self.conv = _conv(features, features, strides=2, padding="VALID", rngs=rngs)

  def __call__(self, x):
    return self.conv(jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0))))


class Upsample(nnx.Module):
  def __init__(self, features, *, rngs):
    self.conv = _conv(features, features, rngs=rngs)

  def __call__(self, x):
    return self.conv(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))


class ResolutionLevel(nnx.Module):
  """ResNet blocks at one resolution, then an optional 2x down- or upsampler (diffusers' down_blocks.i and
  up_blocks.i; the unused resampler list stays empty, so the parameter names are diffusers')."""

  def __init__(self, in_features, out_features, num_layers, groups, resample: str, *, rngs):
    if resample not in ("", "down", "up"):
      raise ValueError(f"resample must be '', 'down' or 'up', got {resample!r}")
    self.resnets = nnx.List([ResnetBlock(in_features if i == 0 else out_features, out_features, groups, rngs=rngs)
                             for i in range(num_layers)])
    self.downsamplers = nnx.List([Downsample(out_features, rngs=rngs)] if resample == "down" else [])
    self.upsamplers = nnx.List([Upsample(out_features, rngs=rngs)] if resample == "up" else [])

  def __call__(self, x):
    for block in [*self.resnets, *self.downsamplers, *self.upsamplers]:
      x = block(x)
    return x


class Encoder(nnx.Module):
  def __init__(self, cfg: AutoencoderKLConfig, *, rngs):
    widths, groups = cfg.block_out_channels, cfg.norm_num_groups
    self.conv_in = _conv(cfg.in_channels, widths[0], rngs=rngs)
    self.down_blocks = nnx.List([
        ResolutionLevel(widths[max(i - 1, 0)], widths[i], cfg.layers_per_block, groups,
                        "down" if i < len(widths) - 1 else "", rngs=rngs)
        for i in range(len(widths))])
    self.mid_block = MidBlock(widths[-1], groups, cfg.mid_block_add_attention, rngs=rngs)
    self.conv_norm_out = _norm(widths[-1], groups, rngs=rngs)
    self.conv_out = _conv(widths[-1], 2 * cfg.latent_channels, rngs=rngs)

  def __call__(self, x):
    x = self.conv_in(x)
    for level in self.down_blocks:
      x = level(x)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nnx.Module):
  def __init__(self, cfg: AutoencoderKLConfig, *, rngs):
    widths, groups = tuple(reversed(cfg.block_out_channels)), cfg.norm_num_groups
    self.conv_in = _conv(cfg.latent_channels, widths[0], rngs=rngs)
    self.mid_block = MidBlock(widths[0], groups, cfg.mid_block_add_attention, rngs=rngs)
    self.up_blocks = nnx.List([
        ResolutionLevel(widths[max(i - 1, 0)], widths[i], cfg.layers_per_block + 1, groups,
                        "up" if i < len(widths) - 1 else "", rngs=rngs)
        for i in range(len(widths))])
    self.conv_norm_out = _norm(widths[-1], groups, rngs=rngs)
    self.conv_out = _conv(widths[-1], cfg.out_channels, rngs=rngs)

  def __call__(self, z):
    x = self.mid_block(self.conv_in(z))
    for level in self.up_blocks:
      x = level(x)
    return self.conv_out(jax.nn.silu(self.conv_norm_out(x)))


class AutoencoderKL(nnx.Module):
  """Encoder, decoder and the 1x1 quant convs of diffusers' AutoencoderKL."""

  def __init__(self, cfg: AutoencoderKLConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder, self.decoder = Encoder(cfg, rngs=rngs), Decoder(cfg, rngs=rngs)
    self.quant_conv = _conv(2 * cfg.latent_channels, 2 * cfg.latent_channels, kernel=1, rngs=rngs)
    self.post_quant_conv = _conv(cfg.latent_channels, cfg.latent_channels, kernel=1, rngs=rngs)

  def posterior(self, images_BxHxWxC):
    """(mean, log-variance) of the diagonal Gaussian posterior, log-variance clipped to [-30, 20] as diffusers."""
    moments = self.quant_conv(self.encoder(images_BxHxWxC))
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, -30.0, 20.0)

  def encode(self, images_BxHxWxC):
    """The posterior mean: raw latents [B, H / 8, W / 8, 4] (before `to_flow`)."""
    return self.posterior(images_BxHxWxC)[0]

  def decode(self, latents_Bxhxwxc):
    return self.decoder(self.post_quant_conv(latents_Bxhxwxc))

  def to_flow(self, latents):
    return (latents - self.cfg.shift_factor) * self.cfg.scaling_factor

  def from_flow(self, flow_latents):
    return flow_latents / self.cfg.scaling_factor + self.cfg.shift_factor
