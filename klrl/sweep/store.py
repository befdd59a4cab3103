"""The results directory of a sweep: atomic chunk files, chunk logs, manifests and the merge.

Layout of a results directory::

    sweep.json          configuration digest, resolved configuration, numbers of points and chunks
    chunks/c000017.csv  rows of chunk 17 (header + one row per grid point), written atomically
    log-p0.jsonl        one JSON line per chunk finished by process 0 (its run, timing, rows)
    manifest-p0.json    runs of process 0: start/end, status, devices, hosts, package versions
    results.csv         the merged table: every grid point once, sorted by its index ``point``
    results.parquet     the same table with typed columns (if pyarrow is installed; see klrl.sweep.frames)
    manifest.json       the merged manifest: configuration, versions, runs, per-chunk timings

Every file is written to a temporary name and moved into place with :func:`os.replace`, so a
run killed at any instant leaves each chunk either complete or absent; a restart skips the
chunks whose file exists. A chunk whose file exists but whose log line was lost (a kill
between the two writes) is listed as ``unlogged`` in the merged manifest.

Each chunk file starts with a line naming its chunk, the digest of the configuration that
computed it and its number of rows (``# klrl sweep chunk 17 of 1a2b3c4d5e6f7a8b: 64 rows``).
Chunks are checked against the configuration before they are used (:func:`check_chunk`):
the digest, the rows (every planned grid point once, in order, with the grid's parameters),
the columns and the outputs (numbers or flags). A chunk of another configuration is refused,
whether or not ``sweep.json`` is still there; a damaged chunk is recomputed by a resumed sweep
(with a warning naming the file) and refused by :func:`merge`, naming the file.
"""
from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import re
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np

from klrl.sweep.config import Config
from klrl.sweep.experiments import EXPERIMENTS
from klrl.sweep.grid import Chunk, Grid, expand, plan

__all__ = ["SweepError", "Merged", "prepare", "completed", "check_chunk", "write_chunk", "append_log", "write_manifest",
           "merge", "now", "text"]

_CHUNK = re.compile(r"c(\d+)\.csv")
_TAG = re.compile(r"# klrl sweep chunk (\d+) of ([0-9a-f]{16}): (\d+) rows")
_KNOWN = re.compile(r"sweep\.json|chunks|plots|results\.(csv|parquet)|manifest\.json|log-p\d+\.jsonl|manifest-p\d+\.json|\..*\.tmp")


class SweepError(RuntimeError):
  """A results directory that cannot be used as asked (other configuration, unfinished, corrupt)."""


class Merged(NamedTuple):
  """Result of :func:`merge`: the table and manifest written, the number of rows, and the
  typed table (``None`` when pyarrow is not installed)."""
  results: Path
  manifest: Path
  rows: int
  parquet: Path | None = None


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
  meta = read_meta(out) if meta_path.exists() else None
  if meta is not None and meta["digest"] != cfg.digest():
      changes = "; ".join(_diff(meta["config"], cfg.resolved())) or "(no field differs; klrl version?)"
      raise SweepError(
          f"{out} holds results of a different configuration (digest {meta['digest']}, "
          f"{cfg.source} has {cfg.digest()}): {changes}. Refusing to mix them: pass another --out, "
          "or delete that directory to start over.")
  foreign_chunks = _other_digests(out, cfg.digest())
  if foreign_chunks:
    raise SweepError(f"{out / 'chunks'} holds chunks of another configuration ({foreign_chunks}); this configuration "
                     f"has digest {cfg.digest()}. Refusing to mix them: pass another --out, or delete that directory "
                     "to start over.")
  if meta is not None:
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


def read_meta(out: Path) -> dict:
  """``out/sweep.json``, or a :class:`SweepError` naming it when it is missing or damaged."""
  path = Path(out) / "sweep.json"
  if not path.exists():
    raise SweepError(f"{out} is not a sweep results directory (no sweep.json)")
  try:
    meta = json.loads(path.read_text())
    config_of(meta)
    return meta
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise SweepError(f"{path} is damaged ({type(e).__name__}: {e}); the chunk files carry their configuration's "
                     "digest, so delete sweep.json and run `klrl sweep` with the same configuration and --out: it "
                     "rewrites it, checks the chunks and resumes") from None


def config_of(meta: dict) -> Config:
  """The configuration recorded in a ``sweep.json`` (checked against its digest)."""
  c = meta["config"]
  cfg = Config(source=meta.get("source", "sweep.json"), experiment=c["experiment"], description=meta.get("description", ""),
               fixed=dict(c["fixed"]), axes={k: tuple(v) for k, v in c["axes"]}, zip=tuple(tuple(g) for g in c["zip"]),
               chunk_size=int(c["chunk_size"]), precision=c["precision"], out=None, distributed=None)
  if cfg.digest() != meta["digest"]:
    raise ValueError(f"its configuration has digest {cfg.digest()}, not the {meta['digest']} it records")
  return cfg


def completed(out: Path) -> set[int]:
  """Ids of the chunks whose file is in ``out/chunks`` (unchecked: see :func:`check_chunk`)."""
  try:
    names = os.listdir(Path(out) / "chunks")
  except FileNotFoundError:
    return set()
  return {int(m.group(1)) for n in names if (m := _CHUNK.fullmatch(n))}


def _tag(path: Path) -> tuple[int, str, int] | None:
  """``(chunk, digest, rows)`` from a chunk file's first line, ``None`` when it has none."""
  try:
    with open(path, "rb") as f:
      m = _TAG.fullmatch(f.readline(200).decode("ascii", "replace").rstrip("\n"))
  except OSError:
    return None
  return (int(m.group(1)), m.group(2), int(m.group(3))) if m else None


def _other_digests(out: Path, digest: str) -> str:
  """A description of the chunk files of ``out`` that are not of configuration ``digest`` ('' if none)."""
  other: dict[str, list[str]] = {}
  for c in sorted(completed(out)):
    tag = _tag(chunk_path(out, c))
    if tag is None:
      continue    # damaged or untagged: checked chunk by chunk
    if tag[1] != digest:
      other.setdefault(tag[1], []).append(chunk_path(out, c).name)
  return "; ".join(f"digest {d}: {len(v)} files, first {v[0]}" for d, v in other.items())


def text(values) -> list[str]:
  """Values as CSV text: shortest round-trip decimals, ``True``/``False`` for flags."""
  values = np.asarray(values)
  if values.dtype == np.bool_:
    return np.where(values, "True", "False").tolist()
  return values.astype(str).tolist()


def parameter_columns(cfg: Config, grid: Grid, chunk: Chunk) -> list[list[str]]:
  """The columns ``point``, the swept and the fixed parameters of a chunk's rows, as text."""
  n = len(chunk.points)
  return ([text(chunk.points)] + [text(grid.columns[a][chunk.points]) for a in cfg.axes]
          + [text(np.asarray([v])) * n for v in cfg.fixed.values()])


def header(cfg: Config) -> list[str]:
  """The columns of a chunk and of the merged table."""
  return ["point", *cfg.axes, *cfg.fixed, *EXPERIMENTS[cfg.experiment].outputs]


def check_chunk(path: Path, cfg: Config, grid: Grid, chunk: Chunk) -> list[list[str]]:
  """The rows of a chunk file, checked against the chunk of ``cfg`` it should hold.

  Raises:
    SweepError: naming the file and what is wrong with it: another configuration's digest,
      no first line (empty, binary, or written by an older klrl), a cut or extra row, a row
      with too few or too many columns, a point or parameter that is not the grid's, or an
      output that is neither a number nor a flag.
  """
  def bad(what):
    return SweepError(f"chunk file {path} {what}")
  tag = _tag(path)
  if tag is None:
    raise bad("has no valid first line '# klrl sweep chunk N of DIGEST: K rows' (empty, truncated, binary, or "
              "not written by this version of klrl)")
  if tag[1] != cfg.digest():
    raise bad(f"was computed under configuration {tag[1]}, not {cfg.digest()}")
  if tag[0] != chunk.id:
    raise bad(f"says it holds chunk {tag[0]}")
  try:
    with open(path, newline="", encoding="utf-8") as f:
      f.readline()
      rows = list(csv.reader(f))
  except (UnicodeDecodeError, csv.Error) as e:
    raise bad(f"is not a readable CSV file ({e})") from None
  want = header(cfg)
  if not rows or rows[0] != want:
    raise bad(f"has columns {rows[0] if rows else 'none'}, expected {want}")
  rows = rows[1:]
  if len(rows) != tag[2] or len(rows) != len(chunk.points):
    raise bad(f"has {len(rows)} rows; it should have {len(chunk.points)} (it is cut short or was altered)")
  for i, r in enumerate(rows):
    if len(r) != len(want):
      raise bad(f"line {i + 3} has {len(r)} of {len(want)} columns (cut short or altered)")
  expected = parameter_columns(cfg, grid, chunk)
  for j, col in enumerate(expected):
    for i, value in enumerate(col):
      if rows[i][j] != value:
        raise bad(f"line {i + 3}: column '{want[j]}' is {rows[i][j]!r}, but row {i + 1} of this chunk is grid point "
                  f"{int(chunk.points[i])}, which has {value!r} (the rows do not match the grid of this configuration)")
  for j in range(len(expected), len(want)):
    column = [r[j] for r in rows]
    try:
      np.asarray(column, dtype=np.float64)
    except ValueError:
      if not set(column) <= {"True", "False"}:
        i = next(i for i, v in enumerate(column) if not _number(v))
        raise bad(f"line {i + 3}: output '{want[j]}' is {column[i]!r}, not a number") from None
  return rows


def _number(v: str) -> bool:
  try:
    float(v)
    return True
  except ValueError:
    return False


def chunk_path(out: Path, chunk: int) -> Path:
  return Path(out) / "chunks" / f"c{chunk:06d}.csv"


def write_chunk(out: Path, chunk: int, digest: str, header: list[str], columns: list[list[str]]) -> None:
  """Writes one chunk's rows (``columns`` of formatted values, one list per header field)."""
  buf = io.StringIO()
  buf.write(f"# klrl sweep chunk {chunk} of {digest}: {len(columns[0])} rows\n")
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
  """The entries of a chunk log; a torn or foreign line is skipped (the log is informative only)."""
  out = []
  for line in Path(path).read_text(errors="replace").splitlines():
    try:
      entry = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(entry, dict) and isinstance(entry.get("chunk"), int):
      out.append(entry)
  return out


def read_manifest(out: Path, process: int) -> dict | None:
  path = Path(out) / f"manifest-p{process}.json"
  return _json(path) if path.exists() else None


def _json(path: Path) -> dict:
  """A JSON object from ``path``, or a :class:`SweepError` naming the damaged file."""
  try:
    value = json.loads(Path(path).read_text())
    if not isinstance(value, dict):
      raise ValueError("not a JSON object")
    return value
  except (ValueError, UnicodeDecodeError) as e:
    raise SweepError(f"{path} is damaged ({e}); it holds only the record of earlier runs: delete it to go on") from None


def write_manifest(out: Path, process: int, manifest: dict) -> None:
  write_atomic(Path(out) / f"manifest-p{process}.json", json.dumps(manifest, indent=1))


def merge(dirs: list[str | Path], out: str | Path | None = None) -> Merged:
  """Merges the chunk files of one sweep, from one directory or one per host, into one table.

  Writes ``results.csv``, ``manifest.json`` and, when pyarrow is installed, ``results.parquet``
  (typed columns: :mod:`klrl.sweep.frames`); without pyarrow one line on standard error says how
  to get it, and a ``results.parquet`` left by an earlier merge is removed.

  Args:
    dirs: results directories of the same configuration (on a shared file system, one).
    out: where to write the table and the manifest (default: the first directory).

  Returns:
    The paths written and the number of rows.

  Raises:
    SweepError: different configurations, missing chunks, or a damaged file (named).
  """
  dirs = [Path(d) for d in dirs]
  out = Path(out) if out is not None else dirs[0]
  metas = [read_meta(d) for d in dirs]
  if len({m["digest"] for m in metas}) > 1:
    raise SweepError("the directories hold different configurations: "
                     + ", ".join(f"{d} ({m['digest']})" for d, m in zip(dirs, metas)))
  meta = metas[0]
  cfg = config_of(meta)
  grid = expand(cfg)
  chunks = plan(cfg, grid)
  if (grid.size, len(chunks)) != (meta["points"], meta["chunks"]):
    raise SweepError(f"{dirs[0] / 'sweep.json'} records {meta['points']} points in {meta['chunks']} chunks, but its "
                     f"configuration has {grid.size} in {len(chunks)} (written by another version of klrl?)")
  files: dict[int, Path] = {}
  for d in dirs:
    for c in completed(d):
      path = chunk_path(d, c)
      if c >= len(chunks):
        raise SweepError(f"chunk file {path} has an id beyond the {len(chunks)} chunks of this configuration")
      if c in files and files[c].resolve() != path.resolve() and files[c].read_bytes() != path.read_bytes():
        raise SweepError(f"chunk {c} was computed twice with different rows ({files[c]} and {path})")
      files.setdefault(c, path)
  missing = sorted(set(range(meta["chunks"])) - files.keys())
  if missing:
    raise SweepError(f"{len(missing)} of {meta['chunks']} chunks are missing (first: {missing[:5]}): the sweep has "
                     "not finished. Run `klrl sweep` again with the same configuration and --out (it resumes), "
                     "or pass every host's results directory to `klrl merge`.")
  rows = []
  for c in sorted(files):
    rows += check_chunk(files[c], cfg, grid, chunks[c])
  points = np.concatenate([ch.points for ch in chunks]) if chunks else np.zeros(0, np.int64)
  order = np.argsort(points, kind="stable")     # every point once: the plan is a partition of the grid
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(header(cfg))
  w.writerows(rows[i] for i in order)
  out.mkdir(parents=True, exist_ok=True)
  results = out / "results.csv"
  write_atomic(results, buf.getvalue())
  parquet = _write_parquet(out / "results.parquet", cfg, header(cfg), [rows[i] for i in order])

  entries, processes = {}, []
  for d in dict.fromkeys(d.resolve() for d in dirs):
    for path in sorted(d.glob("log-p*.jsonl")):
      entries.update((json.dumps(e, sort_keys=True), e) for e in read_log(path))
    for path in sorted(d.glob("manifest-p*.json")):
      m = _json(path)
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
  return Merged(results, manifest_path, len(rows), parquet)


def _write_parquet(path: Path, cfg: Config, names: list[str], rows: list[list[str]]) -> Path | None:
  """The typed table as ``path``; without pyarrow, a line on stderr and no (stale) file."""
  from klrl.sweep import frames
  columns = frames.typed({k: [r[j] for r in rows] for j, k in enumerate(names)}, frames.kinds(cfg), path)
  if frames.write_parquet(path, columns, {"klrl.digest": cfg.digest()}):
    return path
  path.unlink(missing_ok=True)
  print(f"klrl merge: {path.name} not written: pyarrow is not installed ({frames.INSTALL}); results.csv has "
        "every row", file=sys.stderr, flush=True)
  return None
