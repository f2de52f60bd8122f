"""Sample grids as PNG files."""

from __future__ import annotations

import math
import textwrap

import numpy as np
from PIL import Image, ImageDraw


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


def to_uint8(images: np.ndarray, pixel_levels: int) -> np.ndarray:
  """Model-space images in [-1, 1] -> uint8 with the data set's K levels stretched to 0..255."""
  bins = np.clip(np.floor((np.asarray(images) + 1.0) * pixel_levels / 2.0), 0, pixel_levels - 1)
  return np.round(bins * 255.0 / (pixel_levels - 1)).astype(np.uint8)


def save_grid_png(images_uint8: np.ndarray, path: str, *, scale: int = 1, captions=None) -> str:
  """Writes the images as one grid PNG; with `captions`, each image gets its caption printed below it."""
  if captions is not None:
    return _save_captioned_grid(images_uint8, list(captions), path, scale)
  grid = make_grid(images_uint8)
  picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  if scale > 1:
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
  picture.save(path)
  return path


def _save_captioned_grid(images_uint8, captions, path, scale, line_height=11, lines=3):
  """A grid of cells, each the upscaled image above up to `lines` wrapped lines of its caption."""
  if len(captions) != len(images_uint8):
    raise ValueError(f"{len(images_uint8)} images but {len(captions)} captions")
  batch, height, width, _ = images_uint8.shape
  cell_w = max(width * scale, 96)
  cell_h = height * scale + lines * line_height + 4
  columns = math.ceil(math.sqrt(batch))
  rows = math.ceil(batch / columns)
  picture = Image.new("RGB", (columns * (cell_w + 2) + 2, rows * (cell_h + 2) + 2), "white")
  draw = ImageDraw.Draw(picture)
  chars_per_line = max(cell_w // 6, 8)  # PIL's default bitmap font is about 6 px per character
  for index, (image, caption) in enumerate(zip(images_uint8, captions)):
    r, c = divmod(index, columns)
    left, top = 2 + c * (cell_w + 2), 2 + r * (cell_h + 2)
    tile = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")
    picture.paste(tile.resize((width * scale, height * scale), Image.NEAREST), (left, top))
    for i, line in enumerate(textwrap.wrap(caption, chars_per_line)[:lines]):
      draw.text((left, top + height * scale + 2 + i * line_height), line, fill="black")
  picture.save(path)
  return path
