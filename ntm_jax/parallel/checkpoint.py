"""Checkpoints of a run: Orbax resume checkpoints, the best step by a validation metric, and restoring a
run's parameters for evaluation and sampling.

A run's workdir holds `config.json`, `checkpoints/` (the newest N steps, for resuming) and `best/` (the EMA
parameters of the step with the best validation metric). Each resume step stores the training state in
three items, `params`, `ema` and `optimizer` (the step counter and the optimizer state), plus `data` (the
grain iterator position), so a resumed run replays exactly the batches it would have seen, and evaluation
or sampling restores only the parameters it needs (no optimizer is built for that). Saves are asynchronous; Orbax writes
into a temporary directory and renames it when complete, so a run killed mid-save leaves no half-written
step behind. If the newest step cannot be restored (truncated or corrupt files), it is reported, moved
aside (renamed, never deleted) and the previous step is used. A checkpoint of another model, or one
written by an older layout of ntm_jax, is refused by name and left as it is.
"""

from __future__ import annotations

import json
import os
import re
import time

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from ntm_jax import models
from ntm_jax.parallel import mesh as mesh_lib

# The item of a step directory that holds each part of a state dict: the parameters apart from the rest.
ITEM_OF = {"params": "params", "ema": "ema", "step": "optimizer", "opt_state": "optimizer"}
ITEMS = ("params", "ema", "optimizer")
CHECKPOINT_CHOICES = ("best", "latest")
# What an ntm_jax checkpoint of the layout before the scanned layer stacks holds: one `state` item.
_LEGACY_ITEM = "state"


class IncompatibleCheckpointError(ValueError):
  """A readable checkpoint whose arrays do not match the configured model (another config's checkpoint)."""


def _leaf_paths(tree) -> dict[str, tuple]:
  """{"a/b/0/c": shape} with Orbax's and nnx's spellings of the same path made equal."""
  shapes = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [a or b or c for a, b, c in re.findall(r"\['([^']*)'\]|\[(\d+)\]|\.(\w+)", jax.tree_util.keystr(path))]
    shapes["/".join(k for k in keys if k not in ("value", "raw_value"))] = tuple(getattr(leaf, "shape", ()))
  return shapes


_LEGACY_MESSAGE = ("the checkpoint in {where} was written by an older ntm_jax (layers not stacked); this version "
                   "stacks each Transformer's layers into one array per parameter and cannot read it. Train again "
                   "in a new --workdir, or read it with ntm_jax at commit 4e23f1e; nothing was changed.")


def check_compatible(saved_metadata, abstract_tree, where: str) -> None:
  """Raises IncompatibleCheckpointError naming the first array whose path or shape differs (or the older
  layout, whose layers are numbered one by one)."""
  saved, wanted = _leaf_paths(saved_metadata), _leaf_paths(abstract_tree)
  if any(re.search(r"(^|/)layers/\d+/", path) for path in saved):
    raise IncompatibleCheckpointError(_LEGACY_MESSAGE.format(where=where))
  missing, extra = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
  wrong = [(p, saved[p], wanted[p]) for p in sorted(set(saved) & set(wanted)) if saved[p] != wanted[p]]
  if missing or extra or wrong:
    detail = (f"{wrong[0][0]} has shape {wrong[0][1]} in the checkpoint but {wrong[0][2]} in the config"
              if wrong else f"arrays only in the config: {missing[:3]}; only in the checkpoint: {extra[:3]}")
    raise IncompatibleCheckpointError(
        f"the checkpoint in {where} does not match the configured model ({len(wrong)} shape mismatches, "
        f"{len(missing)} missing, {len(extra)} unexpected arrays; e.g. {detail}). Use the config it was "
        f"trained with (saved as config.json in the workdir) or another --workdir; nothing was changed.")


def _refuse_legacy_layout(step_directory: str) -> None:
  if os.path.isdir(os.path.join(step_directory, _LEGACY_ITEM)):
    raise IncompatibleCheckpointError(_LEGACY_MESSAGE.format(where=step_directory))


def _placed(abstract_tree):
  """`abstract_tree` with every leaf that has no sharding placed on this process's first device."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

  def place(leaf):
    if isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding is None:
      return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device)
    return leaf

  return jax.tree.map(place, abstract_tree)


def restore_anywhere(restore, abstract_tree):
  """restore(abstract) -> restored, for a checkpoint saved on any topology.

  Orbax restores a leaf that has no sharding in `abstract_tree` with the sharding it was saved with, which
  names the devices of the run that saved it and fails on any other topology (an autoencoder trained on one
  host, encoding on many). Then the leaves are read onto this process's device and handed back uncommitted,
  so that any later computation may place them on its own devices.
  """
  try:
    return restore(abstract_tree)
  except ValueError as error:
    if "topology" not in str(error).lower():
      raise
  restored = restore(_placed(abstract_tree))
  return jax.tree.map(lambda leaf: jnp.asarray(np.asarray(leaf)) if isinstance(leaf, jax.Array) else leaf,
                      restored)


def _by_item(state: dict) -> dict:
  """{"params": {"params": ...}, "optimizer": {"step": ..., "opt_state": ...}, ...} of a state dict."""
  unknown = sorted(set(state) - set(ITEM_OF))
  if unknown:
    raise ValueError(f"cannot checkpoint state parts {unknown}; a state holds {sorted(ITEM_OF)}")
  items: dict = {}
  for key, value in state.items():
    items.setdefault(ITEM_OF[key], {})[key] = value
  return items


class Checkpointer:
  """The newest `max_to_keep` steps of a state dict (see ITEM_OF) and a data iterator."""

  def __init__(self, directory: str, *, max_to_keep: int, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    # A reader (evaluation, sampling) must not clean up: the temporary directory may be a running
    # training's save in progress.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True, cleanup_tmp_directories=not read_only)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=ITEMS + ("data",),
        item_handlers={name: ocp.StandardCheckpointHandler() for name in ITEMS})

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: dict, data_iterator: grain.DatasetIterator | None, *, force: bool = False) -> bool:
    items = {name: ocp.args.StandardSave(value) for name, value in _by_item(state).items()}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore_latest(self, abstract_state: dict, data_iterator: grain.DatasetIterator | None = None):
    """(state, step) of the newest step that restores, or (None, None) if there is none.

    `abstract_state` names the items to restore (all of the state, or only `{"ema": ...}`) and gives their
    structure, shapes, dtypes and shardings. A step that fails to restore is logged, renamed to
    `<step>.unreadable-<time>` and skipped. A readable step saved for another model raises
    IncompatibleCheckpointError and is left untouched.
    """
    abstract_items = _by_item(abstract_state)
    for step in reversed(self.all_steps()):
      _refuse_legacy_layout(os.path.join(self.directory, str(step)))
      try:
        metadata = self._manager.item_metadata(step)
      except Exception:  # unreadable metadata: the restore below reports it and sets the step aside
        metadata = None
      if metadata is not None:
        for name, abstract in abstract_items.items():
          if metadata.get(name) is not None:
            check_compatible(metadata[name], abstract, os.path.join(self.directory, str(step), name))
      def restore(abstract_items, step=step):
        items = {name: ocp.args.StandardRestore(abstract) for name, abstract in abstract_items.items()}
        if data_iterator is not None:
          items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self._manager.restore(step, args=ocp.args.Composite(**items))

      try:
        restored = restore_anywhere(restore, abstract_items)
      except Exception as error:  # Orbax/tensorstore raise many types for damaged files
        self._set_aside(step, error)
        continue
      return {key: restored[ITEM_OF[key]][key] for key in abstract_state}, step
    return None, None

  def _set_aside(self, step: int, error: Exception) -> None:
    path = os.path.join(self.directory, str(step))
    moved = f"{path}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
    message = (f"checkpoint step {step} in {self.directory} cannot be restored "
               f"({type(error).__name__}: {str(error)[:300]}); moved it to {moved} and trying the previous one")
    logging.error(message)
    print(f"WARNING: {message}", flush=True)
    if jax.process_index() == 0 and os.path.exists(path):
      os.rename(path, moved)
    self._manager.reload()

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()


class BestCheckpoint:
  """EMA parameters of the step with the lowest `metric` (e.g. validation `bpd_iw`), in `directory`.

  Models are selected on validation, never on test (the project's protocol), and small data sets overfit:
  the newest step is often not the best one. After every periodic evaluation the EMA parameters are offered
  here with their validation bits/dim; Orbax keeps only the step with the lowest value, and its metrics live
  on disk beside it, so a resumed run goes on comparing against the right best.
  """

  def __init__(self, directory: str, metric: str, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.metric = metric
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda metrics: metrics[metric], best_mode="min", create=True,
        cleanup_tmp_directories=not read_only)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("params",),
                                          item_handlers={"params": ocp.StandardCheckpointHandler()})

  def offer(self, step: int, params, results: dict) -> bool:
    """Saves `params` if `results[metric]` beats every earlier offer; True if this step is now the best."""
    if self.metric not in results:
      raise KeyError(f"eval.best_metric {self.metric!r} is not an evaluation result; "
                     f"choose one of {sorted(k for k in results if k.startswith('bpd'))}")
    if step in self._manager.all_steps():
      # A resumed run that lost its newest checkpoint replays and re-evaluates steps it had already
      # offered: the kept entry stands.
      return self._manager.best_step() == step
    self._manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                       metrics={self.metric: float(results[self.metric])}, force=True)
    self._manager.wait_until_finished()
    return self._manager.best_step() == step

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def restore(self, abstract_params):
    """(params, step) of the best step, or (None, None) if nothing was saved yet."""
    step = self._manager.best_step()
    if step is None:
      return None, None
    check_compatible(self._manager.item_metadata(step)["params"], abstract_params,
                     os.path.join(self.directory, str(step)))
    restored = restore_anywhere(lambda abstract: self._manager.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract))), abstract_params)
    return restored["params"], step


# -- a run's parameters, for evaluation and sampling ------------------------------------------------------
def read_run_config(workdir: str, what: str = "a training workdir (give the --workdir of a run)"
                    ) -> ml_collections.ConfigDict:
  """The config a run saved (WORKDIR/config.json), refused by name when missing or of an older ntm_jax."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir} has no config.json: it is not {what}")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if "pixel_levels" not in config.get("data", {}):
    raise IncompatibleCheckpointError(
        f"{workdir} was written by an older ntm_jax (config data.num_levels, layers not stacked): this version "
        "cannot read its checkpoints. Train again in a new --workdir, or use ntm_jax at commit 4e23f1e.")
  return config


def restore_params(config: ml_collections.ConfigDict, workdir: str, checkpoint: str = "best", mesh=None):
  """(graphdef, EMA params, step, ModelConfig) of the `best` (by validation) or `latest` step in `workdir`.

  Only the EMA parameters are read. With a `mesh`, they are restored directly into their shardings, so a
  model too big for one device can be evaluated and sampled.
  """
  if checkpoint not in CHECKPOINT_CHOICES:
    raise ValueError(f"checkpoint must be one of {CHECKPOINT_CHOICES}, got {checkpoint!r}")
  model_cfg = models.model_config_from_dict(config.model)
  graphdef, abstract = models.abstract_model(model_cfg)
  if mesh is not None:
    abstract = mesh_lib.with_shardings(abstract, mesh_lib.param_shardings(abstract, mesh))
  if checkpoint == "best":
    best = BestCheckpoint(os.path.join(workdir, "best"), config.eval.best_metric, read_only=True)
    restored, step = best.restore(abstract)
    if restored is None:
      raise FileNotFoundError(f"no best checkpoint in {best.directory}; train first (--mode=train), or "
                              f"use the newest step with --eval_checkpoint=latest")
    return graphdef, restored, step, model_cfg
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=config.train.keep_checkpoints,
                              read_only=True)
  restored, step = checkpointer.restore_latest({"ema": abstract})
  if restored is None:
    raise FileNotFoundError(f"no checkpoint to evaluate in {checkpointer.directory}; train first (--mode=train)")
  return graphdef, restored["ema"], step, model_cfg


def restore_item(directory: str, abstract, item: str = "params"):
  """(`item` of the newest step in `directory`, step), or (None, None) when there is none: e.g. a distilled
  denoiser's parameters, without its optimizer."""
  if not os.path.isdir(directory):
    return None, None
  restored, step = Checkpointer(directory, max_to_keep=2, read_only=True).restore_latest({item: abstract})
  return (None, None) if restored is None else (restored[item], step)
