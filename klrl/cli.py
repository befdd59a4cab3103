"""Command line: ``klrl run`` (the theorem atlas), ``klrl sweep``, ``klrl merge``, ``klrl plot``.

Orchestration only: the mathematics is in the library, the sweep machinery in
:mod:`klrl.sweep`, the report in :mod:`klrl.report`.
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import sys
import time
import tomllib
from pathlib import Path



def configs_dir() -> Path:
  """The shipped configurations: package data ``klrl.configs`` when installed, else the
  checkout's ``configs/`` (a checkout used through ``PYTHONPATH``)."""
  import importlib.resources
  try:
    return Path(str(importlib.resources.files("klrl.configs")))
  except ModuleNotFoundError:
    return Path(__file__).resolve().parent.parent / "configs"


def shipped_sweeps() -> dict[str, Path]:
  """The shipped sweep configurations by name (their file stem)."""
  return {p.stem: p for p in sorted((configs_dir() / "sweeps").glob("*.toml"))}


def _sweep_path(name: str) -> Path | None:
  """A sweep configuration given as a path, or as the name of a shipped one."""
  path = Path(name)
  if path.exists():
    return path
  return shipped_sweeps().get(name.removesuffix(".toml"))


def cache_dir() -> Path:
  """The default folder of JAX's persistent compilation cache for ``klrl run`` and ``klrl sweep``:
  ``$KLRL_CACHE_DIR``, else ``$XDG_CACHE_HOME/klrl/jax`` (``~/.cache/klrl/jax``)."""
  if os.environ.get("KLRL_CACHE_DIR"):
    return Path(os.environ["KLRL_CACHE_DIR"]).expanduser()
  return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "klrl" / "jax"


def _use_cache(args) -> None:
  """Points JAX's persistent compilation cache at ``--cache-dir`` (default :func:`cache_dir`),
  unless ``--no-cache``: a second run in a fresh process then loads what the first compiled."""
  if args.no_cache:
    return
  import jax
  path = Path(args.cache_dir).expanduser() if args.cache_dir else cache_dir()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    print(f"klrl: compilation cache {path} unusable ({e}); compiling without it", file=sys.stderr)
    return
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _run(args) -> int:
  import jax
  jax.config.update("jax_enable_x64", True)   # the report checks theorems in float64
  _use_cache(args)
  from klrl import __version__
  from klrl.report import Context, write_report
  from klrl.report.sections import SECTIONS

  path = Path(args.config) if args.config else configs_dir() / "default.toml"
  if not path.exists():
    print(f"klrl run: configuration {path} not found (pass --config PATH)", file=sys.stderr)
    return 2
  from klrl.report.config import RunConfigError, check
  try:
    cfg = check(tomllib.loads(path.read_text()), SECTIONS, str(path))
  except tomllib.TOMLDecodeError as e:
    print(f"klrl run: {path} is not valid TOML: {e}", file=sys.stderr)
    return 2
  except RunConfigError as e:
    print(e, file=sys.stderr)
    return 2
  wanted = args.sections.split(",") if args.sections else list(SECTIONS)
  unknown = [k for k in wanted if k not in SECTIONS]
  if unknown:
    print(f"klrl run: unknown section(s) {unknown}; known: {list(SECTIONS)}", file=sys.stderr)
    return 2
  missing = {k: [m for m in getattr(SECTIONS[k], "REQUIRES", ()) if importlib.util.find_spec(m) is None] for k in wanted}
  skipped = {k: m for k, m in missing.items() if m}
  for key, mods in skipped.items():
    print(f"klrl run: skipping section '{key}': it needs the optional package(s) {', '.join(mods)} "
          f"(pip install 'klrl[real]', or -e '.[real]' in a checkout)", file=sys.stderr)
  wanted = [k for k in wanted if k not in skipped]
  stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
  out = Path(args.out) if args.out else Path(cfg["run"]["out"]) / stamp
  ctx = Context(out=out, scale=args.scale, quiet=args.quiet)
  sections, seconds, t0 = [], {}, time.perf_counter()
  for i, key in enumerate(wanted, 1):
    ctx.log(f"[{i}/{len(wanted)}] {SECTIONS[key].TITLE} ...")
    t = time.perf_counter()
    sections.append(SECTIONS[key].run(cfg[key], ctx))
    seconds[sections[-1].key] = time.perf_counter() - t
    ctx.log(f"      done in {seconds[sections[-1].key]:.1f} s")
  header = (f"# klrl theorem atlas\n\nklrl {__version__}, configuration `{path}`"
            f"{' at accelerator scale (--scale)' if args.scale else ''}, devices {jax.devices()}, "
            f"{time.perf_counter() - t0:.1f} s.")
  if skipped:
    header += "\n\nSkipped for want of optional packages: " + ", ".join(f"`{k}` ({', '.join(m)})" for k, m in skipped.items()) + "."
  report = write_report(out, sections, header, seconds=seconds)
  failed = [c.name for s in sections for c in s.checks if not c.passed]
  print(f"klrl run: wrote {report}, {report.with_suffix('.html')}, {report.parent / 'results.csv'} and {report.parent / 'figures'}/")
  if failed:
    print(f"klrl run: {len(failed)} check(s) FAILED: {failed}", file=sys.stderr)
    return 1
  return 0


def _sweep(args) -> int:
  from klrl.sweep import EXPERIMENTS, ConfigError, SweepError, engine, load

  if args.list:
    print("shipped configurations (klrl sweep NAME):")
    for name, path in shipped_sweeps().items():
      print(f"  {name:28s} {load(path).description}")
    print("registered experiments (the 'experiment' key):")
    for name, exp in sorted(EXPERIMENTS.items()):
      print(f"  {name:28s} {(exp.fn.__doc__ or '').strip().splitlines()[0] if exp.fn.__doc__ else ''}")
    return 0
  if args.config is None:
    print("klrl sweep: give a configuration file or the name of a shipped one (klrl sweep --list)", file=sys.stderr)
    return 2
  path = _sweep_path(args.config)
  if path is None:
    print(f"klrl sweep: {args.config} is neither a file nor a shipped configuration; shipped: "
          f"{', '.join(shipped_sweeps())}", file=sys.stderr)
    return 2
  args.config = str(path)
  try:
    cfg = load(args.config, args.set)
  except ConfigError as e:
    print(e, file=sys.stderr)
    return 2
  if args.dry_run:
    print(engine.describe(cfg))
    return 0
  _use_cache(args)
  out = Path(args.out or cfg.out or Path("runs") / "sweeps" / Path(args.config).stem)
  dist = engine.distributed_settings(cfg.distributed, args.distributed, coordinator_address=args.coordinator,
                                     num_processes=args.num_processes, process_id=args.process_id)
  try:
    summary = engine.sweep(cfg, out, quiet=args.quiet, distributed=dist)
  except SweepError as e:
    print(f"klrl sweep: {e}", file=sys.stderr)
    return 1 if isinstance(e, engine.ChunkFailed) else 2
  except KeyboardInterrupt:                    # the finished chunks are on disk, the run recorded as interrupted
    import shlex
    again = shlex.join(["klrl", "sweep", args.config, "--out", str(out)] + [a for s in args.set for a in ("--set", s)])
    print(f"klrl sweep: interrupted; the finished chunks are kept in {out}. Resume with: {again}", file=sys.stderr)
    return 130
  print(engine.report(summary))
  return 0


def _audit(args) -> int:
  import jax
  jax.config.update("jax_enable_x64", True)   # exact expectations in float64
  _use_cache(args)
  from klrl import autoregressive
  from klrl.report import audit

  if args.list:
    print("configurations (klrl audit --presets NAME ...), and the question each answers:")
    for name, question in autoregressive.QUESTIONS.items():
      print(f"  {name:30s} {question}")
    return 0
  unknown = [p for p in args.presets or () if p not in autoregressive.PRESETS]
  if unknown:
    print(f"klrl audit: unknown preset(s) {unknown}; known: {', '.join(autoregressive.PRESETS)}", file=sys.stderr)
    return 2
  bad = [f"{n} must be at least {low}, got {v}" for n, v, low in (
      ("--vocab", args.vocab, 2), ("--length", args.length, 1), ("--problems", args.problems, 1),
      ("--steps", 1 if args.steps is None else args.steps, 1)) if v < low]
  bad += [f"--beta must be > 0, got {b}" for b in args.beta if not b > 0]
  if bad:
    print("klrl audit: " + "; ".join(bad), file=sys.stderr)
    return 2
  if args.vocab ** args.length > 10 ** 5:
    print(f"klrl audit: --vocab ** --length = {args.vocab ** args.length} sequences; at most 1e5 are enumerated",
          file=sys.stderr)
    return 2
  family = audit.Family(args.vocab, args.length, args.problems, args.seed)
  rewards = ("binary", "real") if args.rewards == "both" else (args.rewards,)
  log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
  table = audit.rows(family, args.beta, rewards, args.presets, args.steps, log=log)
  text = audit.to_csv(table) if args.format == "csv" else audit.markdown(table)
  if args.out:
    Path(args.out).write_text(text)
    print(f"klrl audit: wrote {args.out}", file=sys.stderr)
  else:
    print(text)
  if args.figure:
    print(f"klrl audit: wrote {audit.figure(table, Path(args.figure))}", file=sys.stderr)
  return 0


def _merge(args) -> int:
  from klrl.sweep import SweepError, merge

  try:
    merged = merge(args.dirs, args.out)
  except SweepError as e:
    print(f"klrl merge: {e}", file=sys.stderr)
    return 2
  typed = f" (typed: {merged.parquet.name})" if merged.parquet else ""
  print(f"klrl merge: {merged.rows} rows in {merged.results}{typed}; manifest {merged.manifest}")
  return 0


def _plot(args) -> int:
  from klrl.sweep import SweepError
  from klrl.sweep.plot import plot

  where = dict(w.split("=", 1) for w in args.where)
  try:
    path = plot(args.results, args.x, args.y, args.group, where=where, out=args.out, logx=args.logx, logy=args.logy)
  except SweepError as e:
    print(f"klrl plot: {e}", file=sys.stderr)
    return 2
  print(f"klrl plot: wrote {path}")
  return 0


class _Version(argparse.Action):
  def __call__(self, parser, namespace, values, option_string=None):
    from klrl._info import describe
    print(describe())
    parser.exit()


def _cache_options(p) -> None:
  p.add_argument("--cache-dir", help="JAX's persistent compilation cache (default: $KLRL_CACHE_DIR, else ~/.cache/klrl/jax)")
  p.add_argument("--no-cache", action="store_true", help="compile without the persistent compilation cache")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="klrl", description=__doc__.splitlines()[0])
  parser.add_argument("--version", action=_Version, nargs=0,
                      help="print the versions, backend, devices and computation path, and exit")
  sub = parser.add_subparsers(dest="command", required=True)
  run = sub.add_parser("run", help="the theorem atlas: every report section (default: the shipped default.toml)")
  run.add_argument("--config", help="TOML configuration file")
  run.add_argument("--out", help="run directory (default: runs/<timestamp>)")
  run.add_argument("--sections", help="comma-separated subset of sections to run")
  run.add_argument("--scale", action="store_true", help="accelerator-sized instances")
  run.add_argument("--quiet", action="store_true", help="print only where the results went")
  _cache_options(run)

  sw = sub.add_parser("sweep", help="run (or resume) the sweep of a TOML configuration")
  sw.add_argument("config", nargs="?", help="sweep configuration: a TOML file, or the name of a shipped one (--list)")
  sw.add_argument("--list", action="store_true", help="list the shipped configurations and the registered experiments")
  sw.add_argument("--out", help="results directory (default: [run] out, else runs/sweeps/<config name>)")
  sw.add_argument("--quiet", action="store_true", help="no progress display")
  sw.add_argument("--dry-run", action="store_true", help="check the configuration and describe the grid only")
  sw.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="override a key of the configuration, VALUE in TOML (repeatable), e.g. --set grid.delta=[0.1,0.2] "
                       "--set fixed.vocab=64 --set run.chunk_size=8")
  sw.add_argument("--distributed", action="store_true",
                  help="multi-host: initialise jax.distributed (settings below, else from the cluster scheduler)")
  sw.add_argument("--coordinator", help="multi-host: address host:port of process 0 (JAX_COORDINATOR_ADDRESS)")
  sw.add_argument("--num-processes", type=int, help="multi-host: number of processes (JAX_NUM_PROCESSES)")
  sw.add_argument("--process-id", type=int, help="multi-host: index of this process (JAX_PROCESS_ID)")
  _cache_options(sw)

  au = sub.add_parser("audit", help="where each KL-penalty configuration of the trainers converges, on random "
                      "autoregressive problems (a table)")
  au.add_argument("--vocab", type=int, default=3, help="tokens V (default %(default)s)")
  au.add_argument("--length", type=int, default=4, help="tokens per sequence T (default %(default)s)")
  au.add_argument("--rewards", choices=("binary", "real", "both"), default="both", help="reward kind (default %(default)s)")
  au.add_argument("--beta", type=float, nargs="+", default=[0.05, 0.2, 1.0], help="KL coefficients (default %(default)s)")
  au.add_argument("--problems", type=int, default=4, help="random problems averaged over (default %(default)s)")
  au.add_argument("--seed", type=int, default=0)
  au.add_argument("--presets", nargs="+", metavar="NAME", help="configurations to audit (default: all; --list)")
  au.add_argument("--steps", type=int, help="steps of the exact dynamics (default: klrl.autoregressive.DEFAULT_STEPS)")
  au.add_argument("--format", choices=("md", "csv"), default="md")
  au.add_argument("--out", help="write the table here instead of printing it")
  au.add_argument("--figure", help="also draw KL(q_end || q*) per configuration as this PNG")
  au.add_argument("--list", action="store_true", help="list the configurations and the question each answers")
  au.add_argument("--quiet", action="store_true", help="no progress lines")
  _cache_options(au)

  mg = sub.add_parser("merge", help="merge the chunk files of a sweep (one directory or one per host)")
  mg.add_argument("dirs", nargs="+", help="results directories of the same configuration")
  mg.add_argument("--out", help="where to write results.csv and manifest.json (default: the first directory)")

  pl = sub.add_parser("plot", help="a quantity against a swept axis, grouped by another, as PNG")
  pl.add_argument("results", help="results.csv or a results directory")
  pl.add_argument("--x", required=True, help="column on the horizontal axis")
  pl.add_argument("--y", required=True, help="column on the vertical axis")
  pl.add_argument("--group", help="one line per value of this column")
  pl.add_argument("--where", action="append", default=[], metavar="COL=VALUE", help="keep matching rows (repeatable)")
  pl.add_argument("--logx", action="store_true")
  pl.add_argument("--logy", action="store_true")
  pl.add_argument("--out", help="PNG path (default: <results dir>/plots/...)")
  args = parser.parse_args(argv)
  if args.command == "plot" and any("=" not in w for w in args.where):
    parser.error("--where takes COL=VALUE")
  return {"run": _run, "sweep": _sweep, "audit": _audit, "merge": _merge, "plot": _plot}[args.command](args)


if __name__ == "__main__":
  sys.exit(main())
