"""Tiny float64 models for the exactness tests, with parameters pushed away from the identity init."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ntm_jax.models import config as model_config
from ntm_jax.models import build_model


def tiny_config(*, height=2, width=4, channels=1, patch_size=1, num_steps=2, num_blocks=2,
                layers_per_block=2, depth=2, markov=False, sigma_floor=0.3, num_classes=0, prediction="x0",
                kind="ntm", dropout=0.0, remat="none", scan_layers=True, text_dim=0, text_tokens=0,
                x0_skip_data_std=0.0, attention="auto", dtype=jnp.float64) -> model_config.ModelConfig:
  """8 tokens of 1 number by default: small enough for brute-force Jacobians of whole trajectories."""
  return model_config.ModelConfig(
      image=model_config.ImageConfig(height, width, channels, patch_size),
      kind=kind,
      grid=model_config.GridConfig(num_steps=num_steps),
      transporter=model_config.TransporterConfig(
          num_blocks=num_blocks, layers_per_block=layers_per_block, width=16, head_dim=8, mlp_ratio=2,
          num_classes=num_classes if kind == "tarflow" else 0, text_dim=text_dim if kind == "tarflow" else 0,
          dropout=dropout, remat=remat, attention=attention),
      predictor=model_config.PredictorConfig(
          depth=depth, width=16, head_dim=8, mlp_ratio=2, markov=markov, sigma_floor=sigma_floor,
          num_classes=num_classes, dropout=dropout, remat=remat, x0_skip_data_std=x0_skip_data_std,
          prediction=prediction, attention=attention,
          text_dim=text_dim if kind == "ntm" else 0, text_tokens=text_tokens if kind == "ntm" else 0),
      dtype=dtype, param_dtype=dtype, scan_layers=scan_layers)


def randomize(model: nnx.Module, seed: int = 0, scale: float = 0.3) -> nnx.Module:
  """Adds scale * N(0, 1) to every parameter, so zero-initialised output layers become non-trivial."""
  state = nnx.state(model, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  leaves = [leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)]
  nnx.update(model, jax.tree.unflatten(treedef, leaves))
  return model


def tiny_model(seed: int = 0, scale: float = 0.3, **overrides):
  cfg = tiny_config(**overrides)
  model = build_model(cfg, rngs=nnx.Rngs(seed))
  return randomize(model, seed + 1, scale) if scale else model


def replace(cfg, **kwargs):
  return dataclasses.replace(cfg, **kwargs)


def text_condition(batch: int, text_tokens: int, text_dim: int, seed: int = 0, lengths=None, dtype=jnp.float64):
  """A random text condition (ntm_jax.models.conditioning) whose example i has lengths[i] real tokens."""
  lengths = lengths if lengths is not None else [text_tokens] * batch
  tokens_key, pooled_key = jax.random.split(jax.random.key(seed))
  mask = jnp.arange(text_tokens)[None, :] < jnp.asarray(lengths)[:, None]
  tokens = jax.random.normal(tokens_key, (batch, text_tokens, text_dim), dtype) * mask[..., None]
  return {"text_tokens": tokens, "text_mask": mask,
          "text_pooled": jax.random.normal(pooled_key, (batch, text_dim), dtype)}
