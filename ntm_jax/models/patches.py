"""Images <-> token sequences (D2), and the input checks that name what is wrong with an image batch."""

from __future__ import annotations

import einops
import jax
import numpy as np

from ntm_jax.models.config import ImageConfig


def check_images(images, image: ImageConfig, *, name: str = "images") -> None:
  """Raises ValueError if `images` is not a [..., H, W, C] batch of the configured size, or not finite.

  Shapes are static, so the shape check also works while tracing; the finiteness check runs only on
  concrete arrays (inside `jax.jit` a non-finite input shows up as a non-finite loss instead).
  """
  expected = image.shape
  if images.ndim < 4 or tuple(images.shape[-3:]) != expected:
    raise ValueError(
        f"{name} must have shape [batch, {expected[0]}, {expected[1]}, {expected[2]}] for this config, "
        f"got {tuple(images.shape)}")
  if not isinstance(images, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(images))):
    raise ValueError(f"{name} contain NaN or Inf values")


def patchify(images_BxHxWxC: jax.Array, patch_size: int) -> jax.Array:
  """[..., H, W, C] -> [..., N, p*p*C], raster order over patches, (p1 p2 c) inside a token."""
  return einops.rearrange(
      images_BxHxWxC, "... (h p1) (w p2) c -> ... (h w) (p1 p2 c)", p1=patch_size, p2=patch_size)


def unpatchify(tokens_BxNxc: jax.Array, image: ImageConfig) -> jax.Array:
  """The exact inverse of `patchify`."""
  p = image.patch_size
  return einops.rearrange(
      tokens_BxNxc, "... (h w) (p1 p2 c) -> ... (h p1) (w p2) c",
      h=image.height // p, w=image.width // p, p1=p, p2=p, c=image.channels)
