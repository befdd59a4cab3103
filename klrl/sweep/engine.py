"""Runs a sweep: chunks of grid points through ``jit(shard_map(vmap(experiment)))`` over devices.

Within a process, each chunk's batch axis is split over all local devices with a
:class:`jax.sharding.Mesh` and a :class:`~jax.sharding.NamedSharding` (the chunk is padded to a
multiple of the device count; padded points repeat a real one and are dropped), and
:func:`jax.shard_map` runs the vmapped experiment on each device's points independently: no
collective operations. (Left to the compiler's partitioner, ``jit(vmap(experiment))`` would
synchronise the devices at every iteration of a solver's loop, whose condition asks whether any
point of the batch is still moving.) One kernel is
compiled per combination of static parameters, for one batch size, and reused by every chunk
of that group. The next chunk is dispatched before the previous one is written, so the host
formats and writes results while the devices compute.

Across hosts, :func:`sweep` calls :func:`jax.distributed.initialize` (coordinator address,
number of processes and process id from the arguments, the environment variables
``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, or the configuration's
``[distributed]`` table, in that order; whatever is left unset is detected by JAX on Slurm,
Open MPI and other supported schedulers). Process ``i`` of ``n`` computes the chunks whose
id is ``i`` modulo ``n`` and writes them to its results directory; after a barrier, process
0 merges the table when every chunk is visible to it (a shared file system), and otherwise
says how to merge the hosts' directories with ``klrl merge``.
"""
from __future__ import annotations

import math
import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from klrl._src import checks
from klrl.sweep import store
from klrl.sweep.config import Config
from klrl.sweep.experiments import EXPERIMENTS
from klrl.sweep.grid import Chunk, Grid, expand, plan
from klrl.sweep.progress import Progress, duration

__all__ = ["Summary", "ChunkFailed", "sweep", "run", "kernel", "point_fn", "inputs", "distributed_settings", "describe"]

_ENV = dict(coordinator_address="JAX_COORDINATOR_ADDRESS", num_processes="JAX_NUM_PROCESSES",
            process_id="JAX_PROCESS_ID")


class Summary(NamedTuple):
  """What one process did.

  Attributes:
    out: its results directory.
    process: its index; ``processes``: how many took part.
    points, chunks: size of the grid and of the plan.
    computed_points, computed_chunks: computed by this run of this process.
    skipped_chunks: chunks already on disk when it started.
    seconds: wall time of its chunk loop (compilation included).
    merged: the merged table, if this process wrote it.
  """
  out: Path
  process: int
  processes: int
  points: int
  chunks: int
  computed_points: int
  computed_chunks: int
  skipped_chunks: int
  seconds: float
  merged: store.Merged | None = None


_FAILURES = (jax.errors.JaxRuntimeError, ValueError)   # what a failing computation raises (klrl.InputError is a ValueError)


class ChunkFailed(store.SweepError):
  """A chunk's computation raised (bad values met inside the experiment, say)."""

  @classmethod
  def of(cls, chunk: Chunk, e: Exception) -> "ChunkFailed":
    msg = str(e)
    m = re.search(r"InputError: ([^\n]+)", msg)   # klrl's input checks name the argument
    return cls(f"chunk {chunk.id} (grid points {chunk.points[0]}..{chunk.points[-1]}) failed: "
               f"{m.group(1) if m else msg[:2000]}")


def versions() -> dict:
  """What the results were computed with (:func:`klrl.info`)."""
  from klrl import info
  return info()


def point_fn(name: str, static: tuple[tuple[str, Any], ...], precision: str):
  """The experiment ``name`` as a function of one grid point's traced parameters.

  It returns the outputs and the codes of klrl's input checks met on the way
  (:func:`klrl._src.checks.collect`), so that the compiled kernel holds no host callback and
  JAX's persistent compilation cache can keep it; ``point.messages`` holds the codes'
  messages once the function has been traced.
  """
  exp = EXPERIMENTS[name]
  dtype, fixed = jnp.dtype(precision), dict(static)

  def point(traced):
    out, codes, point.messages = checks.collect(exp.fn)({**fixed, **traced}, dtype)
    if set(out) != set(exp.outputs):
      raise TypeError(f"experiment {name} returned outputs {sorted(out)}, declared {list(exp.outputs)}")
    return {k: jnp.asarray(out[k]) for k in exp.outputs}, checks.vary_alike(codes, traced)

  point.messages = ()
  return point


def kernel(name: str, static: tuple[tuple[str, Any], ...], precision: str, devices: tuple) -> tuple[Any, NamedSharding, Any]:
  """The compiled ``jit(shard_map(vmap(experiment)))`` of one group, the sharding of its
  inputs, and its point function (whose ``messages`` read its check codes)."""
  key = (name, static, precision, devices)
  if key not in _KERNELS:
    mesh = Mesh(np.asarray(devices), ("points",))
    sharding = NamedSharding(mesh, PartitionSpec("points"))
    point = point_fn(name, static, precision)
    per_device = jax.shard_map(jax.vmap(point), mesh=mesh, in_specs=PartitionSpec("points"),
                               out_specs=PartitionSpec("points"))
    _KERNELS[key] = jax.jit(per_device, in_shardings=sharding, out_shardings=sharding), sharding, point
  return _KERNELS[key]


_KERNELS: dict[tuple, tuple[Any, NamedSharding, Any]] = {}


def _static(cfg: Config, chunk: Chunk) -> tuple[tuple[str, Any], ...]:
  params = EXPERIMENTS[cfg.experiment].params
  values = {k: v for k, v in cfg.fixed.items() if params[k].static} | chunk.static
  return tuple(sorted(values.items()))


def inputs(cfg: Config, grid: Grid, chunk: Chunk, batch: int) -> dict[str, np.ndarray]:
  """The traced parameters of a chunk's points, padded to ``batch`` by repeating its last point."""
  idx = np.pad(chunk.points, (0, batch - len(chunk.points)), mode="edge")
  out = {}
  for name, p in EXPERIMENTS[cfg.experiment].params.items():
    if not p.static:
      col = grid.columns[name][idx] if name in grid.columns else np.full(batch, cfg.fixed[name])
      out[name] = col.astype(cfg.precision if p.type is float else np.int64)
  return out


def _batches(chunks: list[Chunk], cfg: Config, ndev: int) -> dict[tuple, int]:
  """Per group, the chunk length rounded up to a multiple of the device count."""
  out: dict[tuple, int] = {}
  for c in chunks:
    key = _static(cfg, c)
    out[key] = max(out.get(key, 0), math.ceil(len(c.points) / ndev) * ndev)
  return out


def describe(cfg: Config) -> str:
  """A short account of a configuration's grid and plan (for ``klrl sweep --dry-run``)."""
  grid = expand(cfg)
  chunks = plan(cfg, grid)
  groups = sorted({_static(cfg, c) for c in chunks})
  lines = [f"{cfg.source}:",
           f"experiment {cfg.experiment}: {grid.size} grid points, {len(chunks)} chunks of at most "
           f"{cfg.chunk_size}, {len(groups)} compiled kernel(s), {cfg.precision}, digest {cfg.digest()}"]
  lines += [f"  swept {k}: {len(v)} values [{v[0]!r} .. {v[-1]!r}]" for k, v in cfg.axes.items()]
  lines += [f"  zipped: {', '.join(g)}" for g in cfg.zip]
  lines += [f"  fixed {k} = {v!r}" for k, v in cfg.fixed.items()]
  return "\n".join(lines)


def run(cfg: Config, out: str | Path, *, quiet: bool = False, stream: TextIO | None = None) -> Summary:
  """Computes this process's unfinished chunks of the sweep into ``out`` (see the module doc).

  Turns on 64-bit types (``precision = "float32"`` is then an explicit dtype). Resumes: chunks
  whose file exists are skipped. Records the run in ``manifest-p<i>.json`` and every chunk in
  ``log-p<i>.jsonl``.

  Raises:
    store.SweepError: ``out`` holds another configuration's results.
  """
  jax.config.update("jax_enable_x64", True)
  out = Path(out)
  exp = EXPERIMENTS[cfg.experiment]
  grid = expand(cfg)
  chunks = plan(cfg, grid)
  store.prepare(out, cfg, grid.size, len(chunks))
  proc, nproc = jax.process_index(), jax.process_count()
  devices = tuple(jax.local_devices())
  done = _checked_chunks(out, cfg, grid, chunks, proc, nproc, stream)
  todo = [c for c in chunks if c.id % nproc == proc and c.id not in done]
  batches = _batches(chunks, cfg, len(devices))

  manifest = store.read_manifest(out, proc) or {"runs": []}
  for earlier in manifest["runs"]:
    if earlier["status"] == "running":      # killed without a chance to record its end
      earlier["status"] = "interrupted"
  record = dict(run=len(manifest["runs"]) + 1, start=store.now(), end=None, status="running",
                host=socket.gethostname(), pid=os.getpid(), process=proc, processes=nproc,
                devices=[dict(id=d.id, kind=d.device_kind, platform=d.platform) for d in devices],
                global_devices=jax.device_count(), chunks_to_do=len(todo), chunks_done_before=len(done))
  manifest.update(process=proc, num_processes=nproc, digest=cfg.digest(), versions=versions())
  manifest["runs"].append(record)
  store.write_manifest(out, proc, manifest)

  kernels = list(dict.fromkeys(_static(cfg, c) for c in todo))   # to compile (or load from the cache), in order
  label = "sweep" if nproc == 1 else f"sweep p{proc}/{nproc}"
  progress = Progress(sum(len(c.points) for c in todo), len(todo), label=label, quiet=quiet, stream=stream)
  header, digest = store.header(cfg), cfg.digest()
  seen: set[tuple] = set()
  t_start = t_prev = time.perf_counter()
  compiling = compiling_prev = 0.0   # compilation time (all of it spent dispatching, in this thread)

  def finish(chunk: Chunk, result, compile_seconds: float, messages: tuple):
    nonlocal t_prev, compiling_prev
    n = len(chunk.points)
    outputs, codes = result
    try:
      host = {k: np.asarray(v)[:n] for k, v in outputs.items()}
      checks.raise_codes(np.asarray(codes)[:n], messages)
    except _FAILURES as e:
      raise ChunkFailed.of(chunk, e) from None
    t_ready = time.perf_counter()
    columns = store.parameter_columns(cfg, grid, chunk) + [store.text(host[k]) for k in exp.outputs]
    store.write_chunk(out, chunk.id, digest, header, columns)
    t_end = time.perf_counter()
    # Wall time since the previous chunk finished, less any compilation in that window.
    store.append_log(out, proc, dict(chunk=chunk.id, run=record["run"], process=proc, points=n,
                                     finished=store.now(), seconds=round(t_end - t_prev - (compiling - compiling_prev), 6),
                                     write_seconds=round(t_end - t_ready, 6), compile_seconds=round(compile_seconds, 6)))
    progress.update(n, paused=compiling - compiling_prev)
    t_prev, compiling_prev = t_end, compiling

  try:
    pending = None
    for chunk in todo:
      key = _static(cfg, chunk)
      f, sharding, point = kernel(cfg.experiment, key, cfg.precision, devices)
      arrays = jax.device_put(inputs(cfg, grid, chunk, batches[key]), sharding)
      if key not in seen:
        progress.compiling(kernels.index(key) + 1, len(kernels), ", ".join(f"{k}={v}" for k, v in chunk.static.items()))
      t = time.perf_counter()
      try:
        outputs = f(arrays)                 # asynchronous; the first call of a group compiles
      except _FAILURES as e:
        if pending is not None:
          finish(*pending)
        raise ChunkFailed.of(chunk, e) from None
      progress.compiled()
      compile_seconds = time.perf_counter() - t if key not in seen else 0.0
      compiling += compile_seconds
      seen.add(key)
      if pending is not None:
        finish(*pending)
      pending = (chunk, outputs, compile_seconds, point.messages)
    if pending is not None:
      finish(*pending)
  except BaseException as e:
    record.update(end=store.now(), status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                  error=f"{type(e).__name__}: {e}"[:4000])
    store.write_manifest(out, proc, manifest)
    raise
  finally:
    progress.close()
  seconds = time.perf_counter() - t_start
  record.update(end=store.now(), status="finished", seconds=round(seconds, 6), compile_seconds=round(compiling, 6),
                chunks_computed=progress.done_chunks, points_computed=progress.done_points)
  store.write_manifest(out, proc, manifest)
  return Summary(out, proc, nproc, grid.size, len(chunks), progress.done_points, progress.done_chunks,
                 len(done), seconds)


def _checked_chunks(out: Path, cfg: Config, grid, chunks: list[Chunk], proc: int, nproc: int, stream) -> set[int]:
  """The chunks already done: this process's chunk files that pass :func:`store.check_chunk`.

  A damaged file (cut short, altered, unreadable) is recomputed, with a warning naming it; a
  file of another configuration raises (it is refused by :func:`store.prepare` first).
  """
  done = set()
  for c in sorted(store.completed(out)):
    if c >= len(chunks):
      raise store.SweepError(f"chunk file {store.chunk_path(out, c)} has an id beyond the {len(chunks)} chunks of "
                             "this configuration: the directory holds another configuration's results")
    if c % nproc != proc:
      done.add(c)        # another process's chunk: it checks its own
      continue
    try:
      store.check_chunk(store.chunk_path(out, c), cfg, grid, chunks[c])
      done.add(c)
    except store.SweepError as e:
      if "was computed under configuration" in str(e):
        raise
      print(f"klrl sweep: warning: {e}; recomputing it", file=stream or sys.stderr, flush=True)
  return done


def distributed_settings(table: dict | None, force: bool = False, **given) -> dict | None:
  """Multi-host settings: ``given`` (non-None) over the environment over the configuration table.

  Returns ``None`` when nothing asks for a distributed run (no table, no variable, no value
  given, not ``force``); settings left out are detected by :func:`jax.distributed.initialize`.
  """
  env = {k: os.environ[v] for k, v in _ENV.items() if os.environ.get(v)}
  given = {k: v for k, v in given.items() if v is not None}
  if table is None and not env and not given and not force:
    return None
  merged = {**(table or {}), **env, **given}
  for k in ("num_processes", "process_id"):
    if k in merged:
      merged[k] = int(merged[k])
  return merged


def sweep(cfg: Config, out: str | Path, *, quiet: bool = False, stream: TextIO | None = None,
          distributed: dict | None = None) -> Summary:
  """Runs a sweep end to end: multi-host set-up, this process's chunks, barrier, merge.

  Args:
    cfg: a checked configuration.
    out: results directory (created, or resumed if it holds this configuration's results).
    quiet: no progress display.
    stream: where progress goes (default: standard error).
    distributed: settings for :func:`jax.distributed.initialize` (see
      :func:`distributed_settings`); ``None`` for a single process.

  Returns:
    This process's :class:`Summary`, with the merged table if it wrote one.
  """
  grid = expand(cfg)
  store.prepare(Path(out), cfg, grid.size, len(plan(cfg, grid)))   # refuse a changed configuration first
  if distributed is not None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**distributed)
  summary = run(cfg, out, quiet=quiet, stream=stream)
  if summary.processes > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("klrl sweep: every process finished its chunks")
  if summary.process == 0 and len(store.completed(out)) == summary.chunks:
    summary = summary._replace(merged=store.merge([out]))
  return summary


def report(summary: Summary) -> str:
  """One paragraph for the end of ``klrl sweep``."""
  rate = summary.computed_points / summary.seconds if summary.seconds > 0 else 0.0
  text = (f"klrl sweep: process {summary.process} of {summary.processes} computed {summary.computed_points} "
          f"points in {summary.computed_chunks} chunks ({summary.skipped_chunks} already done) in "
          f"{duration(summary.seconds)}, {rate:,.0f} points/s; results in {summary.out}")
  if summary.merged is not None:
    m = summary.merged
    text += f"\nklrl sweep: merged {m.rows} rows into {m.results}{f', {m.parquet.name}' if m.parquet else ''} and {m.manifest}"
  elif summary.process == 0:
    text += ("\nklrl sweep: some chunks are not in this directory (other hosts' shards?); gather them with "
             f"`klrl merge {summary.out} OTHER_DIRS...`")
  return text
