"""Command line: ``klrl run`` writes the theorem atlas of the default configuration."""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
import tomllib
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.toml"


def _run(args) -> int:
  import jax
  jax.config.update("jax_enable_x64", True)   # the report checks theorems in float64
  from klrl import __version__
  from klrl.report import Context, write_report
  from klrl.report.sections import SECTIONS

  path = Path(args.config) if args.config else DEFAULT_CONFIG
  if not path.exists():
    print(f"klrl run: configuration {path} not found (pass --config PATH)", file=sys.stderr)
    return 2
  cfg = tomllib.loads(path.read_text())
  wanted = args.sections.split(",") if args.sections else list(SECTIONS)
  unknown = [k for k in wanted if k not in SECTIONS]
  if unknown:
    print(f"klrl run: unknown section(s) {unknown}; known: {list(SECTIONS)}", file=sys.stderr)
    return 2
  stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
  out = Path(args.out) if args.out else Path(cfg.get("run", {}).get("out", "runs")) / stamp
  ctx = Context(out=out, scale=args.scale, quiet=args.quiet)
  sections, seconds, t0 = [], {}, time.perf_counter()
  for i, key in enumerate(wanted, 1):
    ctx.log(f"[{i}/{len(wanted)}] {SECTIONS[key].TITLE} ...")
    t = time.perf_counter()
    sections.append(SECTIONS[key].run(cfg.get(key, {}), ctx))
    seconds[sections[-1].key] = time.perf_counter() - t
    ctx.log(f"      done in {seconds[sections[-1].key]:.1f} s")
  header = (f"# klrl theorem atlas\n\nklrl {__version__}, configuration `{path}`"
            f"{' at accelerator scale (--scale)' if args.scale else ''}, devices {jax.devices()}, "
            f"{time.perf_counter() - t0:.1f} s.")
  report = write_report(out, sections, header, seconds=seconds)
  failed = [c.name for s in sections for c in s.checks if not c.passed]
  print(f"klrl run: wrote {report}, {report.with_suffix('.html')}, {out / 'results.csv'} and {out / 'figures'}/")
  if failed:
    print(f"klrl run: {len(failed)} check(s) FAILED: {failed}", file=sys.stderr)
    return 1
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="klrl", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  run = sub.add_parser("run", help="the theorem atlas: every report section (default: configs/default.toml)")
  run.add_argument("--config", help="TOML configuration file")
  run.add_argument("--out", help="run directory (default: runs/<timestamp>)")
  run.add_argument("--sections", help="comma-separated subset of sections to run")
  run.add_argument("--scale", action="store_true", help="accelerator-sized instances")
  run.add_argument("--quiet", action="store_true", help="print only where the results went")
  args = parser.parse_args(argv)
  return {"run": _run}[args.command](args)


if __name__ == "__main__":
  sys.exit(main())
