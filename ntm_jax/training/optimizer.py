"""AdamW with warm-up + cosine decay and global-norm clipping, and the EMA of parameters (D5)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(opt, num_steps: int) -> optax.Schedule:
  warmup = min(opt.warmup_steps, max(num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt.learning_rate, warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1), end_value=opt.learning_rate * opt.end_learning_rate_factor)


def make_optimizer(opt, num_steps: int) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(opt.clip_norm),
      optax.adamw(learning_rate_schedule(opt, num_steps), b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay))


def ema_update(ema, params, step, decay: float):
  """EMA with a warm-up of the decay, min(decay, (1 + step) / (10 + step)), so short runs are not biased to init."""
  rate = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema, params)
