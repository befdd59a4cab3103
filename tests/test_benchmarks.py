"""The benchmark harness: its summaries, its options, smoke runs of the tilted and startup suites, and
the accelerator check script."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import bench_startup, harness, pytest_optional, run, startup_child


def test_speed_up_spread_gives_quartiles_from_eight_rounds():
  assert harness._spread([2.0, 4.0, 3.0]) == "2.0-4.0x over 3 rounds"
  ratios = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
  # statistics.quantiles (exclusive method) of 1..8: 2.25 and 6.75.
  assert harness._spread(ratios) == "1.0-8.0x (quartiles 2.2-6.8x) over 8 rounds"


def test_rounds_must_be_positive(capsys):
  with pytest.raises(SystemExit):
    run.main(["--suite", "tilted", "--quick", "--min-log2v", "12", "--rounds", "0"])
  assert "--rounds" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_tilted_suite_runs_and_reports_paired_ratios(capsys):
  run.main(["--suite", "tilted", "--quick", "--min-log2v", "12", "--rounds", "2"])
  out = capsys.readouterr().out
  rows = [line for line in out.splitlines() if line.startswith("| tilted |")]
  assert {line.split("|")[2].strip() for line in rows} == {"stats", "kl_constrained"}
  assert all("over 2 rounds" in line for line in rows)
  assert "saved" not in out   # quick runs are saved only when named with --tag


# ---------------------------------------------------------------------------------------------
# The startup suite, the optional-package plugin and the accelerator check script.

ROOT = Path(__file__).resolve().parent.parent


def test_table_leaves_the_compile_column_blank_for_whole_commands():
  row = harness.Row("startup", "klrl run", "default config", None, 2.0, "", None)
  line = harness.table([row], 10.0).splitlines()[-1]
  assert line.startswith("| startup | klrl run | default config |  | 2000.000 |")


def test_startup_children_get_the_repository_and_the_cache_settings(monkeypatch, tmp_path):
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/elsewhere")
  monkeypatch.setenv("PYTHONPATH", "/other")
  off = bench_startup.environment()
  assert not set(bench_startup.CACHE_VARS) & set(off)
  assert off["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/other"]
  on = bench_startup.environment(tmp_path)
  assert [on[k] for k in bench_startup.CACHE_VARS] == [str(tmp_path), "0", "0"]


def test_startup_cases_cover_the_public_functions():
  cases = startup_child._cases()
  assert set(cases) == set(startup_child.CASES)
  assert {"tilted.kl_constrained", "tilted.stats", "tilted.tilt", "bon.stats", "divergences.kl",
          "chains.spectral_gap", "chains.stationary", "memoryless.rate_function", "rlvr.flow"} <= set(cases)
  assert all(callable(fn) for fn, _, _ in cases.values())


def test_optional_plugin_finds_the_missing_package_behind_an_error(monkeypatch):
  monkeypatch.setattr(pytest_optional, "MISSING", ("safetensors", "wordfreq"))
  try:
    try:
      raise ModuleNotFoundError("No module named 'wordfreq'", name="wordfreq")
    except ImportError as e:
      raise ImportError("english_unigram needs wordfreq: pip install 'klrl[real]'") from e
  except ImportError as e:
    chained = e
  assert pytest_optional.missing_package(chained) == "wordfreq"
  hint = ValueError("reading .safetensors files needs the 'safetensors' package (pip install 'klrl[data]')")
  assert pytest_optional.missing_package(hint) == "safetensors"
  assert pytest_optional.missing_package(ValueError("safetensors file is corrupt")) is None
  assert pytest_optional.missing_package(ModuleNotFoundError("No module named 'scipy'", name="scipy")) is None


@pytest.mark.slow
def test_quick_startup_suite_reports_the_three_processes_and_a_compile(capsys, tmp_path):
  run.main(["--suite", "startup", "--quick", "--tag", "startup", "--out-dir", str(tmp_path)])
  out = capsys.readouterr().out
  rows = [line for line in out.splitlines() if line.startswith("| startup |")]
  cases = {line.split("|")[2].strip() for line in rows}
  assert cases == {"kl_constrained first call, no cache", "kl_constrained first call, 1st process, empty cache",
                   "kl_constrained first call, 2nd process, same cache", "cold compile: tilted.stats"}
  assert any("target<=0.5s=" in line for line in rows)
  assert "| process | import klrl s | backend s | first call s | second call ms | cache files | first call <= 0.5 s |" in out
  assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".md"]


@pytest.mark.slow
def test_accelerator_script_quick_on_the_cpu(tmp_path):
  done = subprocess.run(["bash", "benchmarks/accelerator.sh", str(tmp_path), "--quick"], cwd=ROOT,
                        env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True, timeout=600)
  summary = done.stdout[done.stdout.index("| step | status | seconds |"):]
  steps = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in summary.splitlines()[2:] if line.startswith("|")}
  assert steps == dict.fromkeys(["environment", "tests", "bench tilted", "bench chains"], "ok")
  assert done.returncode == 0, done.stderr[-2000:]
  assert (tmp_path / "summary.md").read_text().strip().endswith(summary.strip())
  assert "devices" in (tmp_path / "env.txt").read_text()
  assert "<testsuite" in (tmp_path / "tests.xml").read_text()
  saved = {p.name.rsplit("-", 2)[0] for p in (tmp_path / "bench").glob("*.json")}
  assert saved == {f"accelerator-{s}" for s in ("tilted", "chains")}
