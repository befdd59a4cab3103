"""Startup benchmarks: what a fresh Python process pays before klrl's first result.

Every measurement runs in fresh processes (``sys.executable``, this environment passed through,
the repository root first on ``PYTHONPATH``), see :mod:`benchmarks.startup_child`.

- ``kl_constrained first call``: ``import klrl``, then the first and second calls of
  ``klrl.tilted.kl_constrained`` on a float64 problem of 8 x 4096
  (``klrl.problems.random_problem``, budgets at half of ``max_kl``), in three processes: a
  first and a second one sharing a fresh persistent compilation cache folder
  (``JAX_COMPILATION_CACHE_DIR``, with ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0`` and
  ``JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0`` so that every compiled function is eligible),
  and one without a cache (those variables removed). The run column is the first call
  (compile + run, blocked on); the baseline is the first call of the process without a cache,
  so the speed-up is uncached / cached. The compile column is first call minus second call.
  The project's target is a first call in the second process of at most 0.5 s
  (``target<=0.5s``). ``cache_files`` counts the cache folder's files after the first
  process; ``added_by_call`` those written by the first call itself (0: the cache refused it).
- ``cold compile: NAME``: first call minus second call of each public function of
  :data:`benchmarks.startup_child.CASES` on small inputs, one after another in one fresh
  process without a cache (after one trivial ``jit``, so that the first function does not carry
  the process's one-time costs alone). Functions listed later may reuse traces of helpers
  shared with earlier ones, so the figures are what each adds, in this order.
- ``klrl run`` (only with ``--with-run``: minutes on a small CPU): the whole command twice in a
  row with the same cache folder, passed through the variables above and also as
  ``--cache-dir`` where ``klrl run --help`` offers that option; the second run's baseline is the
  first. With ``--quick`` only its ``tilted`` section runs.

``--rounds N`` repeats the three processes of the first case N times (a fresh cache folder each
time); the table gives medians and the range of the per-round speed-ups.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import Row
from benchmarks.startup_child import CASES
from klrl import problems, tilted

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).resolve().with_name("startup_child.py")
CACHE_VARS = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")
TARGET_S = 0.5              # the project's target for the first call in a second process
BATCH, LOG2V = 8, 12
QUICK_FUNCTIONS = ("tilted.stats",)


def environment(cache_dir: Path | None = None) -> dict:
  """This process's environment for a child: the repository first on ``PYTHONPATH``, and the
  persistent cache on ``cache_dir`` (every entry eligible) or off (``None``)."""
  env = {k: v for k, v in os.environ.items() if k not in CACHE_VARS}
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
  if cache_dir is not None:
    env.update(dict(zip(CACHE_VARS, (str(cache_dir), "0", "0"))))
  return env


def child(args: list[str], cache_dir: Path | None = None, timeout: float = 900) -> dict:
  """Runs :mod:`benchmarks.startup_child` with ``args`` in a fresh process; its result."""
  done = subprocess.run([sys.executable, str(CHILD), *args], env=environment(cache_dir), cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)
  line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
  if done.returncode or not line:
    raise RuntimeError(f"startup child {args} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
  return json.loads(line[-1][len("RESULT "):])


def _median(runs: list[dict], key: str) -> float:
  return statistics.median(r[key] for r in runs)


def first_call_rows(rounds: int):
  """The three processes (cache cold, cache warm, no cache), ``rounds`` times; three rows."""
  jax.config.update("jax_enable_x64", True)
  logp, reward = problems.random_problem(jax.random.PRNGKey(0), BATCH, 2 ** LOG2V, dtype=jnp.float64)
  delta = 0.5 * tilted.max_kl(logp, reward)
  runs = {"cold": [], "warm": [], "none": []}
  with tempfile.TemporaryDirectory(prefix="klrl-startup-") as tmp:
    inputs = Path(tmp) / "inputs.npz"
    np.savez(inputs, logp=np.asarray(logp), reward=np.asarray(reward), delta=np.asarray(delta))
    for i in range(rounds):
      cache = Path(tmp) / f"cache{i}"
      cache.mkdir()
      runs["cold"].append(child(["first-call", str(inputs)], cache))
      runs["warm"].append(child(["first-call", str(inputs)], cache))
      runs["none"].append(child(["first-call", str(inputs)]))
  size = f"{BATCH}x2^{LOG2V}"
  none_first = _median(runs["none"], "first_s")
  labels = {"none": "no cache", "cold": "1st process, empty cache", "warm": "2nd process, same cache"}
  rows = []
  for key in ("none", "cold", "warm"):
    rs = runs[key]
    extra = {"import_s": _median(rs, "import_s"), "backend_s": _median(rs, "backend_s"),
             "second_call_ms": 1e3 * _median(rs, "second_s")}
    if key != "none":
      extra["cache_files"] = int(statistics.median(runs["cold"][i]["cache_files_after"] for i in range(rounds)))
      extra["added_by_call"] = int(statistics.median(r["cache_files_after"] - r["cache_files_before"] for r in rs))
    if key == "warm":
      extra[f"target<={TARGET_S}s"] = "met" if _median(rs, "first_s") <= TARGET_S else "missed"
    ratios = None if key == "none" else [n["first_s"] / r["first_s"] for n, r in zip(runs["none"], rs)]
    rows.append(Row("startup", f"kl_constrained first call, {labels[key]}", size,
                    statistics.median(r["first_s"] - r["second_s"] for r in rs), _median(rs, "first_s"),
                    "" if key == "none" else "first call, no cache", None if key == "none" else none_first,
                    extra=extra, ratios=ratios))
  return rows


def summary(rows: list[Row], rounds: int) -> str:
  """The first-call case as its own table, with the target as a column."""
  out = [f"startup: klrl.tilted.kl_constrained, float64 {BATCH} x 2^{LOG2V}, fresh processes "
         f"(medians of {rounds} round(s))", "",
         f"| process | import klrl s | backend s | first call s | second call ms | cache files | first call <= {TARGET_S} s |",
         "|" + "---|" * 7]
  for r in rows:
    e = r.extra
    out.append(f"| {r.case.split(', ', 1)[1]} | {e['import_s']:.2f} | {e['backend_s']:.3f} | {r.run_s:.3f} | "
               f"{e['second_call_ms']:.2f} | {e.get('cache_files', '')} | {'yes' if r.run_s <= TARGET_S else 'no'} |")
  return "\n".join(out)


def compile_rows(names) -> list[Row]:
  """Cold compile time of each function, in one fresh process without a cache."""
  res = child(["compile", *names])
  rows = []
  for name, f in res["functions"].items():
    rows.append(Row("startup", f"cold compile: {name}", f["size"], f["first_s"] - f["second_s"], f["second_s"], "", None,
                    extra={"first_call_s": f["first_s"]}))
  return rows


def cli_accepts_cache_dir() -> bool:
  """Whether ``klrl run --help`` offers ``--cache-dir``."""
  done = subprocess.run([sys.executable, "-m", "klrl.cli", "run", "--help"], env=environment(), cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  return "--cache-dir" in done.stdout


def klrl_run_rows(quick: bool) -> list[Row]:
  """``klrl run`` twice with the same cache folder, each in a fresh process."""
  option = cli_accepts_cache_dir()
  walls, results = [], []
  with tempfile.TemporaryDirectory(prefix="klrl-startup-run-") as tmp:
    cache = Path(tmp) / "cache"
    cache.mkdir()
    for i in range(2):
      cmd = [sys.executable, "-m", "klrl.cli", "run", "--quiet", "--out", str(Path(tmp) / f"run{i}")]
      cmd += ["--sections", "tilted"] if quick else []
      cmd += ["--cache-dir", str(cache)] if option else []
      t = time.perf_counter()
      done = subprocess.run(cmd, env=environment(cache), cwd=ROOT, capture_output=True, text=True, timeout=3600)
      walls.append(time.perf_counter() - t)
      if done.returncode not in (0, 1):   # 1: the run finished, a theorem check failed
        raise RuntimeError(f"klrl run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
      results.append({"rc": done.returncode, "cache_files": sum(1 for p in cache.iterdir() if p.is_file())})
  size = "tilted section" if quick else "default config"
  via = "--cache-dir and env" if option else "env"
  return [Row("startup", "klrl run, 1st process, empty cache", size, None, walls[0], "", None,
              extra=results[0] | {"cache": via}),
          Row("startup", "klrl run, 2nd process, same cache", size, None, walls[1], "klrl run, 1st process", walls[0],
              extra=results[1] | {"cache": via})]


def run(args):
  rounds = args.rounds or (1 if args.quick else 3)
  rows = first_call_rows(rounds)
  yield from rows
  print(summary(rows, rounds), flush=True)
  yield from compile_rows(QUICK_FUNCTIONS if args.quick else CASES)
  if getattr(args, "with_run", False):
    yield from klrl_run_rows(args.quick)
