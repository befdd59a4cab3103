"""The README's Python blocks run as written, in one fresh process, and print their results."""
import re
import subprocess
import sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_readme_python_blocks_run_as_written(tmp_path):
  text = (ROOT / "README.md").read_text()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert blocks, "the README has no Python block"
  assert all(len(b.strip().splitlines()) <= 15 for b in blocks), "the quickstart is at most 15 lines"
  r = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "beta:" in r.stdout and "best-of-16 KL:" in r.stdout and "dR/dΔ:" in r.stdout
  # the gradient of the frontier is its slope beta (the identity the quickstart prints)
  grad, beta = (float(x) for x in re.search(r"dR/dΔ: (\S+) = beta: (\S+)", r.stdout).groups())
  assert abs(grad - beta) <= 1e-12 * beta


def test_readme_is_a_front_page():
  text = (ROOT / "README.md").read_text()
  assert len(text.splitlines()) <= 150
  assert not re.search(r"\bSPEC\b", text)
  for link in re.findall(r"\]\(([^)#]+)\)", text):
    if not link.startswith("http"):
      assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_nothing_cites_a_document_users_do_not_have():
  cited = [str(p.relative_to(ROOT)) for folder in ("klrl", "docs", "configs", "examples", "benchmarks")
           for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".toml", ".sh")
           and re.search(r"\bSPEC\b", p.read_text(errors="replace"))]
  assert not cited, f"cite SPEC: {cited}"
