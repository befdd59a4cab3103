"""The documentation site (docs/, mkdocs.yml): cross-references, API coverage, runnable pages, the build.

Fast: every ``[...][klrl.x.y]`` cross-reference in docs/ names an object that exists, and every name
in the ``__all__`` of every public module is rendered by a reference page. Slow: the Python blocks
of docs/getting-started.md run as written in a fresh process, and ``mkdocs build --strict`` passes
(skipped when mkdocs is not installed: ``pip install -e '.[docs]'``).
"""
import importlib
import importlib.util
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PUBLIC = ["klrl", "klrl.tilted", "klrl.bon", "klrl.divergences", "klrl.memoryless", "klrl.chains", "klrl.rlvr",
          "klrl.train", "klrl.autoregressive", "klrl.markov", "klrl.instances", "klrl.data", "klrl.problems", "klrl.sweep"]

_XREF = re.compile(r"\]\[(klrl(?:\.\w+)*)\]")
_BLOCK = re.compile(r"^::: ([\w.]+)[ \t]*\n((?:[ \t]+\S.*\n|[ \t]*\n)*)", re.M)


def _resolve(path: str):
  """The object named by a dotted path: the longest importable module, then attributes."""
  parts = path.split(".")
  for i in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:i]))
    except ImportError:
      continue
    for name in parts[i:]:
      obj = getattr(obj, name)
    return obj
  raise ImportError(path)


def _pages():
  return sorted(p for p in DOCS.rglob("*.md"))


def test_every_cross_reference_names_an_existing_object():
  refs = {(page.relative_to(ROOT), ref) for page in _pages() for ref in _XREF.findall(page.read_text())}
  assert refs, "no [...][klrl.x] cross-references found in docs/"
  missing = []
  for page, ref in sorted(refs):
    try:
      _resolve(ref)
    except (ImportError, AttributeError):
      missing.append(f"{page}: {ref}")
  assert not missing, "cross-references to objects that do not exist:\n  " + "\n  ".join(missing)


def _blocks() -> list[tuple[str, set[str] | None, list[str]]]:
  """The ``::: name`` blocks of the reference pages: (name, listed members or None, exclusion regexes)."""
  out = []
  for page in sorted((DOCS / "reference").glob("*.md")):
    for m in _BLOCK.finditer(page.read_text()):
      options = m.group(2)
      members = None
      listed = re.search(r"^\s*members:[ \t]*(.*)\n((?:\s*- .*\n)*)", options, re.M)
      if listed:
        inline = listed.group(1).strip()
        if inline in ("false", "[]"):
          members = set()
        elif inline.startswith("["):
          members = {x.strip(" '\"") for x in inline.strip("[]").split(",") if x.strip()}
        else:
          members = {x.strip().lstrip("- ").strip("'\"") for x in listed.group(2).splitlines() if x.strip()}
      excluded = []
      filters = re.search(r"^\s*filters:[ \t]*(\[.*\])", options, re.M)
      if filters:
        excluded = [f[1:] for f in re.findall(r"[\"']([^\"']*)[\"']", filters.group(1)) if f.startswith("!")]
      out.append((m.group(1), members, excluded))
  return out


def _rendered(blocks, module: str, name: str) -> bool:
  for block, members, excluded in blocks:
    if block == f"{module}.{name}":
      return True
    if block == module and (members is None or name in members) and not any(re.search(x, name) for x in excluded):
      return True
  return False


def test_every_public_name_is_covered_by_a_reference_page():
  blocks = _blocks()
  documented = {b for b, _, _ in blocks}
  missing = []
  for module in PUBLIC:
    if module not in documented:
      missing.append(f"{module} (no '::: {module}' block)")
    mod = importlib.import_module(module)
    for name in mod.__all__:
      obj = getattr(mod, name)
      if isinstance(obj, types.ModuleType):
        ok = obj.__name__ in documented      # a submodule: rendered by its own block
      else:
        ok = _rendered(blocks, module, name)
      if not ok:
        missing.append(f"{module}.{name}")
  assert not missing, ("public names that no page of docs/reference/ renders (add a '::: module' block, or "
                       "the name to its members):\n  " + "\n  ".join(missing))


def _python_blocks(page: Path) -> str:
  return "\n\n".join(re.findall(r"^```python\n(.*?)^```", page.read_text(), re.M | re.S))


@pytest.mark.slow
def test_getting_started_blocks_run(tmp_path):
  code = _python_blocks(DOCS / "getting-started.md")
  assert code.count("\n") > 20, "docs/getting-started.md lost its Python blocks"
  script = tmp_path / "getting_started.py"
  script.write_text(code)
  env = dict(os.environ, KLRL_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
  done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, f"the blocks of docs/getting-started.md failed:\n{done.stdout}\n{done.stderr}"
  assert "R(delta)" in done.stdout and "dR/d delta" in done.stdout


def _have(*modules: str) -> bool:
  return all(importlib.util.find_spec(m) is not None for m in modules)


@pytest.mark.slow
@pytest.mark.skipif(not _have("mkdocs", "material", "mkdocstrings_handlers.python"),
                    reason="the docs extra is not installed (pip install -e '.[docs]')")
def test_mkdocs_build_strict_passes_and_renders_every_public_name(tmp_path):
  site = tmp_path / "site"
  env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=str(ROOT))
  done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                         "--site-dir", str(site)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  log = done.stdout + done.stderr
  assert done.returncode == 0, f"mkdocs build --strict failed:\n{log}"
  assert "WARNING" not in log, log
  ids = set()
  for page in (site / "reference").rglob("index.html"):
    ids.update(re.findall(r'id="(klrl[\w.]*)"', page.read_text()))
  missing = [f"{module}.{name}" for module in PUBLIC for name in importlib.import_module(module).__all__
             if f"{module}.{name}" not in ids]
  assert not missing, "public names without an entry in the built API reference (a docstring missing?):\n  " + \
      "\n  ".join(missing)
