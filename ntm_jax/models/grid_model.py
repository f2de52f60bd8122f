"""What NTM and the flow-matching model share: a predictor conditioned on y, sampled on NTM's time grid (D1)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax import trajectory


class GridModel(nnx.Module):
  """Base of `NTM` and `FlowMatching`: `self.cfg` is their ModelConfig; the predictor holds the condition."""

  @property
  def num_classes(self) -> int:
    return self.cfg.predictor.num_classes

  @property
  def condition_kind(self) -> str:
    return self.cfg.condition_kind

  def time_grid(self, num_steps: int | None = None, dtype=jnp.float32) -> jax.Array:
    """t_0 = 0 < ... < t_T = 1 for T = `num_steps` (default: the config's)."""
    return trajectory.time_grid(num_steps or self.cfg.grid.num_steps, self.cfg.grid.shift, dtype)
