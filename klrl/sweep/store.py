"""The results directory of a sweep: atomic chunk files, chunk logs, manifests and the merge.

Layout of a results directory::

    sweep.json          configuration digest, resolved configuration, numbers of points and chunks
    chunks/c000017.csv  rows of chunk 17 (header + one row per grid point), written atomically
    log-p0.jsonl        one JSON line per chunk finished by process 0 (its run, timing, rows)
    manifest-p0.json    runs of process 0: start/end, status, devices, hosts, package versions
    results.csv         the merged table: every grid point once, sorted by its index ``point``
    manifest.json       the merged manifest: configuration, versions, runs, per-chunk timings

Every file is written to a temporary name and moved into place with :func:`os.replace`, so a
run killed at any instant leaves each chunk either complete or absent; a restart skips the
chunks whose file exists. A chunk whose file exists but whose log line was lost (a kill
between the two writes) is listed as ``unlogged`` in the merged manifest.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from klrl.sweep.config import Config

__all__ = ["SweepError", "Merged", "prepare", "completed", "write_chunk", "append_log", "write_manifest", "merge", "now"]

_CHUNK = re.compile(r"c(\d+)\.csv")
_KNOWN = re.compile(r"sweep\.json|chunks|results\.csv|manifest\.json|log-p\d+\.jsonl|manifest-p\d+\.json|\..*\.tmp")


class SweepError(RuntimeError):
  """A results directory that cannot be used as asked (other configuration, unfinished, corrupt)."""


class Merged(NamedTuple):
  """Result of :func:`merge`: the table and manifest written, and the number of rows."""
  results: Path
  manifest: Path
  rows: int


def now() -> str:
  return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def write_atomic(path: Path, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file and :func:`os.replace`."""
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  with open(tmp, "w", newline="") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _short(v) -> str:
  if v is None:
    return "(absent)"
  if isinstance(v, list) and len(v) > 4:
    return f"{len(v)} values [{v[0]!r} .. {v[-1]!r}]"
  return repr(v)


def _diff(old: dict, new: dict) -> list[str]:
  out = [f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}"
         for k in ("experiment", "chunk_size", "precision", "zip") if old.get(k) != new.get(k)]
  for table, label in (("fixed", "fixed"), ("axes", "grid")):
    a, b = dict(old.get(table, {})), dict(new.get(table, {}))
    out += [f"{label}.{k}: {_short(a.get(k))} -> {_short(b.get(k))}" for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
  if [k for k, _ in old.get("axes", [])] != [k for k, _ in new.get("axes", [])]:
    out.append(f"order of the grid axes: {[k for k, _ in old['axes']]} -> {[k for k, _ in new['axes']]}")
  return out


def prepare(out: Path, cfg: Config, points: int, chunks: int) -> dict:
  """Creates the results directory, or checks that it holds a sweep of this configuration.

  Raises:
    SweepError: the directory holds another configuration's results, or files of something else.
  """
  out = Path(out)
  meta_path = out / "sweep.json"
  if meta_path.exists():
    meta = json.loads(meta_path.read_text())
    if meta["digest"] != cfg.digest():
      changes = "; ".join(_diff(meta["config"], cfg.resolved())) or "(no field differs; klrl version?)"
      raise SweepError(
          f"{out} holds results of a different configuration (digest {meta['digest']}, "
          f"{cfg.source} has {cfg.digest()}): {changes}. Refusing to mix them: pass another --out, "
          "or delete that directory to start over.")
    return meta
  if out.exists():
    foreign = [p.name for p in out.iterdir() if not _KNOWN.fullmatch(p.name)]
    if foreign:
      raise SweepError(f"{out} is not empty and is not a sweep results directory (no sweep.json; it holds "
                       f"{', '.join(sorted(foreign)[:5])}); pass another --out")
  from klrl import __version__
  meta = dict(digest=cfg.digest(), source=cfg.source, description=cfg.description, points=points, chunks=chunks,
              created=now(), klrl=__version__, config=cfg.resolved())
  out.mkdir(parents=True, exist_ok=True)
  write_atomic(meta_path, json.dumps(meta, indent=1))
  (out / "chunks").mkdir(exist_ok=True)
  return meta


def completed(out: Path) -> set[int]:
  """Ids of the chunks whose file is in ``out/chunks``."""
  try:
    names = os.listdir(Path(out) / "chunks")
  except FileNotFoundError:
    return set()
  return {int(m.group(1)) for n in names if (m := _CHUNK.fullmatch(n))}


def chunk_path(out: Path, chunk: int) -> Path:
  return Path(out) / "chunks" / f"c{chunk:06d}.csv"


def write_chunk(out: Path, chunk: int, header: list[str], columns: list[list[str]]) -> None:
  """Writes one chunk's rows (``columns`` of formatted values, one list per header field)."""
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(header)
  w.writerows(zip(*columns))
  write_atomic(chunk_path(out, chunk), buf.getvalue())


def append_log(out: Path, process: int, entry: dict) -> None:
  """Appends one line to the chunk log of ``process`` (a torn last line is ignored on reading).

  Not synced to disk: a line lost in a machine crash leaves its chunk ``unlogged``, not lost.
  """
  with open(Path(out) / f"log-p{process}.jsonl", "a") as f:
    f.write(json.dumps(entry) + "\n")


def read_log(path: Path) -> list[dict]:
  out = []
  for line in Path(path).read_text().splitlines():
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      pass
  return out


def read_manifest(out: Path, process: int) -> dict | None:
  path = Path(out) / f"manifest-p{process}.json"
  return json.loads(path.read_text()) if path.exists() else None


def write_manifest(out: Path, process: int, manifest: dict) -> None:
  write_atomic(Path(out) / f"manifest-p{process}.json", json.dumps(manifest, indent=1))


def _read_chunk(path: Path) -> tuple[list[str], list[list[str]]]:
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  return rows[0], rows[1:]


def merge(dirs: list[str | Path], out: str | Path | None = None) -> Merged:
  """Merges the chunk files of one sweep, from one directory or one per host, into one table.

  Args:
    dirs: results directories of the same configuration (on a shared file system, one).
    out: where to write ``results.csv`` and ``manifest.json`` (default: the first directory).

  Returns:
    The paths written and the number of rows.

  Raises:
    SweepError: different configurations, missing chunks, or a grid point not exactly once.
  """
  dirs = [Path(d) for d in dirs]
  out = Path(out) if out is not None else dirs[0]
  metas = []
  for d in dirs:
    if not (d / "sweep.json").exists():
      raise SweepError(f"{d} is not a sweep results directory (no sweep.json)")
    metas.append(json.loads((d / "sweep.json").read_text()))
  if len({m["digest"] for m in metas}) > 1:
    raise SweepError("the directories hold different configurations: "
                     + ", ".join(f"{d} ({m['digest']})" for d, m in zip(dirs, metas)))
  meta = metas[0]
  files: dict[int, Path] = {}
  for d in dirs:
    for c in completed(d):
      path = chunk_path(d, c)
      if c in files and files[c].resolve() != path.resolve() and files[c].read_bytes() != path.read_bytes():
        raise SweepError(f"chunk {c} was computed twice with different rows ({files[c]} and {path})")
      files.setdefault(c, path)
  missing = sorted(set(range(meta["chunks"])) - files.keys())
  if missing:
    raise SweepError(f"{len(missing)} of {meta['chunks']} chunks are missing (first: {missing[:5]}): the sweep has "
                     "not finished. Run `klrl sweep` again with the same configuration and --out (it resumes), "
                     "or pass every host's results directory to `klrl merge`.")
  header, rows = None, []
  for c in sorted(files):
    head, body = _read_chunk(files[c])
    if header is None:
      header = head
    elif head != header:
      raise SweepError(f"chunk {c} has columns {head}, expected {header}")
    rows += body
  points = np.array([int(r[0]) for r in rows], np.int64)
  counts = np.bincount(points, minlength=meta["points"]) if len(points) else np.zeros(meta["points"], np.int64)
  if len(counts) != meta["points"] or not (counts == 1).all():
    bad = np.flatnonzero(counts != 1)[:5].tolist()
    raise SweepError(f"grid points not present exactly once (first: {bad}); the results directory is corrupt")
  order = np.argsort(points, kind="stable")
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(header)
  w.writerows(rows[i] for i in order)
  out.mkdir(parents=True, exist_ok=True)
  results = out / "results.csv"
  write_atomic(results, buf.getvalue())

  entries, processes = {}, []
  for d in dict.fromkeys(d.resolve() for d in dirs):
    for path in sorted(d.glob("log-p*.jsonl")):
      entries.update((json.dumps(e, sort_keys=True), e) for e in read_log(path))
    for path in sorted(d.glob("manifest-p*.json")):
      m = json.loads(path.read_text())
      if m not in processes:
        processes.append(m)
  log = sorted(entries.values(), key=lambda e: (e["chunk"], e.get("run", 0)))
  logged = {e["chunk"] for e in log}
  runs = [r for m in processes for r in m.get("runs", [])]
  manifest = dict(
      digest=meta["digest"], source=meta["source"], description=meta.get("description", ""),
      config=meta["config"], points=meta["points"], chunks=meta["chunks"], created=meta["created"],
      merged=now(), start=min((r["start"] for r in runs), default=None),
      end=max((r["end"] for r in runs if r.get("end")), default=None),
      compute_seconds=sum(e.get("seconds", 0.0) for e in log),
      versions=processes[0].get("versions", {}) if processes else {},
      processes=processes, unlogged=sorted(set(files) - logged), chunk_log=log)
  manifest_path = out / "manifest.json"
  write_atomic(manifest_path, json.dumps(manifest, indent=1))
  for d in dirs:
    for tmp in (d / "chunks").glob(".*.tmp"):
      tmp.unlink(missing_ok=True)
  return Merged(results, manifest_path, len(rows))
