"""The run/report layer behind ``klrl run``: no mathematics here, only orchestration.

A report is a list of sections. A section is one small module in :mod:`klrl.report.sections`
exposing ``TITLE`` and ``run(cfg, ctx) -> Section``; it computes with the library, saves its
figures through ``ctx.figure(name)`` and returns its checks and tables. :func:`write_report`
turns the sections into a run directory: ``results.csv`` (one row per check), one CSV per
table, PNG figures with their captions, ``report.md`` and ``report.html`` (the same atlas
rendered by the ``markdown`` package, self-contained: the figures are embedded as base64 PNG).
Each section cites its theory page and the papers whose statements it checks.
"""
from __future__ import annotations

import base64
import csv
import html
import math
import re
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

  @property
  def margin(self) -> float:
    """``tolerance - worst``: the slack left by the worst instance (negative when it fails)."""
    return self.tolerance - self.worst if math.isfinite(self.worst) else -math.inf


@dataclass
class Section:
  key: str
  title: str
  text: str = ""
  checks: list[Check] = field(default_factory=list)
  tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
  figures: list[str] = field(default_factory=list)
  docs: str = ""                                    # its theory page, e.g. "theory/tilted.md"
  papers: tuple[str, ...] = ()                      # the papers it checks, as short citations


@dataclass
class Context:
  out: Path
  scale: bool = False
  quiet: bool = False

  def __post_init__(self):
    self.out = Path(self.out).resolve()   # figures are recorded by absolute path

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


def _figures(out: Path, s: Section) -> list[Path]:
  """Figure paths: absolute, relative to the working directory, or relative to ``out``."""
  return [Path(f).resolve() if Path(f).is_absolute() or Path(f).exists() else out / f for f in s.figures]


def _text(text: str) -> str:
  """Plain text for Markdown: ``<``, ``>`` and ``&`` are not HTML."""
  return html.escape(text, quote=False)


def _cites(s: Section) -> list[str]:
  """The line under a section title: its theory page and papers."""
  parts = []
  if s.docs:
    parts.append(f"Theory: `docs/{s.docs}` (the documentation's page {s.docs.removesuffix('.md')})")
  if s.papers:
    parts.append("Papers: " + "; ".join(s.papers))
  return [" · ".join(parts), ""] if parts else []


def _figure_block(fig: Path, src: str) -> list[str]:
  """A figure with its caption (stored in the PNG by :func:`klrl.report.plotting.save`)."""
  from klrl.report.plotting import read_caption
  text = read_caption(fig) or fig.stem
  return [f'<figure><img alt="{html.escape(fig.stem)}" src="{src}"><figcaption><b>{html.escape(fig.stem)}.</b> '
          f"{html.escape(text)}</figcaption></figure>", ""]


def _markdown(out: Path, sections: list[Section], header: str, seconds: dict[str, float], summary: str,
              embed: bool) -> str:
  lines = [header, "", summary, "", "| section | checks | pass | seconds |", "|---|---|---|---|"]
  lines += [f"| [{_fmt(_text(s.title))}](#{s.key}) | {len(s.checks)} | {sum(c.passed for c in s.checks)} | "
            f"{seconds.get(s.key, float('nan')):.1f} |" for s in sections]
  lines.append("")
  for s in sections:
    lines += [f'<a id="{s.key}"></a>', "", f"## {_text(s.title)}", ""] + _cites(s)
    if s.text:
      lines += [s.text.strip(), ""]
    if s.checks:
      lines += ["| check | statement | instances | worst | tolerance | margin | result |", "|---|---|---|---|---|---|---|"]
      lines += [f"| {_fmt(c.name)} | {_fmt(c.statement)} | {c.instances} | {_fmt(c.worst)} | {_fmt(c.tolerance)} | "
                f"{_fmt(c.margin)} | {'pass' if c.passed else '**FAIL**'} |" for c in s.checks]
      lines.append("")
    for name, table in s.tables.items():
      lines += [f"Table `{s.key}_{name}.csv` ({len(table)} rows).", ""]
    for fig in _figures(out, s):
      if embed:
        src = "data:image/png;base64," + base64.b64encode(fig.read_bytes()).decode("ascii")
      else:
        src = (fig.relative_to(out) if fig.is_relative_to(out) else fig).as_posix()
      lines += _figure_block(fig, src)
  return "\n".join(lines)


def write_report(out: Path, sections: list[Section], header: str, seconds: dict[str, float] | None = None) -> Path:
  """Writes ``results.csv``, the section tables, ``report.md`` and ``report.html``.

  The HTML is the Markdown rendered by the ``markdown`` package (tables included), with the
  figures embedded, so that it is one self-contained file.

  Args:
    out: run directory.
    sections: the sections, in report order.
    header: Markdown opening the report (a ``#`` title and a line on the run).
    seconds: run time of each section, by key (optional).

  Returns:
    The path of ``report.md`` (``report.html`` is beside it).
  """
  import markdown

  out = Path(out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  seconds = seconds or {}
  rows = [dict(section=s.key, check=c.name, statement=c.statement, worst=c.worst, tolerance=c.tolerance,
               margin=c.margin, instances=c.instances, passed=c.passed) for s in sections for c in s.checks]
  _write_csv(out / "results.csv", rows)
  for s in sections:
    for name, table in s.tables.items():
      _write_csv(out / f"{s.key}_{name}.csv", table)
  n_pass = sum(r["passed"] for r in rows)
  summary = (f"**{n_pass} of {len(rows)} checks pass.** Every check reports the worst error (or bound violation) "
             "over its instances; the margin is tolerance minus worst.")
  report = out / "report.md"
  report.write_text(_markdown(out, sections, header, seconds, summary, embed=False))
  body = markdown.markdown(_markdown(out, sections, header, seconds, summary, embed=True),
                           extensions=["tables", "sane_lists"], output_format="html")
  body = re.sub(r"<td>pass</td>", '<td class="pass">pass</td>', body)
  body = re.sub(r"<td><strong>FAIL</strong></td>", '<td class="fail">FAIL</td>', body)
  (out / "report.html").write_text(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>klrl theorem atlas</title>"
      f"<style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n")
  return report


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 72em; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.pass { color: #176c2c; font-weight: 600; } .fail { color: #b00020; font-weight: 700; }
code { background: #f5f5f5; padding: 0 0.2em; } img { max-width: 100%; border: 1px solid #eee; }
figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #555; }
"""
