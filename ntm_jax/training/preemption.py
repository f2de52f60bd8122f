"""Preemption-safe training: a spot or preemptible TPU VM gets SIGTERM before it goes away, and the run then
saves a checkpoint at the step it is on and stops, so the same command resumes it without losing a step.

One process catches SIGTERM itself; several processes (jax.distributed) use jax's preemption sync point,
whose service listens for the signal on every host and agrees on one step at which all of them save.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils

# The exit status of a process ended by SIGTERM (128 + 15): a scheduler sees the run was stopped, not finished.
EXIT_STATUS = 128 + signal.SIGTERM


class Preempted(Exception):  # noqa: N818  (not an error: the run stopped on request, its state saved)
  """Training stopped on SIGTERM after saving a checkpoint at `step`."""

  def __init__(self, step: int, directory: str):
    super().__init__(f"SIGTERM: saved a checkpoint at step {step} in {directory} and stopped; the same command "
                     "resumes from it")
    self.step = step


class PreemptionWatch:
  """Within `with PreemptionWatch() as watch:`, `watch.reached(step)` says whether to save and stop after
  `step`: True on every process at the same step once any of them got SIGTERM."""

  def __init__(self):
    self.multi_process = jax.process_count() > 1
    self.signalled = False
    self._previous_handler = None

  def __enter__(self) -> PreemptionWatch:
    # jax's preemption service has its own handler on every host; Python's would replace it.
    if not self.multi_process and threading.current_thread() is threading.main_thread():
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc_info) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self.signalled = True  # acted on after the step in progress, between steps

  def reached(self, step: int) -> bool:
    if self.multi_process:
      return multihost_utils.reached_preemption_sync_point(step)
    return self.signalled
