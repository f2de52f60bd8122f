"""The evaluation prompts of `shapes` and the compositions kept out of its training captions.

`HELD_OUT` names compositions (colour-shape pairs, counts, relations, a pair of shapes) that a model trained
with `data.hold_out_compositions` never reads in a caption: training and validation examples whose caption
contains one are dropped (ntm_jax.data.pipeline). The images may still show, say, a red triangle (as an
uncaptioned distractor or in a scene whose caption names no colours); what is held out is the words. The
judge (`--mode=judge`) scores two prompt sets drawn from a fixed seed: `seen_prompts`, none of which is held
out, and `held_out_prompts`, each of which contains a held-out composition, so recall of seen prompts and
composition of unseen ones are reported apart.
"""

from __future__ import annotations

import numpy as np

from ntm_jax.data.builders.shapes_scenes import CATEGORIES, Prompt, draw_scene

HELD_OUT = (
    "red triangle", "blue circle", "yellow square",  # colours and colour attribution
    "three circles", "four squares",  # counting
    "a triangle above a circle", "a square left of a triangle", "a circle below a square",  # position
    "a triangle right of a square",
    "a square and a circle",  # two objects (its mirror, "a circle and a square", stays in training)
)
# single_object prompts ("a circle") name no composition, so no held-out prompt has that category.
HELD_OUT_CATEGORIES = tuple(c for c in CATEGORIES if c != "single_object")
EVALUATION_PROMPT_SEED = 20_261_124


def is_held_out(caption: str) -> bool:
  """Whether `caption` contains a held-out composition (whole words)."""
  padded = f" {caption.strip()} "
  return any(f" {phrase} " in padded for phrase in HELD_OUT)


def _draw_prompts(per_category: int, categories: tuple[str, ...], held_out: bool, seed: int) -> list[Prompt]:
  rng = np.random.default_rng(seed)
  chosen: dict[str, list[Prompt]] = {c: [] for c in categories}
  while any(len(v) < per_category for v in chosen.values()):
    for category in categories:
      prompt = draw_scene(rng, category)[1]
      if is_held_out(prompt.caption()) == held_out and len(chosen[category]) < per_category:
        chosen[category].append(prompt)
  # Interleaved by category, so the first prompts of a grid show every category.
  return [chosen[c][i] for i in range(per_category) for c in categories]


def seen_prompts(per_category: int = 20) -> list[Prompt]:
  """`per_category` prompts of each of the six categories, none held out, from a fixed seed (the same for
  every model): the judge's main prompt set and the default prompts of sample grids."""
  return _draw_prompts(per_category, CATEGORIES, held_out=False, seed=EVALUATION_PROMPT_SEED)


def held_out_prompts(per_category: int = 20) -> list[Prompt]:
  """`per_category` prompts of each category but single_object, each with a held-out composition."""
  return _draw_prompts(per_category, HELD_OUT_CATEGORIES, held_out=True, seed=EVALUATION_PROMPT_SEED + 1)
