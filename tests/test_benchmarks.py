"""The benchmark harness: its summaries, its options and a smoke run of the tilted suite."""
import pytest

from benchmarks import harness, run


def test_speed_up_spread_gives_quartiles_from_eight_rounds():
  assert harness._spread([2.0, 4.0, 3.0]) == "2.0-4.0x over 3 rounds"
  ratios = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
  # statistics.quantiles (exclusive method) of 1..8: 2.25 and 6.75.
  assert harness._spread(ratios) == "1.0-8.0x (quartiles 2.2-6.8x) over 8 rounds"


def test_rounds_must_be_positive(capsys):
  with pytest.raises(SystemExit):
    run.main(["--suite", "tilted", "--quick", "--min-log2v", "12", "--rounds", "0"])
  assert "--rounds" in capsys.readouterr().err


def test_quick_tilted_suite_runs_and_reports_paired_ratios(capsys):
  run.main(["--suite", "tilted", "--quick", "--min-log2v", "12", "--rounds", "2"])
  out = capsys.readouterr().out
  rows = [line for line in out.splitlines() if line.startswith("| tilted |")]
  assert {line.split("|")[2].strip() for line in rows} == {"stats", "kl_constrained"}
  assert all("over 2 rounds" in line for line in rows)
  assert "saved" not in out   # quick runs are saved only when named with --tag
