"""The example scripts of ``examples/``: each runs at its small size and writes its figure, and
each is a valid jupytext percent-format notebook."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(p.stem for p in EXAMPLES.glob("*.py"))


def test_there_are_at_least_six_examples_and_each_is_listed_and_documented():
  assert len(SCRIPTS) >= 6, SCRIPTS
  readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
  index = (ROOT / "docs" / "examples" / "index.md").read_text(encoding="utf-8")
  for name in SCRIPTS:
    assert f"{name}.py" in readme, f"examples/README.md does not list {name}.py"
    assert f"{name}.md" in index, f"docs/examples/index.md does not link {name}.md"
    page = (ROOT / "docs" / "examples" / f"{name}.md").read_text(encoding="utf-8")
    assert f"](figures/{name}.png)" in page
    assert f'```python\n--8<-- "examples/{name}.py"\n```' in page


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_is_jupytext_percent_format(name):
  text = (EXAMPLES / f"{name}.py").read_text(encoding="utf-8")
  assert text.startswith("# %%"), f"{name}.py must start with a '# %%' cell marker"
  markers = [line for line in text.splitlines() if line.startswith("# %%")]
  assert any(m.startswith("# %% [markdown]") for m in markers), "no markdown cell"
  assert any(m.rstrip() == "# %%" for m in markers), "no code cell"
  compile(text, f"{name}.py", "exec")
  try:
    import jupytext
  except ImportError:
    return
  notebook = jupytext.reads(text, fmt="py:percent")
  kinds = {cell.cell_type for cell in notebook.cells}
  assert kinds == {"markdown", "code"}, kinds
  assert len(notebook.cells) == len(markers)


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs_at_small_size_and_writes_its_figure(name, tmp_path):
  env = dict(os.environ, KLRL_EXAMPLES_SMALL="1", KLRL_EXAMPLES_OUT=str(tmp_path), MPLBACKEND="Agg")
  run = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, f"{name}.py failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
  figure = tmp_path / f"{name}.png"
  assert figure.is_file() and figure.stat().st_size > 10_000, f"{name}.py wrote no figure to {figure}"
  assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
