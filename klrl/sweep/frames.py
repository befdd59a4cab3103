"""Typed results tables: ``results.parquet`` beside ``results.csv``, and :func:`load_results`.

The CSV holds text. Typed, its columns are ``point`` and the integer parameters as ``int64``,
the real parameters as ``float64``, flags as ``bool`` and the string parameters as strings (the
kinds the experiment declares, :class:`~klrl.sweep.experiments.Param`); an output is ``bool``
when every value is ``True`` or ``False``, else ``float64``. :func:`klrl.sweep.store.merge`
writes the typed table as ``results.parquet`` when pyarrow is installed; :func:`load_results`
returns it as a :class:`pandas.DataFrame`, from the parquet file or from the CSV alike. Both
need the optional packages of ``pip install 'klrl[frames]'`` (pandas, pyarrow).
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from klrl.sweep import store
from klrl.sweep.config import Config
from klrl.sweep.experiments import EXPERIMENTS

__all__ = ["INSTALL", "kinds", "typed", "write_parquet", "load_results"]

INSTALL = "pip install 'klrl[frames]'"
_INT = re.compile(r"[+-]?\d+")


def kinds(cfg: Config) -> dict[str, type | None]:
  """The type of each column of ``cfg``'s results: ``point`` and the parameters as declared,
  ``None`` for an output (``bool`` or ``float``, from its values)."""
  params = EXPERIMENTS[cfg.experiment].params
  return {"point": int, **{k: params[k].type for k in (*cfg.axes, *cfg.fixed)},
          **dict.fromkeys(EXPERIMENTS[cfg.experiment].outputs)}


def _guess(values: list[str]) -> type:
  """The type of a column of unknown kind (a table without its configuration)."""
  if all(v in ("True", "False") for v in values):
    return bool
  if all(_INT.fullmatch(v) for v in values):
    return int
  try:
    np.asarray(values, dtype=np.float64)
    return float
  except ValueError:
    return str


def typed(columns: dict[str, list[str]], kinds: dict[str, type | None], source: Any = "the table") -> dict[str, np.ndarray]:
  """Text columns as typed arrays (see the module doc); a column missing from ``kinds`` is guessed.

  Raises:
    store.SweepError: a value that does not fit its column's type, naming ``source`` and the column.
  """
  out = {}
  for name, values in columns.items():
    kind = kinds[name] if name in kinds else _guess(values)
    if kind is None:
      kind = bool if values and all(v in ("True", "False") for v in values) else float
    try:
      if kind is bool:
        if not set(values) <= {"True", "False"}:
          raise ValueError(f"expected True or False, got {next(v for v in values if v not in ('True', 'False'))!r}")
        out[name] = np.array([v == "True" for v in values], dtype=bool)
      elif kind is str:
        out[name] = np.array(values, dtype=object)
      else:
        out[name] = np.array([kind(v) for v in values], dtype=np.int64 if kind is int else np.float64)
    except (ValueError, OverflowError) as e:
      raise store.SweepError(f"{source}: column {name!r} does not hold {kind.__name__} values ({e})") from None
  return out


def write_parquet(path: Path, columns: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bool:
  """Writes typed columns as a parquet file (atomically); ``False`` if pyarrow is not installed."""
  try:
    import pyarrow as pa
    import pyarrow.parquet as pq
  except ImportError:
    return False
  table = pa.table({k: pa.array(v.tolist() if v.dtype == object else v) for k, v in columns.items()})
  table = table.replace_schema_metadata({**(table.schema.metadata or {}), **(metadata or {})})
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  pq.write_table(table, tmp)
  os.replace(tmp, path)
  return True


def _config_near(path: Path) -> Config | None:
  """The configuration recorded beside a results table (``sweep.json`` or ``manifest.json``)."""
  for name in ("sweep.json", "manifest.json"):
    meta = path.parent / name
    if meta.exists():
      try:
        return store.config_of(store._json(meta))
      except (store.SweepError, ValueError, KeyError, TypeError, AttributeError):
        continue
  return None


def load_results(path: str | Path):
  """The results of a sweep as a :class:`pandas.DataFrame` with typed columns (see the module doc).

  Args:
    path: a results directory (its ``results.parquet`` if there and pyarrow is installed, else
      its ``results.csv``), or a ``results.csv`` or ``.parquet`` file. A CSV is typed by the
      configuration recorded beside it (``sweep.json`` or ``manifest.json``); without one, each
      column gets the narrowest of bool, int64, float64 and string that holds its values.

  Returns:
    One row per grid point, in the order of ``point``.

  Raises:
    ImportError: pandas (or, for a ``.parquet`` file, pyarrow) is not installed.
    store.SweepError: no results table at ``path``, or a damaged one (named).
  """
  try:
    import pandas as pd
  except ImportError:
    raise ImportError(f"klrl.sweep.load_results needs pandas: {INSTALL}") from None
  path = Path(path)
  if path.is_dir():
    parquet = path / "results.parquet"
    path = parquet if parquet.exists() and _has_pyarrow() else path / "results.csv"
  if not path.exists():
    raise store.SweepError(f"{path} not found (a sweep writes its results table once every chunk is done; see `klrl merge`)")
  if path.suffix == ".parquet":
    if not _has_pyarrow():
      raise ImportError(f"reading {path} needs pyarrow: {INSTALL}")
    return pd.read_parquet(path)
  try:
    with open(path, newline="", encoding="utf-8") as f:
      rows = list(csv.reader(f))
  except (UnicodeDecodeError, csv.Error) as e:
    raise store.SweepError(f"{path} is not a readable CSV table ({e}); `klrl merge` rewrites it from the chunks") from None
  if not rows or any(len(r) != len(rows[0]) for r in rows):
    raise store.SweepError(f"{path} is empty or has rows of different lengths (damaged); `klrl merge` rewrites it")
  cfg = _config_near(path)
  columns = {name: [r[i] for r in rows[1:]] for i, name in enumerate(rows[0])}
  return pd.DataFrame(typed(columns, kinds(cfg) if cfg is not None else {}, path))


def _has_pyarrow() -> bool:
  try:
    import pyarrow.parquet  # noqa: F401
    return True
  except ImportError:
    return False
