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
  assert "checks pass" in text and 'src="figures/tilted_frontier.png"' in text
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


def test_run_configuration_is_checked_whole_before_anything_runs(tmp_path, capsys):
  bad = tmp_path / "bad.toml"
  bad.write_text('[tilted]\nvocab = 1\nfrontier_pts = 60\n[rlvr]\nbeta = "0.25"\nentropy_correct = [0.05]\n'
                 'steps = 0\n[chainz]\nstates = 3\n[memoryless]\nbernoulli_p = 1.5\n[run]\nout = 3\n')
  assert cli.main(["run", "--config", str(bad), "--out", str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert "8 errors in the klrl run configuration" in err
  for path in ("chainz: unknown section", "tilted.frontier_pts: unknown key", "tilted.vocab: expected an integer >= 2",
               "rlvr.beta: expected a finite number", "rlvr.entropy_correct: expected a list of 2", "rlvr.steps:",
               "memoryless.bernoulli_p: expected a finite number in", "run.out: expected a non-empty string"):
    assert path in err, path
  assert not (tmp_path / "out").exists()                 # nothing ran
  (tmp_path / "broken.toml").write_text("[tilted\n")
  assert cli.main(["run", "--config", str(tmp_path / "broken.toml")]) == 2
  assert "is not valid TOML" in capsys.readouterr().err


def test_the_shipped_default_states_every_option_with_its_default():
  import tomllib

  from klrl.report.config import check
  from klrl.report.sections import SECTIONS
  raw = tomllib.loads((cli.configs_dir() / "default.toml").read_text())
  assert set(raw) == {"run", *SECTIONS}
  for key, section in SECTIONS.items():
    assert set(raw[key]) == set(section.OPTIONS), key
    assert {k: o.default for k, o in section.OPTIONS.items()} == check(raw, SECTIONS)[key], key


def test_html_renders_markdown_tables_captions_and_citations(tmp_path):
  from klrl.report.plotting import plt, read_caption, save
  fig, ax = plt.subplots(1, 2)
  ax[0].set_title("Reward against KL")
  ax[1].set_title("Slope")
  path = save(fig, tmp_path / "f.png")
  assert read_caption(path) == "Left: Reward against KL; right: Slope."
  text = "Estimators:\n\n| estimator | bias |\n|---|---|\n| k1 | 0 |\n| k3 | 0.25 |\n\nDone."
  sec = Section("x", "A section", text=text, checks=[Check("c", "x <= y", 0.0, 1.0, 5)], figures=[path],
                docs="theory/tilted.md", papers=("Someone, *A paper* (2024)",))
  md = write_report(tmp_path / "out", [sec], "# Title").read_text()
  assert "Theory: `docs/theory/tilted.md`" in md and "Papers: Someone, *A paper* (2024)" in md
  page = (tmp_path / "out" / "report.html").read_text()
  assert "|" not in page.split("<body>")[1].replace("a\\|b", "")                 # every table rendered
  assert "<td>k3</td>" in page and "<th>estimator</th>" in page and '<td class="pass">pass</td>' in page
  assert "<figcaption><b>f.</b> Left: Reward against KL; right: Slope.</figcaption>" in page
  assert "<em>A paper</em>" in page and "data:image/png;base64," in page
