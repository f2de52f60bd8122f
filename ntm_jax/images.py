"""Sample grids as PNG files."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def make_grid(images_uint8: np.ndarray, columns: int | None = None, padding: int = 1) -> np.ndarray:
  """[B, H, W, C] uint8 -> one [rows (H + pad), columns (W + pad), C] uint8 image."""
  batch, height, width, channels = images_uint8.shape
  columns = columns or math.ceil(math.sqrt(batch))
  rows = math.ceil(batch / columns)
  grid = np.zeros((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), np.uint8)
  for index, image in enumerate(images_uint8):
    r, c = divmod(index, columns)
    top, left = padding + r * (height + padding), padding + c * (width + padding)
    grid[top:top + height, left:left + width] = image
  return grid


def to_uint8(images: np.ndarray, num_levels: int) -> np.ndarray:
  """Model-space images in [-1, 1] -> uint8 with the data set's K levels stretched to 0..255."""
  bins = np.clip(np.floor((np.asarray(images) + 1.0) * num_levels / 2.0), 0, num_levels - 1)
  return np.round(bins * 255.0 / (num_levels - 1)).astype(np.uint8)


def save_grid_png(images_uint8: np.ndarray, path: str, *, scale: int = 1) -> str:
  grid = make_grid(images_uint8)
  picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  if scale > 1:
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
  picture.save(path)
  return path
