"""Runs the benchmark suites: ``python -m benchmarks.run [--suite NAME ...] [--min-log2v N] [--max-log2v N]
[--out-dir DIR]``."""
from __future__ import annotations

import argparse
import importlib
import os

import jax

from benchmarks import harness

SUITES = ["tilted", "bon", "chains", "train", "sweep", "memoryless", "autoregressive", "markov", "startup"]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--suite", action="append", choices=SUITES, help="suite(s) to run (default: all)")
  parser.add_argument("--max-log2v", type=int, default=20, help="largest vocabulary is 2**N")
  parser.add_argument("--min-log2v", type=int, default=10, help="smallest vocabulary is 2**N")
  parser.add_argument("--max-baseline-log2v", type=int, default=22,
                      help="tilted suite: SciPy baselines up to vocabulary 2**N only (default %(default)s)")
  parser.add_argument("--max-states", type=int, default=None,
                      help="chains suite: largest dense chain of the spectra and solves (default: all sizes)")
  parser.add_argument("--sweep-log2v", type=int, default=None,
                      help="sweep suite: vocabulary 2**N (default 14, 10 with --quick)")
  parser.add_argument("--sweep-cpu-devices", type=int, default=8,
                      help="sweep suite: simulated CPU devices of its second measurement (0: skip it)")
  parser.add_argument("--max-markov-v", type=int, default=None,
                      help="markov suite: largest vocabulary of the scaled-CGF case (default 100, 30 with --quick)")
  parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (smoke test)")
  parser.add_argument("--rounds", type=int, default=None,
                      help="paired rounds per case in the tilted and bon suites (default 7, 3 from 2^18); "
                           "startup: rounds of its three processes (default 3, 1 with --quick)")
  parser.add_argument("--tag", default=None, help="name of the results file (default: the platform)")
  parser.add_argument("--out-dir", default=str(harness.RESULTS), help="folder of the results files (default: %(default)s)")
  parser.add_argument("--with-run", action="store_true",
                      help="startup suite: also time `klrl run` twice with one compilation cache (minutes)")
  parser.add_argument("--reuse-freed-memory", action="store_true",
                      help="keep freed large buffers in glibc's heap (no page faults on large outputs)")
  args = parser.parse_args(argv)
  if args.rounds is not None and args.rounds < 1:
    parser.error(f"argument --rounds: must be at least 1, got {args.rounds}")
  jax.config.update("jax_enable_x64", True)
  reuse = args.reuse_freed_memory and harness.reuse_freed_memory()
  if args.reuse_freed_memory and not reuse:
    print("--reuse-freed-memory: not available on this system (glibc's mallopt); running without it")
  load0 = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
  info, bw = harness.machine(), harness.copy_bandwidth()
  info["malloc"] = "freed buffers kept (mallopt)" if reuse else "system default"
  if os.environ.get("GLIBC_TUNABLES"):   # e.g. glibc.malloc.hugetlb=1, set before Python started
    info["malloc"] += f", GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']}"
  bandwidth = bw.get("device_copy_GBps", bw["host_copy_GBps"])
  print("machine:", info)
  print("copy bandwidth (GB/s, read + write):", {k: round(v, 1) for k, v in bw.items()})
  rows = []
  for name in args.suite or SUITES:
    suite = importlib.import_module(f"benchmarks.bench_{name}")
    for row in suite.run(args):
      print(harness.table([row], bandwidth).splitlines()[-1], flush=True)
      rows.append(row)
  if hasattr(os, "getloadavg"):   # other work on the machine shows here: judge the run by it
    info["load_average"] = {"start": load0, "end": round(os.getloadavg()[0], 2)}
  print()
  print(harness.table(rows, bandwidth))
  if not args.quick or args.tag:   # quick runs are saved only when named with --tag
    path = harness.save(rows, info, bw, args.tag or info["platform"], args.out_dir)
    print(f"\nsaved {path}.json and {path}.md")


if __name__ == "__main__":
  main()
