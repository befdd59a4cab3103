"""Benchmark of ``klrl sweep``: throughput of a tilted-frontier sweep and the machinery's overhead.

The sweep (``tilted.frontier`` on random instances, budgets relative to ``Δ_max``) runs 10^4
grid points at V = 2^14 (``--quick``: 512 points at V = 2^10) through :func:`klrl.sweep.engine.run`
into a fresh results directory: chunking, sharding, CSV and log writes, manifests. The
baseline, measured in the same process, calls the same compiled ``jit(shard_map(vmap(experiment)))``
directly on the same chunks (inputs built and put on the devices, every chunk dispatched, all
outputs fetched to the host): the sweep's overhead is ``sweep / direct - 1`` (target < 10%).
The same measurement runs again in a subprocess with 8 simulated CPU devices
(``--xla_force_host_platform_device_count=8``; ``--sweep-cpu-devices``, 0 to skip it), each
chunk sharded over them. ``--sweep-log2v`` sets V. Both also time,
alternated with that direct loop, ``jit(vmap(experiment))`` on the same sharded inputs, split
by the compiler's partitioner alone (``shard_map_vs_partitioner``: its time over the direct
loop's; the partitioner synchronises the devices at every solver iteration).

Bytes moved are a model, not a count: each solver pass reads the reference and the reward
(2 V floats per point), and a point takes its Newton iterations plus 3 passes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from benchmarks.harness import Row

CONFIG = """
experiment = "tilted.frontier"
[fixed]
vocab = {vocab}
relative = true
[grid]
seed = {{ seeds = {seeds} }}
delta = {{ logrange = [1e-4, 0.999, {deltas}] }}
[run]
chunk_size = {chunk}
"""


def sizes(quick: bool) -> dict:
  return dict(log2v=10, seeds=16, deltas=32, chunk=128, repeats=3) if quick else \
      dict(log2v=14, seeds=100, deltas=100, chunk=1024, repeats=3)


def measure(log2v: int, seeds: int, deltas: int, chunk: int, repeats: int) -> dict:
  """Sweep and direct-loop timings on this process's devices."""
  from klrl.sweep import config, engine, grid as grids, store

  cfg = config.parse(CONFIG.format(vocab=2 ** log2v, seeds=seeds, deltas=deltas, chunk=chunk), "bench_sweep")
  with tempfile.TemporaryDirectory() as tmp:
    engine.run(cfg, Path(tmp) / "warm", quiet=True)     # compiles the kernel
    compile_s = json.loads((Path(tmp) / "warm" / "manifest-p0.json").read_text())["runs"][0]["compile_seconds"]
    rows = store.merge([Path(tmp) / "warm"]).results.read_text().splitlines()
    head = rows[0].split(",")
    iterations = np.mean([float(r.split(",")[head.index("iterations")]) for r in rows[1:]])
    sweep = []
    for i in range(repeats):
      t = time.perf_counter()
      engine.run(cfg, Path(tmp) / f"run{i}", quiet=True)
      sweep.append(time.perf_counter() - t)

  g = grids.expand(cfg)
  chunks = grids.plan(cfg, g)
  devices = tuple(jax.local_devices())
  batches = engine._batches(chunks, cfg, len(devices))

  partitioned = {}

  def direct(per_device=True):
    outs = []
    for c in chunks:
      key = engine._static(cfg, c)
      f, sharding, _ = engine.kernel(cfg.experiment, key, cfg.precision, devices)
      if not per_device:   # the same vmap, split by the compiler's partitioner alone
        if key not in partitioned:
          partitioned[key] = jax.jit(jax.vmap(engine.point_fn(cfg.experiment, key, cfg.precision)),
                                     in_shardings=sharding, out_shardings=sharding)
        f = partitioned[key]
      outs.append(f(jax.device_put(engine.inputs(cfg, g, c, batches[key]), sharding)))
    return [{k: np.asarray(v) for k, v in o[0].items()} for o in outs]

  times = {True: [], False: []}
  for per_device in times:
    direct(per_device)
  for _ in range(max(repeats, 3)):   # alternated
    for per_device, ts in times.items():
      t = time.perf_counter()
      direct(per_device)
      ts.append(time.perf_counter() - t)
  return dict(points=g.size, chunks=len(chunks), devices=len(devices), compile_s=compile_s,
              sweep_s=float(np.median(sweep)), direct_s=float(np.median(times[True])),
              partitioned_s=float(np.median(times[False])), iterations=float(iterations))


def _row(m: dict, log2v: int, label: str) -> Row:
  v = 2 ** log2v
  nbytes = m["points"] * 2 * v * 8 * (m["iterations"] + 3)
  extra = dict(points_per_s=m["points"] / m["sweep_s"], direct_points_per_s=m["points"] / m["direct_s"],
               overhead_pct=100 * (m["sweep_s"] / m["direct_s"] - 1), chunks=m["chunks"], devices=m["devices"],
               newton=m["iterations"], shard_map_vs_partitioner=m["partitioned_s"] / m["direct_s"])
  return Row("sweep", f"tilted.frontier sweep, {label}", f"{m['points']} pts x 2^{log2v}", m["compile_s"], m["sweep_s"],
             "direct jit(shard_map(vmap)) loop", m["direct_s"], nbytes, extra)


def run(args):
  s = sizes(args.quick)
  s["log2v"] = getattr(args, "sweep_log2v", None) or s["log2v"]
  yield _row(measure(**s), s["log2v"], f"{len(jax.local_devices())} device(s)")
  cpus = getattr(args, "sweep_cpu_devices", 8)
  if not cpus:
    return
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={cpus} " + os.environ.get("XLA_FLAGS", ""),
             JAX_PLATFORMS="cpu", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
  cmd = [sys.executable, "-m", "benchmarks.bench_sweep", *[f"--{k}={v}" for k, v in s.items()]]
  done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=env["PYTHONPATH"])
  line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
  if done.returncode or not line:
    raise RuntimeError(f"{cpus}-device run failed:\n{done.stderr[-3000:]}")
  yield _row(json.loads(line[0][7:]), s["log2v"], f"{cpus} simulated CPU devices")


if __name__ == "__main__":   # the 8-device measurement, in its own process
  parser = argparse.ArgumentParser()
  for k in ("log2v", "seeds", "deltas", "chunk", "repeats"):
    parser.add_argument(f"--{k}", type=int, required=True)
  jax.config.update("jax_enable_x64", True)
  print("RESULT " + json.dumps(measure(**vars(parser.parse_args()))))
