"""The run/report layer behind ``klrl run``: no mathematics here, only orchestration.

A report is a list of sections. A section is one small module in :mod:`klrl.report.sections`
exposing ``TITLE`` and ``run(cfg, ctx) -> Section``; it computes with the library, saves its
figures through ``ctx.figure(name)`` and returns its checks and tables. :func:`write_report`
turns the sections into a run directory: ``results.csv`` (one row per check), one CSV per
table, PNG figures and ``report.md``.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

__all__ = ["Check", "Section", "Context", "write_report"]


class Check(NamedTuple):
  """One verified statement: ``worst`` is the largest error (or bound violation) measured over
  ``instances`` cases; the check passes when ``worst <= tolerance``."""
  name: str
  statement: str
  worst: float
  tolerance: float
  instances: int

  @property
  def passed(self) -> bool:
    return bool(math.isfinite(self.worst) and self.worst <= self.tolerance)


@dataclass
class Section:
  key: str
  title: str
  text: str = ""
  checks: list[Check] = field(default_factory=list)
  tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
  figures: list[str] = field(default_factory=list)


@dataclass
class Context:
  out: Path
  scale: bool = False
  quiet: bool = False

  def figure(self, name: str) -> Path:
    """Path for a PNG figure in the run directory."""
    (self.out / "figures").mkdir(parents=True, exist_ok=True)
    return self.out / "figures" / f"{name}.png"

  def log(self, msg: str) -> None:
    if not self.quiet:
      print(msg, flush=True)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
  keys: list[str] = []
  for row in rows:
    keys += [k for k in row if k not in keys]
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)


def _fmt(x) -> str:
  return (f"{x:.3g}" if isinstance(x, float) else str(x)).replace("|", "\\|")


def write_report(out: Path, sections: list[Section], header: str) -> Path:
  """Writes ``results.csv``, the section tables and ``report.md``; returns the report path."""
  out.mkdir(parents=True, exist_ok=True)
  rows = [dict(section=s.key, check=c.name, statement=c.statement, worst=c.worst, tolerance=c.tolerance,
               instances=c.instances, passed=c.passed) for s in sections for c in s.checks]
  _write_csv(out / "results.csv", rows)
  lines = [header, ""]
  n_pass = sum(r["passed"] for r in rows)
  lines += [f"**{n_pass} of {len(rows)} checks pass.** Every check reports the worst error over its instances.", ""]
  for s in sections:
    lines += [f"## {s.title}", ""]
    if s.text:
      lines += [s.text.strip(), ""]
    if s.checks:
      lines += ["| check | statement | instances | worst error | tolerance | result |", "|---|---|---|---|---|---|"]
      lines += [f"| {_fmt(c.name)} | {_fmt(c.statement)} | {c.instances} | {_fmt(c.worst)} | {_fmt(c.tolerance)} | "
                f"{'pass' if c.passed else '**FAIL**'} |" for c in s.checks]
      lines.append("")
    for name, table in s.tables.items():
      path = out / f"{s.key}_{name}.csv"
      _write_csv(path, table)
      lines += [f"Table `{path.name}` ({len(table)} rows).", ""]
    for fig in s.figures:
      rel = Path(fig).relative_to(out) if Path(fig).is_absolute() else Path(fig)
      lines += [f"![{rel.stem}]({rel.as_posix()})", ""]
  report = out / "report.md"
  report.write_text("\n".join(lines))
  return report
