"""The standard figure of a sweep: a quantity against one swept axis, one line per value of another.

Rows that share the x value and the group (other swept axes, such as seeds) are averaged; the
band shows their minimum and maximum.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from klrl.sweep.store import SweepError, read_meta

__all__ = ["read_table", "plot"]


def _results_path(results: str | Path) -> Path:
  path = Path(results)
  return path / "results.csv" if path.is_dir() else path


def read_table(results: str | Path) -> dict[str, list[str]]:
  """The columns of a results table (a ``results.csv`` or the directory holding it), as text."""
  path = _results_path(results)
  if not path.exists():
    raise SweepError(f"{path} not found (a sweep writes results.csv once every chunk is done; see `klrl merge`)")
  try:
    with open(path, newline="", encoding="utf-8") as f:
      rows = list(csv.reader(f))
  except (UnicodeDecodeError, csv.Error) as e:
    raise SweepError(f"{path} is not a readable CSV table ({e}); `klrl merge` rewrites it from the chunks") from None
  if not rows:
    raise SweepError(f"{path} is empty; `klrl merge` rewrites it from the chunks")
  bad = next((i for i, r in enumerate(rows) if len(r) != len(rows[0])), None)
  if bad is not None:
    raise SweepError(f"{path} line {bad + 1} has {len(rows[bad])} of {len(rows[0])} columns (damaged); `klrl merge` "
                     "rewrites it from the chunks")
  return {name: [r[i] for r in rows[1:]] for i, name in enumerate(rows[0])}


def _numbers(values: list[str]) -> np.ndarray | None:
  try:
    return np.array([1.0 if v == "True" else 0.0 if v == "False" else float(v) for v in values])
  except ValueError:
    return None


def _key(v: str):
  try:
    return (0, float(v), v)
  except ValueError:
    return (1, 0.0, v)


def plot(results: str | Path, x: str, y: str, group: str | None = None, *, where: dict[str, str] | None = None,
         out: str | Path | None = None, logx: bool = False, logy: bool = False) -> Path:
  """Draws ``y`` against ``x``, one line per value of ``group``, and saves it as PNG.

  Args:
    results: a ``results.csv`` or a results directory.
    x: column on the horizontal axis (numeric).
    y: column on the vertical axis (numeric).
    group: column whose values get one line each (optional).
    where: keep only rows whose column equals the given value (numbers compared as numbers).
    out: PNG path (default: ``<results dir>/plots/<y>_vs_<x>[_by_<group>][_logx][_logy].png``, so
      the linear and the logarithmic figures of the same columns sit side by side).
    logx, logy: logarithmic axes.

  Returns:
    The path of the PNG written.
  """
  from klrl.report.plotting import plt, save

  table = read_table(results)
  for name in [x, y] + ([group] if group else []) + list(where or {}):
    if name not in table:
      raise SweepError(f"no column {name!r} in {_results_path(results)}; columns: {', '.join(table)}")
  keep = np.ones(len(table[x]), bool)
  for k, v in (where or {}).items():
    col, num = table[k], _numbers([v])
    colnum = _numbers(table[k]) if num is not None else None
    keep &= (colnum == num[0]) if colnum is not None else np.array([c == v for c in col])
  if not keep.any():
    raise SweepError(f"no rows match {where}")
  xs, ys = _numbers(table[x]), _numbers(table[y])
  if xs is None or ys is None:
    raise SweepError(f"columns {x!r} and {y!r} must be numeric")
  labels = np.array(table[group] if group else [""] * len(xs))
  xs, ys, labels = xs[keep], ys[keep], labels[keep]

  folder = _results_path(results).parent
  axes = [k for k, _ in read_meta(folder)["config"]["axes"]] if (folder / "sweep.json").exists() else []
  others = [a for a in axes if a not in (x, group) and len(set(np.array(table[a])[keep])) > 1]

  fig, ax = plt.subplots(figsize=(7, 4.5))
  averaged = False
  for label in sorted(set(labels), key=_key):
    sel = labels == label
    ux = np.unique(xs[sel])
    cells = [ys[sel][xs[sel] == u] for u in ux]
    mean = np.array([c.mean() for c in cells])
    line, = ax.plot(ux, mean, marker="." if len(ux) < 40 else None, label=f"{group} = {label}" if group else None)
    if any(len(c) > 1 for c in cells):
      averaged = True
      ax.fill_between(ux, [c.min() for c in cells], [c.max() for c in cells], color=line.get_color(), alpha=0.2, lw=0)
  title = f"{y} vs {x}" + (f" by {group}" if group else "")
  if averaged:
    title += f"\nmean over {', '.join(others) if others else 'repeated rows'} (band: min to max)"
  if where:
    title += "\n" + ", ".join(f"{k} = {v}" for k, v in where.items())
  ax.set(xlabel=x, ylabel=y, title=title, xscale="log" if logx else "linear", yscale="log" if logy else "linear")
  if group:
    ax.legend(fontsize=7, ncol=1 + len(set(labels)) // 12)
  if out is None:
    scales = ("_logx" if logx else "") + ("_logy" if logy else "")
    name = f"{y}_vs_{x}" + (f"_by_{group}" if group else "") + scales + ".png"
    out = _results_path(results).parent / "plots" / name
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  return Path(save(fig, out))
