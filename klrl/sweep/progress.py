"""A one-line progress display for long sweeps: chunks, points, throughput, time remaining, and
the kernel being compiled."""
from __future__ import annotations

import sys
import threading
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

  While a kernel compiles (from :meth:`compiling` to :meth:`compiled`), the line says so;
  on a terminal its compile time is redrawn every ``tick`` seconds, so the display never looks
  frozen, and elsewhere the phase is one plain line.
  """

  def __init__(self, points: int, chunks: int, *, label: str = "sweep", quiet: bool = False,
               stream: TextIO | None = None, every: float = 5.0, tick: float = 0.5):
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
    self.tick, self.phase, self.phase_start = tick, "", 0.0
    self.drawn = False                      # something is on the terminal's current line
    self._lock = threading.Lock()
    self._stop: threading.Event | None = None

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
    now = time.perf_counter()
    text = (f"[{self.label}] {self.done_chunks}/{self.chunks} chunks, {self.done_points}/{self.points} points "
            f"({pct:.0f}%), {f'{rate:,.0f}' if rate > 0 else '?'} points/s, "
            f"elapsed {duration(now - self.t0)}, "
            f"ETA {duration(eta)}")
    if self.phase:
      text += f"; {self.phase}" + (f" {duration(now - self.phase_start)}" if self.tty else "")
    return text

  def compiling(self, kernel: int, kernels: int, what: str = "") -> None:
    """Shows that kernel ``kernel`` of ``kernels`` (``what``: its static parameters) is compiling."""
    self._end_phase()
    self.phase = f"compiling kernel {kernel}/{kernels}" + (f" ({what})" if what else "") + " ..."
    self.phase_start = time.perf_counter()
    self._show()
    if self.tty and not self.quiet:
      self._stop = stop = threading.Event()
      threading.Thread(target=self._redraw, args=(stop,), daemon=True).start()

  def compiled(self) -> None:
    """Ends the compile phase (on a terminal, the line is redrawn without it)."""
    if self._end_phase() and self.tty:
      self._show()

  def _redraw(self, stop: threading.Event) -> None:
    while not stop.wait(self.tick):
      self._show(stop)

  def _end_phase(self) -> bool:
    """Ends the compile phase; whether there was one."""
    with self._lock:
      if self._stop is not None:
        self._stop.set()
      ended = bool(self.phase)
      self._stop, self.phase = None, ""
    return ended

  def update(self, points: int, chunks: int = 1, paused: float = 0.0) -> None:
    """Records a finished chunk of ``points`` points; ``paused``: seconds not spent computing since the last."""
    self._end_phase()
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

  def _show(self, redraw: threading.Event | None = None) -> None:
    """Draws the line; a redraw of the compile phase only while that phase lasts."""
    if self.quiet:
      return
    with self._lock:
      if redraw is not None and redraw is not self._stop:
        return
      if self.tty:
        self.stream.write("\r\033[K" + self.line())
        self.drawn = True
      else:
        self.stream.write(self.line() + "\n")
      self.stream.flush()

  def close(self) -> None:
    """Ends the display (and the redrawing of a compile phase), leaving the cursor on a new line."""
    self._end_phase()
    if self.drawn:
      self.stream.write("\n")
      self.stream.flush()
      self.drawn = False
