"""The run/report layer behind ``klrl run``: no mathematics here, only orchestration.

A report is a list of sections. A section is one small module in :mod:`klrl.report.sections`
exposing ``TITLE`` and ``run(cfg, ctx) -> Section``; it computes with the library, saves its
figures through ``ctx.figure(name)`` and returns its checks and tables. :func:`write_report`
turns the sections into a run directory: ``results.csv`` (one row per check), one CSV per
table, PNG figures, ``report.md`` and ``report.html`` (the same atlas, self-contained: the
figures are embedded as base64 PNG).
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


def write_report(out: Path, sections: list[Section], header: str, seconds: dict[str, float] | None = None) -> Path:
  """Writes ``results.csv``, the section tables, ``report.md`` and ``report.html``.

  Args:
    out: run directory.
    sections: the sections, in report order.
    header: Markdown opening the report (a ``#`` title and a line on the run).
    seconds: run time of each section, by key (optional).

  Returns:
    The path of ``report.md`` (``report.html`` is beside it).
  """
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
  lines = [header, "", summary, "", "| section | checks | pass | seconds |", "|---|---|---|---|"]
  lines += [f"| [{_fmt(s.title)}](#{s.key}) | {len(s.checks)} | {sum(c.passed for c in s.checks)} | "
            f"{seconds.get(s.key, float('nan')):.1f} |" for s in sections]
  lines.append("")
  for s in sections:
    lines += [f'<a id="{s.key}"></a>', "", f"## {s.title}", ""]
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
      rel = fig.relative_to(out) if fig.is_relative_to(out) else fig
      lines += [f"![{fig.stem}]({rel.as_posix()})", ""]
  report = out / "report.md"
  report.write_text("\n".join(lines))
  (out / "report.html").write_text(_html(out, sections, header, summary, seconds))
  return report


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 72em; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.pass { color: #176c2c; font-weight: 600; } .fail { color: #b00020; font-weight: 700; }
code { background: #f5f5f5; padding: 0 0.2em; } img { max-width: 100%; border: 1px solid #eee; }
figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #555; }
"""


def _inline(text: str) -> str:
  """Escaped HTML with Markdown's `code` and **bold** spans."""
  text = html.escape(text)
  text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
  return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def _blocks(markdown: str) -> list[str]:
  out = []
  for block in re.split(r"\n\s*\n", markdown.strip()):
    m = re.match(r"(#{1,6})\s+(.*)", block)
    out.append(f"<h{len(m.group(1))}>{_inline(m.group(2))}</h{len(m.group(1))}>" if m else f"<p>{_inline(block)}</p>")
  return out


def _html(out: Path, sections: list[Section], header: str, summary: str, seconds: dict[str, float]) -> str:
  num = lambda x: f'<td class="num">{html.escape(_fmt(x))}</td>'
  body = _blocks(header) + _blocks(summary)
  body += ["<table><tr><th>section</th><th>checks</th><th>pass</th><th>seconds</th></tr>"]
  body += [f'<tr><td><a href="#{s.key}">{_inline(s.title)}</a></td>{num(len(s.checks))}'
           f'{num(sum(c.passed for c in s.checks))}{num(round(seconds.get(s.key, float("nan")), 1))}</tr>' for s in sections]
  body.append("</table>")
  for s in sections:
    body.append(f'<h2 id="{html.escape(s.key)}">{_inline(s.title)}</h2>')
    body += _blocks(s.text) if s.text.strip() else []
    if s.checks:
      body.append("<table><tr><th>check</th><th>statement</th><th>instances</th><th>worst</th><th>tolerance</th>"
                  "<th>margin</th><th>result</th></tr>")
      body += [f"<tr><td>{_inline(c.name)}</td><td>{_inline(c.statement)}</td>{num(c.instances)}{num(c.worst)}"
               f"{num(c.tolerance)}{num(c.margin)}"
               f"<td class=\"{'pass' if c.passed else 'fail'}\">{'pass' if c.passed else 'FAIL'}</td></tr>" for c in s.checks]
      body.append("</table>")
    for name, table in s.tables.items():
      body.append(f"<p>Table <code>{html.escape(f'{s.key}_{name}.csv')}</code> ({len(table)} rows).</p>")
    for fig in _figures(out, s):
      data = base64.b64encode(fig.read_bytes()).decode("ascii")
      body.append(f'<figure><img alt="{html.escape(fig.stem)}" src="data:image/png;base64,{data}">'
                  f"<figcaption>{html.escape(fig.stem)}</figcaption></figure>")
  return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>klrl theorem atlas</title>"
          f"<style>{_CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
