"""pytest plugin: a test that fails only for want of an optional package is reported as skipped.

Load it with ``-p benchmarks.pytest_optional`` (the repository root on ``sys.path``). It is for
machines that have klrl's core dependencies but not its optional ones (see ``OPTIONAL``): a
test whose error, or any error in its chain of causes, is an ``ImportError`` of a missing
optional package, or an error whose message names a missing optional package together with
``pip install`` (klrl's own hint), is skipped with the package's name. Other failures are
reported as they are.
"""
from __future__ import annotations

import importlib.util
import re

import pytest

OPTIONAL = ("chex", "safetensors", "deeptime", "wordfreq", "vaderSentiment", "matplotlib")


def _installed(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):
    return False


MISSING = tuple(m for m in OPTIONAL if not _installed(m))


def missing_package(exc: BaseException | None) -> str | None:
  """The missing optional package behind ``exc``, if any."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    if isinstance(exc, ImportError) and (exc.name or "").split(".")[0] in MISSING:
      return exc.name.split(".")[0]
    text = str(exc)
    if "pip install" in text:
      for name in MISSING:
        if re.search(rf"\b{re.escape(name)}\b", text):
          return name
    exc = exc.__cause__ or exc.__context__
  return None


def _skip_if_missing():
  try:
    return (yield)
  except Exception as e:
    name = missing_package(e)
    if name is None:
      raise
    pytest.skip(f"optional package '{name}' is not installed")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
  return (yield from _skip_if_missing())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
  return (yield from _skip_if_missing())


def pytest_report_header(config):
  return f"optional packages missing (tests needing them are skipped): {', '.join(MISSING) or 'none'}"
