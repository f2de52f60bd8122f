"""A GenEval-style judge for `shapes` images: find the objects, then check them against the prompt.

Detection: a 3x3 median filter first (so that the per-pixel colour noise of generated images does not break
an object apart, as it would not fool GenEval's learned detector either); then every pixel brighter than
the background belongs to the foreground, connected foreground regions (at least 12 pixels) are objects,
each takes the palette colour nearest to its median colour, and is classified by how much of its bounding
box it fills (square about 1, circle about pi/4, triangle about 1/2). Checks follow GenEval's categories: presence of
the shapes, the exact count, the colour of the object, the relation between the two objects' centres, and
colour attribution (each shape with its own colour).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from ntm_jax.data.builders.shapes_scenes import CATEGORIES, COLOURS, Prompt

MIN_PIXELS = 12
_PALETTE = np.asarray(list(COLOURS.values()), np.float64)
_NAMES = list(COLOURS)


@dataclasses.dataclass(frozen=True)
class Detection:
  shape: str
  colour: str
  row: float  # centre, pixels
  col: float


def detect(image: np.ndarray) -> list[Detection]:
  """The objects in one uint8 image [H, W, 3]."""
  pixels = np.asarray(image, np.float64)
  foreground = pixels.max(axis=-1) > 60
  regions, count = ndimage.label(foreground)
  found = []
  for region in range(1, count + 1):
    rows, cols = np.nonzero(regions == region)
    if len(rows) < MIN_PIXELS:
      continue
    colour = np.median(pixels[rows, cols], axis=0)
    name = _NAMES[int(np.argmin(((colour - _PALETTE) ** 2).sum(-1)))]
    fill = len(rows) / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))
    shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
    found.append(Detection(shape, name, float(rows.mean()), float(cols.mean())))
  return found


def check(prompt: Prompt, found: list[Detection]) -> bool:
  """Whether the detected objects satisfy the prompt."""
  def having(shape, colour=None):
    return [d for d in found if d.shape == shape and (colour is None or d.colour == colour)]

  if prompt.category in ("single_object", "two_object"):
    return all(having(s) for s in prompt.shapes)
  if prompt.category == "counting":
    return len(having(prompt.shapes[0])) == prompt.count
  if prompt.category in ("colors", "color_attr"):
    return all(having(s, c) for s, c in zip(prompt.shapes, prompt.colours))
  if prompt.category == "position":
    firsts, seconds = having(prompt.shapes[0]), having(prompt.shapes[1])
    if not firsts or not seconds:
      return False
    a, b = firsts[0], seconds[0]
    margin = 3.0  # centres must be clearly apart in the relation's direction
    return {"left of": b.col - a.col, "right of": a.col - b.col, "above": b.row - a.row,
            "below": a.row - b.row}[prompt.relation] > margin
  raise ValueError(f"unknown prompt category {prompt.category!r}; known: {CATEGORIES}")


def score(images: np.ndarray, prompts: list[Prompt]) -> dict[str, float]:
  """Share of images that satisfy their prompt, per category and overall (the mean over categories)."""
  by_category: dict[str, list[bool]] = {c: [] for c in CATEGORIES}
  for image, prompt in zip(images, prompts):
    by_category[prompt.category].append(check(prompt, detect(image)))
  results = {c: float(np.mean(v)) for c, v in by_category.items() if v}
  results["overall"] = float(np.mean(list(results.values())))
  return results
