"""Dequantisation and bits per dimension (NTM.md D7, D.1).

K-level integer images are mapped to [-1, 1] with uniform noise, x = 2 (x_int + u) / K - 1, so every
integer bin has width 2 / K in model space and, for any density p on x,
  log P(x_int) >= E_u[log p(x)] - D log(K / 2),   BPD = (-log p + D ln(K / 2)) / (D ln 2).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def dequantize(images_int: jax.Array, key: jax.Array, pixel_levels: int, dtype=jnp.float32) -> jax.Array:
  """Uniform dequantisation of integer images in 0..K-1 to [-1, 1)."""
  noise = jax.random.uniform(key, images_int.shape, dtype)
  return 2.0 * (images_int.astype(dtype) + noise) / pixel_levels - 1.0


def bin_centres(images_int, pixel_levels: int, dtype=jnp.float32):
  """The centre of each integer value's bin in [-1, 1]: dequantisation without noise (what an autoencoder
  encodes and a judge classifies). Numpy in, numpy out; jax in, jax out."""
  return 2.0 * (images_int.astype(dtype) + 0.5) / pixel_levels - 1.0


def to_integer_images(images: jax.Array, pixel_levels: int) -> jax.Array:
  """The inverse of `dequantize`: the integer bin of each value in [-1, 1]."""
  bins = jnp.floor((images + 1.0) * pixel_levels / 2.0)
  return jnp.clip(bins, 0, pixel_levels - 1).astype(jnp.int32)


def bits_per_dim(nll_nats, num_dims: int, pixel_levels: int):
  """BPD of a continuous NLL (nats, per example) of dequantised K-level data."""
  return (nll_nats + num_dims * math.log(pixel_levels / 2.0)) / (num_dims * math.log(2.0))
