"""`shapes`: procedurally drawn 32x32 RGB scenes of one to four flat-coloured objects, with captions.

Each scene is drawn for one of GenEval's six prompt categories and carries its caption and the structured
prompt it was drawn from (what `shapes_judge` checks generated images against):
  single_object "a circle" | two_object "a circle and a square" | counting "three triangles" |
  colors "a red square" | position "a circle left of a square" | color_attr "a red circle and a blue square".
Objects sit in the cells of a 3x3 grid (with a one-pixel jitter), so they never touch and "left of" /
"above" are unambiguous: a relation is only drawn between objects in different columns (rows).
"""

from __future__ import annotations

import dataclasses

import numpy as np

SIZE = 32
CELL = 10  # 3 cells of 10 px, plus a 1 px border
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 235), "yellow": (230, 210, 40),
           "purple": (160, 60, 210)}
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {2: "two", 3: "three", 4: "four"}


@dataclasses.dataclass(frozen=True)
class Prompt:
  """What a caption asks for: shapes (and colours, a count, or a relation between the first two)."""

  category: str
  shapes: tuple[str, ...]
  colours: tuple[str | None, ...] = ()
  count: int = 0
  relation: str = ""

  def caption(self) -> str:
    def noun(i):
      colour = self.colours[i] if i < len(self.colours) and self.colours[i] else ""
      return " ".join(filter(None, ["a", colour, self.shapes[i]]))

    if self.category == "counting":
      return f"{NUMBERS[self.count]} {self.shapes[0]}s"
    if self.category == "position":
      return f"{noun(0)} {self.relation} {noun(1)}"
    return " and ".join(noun(i) for i in range(len(self.shapes)))


def _draw(canvas: np.ndarray, shape: str, colour: str, top: int, left: int, size: int) -> None:
  rows, cols = np.mgrid[0:size, 0:size] + 0.5
  if shape == "square":
    mask = np.ones((size, size), bool)
  elif shape == "circle":
    mask = (rows - size / 2) ** 2 + (cols - size / 2) ** 2 <= (size / 2) ** 2
  else:  # an upright isosceles triangle
    mask = np.abs(cols - size / 2) <= rows / 2
  canvas[top:top + size, left:left + size][mask] = COLOURS[colour]


def _place(rng, cells: list[tuple[int, int]], shape: str, colour: str, canvas: np.ndarray) -> dict:
  row, col = cells.pop()
  size = int(rng.integers(7, 9))
  top = 1 + row * CELL + int(rng.integers(0, CELL - size))  # keeps a gap of one pixel to the next cell
  left = 1 + col * CELL + int(rng.integers(0, CELL - size))
  _draw(canvas, shape, colour, top, left, size)
  return {"shape": shape, "colour": colour, "row": row, "col": col}


def _prompt(rng, category: str) -> Prompt:
  shapes = lambda n: tuple(rng.choice(SHAPES, n, replace=False)) if n <= len(SHAPES) else None
  colours = lambda n: tuple(rng.choice(list(COLOURS), n, replace=False))
  if category == "single_object":
    return Prompt(category, shapes(1))
  if category == "two_object":
    return Prompt(category, shapes(2))
  if category == "counting":
    return Prompt(category, shapes(1), count=int(rng.integers(2, 5)))
  if category == "colors":
    return Prompt(category, shapes(1), colours(1))
  if category == "position":
    return Prompt(category, shapes(2), relation=str(rng.choice(RELATIONS)))
  return Prompt(category, shapes(2), colours(2))


def draw_scene(rng: np.random.Generator, category: str) -> tuple[np.ndarray, Prompt, list[dict]]:
  """(image uint8 [32, 32, 3], its prompt, the objects drawn) for one scene of `category`."""
  prompt = _prompt(rng, category)
  canvas = np.zeros((SIZE, SIZE, 3), np.uint8)
  cells = [(r, c) for r in range(3) for c in range(3)]
  rng.shuffle(cells)
  colour_of = lambda i: prompt.colours[i] if i < len(prompt.colours) else str(rng.choice(list(COLOURS)))
  if category == "position":
    # Two cells that differ in the relation's direction; the first shape goes on the named side.
    horizontal = prompt.relation in ("left of", "right of")
    first_before = prompt.relation in ("left of", "above")
    while True:
      a, b = cells[-1], cells[-2]
      delta = (a[1] - b[1]) if horizontal else (a[0] - b[0])
      if delta != 0 and (delta < 0) == first_before:
        break
      rng.shuffle(cells)
  objects = []
  num = prompt.count if category == "counting" else len(prompt.shapes)
  for i in range(num):
    shape = prompt.shapes[0] if category == "counting" else prompt.shapes[i]
    objects.append(_place(rng, cells, shape, colour_of(i), canvas))
  # Distractors (single_object and colors only, so counts and pairs stay as captioned): other shapes.
  if category in ("single_object", "colors") and rng.random() < 0.5:
    other = str(rng.choice([s for s in SHAPES if s != prompt.shapes[0]]))
    objects.append(_place(rng, cells, other, str(rng.choice(list(COLOURS))), canvas))
  return canvas, prompt, objects


def make_scenes(num: int, seed: int) -> tuple[np.ndarray, list[Prompt]]:
  """`num` scenes cycling over the categories: images uint8 [num, 32, 32, 3] and their prompts."""
  rng = np.random.default_rng(seed)
  images, prompts = [], []
  for i in range(num):
    image, prompt, _ = draw_scene(rng, CATEGORIES[i % len(CATEGORIES)])
    images.append(image)
    prompts.append(prompt)
  return np.stack(images), prompts
