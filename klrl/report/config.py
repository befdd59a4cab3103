"""The configuration of ``klrl run``, checked before anything is computed.

Each report section declares its options in ``OPTIONS`` (a name to an :class:`Option`: its kind,
default, bounds and meaning); the ``[run]`` table has ``out``. :func:`check` reads a parsed TOML
table, reports every unknown section or key, wrong type and impossible value at once with its key
path (:class:`RunConfigError`, a :class:`klrl.sweep.ConfigError`), and returns each
section's options with the defaults filled in. The shipped ``default.toml`` states every option.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, NamedTuple

from klrl.sweep.config import ConfigError

__all__ = ["RunConfigError", "Option", "integer", "real", "reals", "check"]


class RunConfigError(ConfigError):
  """A ``klrl run`` configuration with problems; ``errors`` lists ``(key path, what was expected)``."""

  def __init__(self, source: str, errors: list[tuple[str, str]]):
    super().__init__(source, errors)
    n = len(self.errors)
    lines = [f"{source}: {n} error{'s' if n > 1 else ''} in the klrl run configuration:"]
    ValueError.__init__(self, "\n".join(lines + [f"  {path}: {msg}" for path, msg in self.errors]))


class Option(NamedTuple):
  """One option of a report section.

  Attributes:
    kind: ``"int"``, ``"float"`` or ``"floats"`` (a list of numbers).
    default: its value when the configuration leaves it out.
    help: what it sets.
    low, high: inclusive bounds of the value (each entry of a list), or ``None``.
    size: the required length of a list, or ``None``.
  """
  kind: str
  default: Any
  help: str
  low: float | None = None
  high: float | None = None
  size: int | None = None


def integer(default: int, help: str, low: int | None = None, high: int | None = None) -> Option:
  return Option("int", default, help, low, high)


def real(default: float, help: str, low: float | None = None, high: float | None = None) -> Option:
  return Option("float", default, help, low, high)


def reals(default: list[float], help: str, low: float | None = None, high: float | None = None,
          size: int | None = None) -> Option:
  return Option("floats", default, help, low, high, size)


def _bounds(opt: Option) -> str:
  if opt.low is not None and opt.high is not None:
    return f" in [{opt.low:g}, {opt.high:g}]"
  if opt.low is not None:
    return f" >= {opt.low:g}"
  return f" <= {opt.high:g}" if opt.high is not None else ""


def _number(v, kind: str) -> bool:
  if isinstance(v, bool) or not isinstance(v, numbers.Real):
    return False
  return isinstance(v, numbers.Integral) if kind == "int" else math.isfinite(float(v))


def _value(opt: Option, v) -> tuple[Any, str | None]:
  """``(value, None)`` for a valid ``v``, else ``(None, what was expected)``."""
  within = lambda x: (opt.low is None or x >= opt.low) and (opt.high is None or x <= opt.high)
  if opt.kind == "floats":
    expected = (f"a list of {opt.size if opt.size else ''} finite numbers{_bounds(opt)}").replace("  ", " ")
    if not isinstance(v, list) or not all(_number(x, "float") for x in v) or not all(within(x) for x in v) \
        or (opt.size is not None and len(v) != opt.size) or not v:
      return None, expected
    return [float(x) for x in v], None
  expected = ("an integer" if opt.kind == "int" else "a finite number") + _bounds(opt)
  if not _number(v, opt.kind) or not within(v):
    return None, expected
  return (int(v) if opt.kind == "int" else float(v)), None


def check(raw: dict, sections: dict, source: str = "<configuration>") -> dict[str, dict[str, Any]]:
  """Every section's options (defaults filled in) from a parsed ``klrl run`` configuration.

  Args:
    raw: the parsed TOML table.
    sections: the report sections by key (:data:`klrl.report.sections.SECTIONS`), each with ``OPTIONS``.
    source: where ``raw`` was read from, for the message.

  Returns:
    ``{"run": {"out": ...}, <section key>: {option: value}}``.

  Raises:
    RunConfigError: listing every problem with its key path.
  """
  errors: list[tuple[str, str]] = []
  tables = {"run": {"out": Option("str", "runs", "parent folder of the run directories")}}
  tables.update({key: getattr(section, "OPTIONS", {}) for key, section in sections.items()})
  out: dict[str, dict[str, Any]] = {}
  for name, table in raw.items():
    if name not in tables:
      errors.append((name, f"unknown section; klrl run has {', '.join(tables)}"))
    elif not isinstance(table, dict):
      errors.append((name, f"expected a table [{name}], got {type(table).__name__}"))
  for name, options in tables.items():
    given = raw.get(name, {}) if isinstance(raw.get(name, {}), dict) else {}
    values = {}
    for key, v in given.items():
      if key not in options:
        errors.append((f"{name}.{key}", f"unknown key; [{name}] has {', '.join(options)}"))
    for key, opt in options.items():
      if key not in given:
        values[key] = opt.default
      elif opt.kind == "str":
        if isinstance(given[key], str) and given[key]:
          values[key] = given[key]
        else:
          errors.append((f"{name}.{key}", f"expected a non-empty string, got {given[key]!r}"))
      else:
        values[key], expected = _value(opt, given[key])
        if expected:
          errors.append((f"{name}.{key}", f"expected {expected} ({opt.help}), got {given[key]!r}"))
    out[name] = values
  if errors:
    raise RunConfigError(source, errors)
  return out
