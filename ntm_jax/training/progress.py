"""Steps per second and the time left, over the steps since the last report: the training and the
distillation loops print and log the same figures."""

from __future__ import annotations

import time


class Progress:
  """Counts steps between reports; `report(step)` gives steps/s and the ETA in minutes and starts a new window."""

  def __init__(self, num_steps: int):
    self.num_steps = num_steps
    self._start, self._steps = time.perf_counter(), 0

  def tick(self) -> None:
    self._steps += 1

  def report(self, step: int) -> dict[str, float]:
    steps_per_sec = self._steps / max(time.perf_counter() - self._start, 1e-9)
    self._start, self._steps = time.perf_counter(), 0
    return {"steps_per_sec": steps_per_sec, "eta_minutes": (self.num_steps - step) / steps_per_sec / 60}

  @staticmethod
  def line(rates: dict[str, float]) -> str:
    return f"{rates['steps_per_sec']:.2f} steps/s | ETA {rates['eta_minutes']:.1f} min"
