"""Orbax checkpoints of the training state and the grain iterator, with safe resume.

Each step directory holds two items: `state` (params, optimizer state, EMA params, step) and `data` (the
grain iterator position), so a resumed run replays exactly the batches it would have seen. Saves are
asynchronous; Orbax writes into a temporary directory and renames it when complete, so a run killed
mid-save leaves no half-written step behind. If the newest step cannot be restored (truncated or corrupt
files), it is reported, moved aside (renamed, never deleted) and the previous step is used.
"""

from __future__ import annotations

import os
import re
import time

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


class IncompatibleCheckpointError(ValueError):
  """A readable checkpoint whose arrays do not match the configured model (another config's checkpoint)."""


def _leaf_paths(tree) -> dict[str, tuple]:
  """{"a/b/0/c": shape} with Orbax's and nnx's spellings of the same path made equal."""
  shapes = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = [a or b or c for a, b, c in re.findall(r"\['([^']*)'\]|\[(\d+)\]|\.(\w+)", jax.tree_util.keystr(path))]
    shapes["/".join(k for k in keys if k not in ("value", "raw_value"))] = tuple(getattr(leaf, "shape", ()))
  return shapes


def check_compatible(saved_metadata, abstract_tree, where: str) -> None:
  """Raises IncompatibleCheckpointError naming the first array whose path or shape differs."""
  saved, wanted = _leaf_paths(saved_metadata), _leaf_paths(abstract_tree)
  missing, extra = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
  wrong = [(p, saved[p], wanted[p]) for p in sorted(set(saved) & set(wanted)) if saved[p] != wanted[p]]
  if missing or extra or wrong:
    detail = (f"{wrong[0][0]} has shape {wrong[0][1]} in the checkpoint but {wrong[0][2]} in the config"
              if wrong else f"arrays only in the config: {missing[:3]}; only in the checkpoint: {extra[:3]}")
    raise IncompatibleCheckpointError(
        f"the checkpoint in {where} does not match the configured model ({len(wrong)} shape mismatches, "
        f"{len(missing)} missing, {len(extra)} unexpected arrays; e.g. {detail}). Use the config it was "
        f"trained with (saved as config.json in the workdir) or another --workdir; nothing was changed.")


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager`: save, restore-latest-good, wait."""

  def __init__(self, directory: str, *, max_to_keep: int, save_interval_steps: int = 1):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True,
        enable_async_checkpointing=True, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"),
                                          item_handlers={"state": ocp.StandardCheckpointHandler()})

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data_iterator: grain.DatasetIterator | None, *, force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore_latest(self, abstract_state, data_iterator: grain.DatasetIterator | None = None):
    """(state, step) of the newest step that restores, or (None, None) if there is none.

    `abstract_state` gives the structure, shapes, dtypes and shardings to restore into. A step that fails
    to restore is logged, renamed to `<step>.unreadable-<time>` and skipped. A readable step saved for
    another model raises IncompatibleCheckpointError and is left untouched.
    """
    for step in reversed(self.all_steps()):
      try:
        metadata = self._manager.item_metadata(step)["state"]
      except Exception:  # unreadable metadata: the restore below reports it and sets the step aside
        metadata = None
      if metadata is not None:
        check_compatible(metadata, abstract_state, os.path.join(self.directory, str(step)))
      items = {"state": ocp.args.StandardRestore(abstract_state)}
      if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as error:  # Orbax/tensorstore raise many types for damaged files
        self._set_aside(step, error)
        continue
      return restored["state"], step
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
