"""The sweep engine: rows against the library, sharding, multi-host, kill and resume, merge, plots."""
import csv
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from klrl import bon, cli, problems, tilted
from klrl.sweep import EXPERIMENTS, Param, SweepError, config, engine, grid, merge, store
from klrl.sweep.experiments import Experiment
from klrl.sweep.progress import Progress

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))

STATS = """
experiment = "tilted.stats"
[fixed]
vocab = 48
[grid]
seed = { seeds = 3 }
beta = { logrange = [0.05, 20.0, 7] }
[run]
chunk_size = 4
"""

FRONTIER = """
experiment = "tilted.frontier"
[fixed]
vocab = 200
relative = true
ties = 2
[grid]
seed = { seeds = 3 }
delta = { logrange = [1e-4, 2.0, 9] }
[run]
chunk_size = 5
"""

BON = """
experiment = "bon.stats"
[fixed]
vocab = 64
[grid]
ties = [0, 2]
seed = { seeds = 2 }
n = { logrange = [1.0, 1e8, 5] }
[run]
chunk_size = 8
"""

# Slow enough chunks (many, each a few ms) that a kill lands mid-way.
KILL = """
experiment = "tilted.stats"
[fixed]
vocab = 32768
[grid]
seed = { seeds = 50 }
beta = [0.5, 1.0, 2.0, 4.0]
[run]
chunk_size = 2
"""


def cfg_of(text, path):
  path.write_text(text)
  return config.load(path)


def table(path):
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  return rows


def klrl(*args):
  return [sys.executable, "-m", "klrl.cli", *map(str, args)]


def sweep_in_process(text, out, name="c.toml"):
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  cfg = cfg_of(text, out.parent / name)
  return cfg, engine.sweep(cfg, out, quiet=True)


def chunk_log(out):
  return [json.loads(line) for p in sorted(Path(out).glob("log-p*.jsonl")) for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def stats_run(tmp_path_factory):
  base = tmp_path_factory.mktemp("stats")
  cfg, summary = sweep_in_process(STATS, base / "out")
  return cfg, summary


@pytest.fixture(scope="module")
def frontier_run(tmp_path_factory):
  base = tmp_path_factory.mktemp("frontier")
  cfg, summary = sweep_in_process(FRONTIER, base / "out")
  return cfg, summary


# ---------------------------------------------------------------------------------------------
# Rows.

@pytest.mark.slow
def test_stats_rows_equal_direct_library_calls(stats_run):
  cfg, summary = stats_run
  rows = table(summary.merged.results)
  assert [int(r["point"]) for r in rows] == list(range(cfg.size)) == list(range(21))
  direct = direct_stats(rows, jnp.float64)
  for name in ("log_z", "kl", "mean_reward", "var_reward", "entropy"):
    got = np.array([float(r[name]) for r in rows])
    np.testing.assert_allclose(got, np.asarray(getattr(direct, name)), rtol=1e-13, atol=1e-15, err_msg=name)
  # every parameter is in every row, defaults included
  assert set(rows[0]) >= {"point", "seed", "beta", "vocab", "problem", "temperature", "ties", "exponent"}
  assert {r["vocab"] for r in rows} == {"48"} and {r["problem"] for r in rows} == {"random"}


@pytest.mark.slow
def test_bon_rows_equal_direct_library_calls(tmp_path):
  cfg, summary = sweep_in_process(BON, tmp_path / "out")
  rows = table(summary.merged.results)
  assert len(rows) == cfg.size == 20
  for ties in (0, 2):
    sel = [r for r in rows if int(r["ties"]) == ties]
    pairs = [problems.random_problem(jax.random.PRNGKey(int(r["seed"])), 1, 64, ties=ties) for r in sel]
    n = np.array([float(r["n"]) for r in sel])
    f = bon.against_frontier(jnp.concatenate([p[0] for p in pairs]), jnp.concatenate([p[1] for p in pairs]), n)
    # R has infinite slope at 0: at N = 1 a rounding error e ~ 1e-16 in KL_BoN (which depends on
    # how the batch is fused) moves R(KL_BoN) and the gap by sqrt(2 Var(r) e) ~ 1e-8.
    for name, atol in (("kl", 1e-14), ("mean_reward", 1e-14), ("win_rate", 1e-14),
                       ("frontier", 1e-7), ("gap", 1e-7), ("kl_to_tilted", 1e-7)):
      got = np.array([float(r[name]) for r in sel])
      np.testing.assert_allclose(got, np.asarray(getattr(f, name)), rtol=1e-12, atol=atol, err_msg=name)
    np.testing.assert_allclose([float(r["kl_bound"]) for r in sel], np.asarray(bon.kl_bound(jnp.asarray(n))), rtol=1e-14)
    assert all(float(r["kl"]) <= float(r["kl_bound"]) + 1e-13 and float(r["gap"]) >= -1e-12 for r in sel)


@pytest.mark.slow
def test_frontier_rows_satisfy_the_closed_form(frontier_run):
  cfg, summary = frontier_run
  rows = table(summary.merged.results)
  assert len(rows) == cfg.size == 27
  for r in rows:
    delta, dmax, budget, kl = (float(r[k]) for k in ("delta", "delta_max", "budget", "kl"))
    assert budget == pytest.approx(delta * dmax, rel=1e-15)
    saturated = r["saturated"] == "True"
    assert saturated == (delta >= 1.0)
    if saturated:
      assert float(r["beta"]) == 0.0 and r["lam"] == "inf" and kl == pytest.approx(dmax, rel=1e-14)
    else:
      assert abs(kl - budget) <= 1e-10 * max(1.0, budget)
      assert float(r["beta"]) * float(r["lam"]) == pytest.approx(1.0, rel=1e-14)
  # the frontier increases with the budget, for each instance
  for seed in "012":
    f = [float(r["frontier"]) for r in rows if r["seed"] == seed]
    assert np.all(np.diff(f) >= -1e-12)


def test_manifest_records_config_versions_devices_and_chunks(stats_run):
  cfg, summary = stats_run
  m = json.loads(summary.merged.manifest.read_text())
  assert m["digest"] == cfg.digest() and m["config"] == cfg.resolved()
  assert {"python", "klrl", "jax", "jaxlib", "numpy"} <= set(m["versions"])
  (run,) = m["processes"][0]["runs"]
  assert run["status"] == "finished" and run["start"] <= run["end"] and run["devices"][0]["platform"] == "cpu"
  assert [e["chunk"] for e in m["chunk_log"]] == list(range(summary.chunks)) == list(range(6))
  assert sum(e["points"] for e in m["chunk_log"]) == 21 and m["unlogged"] == []
  assert m["chunk_log"][0]["compile_seconds"] > 0 and all(e["compile_seconds"] == 0 for e in m["chunk_log"][1:])


def direct_stats(rows, dtype):
  """``tilted.stats`` on the rows' instances, computed in float64 from instances drawn in ``dtype``."""
  pairs = [problems.random_problem(jax.random.PRNGKey(int(r["seed"])), 1, 48, dtype=dtype) for r in rows]
  logp = jnp.concatenate([p[0] for p in pairs]).astype(jnp.float64)
  reward = jnp.concatenate([p[1] for p in pairs]).astype(jnp.float64)
  return tilted.stats(logp, reward, np.array([float(r["beta"]) for r in rows]))


@pytest.mark.slow
def test_float32_precision(tmp_path):
  _, s32 = sweep_in_process(STATS + 'precision = "float32"\n', tmp_path / "out")
  rows = table(s32.merged.results)
  direct = direct_stats(rows, jnp.float32)
  for k in ("kl", "mean_reward", "entropy", "log_z"):
    got = np.array([float(r[k]) for r in rows])
    np.testing.assert_allclose(got, np.asarray(getattr(direct, k)), rtol=1e-5, atol=1e-6, err_msg=k)
  assert all(str(np.float32(r["kl"])) == r["kl"] for r in rows)   # shortest float32 decimals


def test_resume_is_a_no_op_when_finished_and_a_changed_config_is_refused(stats_run, tmp_path, capsys):
  cfg, summary = stats_run
  out = tmp_path / "out"
  shutil.copytree(summary.out, out)
  before = (out / "results.csv").read_bytes()
  again = engine.sweep(cfg, out, quiet=True)
  assert (again.computed_chunks, again.skipped_chunks, again.merged.rows) == (0, 6, 21)
  assert (out / "results.csv").read_bytes() == before
  changed = tmp_path / "changed.toml"
  changed.write_text(STATS.replace("seeds = 3", "seeds = 4"))
  assert cli.main(["sweep", str(changed), "--out", str(out), "--quiet"]) == 2
  err = capsys.readouterr().err
  assert "different configuration" in err and "grid.seed: [0, 1, 2] -> [0, 1, 2, 3]" in err
  assert (out / "results.csv").read_bytes() == before


# ---------------------------------------------------------------------------------------------
# Extension: a new experiment is one function; errors inside it surface with the argument named.

@pytest.fixture
def toy(monkeypatch):
  def fn(p, dtype):
    logp = jnp.log(jnp.array([0.25, 0.75], dtype))
    reward = jnp.array([0.0, 1.0], dtype) * p["scale"]
    return dict(log_z=tilted.log_partition(logp, reward, p["beta"]), doubled=2 * p["n"])

  params = dict(beta=Param(float), scale=Param(float, default=1.0), n=Param(int, default=1))
  monkeypatch.setitem(EXPERIMENTS, "toy.log_z", Experiment("toy.log_z", fn, params, ("log_z", "doubled"), ""))


def test_a_registered_experiment_runs_and_a_bad_point_fails_clearly(toy, tmp_path):
  cfg, s = sweep_in_process('experiment = "toy.log_z"\n[grid]\nbeta = [1.0, 2.0]\nn = [1, 2, 3]\n', tmp_path / "ok")
  rows = table(s.merged.results)
  assert [(r["beta"], r["n"], r["doubled"]) for r in rows][:3] == [("1.0", "1", "2"), ("1.0", "2", "4"), ("1.0", "3", "6")]
  assert float(rows[0]["log_z"]) == pytest.approx(np.log(0.25 + 0.75 * np.e), rel=1e-15)
  text = 'experiment = "toy.log_z"\n[grid]\nbeta = [1.0, 2.0, -1.0, 3.0]\n[run]\nchunk_size = 1\n'
  with pytest.raises(engine.ChunkFailed, match=r"^chunk 2 \(grid points 2..2\) failed: klrl.tilted.log_partition: "
                                                r"argument 'beta' must be > 0 \(got a value <= 0 or NaN\)$"):
    sweep_in_process(text, tmp_path / "bad")
  done = sorted(p.name for p in (tmp_path / "bad" / "chunks").glob("c*.csv"))
  assert done == ["c000000.csv", "c000001.csv"]
  (run,) = json.loads((tmp_path / "bad" / "manifest-p0.json").read_text())["runs"]
  assert run["status"] == "failed" and "beta" in run["error"]


# ---------------------------------------------------------------------------------------------
# Merge, progress, plots.

def test_merge_refuses_missing_chunks_and_other_configurations(stats_run, frontier_run, tmp_path):
  _, s = stats_run
  copy = tmp_path / "copy"
  shutil.copytree(s.out, copy)
  (copy / "chunks" / "c000003.csv").unlink()
  with pytest.raises(SweepError, match=r"1 of 6 chunks are missing \(first: \[3\]\)"):
    merge([copy])
  assert merge([copy, s.out], tmp_path / "m").rows == 21       # another host's shard completes it
  with pytest.raises(SweepError, match="different configurations"):
    merge([s.out, frontier_run[1].out])


def test_progress_reports_throughput_and_eta():
  buf = io.StringIO()
  p = Progress(100, 4, stream=buf, every=0.0)
  for _ in range(4):
    time.sleep(0.01)
    p.update(25)
  lines = buf.getvalue().splitlines()
  assert len(lines) == 4 and "4/4 chunks, 100/100 points (100%)" in lines[-1]
  assert "points/s" in lines[1] and "ETA" in lines[1] and float(lines[1].split(" points/s")[0].split()[-1].replace(",", "")) > 0
  quiet = io.StringIO()
  q = Progress(10, 1, stream=quiet, quiet=True, every=0.0)
  q.update(10)
  assert quiet.getvalue() == ""


def test_plot_writes_a_png(stats_run, tmp_path, capsys):
  _, s = stats_run
  png = tmp_path / "kl.png"
  assert cli.main(["plot", str(s.out), "--x", "beta", "--y", "kl", "--group", "seed", "--logx", "--out", str(png)]) == 0
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
  assert cli.main(["plot", str(s.out), "--x", "beta", "--y", "kl", "--where", "seed=1"]) == 0
  assert (s.out / "plots" / "kl_vs_beta.png").exists()
  assert cli.main(["plot", str(s.out), "--x", "beta", "--y", "klx"]) == 2
  assert "no column 'klx'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Sharding over 8 simulated devices, two processes with jax.distributed, kill -9 and resume.

def devices(n):
  """XLA_FLAGS simulating ``n`` CPU devices (first: XLA stops reading flags at a malformed one)."""
  return f"--xla_force_host_platform_device_count={n} " + ENV.get("XLA_FLAGS", "")


def test_8_devices_give_the_same_rows_as_one(frontier_run, tmp_path):
  cfg, ref = frontier_run
  (tmp_path / "f.toml").write_text(FRONTIER)
  env = dict(ENV, XLA_FLAGS=devices(8))
  r = subprocess.run(klrl("sweep", tmp_path / "f.toml", "--out", tmp_path / "out", "--quiet"), env=env,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert (tmp_path / "out" / "results.csv").read_text() == ref.merged.results.read_text()
  (run,) = json.loads((tmp_path / "out" / "manifest.json").read_text())["processes"][0]["runs"]
  assert len(run["devices"]) == 8


PER_DEVICE = """
import json, re, sys
import jax, numpy as np
from klrl.sweep import config, engine, grid
jax.config.update("jax_enable_x64", True)
report = {}
for path in sys.argv[1:]:
  cfg = config.load(path)
  g = grid.expand(cfg)
  c = grid.plan(cfg, g)[0]
  c = c._replace(points=c.points[:4])             # two points per device
  key = engine._static(cfg, c)
  f, sharding, _ = engine.kernel(cfg.experiment, key, cfg.precision, tuple(jax.local_devices()))
  x = engine.inputs(cfg, g, c, 4)
  hlo = f.lower(jax.device_put(x, sharding)).compile().as_text()
  out, codes = f(jax.device_put(x, sharding))
  assert not np.asarray(codes).any()
  point = jax.jit(engine.point_fn(cfg.experiment, key, cfg.precision))
  alone = [point({k: v[i] for k, v in x.items()})[0] for i in range(4)]   # each point by itself
  differ = sorted({k for i, a in enumerate(alone) for k in a
                   if not np.allclose(np.asarray(out[k])[i], a[k], rtol=1e-10, atol=1e-13)})
  report[cfg.experiment] = dict(collectives=re.findall(r"all-reduce|all-gather|all-to-all|collective-permute|reduce-scatter", hlo),
                                differ=differ, callbacks="callback" in hlo.lower())
print("REPORT " + json.dumps(report))
"""


@pytest.mark.slow
def test_every_experiment_runs_on_each_device_without_collectives():
  """The sweep kernel (``shard_map``) of each registered experiment, over 2 simulated devices: no
  collective operation in the compiled program (left to the partitioner, ``jit(vmap)`` has some
  in every experiment), no host callback (the persistent compilation cache refuses those), and each
  point's results those of the experiment evaluated on it alone."""
  configs = {config.load(p).experiment: str(p) for p in sorted((ROOT / "configs" / "sweeps").glob("*.toml"))
             if "large" not in p.name}
  assert sorted(configs) == sorted(EXPERIMENTS)
  r = subprocess.run([sys.executable, "-c", PER_DEVICE, *configs.values()], env=dict(ENV, XLA_FLAGS=devices(2)),
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads(r.stdout.split("REPORT ", 1)[1])
  assert sorted(report) == sorted(EXPERIMENTS)
  for name, rep in report.items():
    assert rep["collectives"] == [] and rep["differ"] == [], (name, rep)
    assert not rep["callbacks"], (name, "a host callback keeps the kernel out of the persistent compilation cache")


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_cover_the_grid_once_and_merge(stats_run, tmp_path):
  cfg, ref = stats_run
  (tmp_path / "s.toml").write_text(STATS)
  port = free_port()
  procs = []
  for i in range(2):
    env = dict(ENV, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i),
               XLA_FLAGS=devices(2))
    procs.append(subprocess.Popen(klrl("sweep", tmp_path / "s.toml", "--out", tmp_path / f"host{i}", "--quiet"),
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
  assert "klrl merge" in outs[0][0]           # process 0 cannot see host 1's shard: it says how to merge
  ids = [{e["chunk"] for e in chunk_log(tmp_path / f"host{i}")} for i in range(2)]
  assert ids[0] == {0, 2, 4} and ids[1] == {1, 3, 5}
  for i in range(2):
    m = json.loads((tmp_path / f"host{i}" / "manifest-p{}.json".format(i)).read_text())
    assert (m["process"], m["num_processes"]) == (i, 2)
    assert m["runs"][0]["global_devices"] == 4 and len(m["runs"][0]["devices"]) == 2
  assert cli.main(["merge", str(tmp_path / "host0"), str(tmp_path / "host1"), "--out", str(tmp_path / "merged")]) == 0
  assert (tmp_path / "merged" / "results.csv").read_text() == ref.merged.results.read_text()
  m = json.loads((tmp_path / "merged" / "manifest.json").read_text())
  assert sorted(e["chunk"] for e in m["chunk_log"]) == list(range(6))
  assert sorted(p["process"] for p in m["processes"]) == [0, 1]


@pytest.mark.slow
def test_kill_9_then_resume_loses_duplicates_and_recomputes_nothing(tmp_path, capsys):
  cfg = cfg_of(KILL, tmp_path / "k.toml")
  total = len(grid.plan(cfg, grid.expand(cfg)))
  out = tmp_path / "out"
  cmd = klrl("sweep", tmp_path / "k.toml", "--out", out, "--quiet")
  proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 300
  while not list((out / "chunks").glob("c*.csv")):
    assert proc.poll() is None, proc.communicate()
    assert time.monotonic() < deadline
    time.sleep(0.002)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  before = {int(p.name[1:7]): (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "chunks").glob("c*.csv")}
  assert 0 < len(before) < total, "the kill did not land mid-way"
  assert not (out / "results.csv").exists()

  r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert f"({len(before)} already done)" in r.stdout
  # finished chunks untouched, nothing computed twice, nothing lost
  for c, (data, mtime) in before.items():
    p = out / "chunks" / f"c{c:06d}.csv"
    assert (p.read_bytes(), p.stat().st_mtime_ns) == (data, mtime)
  log = chunk_log(out)
  counts = Counter(e["chunk"] for e in log)
  assert max(counts.values()) == 1
  second = {e["chunk"] for e in log if e["run"] == 2}
  assert second.isdisjoint(before) and second == set(range(total)) - set(before)
  m = json.loads((out / "manifest.json").read_text())
  assert set(m["unlogged"]) <= set(before) and len(m["unlogged"]) <= 1
  assert sorted(p.name for p in (out / "chunks").iterdir()) == [f"c{c:06d}.csv" for c in range(total)]  # no temporaries
  assert [r["status"] for r in m["processes"][0]["runs"]] == ["interrupted", "finished"]
  # every grid point exactly once, in order, with its own parameters (values: see the oracle tests)
  rows = table(out / "results.csv")
  g = grid.expand(cfg)
  assert [int(r["point"]) for r in rows] == list(range(cfg.size))
  assert [(int(r["seed"]), float(r["beta"])) for r in rows] == list(zip(g.columns["seed"].tolist(), g.columns["beta"].tolist()))
  assert all(r["kl"] and r["entropy"] for r in rows)

  # a changed configuration is refused, and nothing is touched
  snapshot = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
  (tmp_path / "k.toml").write_text(KILL.replace("vocab = 32768", "vocab = 16384"))
  assert cli.main(["sweep", str(tmp_path / "k.toml"), "--out", str(out), "--quiet"]) == 2
  err = capsys.readouterr().err
  assert "different configuration" in err and "fixed.vocab: 32768 -> 16384" in err and "Refusing to mix" in err
  assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot


def test_distributed_settings_precedence(monkeypatch):
  for v in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(v, raising=False)
  assert engine.distributed_settings(None) is None
  assert engine.distributed_settings(None, True) == {}               # --distributed: the scheduler's values
  table = dict(coordinator_address="a:1", num_processes=4)
  assert engine.distributed_settings(table) == table
  monkeypatch.setenv("JAX_NUM_PROCESSES", "8")
  monkeypatch.setenv("JAX_PROCESS_ID", "3")
  assert engine.distributed_settings(table) == dict(coordinator_address="a:1", num_processes=8, process_id=3)
  assert engine.distributed_settings(table, process_id=5, coordinator_address=None)["process_id"] == 5
  assert engine.distributed_settings(None) == dict(num_processes=8, process_id=3)


# ---------------------------------------------------------------------------------------------
# Damaged or mixed results directories: refused naming the file, or recomputed where safe.

def _damage(path: Path, how: str) -> None:
  """Damages a chunk file in one of the ways a disk, a copy or a hand edit can."""
  lines = path.read_text().splitlines(keepends=True)
  if how == "empty":
    path.write_bytes(b"")
  elif how == "binary":
    path.write_bytes(np.random.default_rng(0).bytes(400))
  elif how == "truncated":                     # cut in the middle of a row
    text = "".join(lines)
    path.write_text(text[: len(text) - len(lines[-1]) // 2 - 1])
  elif how == "row_cut":                       # a row with 5 of its columns
    lines[2] = ",".join(lines[2].split(",")[:5]) + "\n"
    path.write_text("".join(lines))
  elif how == "missing_row":
    path.write_text("".join(lines[:-1]))
  elif how == "extra_row":
    path.write_text("".join(lines + [lines[-1]]))
  elif how == "point_not_integer":
    lines[2] = "1.5" + lines[2][lines[2].index(","):]
    path.write_text("".join(lines))
  elif how == "point_negative":
    lines[2] = "-3" + lines[2][lines[2].index(","):]
    path.write_text("".join(lines))
  elif how == "point_swapped":                 # the parameters no longer match the point index
    first, second = lines[2].split(",", 1), lines[3].split(",", 1)
    lines[2], lines[3] = first[0] + "," + second[1], second[0] + "," + first[1]
    path.write_text("".join(lines))
  elif how == "parameter_changed":
    cells = lines[2].split(",")
    cells[2] = repr(float(cells[2]) * 1.5)
    lines[2] = ",".join(cells)
    path.write_text("".join(lines))
  elif how == "output_text":
    cells = lines[2].rstrip("\n").split(",")
    cells[-1] = "oops"
    lines[2] = ",".join(cells) + "\n"
    path.write_text("".join(lines))
  elif how == "no_tag":                        # the rows without their first line
    path.write_text("".join(lines[1:]))
  elif how == "other_digest":
    lines[0] = lines[0].replace(lines[0].split(" of ")[1][:16], "0123456789abcdef")
    path.write_text("".join(lines))
  else:
    raise ValueError(how)


DAMAGES = ["empty", "binary", "truncated", "row_cut", "missing_row", "extra_row", "point_not_integer", "point_negative",
           "point_swapped", "parameter_changed", "output_text", "no_tag"]


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_chunk_is_refused_by_merge_and_recomputed_on_resume(stats_run, tmp_path, how, capsys):
  cfg, summary = stats_run
  out = tmp_path / "out"
  shutil.copytree(summary.out, out)
  (out / "results.csv").unlink()
  chunk = out / "chunks" / "c000002.csv"
  _damage(chunk, how)
  with pytest.raises(SweepError, match=rf"chunk file {re.escape(str(chunk))} "):
    merge([out])
  assert not (out / "results.csv").exists()
  # a resumed sweep recomputes that chunk (and only it), naming it, and the merge is whole again
  again = engine.sweep(cfg, out, quiet=True)
  assert f"chunk file {chunk}" in capsys.readouterr().err
  assert (again.computed_chunks, again.skipped_chunks) == (1, 5)
  assert (out / "results.csv").read_bytes() == (summary.out / "results.csv").read_bytes()


def test_chunks_of_another_configuration_are_refused_with_or_without_sweep_json(stats_run, tmp_path, capsys):
  cfg, summary = stats_run
  other = tmp_path / "other.toml"
  other.write_text(STATS.replace("vocab = 48", "vocab = 40"))
  for what in ("deleted", "replaced", "truncated"):
    out = tmp_path / what
    shutil.copytree(summary.out, out)
    if what == "deleted":
      (out / "sweep.json").unlink()
    elif what == "replaced":          # by the sweep.json of the other configuration
      ocfg = config.load(other)
      fresh = tmp_path / "fresh"
      store.prepare(fresh, ocfg, ocfg.size, len(grid.plan(ocfg, grid.expand(ocfg))))
      shutil.copy(fresh / "sweep.json", out / "sweep.json")
    else:
      text = (out / "sweep.json").read_text()
      (out / "sweep.json").write_text(text[: len(text) // 2])
    snapshot = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert cli.main(["sweep", str(other), "--out", str(out), "--quiet"]) == 2, what
    err = capsys.readouterr().err
    if what == "truncated":
      assert f"{out / 'sweep.json'} is damaged" in err
    else:
      assert "holds chunks of another configuration" in err and "Refusing to mix" in err, (what, err)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot     # nothing touched
    if what != "deleted":
      with pytest.raises(SweepError, match=r"sweep.json|another configuration|computed under configuration"):
        merge([out])
  # the same configuration adopts its own chunks again once sweep.json is gone
  out = tmp_path / "deleted"
  again = engine.sweep(cfg, out, quiet=True)
  assert (again.computed_chunks, again.skipped_chunks) == (0, 6)
  assert (out / "results.csv").read_bytes() == (summary.out / "results.csv").read_bytes()


def test_a_chunk_of_another_digest_is_refused_by_merge_and_resume(stats_run, tmp_path, capsys):
  cfg, summary = stats_run
  out = tmp_path / "out"
  shutil.copytree(summary.out, out)
  _damage(out / "chunks" / "c000004.csv", "other_digest")
  with pytest.raises(SweepError, match=r"c000004.csv was computed under configuration 0123456789abcdef"):
    merge([out])
  with pytest.raises(SweepError, match=r"holds chunks of another configuration \(digest 0123456789abcdef: 1 files, first c000004.csv"):
    engine.sweep(cfg, out, quiet=True)


def test_damaged_logs_and_manifests(stats_run, tmp_path):
  cfg, summary = stats_run
  out = tmp_path / "out"
  shutil.copytree(summary.out, out)
  with open(out / "log-p0.jsonl", "a") as f:
    f.write('{"chunk": "x"}\n[1, 2]\n{"chunk": 3, "run": 1, "poi')       # foreign and torn lines are skipped
  assert merge([out]).rows == 21
  (out / "manifest-p0.json").write_text("{not json")
  with pytest.raises(SweepError, match=r"manifest-p0.json is damaged.*delete it"):
    merge([out])


def test_plot_refuses_a_damaged_table_naming_it(stats_run, tmp_path):
  from klrl.sweep.plot import plot
  _, summary = stats_run
  out = tmp_path / "out"
  shutil.copytree(summary.out, out)
  lines = (out / "results.csv").read_text().splitlines(keepends=True)
  (out / "results.csv").write_text("".join(lines[:5]) + ",".join(lines[5].split(",")[:3]) + "\n")
  with pytest.raises(SweepError, match=r"results.csv line 6 has 3 of \d+ columns"):
    plot(out, "beta", "kl")
  (out / "results.csv").write_bytes(np.random.default_rng(1).bytes(500))
  with pytest.raises(SweepError, match=r"results.csv is not a readable CSV table"):
    plot(out, "beta", "kl")


# ---------------------------------------------------------------------------------------------
# Typed results: results.parquet beside results.csv, klrl.sweep.load_results.

FRONTIER_TYPES = dict(point="int64", seed="int64", delta="float64", vocab="int64", problem="string",
                      temperature="float64", ties="int64", exponent="float64", relative="bool", budget="float64",
                      frontier="float64", beta="float64", lam="float64", kl="float64", delta_max="float64",
                      saturated="bool", iterations="float64")


def as_typed(text, kind):
  return {"int64": int, "float64": float, "bool": lambda v: {"True": True, "False": False}[v], "string": str}[kind](text)


def test_merge_writes_a_typed_parquet_table(frontier_run):
  import pyarrow.parquet as pq
  cfg, summary = frontier_run
  assert summary.merged.parquet == summary.out / "results.parquet"
  t = pq.read_table(summary.merged.parquet)
  arrow = {"int64": "int64", "float64": "double", "bool": "bool", "string": "string"}
  assert {f.name: str(f.type) for f in t.schema} == {k: arrow[v] for k, v in FRONTIER_TYPES.items()}
  assert list(t.column_names) == list(table(summary.merged.results)[0])            # the CSV's columns, in order
  assert t.schema.metadata[b"klrl.digest"] == cfg.digest().encode()
  rows = table(summary.merged.results)
  for name, kind in FRONTIER_TYPES.items():       # every value is the CSV's, typed
    got = t.column(name).to_pylist()
    want = [as_typed(r[name], kind) for r in rows]
    assert got == want, name


def test_load_results_gives_the_same_typed_frame_from_parquet_and_csv(frontier_run, tmp_path):
  from klrl.sweep import load_results
  _, summary = frontier_run
  frame = load_results(summary.out)
  strings = str(frame["problem"].dtype)             # pandas 3: "str"; pandas 2: "object"
  assert strings in ("str", "object")
  assert {k: str(v) for k, v in frame.dtypes.items()} == {k: strings if v == "string" else v for k, v in FRONTIER_TYPES.items()}
  rows = table(summary.merged.results)
  assert len(frame) == len(rows) == 27
  for name, kind in FRONTIER_TYPES.items():
    assert frame[name].tolist() == [as_typed(r[name], kind) for r in rows], name
  # the CSV typed by the configuration beside it (here and under `klrl merge --out`) is the same frame
  assert load_results(summary.merged.results).equals(frame)
  assert (load_results(summary.merged.results).dtypes == frame.dtypes).all()
  assert load_results(summary.merged.parquet).equals(frame)
  merged = tmp_path / "merged"
  merge([summary.out], merged)
  (merged / "results.parquet").unlink()
  assert load_results(merged).equals(frame) and (load_results(merged).dtypes == frame.dtypes).all()
  # a CSV alone: each column the narrowest type that holds its values
  shutil.copy(summary.merged.results, tmp_path / "alone.csv")
  alone = load_results(tmp_path / "alone.csv")
  assert str(alone["iterations"].dtype) == "int64" and alone["saturated"].dtype == bool
  assert alone.drop(columns="iterations").equals(frame.drop(columns="iterations"))
  with pytest.raises(SweepError, match="results.csv not found"):
    load_results(tmp_path)


def test_load_results_names_a_value_that_does_not_fit_its_column(stats_run, tmp_path):
  from klrl.sweep import load_results
  _, summary = stats_run
  out = tmp_path / "out"
  shutil.copytree(summary.out, out)
  (out / "results.parquet").unlink()
  text = (out / "results.csv").read_text().splitlines(keepends=True)
  cells = text[3].split(",")
  cells[1] = "1.5"                                # the integer seed of row 3
  text[3] = ",".join(cells)
  (out / "results.csv").write_text("".join(text))
  with pytest.raises(SweepError, match=r"results.csv: column 'seed' does not hold int values"):
    load_results(out)


def test_merge_without_pyarrow_keeps_the_csv_and_says_how_to_get_parquet(stats_run, tmp_path, monkeypatch, capsys):
  from klrl.sweep import load_results
  _, summary = stats_run
  typed = load_results(summary.out)
  out = tmp_path / "out"
  shutil.copytree(summary.out, out)
  assert (out / "results.parquet").exists()           # from the merge with pyarrow: stale after this one
  monkeypatch.setitem(sys.modules, "pyarrow", None)   # `import pyarrow` raises ImportError
  monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
  capsys.readouterr()
  merged = merge([out])
  err = capsys.readouterr().err
  assert merged.parquet is None and merged.rows == 21 and not (out / "results.parquet").exists()
  assert err.count("\n") == 1 and "pyarrow is not installed" in err and "pip install 'klrl[frames]'" in err
  assert (out / "results.csv").read_bytes() == (summary.out / "results.csv").read_bytes()
  again = load_results(out)                            # from the CSV, typed alike
  assert again.equals(typed) and (again.dtypes == typed.dtypes).all()
  assert cli.main(["merge", str(out)]) == 0
  assert "rows in" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# klrl sweep --set, the compile phase in the progress display, Ctrl-C.

def test_set_overrides_the_configuration_and_is_checked(tmp_path, capsys):
  path = tmp_path / "s.toml"
  path.write_text(STATS)
  sets = ["--set", "grid.beta=[0.5, 2.0]", "--set", "fixed.vocab=12", "--set", "run.chunk_size=3"]
  assert cli.main(["sweep", str(path), *sets, "--dry-run"]) == 0
  text = capsys.readouterr().out
  assert text.splitlines()[0] == f"{path} --set grid.beta=[0.5, 2.0] --set fixed.vocab=12 --set run.chunk_size=3:"
  assert "6 grid points, 2 chunks of at most 3" in text and "swept beta: 2 values [0.5 .. 2.0]" in text
  assert "fixed vocab = 12" in text
  assert cli.main(["sweep", str(path), "--set", "fixed.vocab=1", "--set", "grid.seed=[]", "--set", "fixed.n=", "--dry-run"]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"{path} --set fixed.vocab=1 --set grid.seed=[] --set fixed.n=: 3 errors")
  assert "  fixed.vocab: expected an integer >= 2, got 1" in err and "  grid.seed: expected a non-empty list" in err
  assert "  --set fixed.n=: the value is not a TOML value" in err


@pytest.mark.slow
def test_sweep_with_overrides_shows_each_kernel_compiling(tmp_path, capsys):
  path = tmp_path / "s.toml"
  path.write_text(STATS)
  out = tmp_path / "out"
  assert cli.main(["sweep", str(path), "--out", str(out), "--set", "grid.vocab=[6, 10]", "--set", "grid.seed=[3]",
                   "--set", "grid.beta=[1.0, 2.0, 4.0]", "--no-cache"]) == 0
  err = capsys.readouterr().err.splitlines()
  compiling = [line for line in err if "compiling" in line]
  assert [line.split("; ")[1] for line in compiling] == ["compiling kernel 1/2 (vocab=6) ...",
                                                         "compiling kernel 2/2 (vocab=10) ..."]
  assert compiling[0].startswith("[sweep] 0/2 chunks, 0/6 points (0%)")
  assert "2/2 chunks, 6/6 points (100%)" in err[-1] and "compiling" not in err[-1]
  rows = table(out / "results.csv")
  # an axis the overrides add comes after the file's axes (the last varies fastest)
  assert [(r["seed"], r["beta"], r["vocab"]) for r in rows] == [("3", b, v) for b in ("1.0", "2.0", "4.0") for v in ("6", "10")]
  assert json.loads((out / "sweep.json").read_text())["source"] == (
      f"{path} --set grid.vocab=[6, 10] --set grid.seed=[3] --set grid.beta=[1.0, 2.0, 4.0]")


class Terminal(io.StringIO):
  def isatty(self):
    return True


def test_progress_shows_the_compile_phase_on_one_terminal_line():
  term = Terminal()
  p = Progress(10, 2, stream=term, tick=0.01)
  p.compiling(1, 2, "vocab=64")
  time.sleep(0.2)                                  # the line is redrawn while the kernel compiles
  p.compiled()
  frames = term.getvalue().split("\r\033[K")[1:]
  assert len(frames) >= 4 and "\n" not in term.getvalue()
  assert all("; compiling kernel 1/2 (vocab=64) ... " in f for f in frames[:-1])
  assert frames[0].startswith("[sweep] 0/2 chunks, 0/10 points (0%)") and frames[-2].endswith("s")
  assert "compiling" not in frames[-1]              # redrawn without the phase once compiled
  drawn = term.getvalue()
  time.sleep(0.1)
  assert term.getvalue() == drawn                   # and no longer redrawn
  p.update(5)
  p.close()
  assert term.getvalue().endswith("\n") and term.getvalue().count("\n") == 1
  # elsewhere: the phase is one plain line, the next line is without it
  plain = io.StringIO()
  q = Progress(10, 2, stream=plain, every=0.0)
  q.compiling(2, 2)
  q.update(5)
  q.close()
  assert plain.getvalue().splitlines() == [
      "[sweep] 0/2 chunks, 0/10 points (0%), ? points/s, elapsed 0.0s, ETA ?; compiling kernel 2/2 ...",
      "[sweep] 1/2 chunks, 5/10 points (50%), ? points/s, elapsed 0.0s, ETA ?"]


def test_ctrl_c_in_the_cli_says_how_to_resume(monkeypatch, tmp_path, capsys):
  path = tmp_path / "s.toml"
  path.write_text(STATS)

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(engine, "sweep", interrupted)
  assert cli.main(["sweep", str(path), "--out", str(tmp_path / "my out"), "--set", "fixed.vocab=12", "--quiet"]) == 130
  assert capsys.readouterr().err == (f"klrl sweep: interrupted; the finished chunks are kept in {tmp_path / 'my out'}. "
                                     f"Resume with: klrl sweep {path} --out '{tmp_path / 'my out'}' --set fixed.vocab=12\n")


@pytest.mark.slow
def test_sigint_stops_cleanly_and_the_printed_command_resumes(tmp_path):
  cfg = cfg_of(KILL, tmp_path / "k.toml")
  total = len(grid.plan(cfg, grid.expand(cfg)))
  out = tmp_path / "out"
  proc = subprocess.Popen(klrl("sweep", tmp_path / "k.toml", "--out", out, "--set", "run.chunk_size=2"), env=ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 300
  while not list((out / "chunks").glob("c*.csv")):
    assert proc.poll() is None, proc.communicate()
    assert time.monotonic() < deadline
    time.sleep(0.002)
  proc.send_signal(signal.SIGINT)
  stdout, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130, stderr[-3000:]
  command = shlex.join(["klrl", "sweep", str(tmp_path / "k.toml"), "--out", str(out), "--set", "run.chunk_size=2"])
  assert stderr.splitlines()[-1] == f"klrl sweep: interrupted; the finished chunks are kept in {out}. Resume with: {command}"
  assert "Traceback" not in stderr and stdout == ""
  (run,) = json.loads((out / "manifest-p0.json").read_text())["runs"]
  assert run["status"] == "interrupted" and run["error"].startswith("KeyboardInterrupt")
  kept = {c: store.chunk_path(out, c).read_bytes() for c in store.completed(out)}
  assert 0 < len(kept) < total and not (out / "results.csv").exists()
  g, chunks = grid.expand(cfg), grid.plan(cfg, grid.expand(cfg))
  for c in kept:
    store.check_chunk(store.chunk_path(out, c), cfg, g, chunks[c])    # complete, this configuration's rows
  # the command it printed resumes: the kept chunks are not computed again
  r = subprocess.run(klrl(*shlex.split(command)[1:]), env=ENV, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"({len(kept)} already done)" in r.stdout
  assert all(store.chunk_path(out, c).read_bytes() == data for c, data in kept.items())
  m = json.loads((out / "manifest.json").read_text())
  assert [r["status"] for r in m["processes"][0]["runs"]] == ["interrupted", "finished"]
  assert len(table(out / "results.csv")) == cfg.size


def test_log_plots_do_not_overwrite_the_linear_one(stats_run, tmp_path):
  _, summary = stats_run
  out = tmp_path / "out"
  shutil.copytree(summary.out, out)
  args = ["plot", str(out), "--x", "beta", "--y", "kl", "--group", "seed"]
  assert cli.main(args) == 0
  linear = (out / "plots" / "kl_vs_beta_by_seed.png").read_bytes()
  assert cli.main(args + ["--logx", "--logy"]) == 0
  assert cli.main(args + ["--logx"]) == 0
  assert sorted(p.name for p in (out / "plots").glob("kl_vs_beta_by_seed*")) == [
      "kl_vs_beta_by_seed.png", "kl_vs_beta_by_seed_logx.png", "kl_vs_beta_by_seed_logx_logy.png"]
  assert (out / "plots" / "kl_vs_beta_by_seed.png").read_bytes() == linear
  assert (out / "plots" / "kl_vs_beta_by_seed_logx_logy.png").read_bytes() != linear
