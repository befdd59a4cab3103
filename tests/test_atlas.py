"""The theorem atlas (``klrl run``): Markdown and self-contained HTML, every check passing."""
import base64
import csv
import re
from html.parser import HTMLParser

import pytest

from klrl import cli
from klrl.report import Check, Section, write_report
from klrl.report.plotting import plt, save
from klrl.report.sections import SECTIONS

pytestmark = pytest.mark.slow   # the atlas runs every report section


class Parsed(HTMLParser):
  def __init__(self, text):
    super().__init__()
    self.tags, self.images, self.links = [], [], []
    self.feed(text)

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    self.tags.append(tag)
    if tag == "img":
      self.images.append(attrs["src"])
    if tag in ("link", "script") or (tag == "a" and not attrs.get("href", "#").startswith("#")):
      self.links.append(attrs)


def _atlas(out, sections):
  """``klrl run`` of some sections of the default configuration (under the suite's strict rank promotion)."""
  return cli.main(["run", "--out", str(out), "--quiet", "--sections", ",".join(sections)]), out


# One run per section, so that the slow tier's workers share the atlas between them.
@pytest.mark.parametrize("key", list(SECTIONS))
def test_default_atlas_passes_every_check_of_every_section(key, tmp_path):
  code, out = _atlas(tmp_path, [key])
  with open(out / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert code == 0
  assert {r["section"] for r in rows} == {key}
  failed = [(r["section"], r["check"], r["worst"], r["tolerance"]) for r in rows if r["passed"] != "True"]
  assert not failed
  assert all(float(r["margin"]) >= 0 and int(r["instances"]) > 0 and r["statement"] for r in rows)
  assert SECTIONS[key].TITLE.split(" (")[0] in (out / "report.html").read_text()


def test_default_atlas_renders_markdown_and_self_contained_html(tmp_path):
  keys = ["tilted", "bon"]
  _, out = _atlas(tmp_path, keys)
  md = (out / "report.md").read_text()
  html = (out / "report.html").read_text()
  figures = sorted((out / "figures").glob("*.png"))
  assert figures
  assert md.startswith("# klrl theorem atlas") and re.search(r"\*\*(\d+) of \1 checks pass\.\*\*", md)
  for fig in figures:
    assert f'src="figures/{fig.name}"' in md                # a figure with its caption
  page = Parsed(html)
  assert page.links == []                                  # nothing outside the file
  embedded = [base64.b64decode(src.split(",", 1)[1]) for src in page.images if src.startswith("data:image/png;base64,")]
  assert len(embedded) == len(page.images) == len(figures)
  assert sorted(embedded) == sorted(f.read_bytes() for f in figures)
  for title in (SECTIONS[k].TITLE for k in keys):
    assert title.split(" (")[0] in html


def test_report_shows_statements_margins_and_failures(tmp_path):
  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  sec = Section("demo", "Demo <section> (docs: theory/demo)", text="Uses `code` and **bold** & more.",
                checks=[Check("ok", "a < b", 1e-14, 1e-12, 10), Check("bad", "x|y <= 0", 0.5, 0.1, 3),
                        Check("nan", "finite", float("nan"), 1.0, 2)],
                tables={"t": [dict(a=1, b=2.5)]}, figures=[save(fig, tmp_path / "fig.png")])
  report = write_report(tmp_path, [sec], "# Title\n\nheader line", seconds={"demo": 1.25})
  md, html = report.read_text(), (tmp_path / "report.html").read_text()
  assert "**1 of 3 checks pass.**" in md and md.count("**FAIL**") == 2 and "x\\|y <= 0" in md
  assert "| ok | a < b | 10 | 1e-14 | 1e-12 | 9.9e-13 | pass |" in md and "| -0.4 |" in md
  assert "Demo &lt;section&gt;" in html and "<code>code</code>" in html and "<strong>bold</strong>" in html
  assert html.count('class="fail"') == 2 and "&amp; more" in html and "<td>1.2</td>" in html
  with open(tmp_path / "results.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert [r["passed"] for r in rows] == ["True", "False", "False"] and float(rows[2]["margin"]) == float("-inf")
  assert (tmp_path / "demo_t.csv").read_text().splitlines() == ["a,b", "1,2.5"]


def test_section_with_missing_optional_package_is_skipped_with_a_message(tmp_path, monkeypatch, capsys):
  class Needy:
    TITLE, REQUIRES = "needs a package that is not installed", ("klrl_no_such_package",)

    @staticmethod
    def run(cfg, ctx):
      raise AssertionError("a section whose packages are missing must not run")

  class Plain:
    TITLE = "a trivial section"

    @staticmethod
    def run(cfg, ctx):
      return Section("plain", Plain.TITLE, checks=[Check("one", "1 = 1", 0.0, 1e-12, 1)])

  monkeypatch.setitem(SECTIONS, "needy", Needy)
  monkeypatch.setitem(SECTIONS, "plain", Plain)
  assert cli.main(["run", "--sections", "needy,plain", "--out", str(tmp_path), "--quiet"]) == 0
  err = capsys.readouterr().err
  assert "skipping section 'needy'" in err and "klrl_no_such_package" in err and "klrl[real]" in err
  md = (tmp_path / "report.md").read_text()
  assert "Skipped for want of optional packages: `needy` (klrl_no_such_package)" in md and "a trivial section" in md
