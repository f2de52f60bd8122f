"""The best checkpoint by a validation metric, kept apart from the newest-N resume checkpoints.

Models are selected on validation, never on test (the project's protocol), and small data sets overfit:
the newest step is often not the best one. After every periodic evaluation the EMA parameters are offered
here with their validation bits/dim; Orbax keeps only the step with the lowest value, and its metrics live
on disk beside it, so a resumed run goes on comparing against the right best.
"""

from __future__ import annotations

import os

import orbax.checkpoint as ocp

from ntm_jax.checkpoint import check_compatible


class BestCheckpoint:
  """EMA parameters of the step with the lowest `metric` (e.g. validation `bpd_iw`), in `directory`."""

  def __init__(self, directory: str, metric: str):
    self.directory = os.path.abspath(directory)
    self.metric = metric
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, best_fn=lambda metrics: metrics[metric], best_mode="min", create=True,
        cleanup_tmp_directories=True)
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
    restored = self._manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract_params)))
    return restored["params"], step
