"""A one-line progress display for long sweeps: chunks, points, throughput and time remaining."""
from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "duration"]


def duration(seconds: float) -> str:
  """``1h02m``, ``3m05s``, ``4.2s``."""
  if seconds != seconds or seconds == float("inf"):
    return "?"
  if seconds < 60:
    return f"{seconds:.1f}s"
  m, s = divmod(int(round(seconds)), 60)
  return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


class Progress:
  """Progress of the chunks one process computes.

  On a terminal the line is redrawn in place (at most ten times a second); otherwise a line is
  printed at most every ``every`` seconds, and always at the end. Nothing is printed when
  ``quiet``. Throughput counts the points computed by this run since its first chunk finished,
  less the time reported as ``paused`` (compilation); the remaining time assumes that rate.
  """

  def __init__(self, points: int, chunks: int, *, label: str = "sweep", quiet: bool = False,
               stream: TextIO | None = None, every: float = 5.0):
    self.points, self.chunks, self.label, self.quiet = points, chunks, label, quiet
    self.stream = stream if stream is not None else sys.stderr
    self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
    self.every = 0.1 if self.tty else every
    self.done_points = self.done_chunks = 0
    self.t0 = time.perf_counter()
    self.t_first = None
    self.first_points = 0
    self.paused = 0.0
    self.last = -float("inf")

  def rate(self) -> float:
    """Points per second since the first chunk finished (0 before the second)."""
    if self.t_first is None:
      return 0.0
    dt = time.perf_counter() - self.t_first - self.paused
    return (self.done_points - self.first_points) / dt if dt > 0 else 0.0

  def line(self) -> str:
    rate = self.rate()
    left = self.points - self.done_points
    eta = left / rate if rate > 0 else (0.0 if left == 0 else float("nan"))
    pct = 100.0 * self.done_points / max(self.points, 1)
    return (f"[{self.label}] {self.done_chunks}/{self.chunks} chunks, {self.done_points}/{self.points} points "
            f"({pct:.0f}%), {f'{rate:,.0f}' if rate > 0 else '?'} points/s, "
            f"elapsed {duration(time.perf_counter() - self.t0)}, "
            f"ETA {duration(eta)}")

  def update(self, points: int, chunks: int = 1, paused: float = 0.0) -> None:
    """Records a finished chunk of ``points`` points; ``paused``: seconds not spent computing since the last."""
    self.done_points += points
    self.done_chunks += chunks
    if self.t_first is None:
      self.t_first, self.first_points = time.perf_counter(), self.done_points
    else:
      self.paused += paused
    now = time.perf_counter()
    if now - self.last >= self.every or self.done_chunks == self.chunks:
      self.last = now
      self._show()

  def _show(self) -> None:
    if self.quiet:
      return
    if self.tty:
      self.stream.write("\r\033[K" + self.line())
    else:
      self.stream.write(self.line() + "\n")
    self.stream.flush()

  def close(self) -> None:
    if not self.quiet and self.tty and self.done_chunks:
      self.stream.write("\n")
      self.stream.flush()
