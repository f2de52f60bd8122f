"""Orbax checkpoints of the training state and the grain iterator, with safe resume.

Each step directory holds two items: `state` (params, optimizer state, EMA params, step) and `data` (the
grain iterator position), so a resumed run replays exactly the batches it would have seen. Saves are
asynchronous; Orbax writes into a temporary directory and renames it when complete, so a run killed
mid-save leaves no half-written step behind. If the newest step cannot be restored (truncated or corrupt
files), it is reported, moved aside (renamed, never deleted) and the previous step is used.
"""

from __future__ import annotations

import os
import time

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager`: save, restore-latest-good, wait."""

  def __init__(self, directory: str, *, max_to_keep: int, save_interval_steps: int = 1):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, save_interval_steps=save_interval_steps, create=True,
        enable_async_checkpointing=True, cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

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
    to restore is logged, renamed to `<step>.unreadable-<time>` and skipped.
    """
    for step in reversed(self.all_steps()):
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
