"""The training state pytree saved in every checkpoint: step, parameters, optimizer state, EMA parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ntm_jax.models import abstract_model, build_model
from ntm_jax.models.config import ModelConfig


def initial_state(model_cfg: ModelConfig, optimizer: optax.GradientTransformation, seed: int):
  """(graphdef, {"step", "params", "opt_state", "ema"}) of a freshly initialised model."""
  model = build_model(model_cfg, rngs=nnx.Rngs(seed))
  graphdef, params = nnx.split(model)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params),
           "ema": jax.tree.map(jnp.copy, params)}  # own buffers: params and EMA are donated separately
  return graphdef, state


def abstract_state(model_cfg: ModelConfig, optimizer: optax.GradientTransformation):
  """(graphdef, the state as ShapeDtypeStructs): what a restore needs, without allocating anything."""
  graphdef, _ = abstract_model(model_cfg)
  return graphdef, jax.eval_shape(lambda: initial_state(model_cfg, optimizer, 0)[1])
