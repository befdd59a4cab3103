"""The run/report layer and `klrl run` on a small configuration."""
import csv

import pytest

from klrl import cli
from klrl.report import Check, Section, write_report


@pytest.mark.slow
def test_klrl_run_writes_results_figures_and_report(tmp_path, monkeypatch):
  """Into a relative directory, as the README's `klrl run` does: the figures must still be found."""
  monkeypatch.chdir(tmp_path)
  cfg = tmp_path / "small.toml"
  cfg.write_text("[tilted]\ninstances = 24\nvocab = 8\nfrontier_points = 12\n")
  assert cli.main(["run", "--config", str(cfg), "--sections", "tilted", "--out", "runs/rel", "--quiet"]) == 0
  out = tmp_path / "runs" / "rel"
  rows = list(csv.DictReader(open(out / "results.csv")))
  assert rows and all(r["passed"] == "True" for r in rows)
  assert {"gibbs", "constraint", "primal = dual", "closeness"} <= {r["check"] for r in rows}
  assert (out / "figures" / "tilted_frontier.png").stat().st_size > 10_000
  text = (out / "report.md").read_text()
  assert "checks pass" in text and "](figures/tilted_frontier.png)" in text
  assert (out / "tilted_frontier.csv").exists()
  assert "data:image/png;base64," in (out / "report.html").read_text()


def test_unknown_section_and_missing_config_are_refused(tmp_path, capsys):
  assert cli.main(["run", "--sections", "nope", "--out", str(tmp_path)]) == 2
  assert "unknown section" in capsys.readouterr().err
  assert cli.main(["run", "--config", str(tmp_path / "absent.toml")]) == 2


def test_failed_check_is_reported(tmp_path):
  sec = Section("x", "X", checks=[Check("a", "a|b", 1.0, 0.1, 3), Check("b", "ok", float("nan"), 1.0, 3)])
  text = write_report(tmp_path, [sec], "# t").read_text()
  assert "0 of 2 checks pass" in text and "**FAIL**" in text and "a\\|b" in text
