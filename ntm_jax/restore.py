"""Restoring the EMA parameters a run saved, for evaluation and sampling (never for resuming training).

`best` is the step with the best validation bits/dim (WORKDIR/best), `latest` the newest resume checkpoint
(WORKDIR/checkpoints). A missing checkpoint or one saved for another model is a clear error.
"""

from __future__ import annotations

import os

import ml_collections

from ntm_jax import optim, sharding
from ntm_jax.best_checkpoint import BestCheckpoint
from ntm_jax.checkpoint import Checkpointer
from ntm_jax.models import model_config_from_dict
from ntm_jax.train_state import abstract_state

CHECKPOINT_CHOICES = ("best", "latest")


def restore_ema_params(config: ml_collections.ConfigDict, workdir: str, checkpoint: str = "best", mesh=None):
  """(graphdef, EMA params, step, ModelConfig) of the chosen checkpoint in `workdir`.

  With a `mesh`, the parameters are restored directly into their shardings (ntm_jax.sharding), so a model
  too big for one device can be evaluated and sampled.
  """
  if checkpoint not in CHECKPOINT_CHOICES:
    raise ValueError(f"checkpoint must be one of {CHECKPOINT_CHOICES}, got {checkpoint!r}")
  model_cfg = model_config_from_dict(config.model)
  graphdef, state = abstract_state(model_cfg, optim.make_optimizer(config.opt, config.train.num_steps))
  if mesh is not None:
    state = sharding.with_shardings(state, sharding.state_shardings(state, mesh))
  if checkpoint == "best":
    best = BestCheckpoint(os.path.join(workdir, "best"), config.eval.best_metric)
    restored, step = best.restore(state["ema"])
    if restored is None:
      raise FileNotFoundError(f"no best checkpoint in {best.directory}; train first (--mode=train), or "
                              f"use the newest step with --eval_checkpoint=latest")
    return graphdef, restored, step, model_cfg
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.train.keep_checkpoints)
  restored, step = checkpointer.restore_latest(state)
  if restored is None:
    raise FileNotFoundError(f"no checkpoint to evaluate in {checkpointer.directory}; train first (--mode=train)")
  return graphdef, restored["ema"], step, model_cfg
