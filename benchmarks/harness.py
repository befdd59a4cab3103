"""Timing harness shared by the benchmark suites.

Compile time and steady-state run time are measured separately; run times are medians over
repeats. Each result is reported against a baseline measured in the same run and against the
machine's copy bandwidth, also measured in the same run. Where a case and its baseline are
timed in alternation (:func:`paired_times`), the speed-up is the median of the per-round ratios
and the notes give their range.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import jax
import numpy as np


RESULTS = Path(__file__).resolve().parent / "results"


def _block(x):
  return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


def median_time(fn, *args, repeats: int = 7, min_time: float = 0.0) -> float:
  """Median wall time of ``fn(*args)`` (results blocked on), after one warm-up call."""
  _block(fn(*args))
  times = []
  while len(times) < repeats or sum(times) < min_time:
    t = time.perf_counter()
    _block(fn(*args))
    times.append(time.perf_counter() - t)
    if len(times) > 200:
      break
  return statistics.median(times)


def paired_times(fn, args: tuple, baseline, rounds: int, repeats: int = 3, scale: float = 1.0):
  """Times ``fn(*args)`` and ``baseline()`` alternately, for ratios that do not depend on when
  each was measured: on a shared machine the speed drifts by up to 2x within minutes.

  Each round takes the median of ``repeats`` calls of ``fn`` and one call of ``baseline``
  (its time multiplied by ``scale``, for a baseline run on part of the batch).

  Returns:
    ``(fn time, baseline time, ratios)``: the medians over all calls, and the ratio
    baseline / fn of each round.
  """
  _block(fn(*args))
  baseline()
  ours, base, ratios = [], [], []
  for _ in range(rounds):
    times = []
    for _ in range(repeats):
      t = time.perf_counter()
      _block(fn(*args))
      times.append(time.perf_counter() - t)
    t = time.perf_counter()
    baseline()
    b = (time.perf_counter() - t) * scale
    ours += times
    base.append(b)
    ratios.append(b / statistics.median(times))
  return statistics.median(ours), statistics.median(base), ratios


def compile_time(jitted, *args) -> float:
  """Seconds to lower and compile a jitted function for these arguments."""
  t = time.perf_counter()
  jitted.lower(*args).compile()
  return time.perf_counter() - t


def copy_bandwidth(nbytes: int = 1 << 28) -> dict:
  """Memory bandwidth from a large copy (bytes read plus bytes written per second)."""
  a = np.ones(nbytes // 8)
  b = np.empty_like(a)
  t = median_time(lambda: np.copyto(b, a), repeats=5)
  out = {"host_copy_GBps": 2 * a.nbytes / t / 1e9}
  dev = jax.devices()[0]
  if dev.platform != "cpu":
    x = jax.device_put(np.ones(nbytes // 4, np.float32))
    f = jax.jit(lambda x: x + 1)
    t = median_time(f, x, repeats=10)
    out["device_copy_GBps"] = 2 * x.nbytes / t / 1e9
  return out


def reuse_freed_memory(limit: int = 1 << 30) -> bool:
  """Lets glibc's malloc serve buffers up to ``limit`` bytes from its heap and keep them when freed.

  By default glibc maps every buffer above 32 MiB afresh and returns it on free, so each call
  of a function with a large output (``kl_constrained`` at 64 x 2^17 returns 64 MiB) pays a
  page fault per 4 KiB page: about 20 ms on the 2-core CPU. With this setting those pages are
  reused, as NumPy's per-row temporaries are. Returns whether the setting took effect (glibc only).
  """
  name = ctypes.util.find_library("c")
  if platform.system() != "Linux" or not name:
    return False
  libc = ctypes.CDLL(name)
  m_trim_threshold, m_mmap_threshold = -1, -3
  return bool(libc.mallopt(m_mmap_threshold, limit)) and bool(libc.mallopt(m_trim_threshold, limit))   # C ints


def machine() -> dict:
  cpu = platform.processor()
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  devices = jax.devices()
  info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
          "platform": devices[0].platform, "devices": [d.device_kind for d in devices],
          "numpy": np.__version__}
  try:
    import scipy
    info["scipy"] = scipy.__version__
  except ImportError:
    pass
  if devices[0].platform == "gpu":
    try:
      info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
      pass
  return info


@dataclass
class Row:
  suite: str
  case: str
  size: str
  compile_s: float | None       # None where no compile time is separated (a whole command)
  run_s: float
  baseline: str
  baseline_s: float | None
  bytes_moved: float | None = None
  extra: dict = field(default_factory=dict)
  ratios: list[float] | None = None   # per-round ratios from paired_times

  @property
  def speedup(self) -> float | None:
    if self.ratios:
      return statistics.median(self.ratios)
    return None if not self.baseline_s else self.baseline_s / self.run_s

  def gbps(self) -> float | None:
    return None if not self.bytes_moved else self.bytes_moved / self.run_s / 1e9


def _spread(ratios: list[float]) -> str:
  """The range of the per-round speed-ups, and their quartiles once there are enough rounds."""
  out = f"{min(ratios):.1f}-{max(ratios):.1f}x"
  if len(ratios) >= 8:
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    out += f" (quartiles {q1:.1f}-{q3:.1f}x)"
  return out + f" over {len(ratios)} rounds"


def table(rows: list[Row], bandwidth: float) -> str:
  head = "| suite | case | size | compile s | run ms | baseline | baseline ms | speed-up | GB/s | % of copy BW | notes |"
  out = [head, "|" + "---|" * 11]
  for r in rows:
    g = r.gbps()
    extra = r.extra | ({"speed-up range": _spread(r.ratios)} if r.ratios else {})
    notes = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
    out.append(f"| {r.suite} | {r.case} | {r.size} | {'' if r.compile_s is None else f'{r.compile_s:.2f}'} | "
               f"{r.run_s * 1e3:.3f} | {r.baseline} | "
               f"{'' if r.baseline_s is None else f'{r.baseline_s * 1e3:.3f}'} | "
               f"{'' if r.speedup is None else f'{r.speedup:.2f}x'} | {'' if g is None else f'{g:.1f}'} | "
               f"{'' if g is None else f'{100 * g / bandwidth:.0f}%'} | {notes} |")
  return "\n".join(out)


def save(rows: list[Row], info: dict, bw: dict, tag: str, out_dir: Path | str = RESULTS) -> Path:
  """Writes ``<out_dir>/<tag>-<time>.json`` and ``.md``; returns their common path without suffix."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  stamp = time.strftime("%Y%m%d-%H%M%S")
  base = out_dir / f"{tag}-{stamp}"
  bandwidth = bw.get("device_copy_GBps", bw["host_copy_GBps"])
  payload = {"machine": info, "bandwidth": bw, "rows": [asdict(r) | {"speedup": r.speedup, "GBps": r.gbps()} for r in rows]}
  base.with_suffix(".json").write_text(json.dumps(payload, indent=1))
  md = [f"# Benchmarks {stamp} ({tag})", "", "Machine: " + ", ".join(f"{k}: {v}" for k, v in info.items()),
        "", "Copy bandwidth (read + write): " + ", ".join(f"{k} = {v:.1f}" for k, v in bw.items()), "",
        table(rows, bandwidth), ""]
  base.with_suffix(".md").write_text("\n".join(md))
  return base
