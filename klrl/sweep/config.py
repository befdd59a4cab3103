"""Sweep configuration files: TOML read with :mod:`tomllib`, checked against the experiment.

A configuration names an experiment of :mod:`klrl.sweep.experiments`, the parameters held
fixed and the axes swept::

    experiment = "tilted.frontier"
    zip = [["vocab", "temperature"]]          # optional: axes that vary together

    [fixed]
    problem = "random"

    [grid]                                     # axes are crossed, first axis slowest
    delta = { logrange = [1e-3, 1.0, 40] }     # 40 points, geometric, endpoints included
    seed = { seeds = 8 }                       # 0, 1, ..., 7
    vocab = [256, 1024]
    temperature = { linspace = [1.0, 3.0, 2] }

    [run]
    chunk_size = 1024                          # grid points per compiled call
    precision = "float64"                      # or "float32"
    out = "runs/sweeps/frontier"               # results directory (``--out`` overrides)

    [distributed]                              # optional: multi-host (see klrl.sweep.engine)
    coordinator_address = "10.0.0.1:7777"
    num_processes = 4

Axis forms: a list of values; ``{ values = [...] }``; ``{ range = [start, stop] }`` or
``[start, stop, step]`` (integers, stop excluded); ``{ linspace = [start, stop, num] }``;
``{ logrange = [start, stop, num] }`` (``0 < start, stop``); ``{ seeds = N }`` (optionally
``start = S``). Parameters an experiment declares with a default may be omitted.

Overrides (``klrl sweep CONFIG --set grid.delta=[0.1,0.2] --set fixed.vocab=64``) are
``KEY=VALUE`` strings applied to the parsed file before it is checked: ``KEY`` is a dotted path
into the configuration table, ``VALUE`` a TOML value (a bare word such as ``zipf`` is taken as a
string). Setting ``grid.X`` drops a ``fixed.X`` and the other way round, so an override can
sweep a parameter the file holds fixed.

:func:`load` checks the whole file and raises one :class:`ConfigError` listing every problem,
each with its key path and what was expected, the conditions between parameters that the
experiment declares (:class:`~klrl.sweep.experiments.Limit`) included.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from klrl.sweep.experiments import EXPERIMENTS, Experiment, Param

__all__ = ["ConfigError", "Config", "load", "parse", "from_dict", "override"]

_TOP = ("experiment", "description", "zip", "fixed", "grid", "run", "distributed")
_RUN = dict(chunk_size=1024, precision="float64", out=None)
_DIST = ("coordinator_address", "num_processes", "process_id")
_FORMS = ("values", "range", "linspace", "logrange", "seeds")
_MAX_PER_AXIS = 3


class ConfigError(ValueError):
  """A configuration with problems; ``errors`` lists ``(key path, what was expected)``."""

  def __init__(self, source: str, errors: list[tuple[str, str]]):
    self.source, self.errors = source, list(errors)
    n = len(self.errors)
    lines = [f"{source}: {n} error{'s' if n > 1 else ''} in the sweep configuration:"]
    lines += [f"  {path}: {msg}" for path, msg in self.errors]
    super().__init__("\n".join(lines))


class Config(NamedTuple):
  """A checked configuration.

  Attributes:
    source: where it was read from.
    experiment: registered experiment name.
    description: free text.
    fixed: every parameter that is not swept, defaults included, in declaration order.
    axes: swept parameters and their values, in file order.
    zip: groups of axes that vary together.
    chunk_size: grid points per compiled call.
    precision: ``"float64"`` or ``"float32"``.
    out: results directory from the file, if any.
    distributed: the ``[distributed]`` table (``None`` if absent).
  """
  source: str
  experiment: str
  description: str
  fixed: dict[str, Any]
  axes: dict[str, tuple]
  zip: tuple[tuple[str, ...], ...]
  chunk_size: int
  precision: str
  out: str | None
  distributed: dict[str, Any] | None

  def resolved(self) -> dict[str, Any]:
    """Everything that determines the rows of the results (not where they go or who runs them).

    Axes are a list of ``[name, values]``: their order fixes the order of the grid points.
    """
    return dict(experiment=self.experiment, fixed=self.fixed, axes=[[k, list(v)] for k, v in self.axes.items()],
                zip=[list(g) for g in self.zip], chunk_size=self.chunk_size, precision=self.precision)

  def digest(self) -> str:
    """A hash of :meth:`resolved`: two configurations with the same digest give the same rows."""
    text = json.dumps(self.resolved(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]

  @property
  def size(self) -> int:
    """Number of grid points."""
    n = 1
    for group in _factors(self):
      n *= len(self.axes[group[0]])
    return n


def _factors(cfg: Config) -> list[tuple[str, ...]]:
  """The crossed factors in file order: a zip group or a single axis."""
  return _crossed(cfg.axes, cfg.zip)


def _crossed(axes, zipped) -> list[tuple[str, ...]]:
  out, seen = [], set()
  for name in axes:
    if name in seen:
      continue
    group = next((g for g in zipped if name in g), (name,))
    seen.update(group)
    out.append(tuple(group))
  return out


def load(path: str | Path, overrides: Sequence[str] = ()) -> Config:
  """Reads and checks a TOML sweep configuration.

  Args:
    path: the TOML file.
    overrides: ``KEY=VALUE`` strings applied before the check (see :func:`override`).

  Returns:
    The checked :class:`Config`; its ``source`` names the file and the overrides.

  Raises:
    ConfigError: listing every problem of the file and the overrides, with its key path.
  """
  path = Path(path)
  try:
    text = path.read_text()
  except OSError as e:
    raise ConfigError(str(path), [("(file)", f"cannot be read: {e.strerror or e}")]) from None
  return parse(text, str(path), overrides)


def parse(text: str, source: str = "<string>", overrides: Sequence[str] = ()) -> Config:
  """Parses TOML text (see :func:`load`)."""
  try:
    raw = tomllib.loads(text)
  except tomllib.TOMLDecodeError as e:
    raise ConfigError(source, [("(file)", f"not valid TOML: {e}")]) from None
  return from_dict(raw, source, overrides)


_KEY = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


def override(raw: dict, overrides: Sequence[str]) -> tuple[dict, list[tuple[str, str]]]:
  """Applies ``KEY=VALUE`` overrides to a parsed configuration (left unchanged).

  ``KEY`` is a dotted path of bare keys (``grid.delta``, ``run.chunk_size``); ``VALUE`` is read
  as a TOML value (``[0.1, 0.2]``, ``64``, ``{ seeds = 4 }``, ``"zipf"``), a bare word that is
  not one (``zipf``) as a string. The value replaces whatever the path held; tables on the way
  are created. Setting ``grid.X`` drops ``fixed.X``, and the other way round.

  Returns:
    The new configuration dict and the problems met, as ``("--set KEY=VALUE", message)``.
  """
  raw, errors = copy.deepcopy(raw), []
  for item in overrides:
    where = f"--set {item}"
    key, eq, text = (part.strip() for part in item.partition("="))
    if not eq or not _KEY.fullmatch(key):
      errors.append((where, "expected KEY=VALUE with KEY a dotted path of the configuration, e.g. grid.delta=[0.1, 0.2]"))
      continue
    try:
      value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as e:
      if not _WORD.fullmatch(text):
        errors.append((where, f"the value is not a TOML value ({e}); quote strings with spaces or symbols"))
        continue
      value = text
    *parents, leaf = key.split(".")
    table = raw
    for i, k in enumerate(parents):
      table = table.setdefault(k, {})
      if not isinstance(table, dict):
        errors.append((where, f"{'.'.join(parents[:i + 1])} is a {_kind(table)}, not a table"))
        break
    else:
      table[leaf] = value
      if len(parents) == 1 and parents[0] in ("fixed", "grid"):
        other = raw.get("grid" if parents[0] == "fixed" else "fixed")
        if isinstance(other, dict):
          other.pop(leaf, None)
  return raw, errors


def _described(source: str, overrides: Sequence[str]) -> str:
  """``source`` followed by its overrides, as given on the command line."""
  return " ".join([source, *(f"--set {o}" for o in overrides)])


# ---------------------------------------------------------------------------------------------
# Checks.

def _kind(v) -> str:
  return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}.get(type(v), type(v).__name__)


def _expected(p: Param) -> str:
  what = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}[p.type]
  cond = []
  if p.positive:
    cond.append("> 0")
  if p.low is not None:
    cond.append(f">= {p.low:g}")
  if p.high is not None:
    cond.append(f"<= {p.high:g}")
  if p.choices:
    what += " among " + ", ".join(repr(c) for c in p.choices)
  return what + (" " + " and ".join(cond) if cond else "")


def _value(p: Param, v) -> tuple[Any, str | None]:
  """The value converted to the parameter's type, or an error message."""
  bad = lambda: (None, f"expected {_expected(p)}, got {v!r} ({_kind(v)})")
  if p.type is bool:
    return (v, None) if isinstance(v, bool) else bad()
  if p.type is str:
    if not isinstance(v, str) or (p.choices and v not in p.choices):
      return bad()
    return v, None
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    return bad()
  if p.type is int:
    if not isinstance(v, int):
      return bad()
  else:
    v = float(v)
    if not math.isfinite(v):
      return bad()
  if (p.positive and not v > 0) or (p.low is not None and v < p.low) or (p.high is not None and v > p.high):
    return bad()
  return v, None


def _numbers(spec, n, path, err, ints=False) -> list | None:
  ok = isinstance(spec, list) and len(spec) in n and all(
      isinstance(x, int if ints else (int, float)) and not isinstance(x, bool) for x in spec)
  if not ok:
    shape = " or ".join(f"{k} {'integers' if ints else 'numbers'}" for k in n)
    err(path, f"expected a list of {shape}, got {spec!r}")
    return None
  return spec


def _axis(name: str, spec, err) -> list | None:
  """The values of one grid axis, or ``None`` after reporting what is wrong."""
  path = f"grid.{name}"
  if isinstance(spec, list):
    if not spec:
      err(path, "expected a non-empty list of values")
      return None
    return spec
  if not isinstance(spec, dict):
    err(path, f"expected a list of values or a table with one of {', '.join(_FORMS)}, got {spec!r}; "
              "to hold a parameter fixed, set it in [fixed]")
    return None
  forms = [k for k in spec if k in _FORMS]
  extra = [k for k in spec if k not in _FORMS and not (k == "start" and "seeds" in spec)]
  for k in extra:
    err(f"{path}.{k}", f"unknown key; an axis table has exactly one of {', '.join(_FORMS)}"
                       + (" (and 'start' with 'seeds')" if "seeds" in spec or k == "start" else ""))
  if len(forms) != 1:
    if not extra:
      err(path, f"expected exactly one of {', '.join(_FORMS)}, got {', '.join(forms) or 'none'}")
    return None
  form = forms[0]
  spec_path, arg = f"{path}.{form}", spec[form]
  if form == "values":
    if not (isinstance(arg, list) and arg):
      return err(spec_path, f"expected a non-empty list of values, got {arg!r}")
    return arg
  if form == "seeds":
    start = spec.get("start", 0)
    if not (isinstance(arg, int) and not isinstance(arg, bool) and arg >= 1):
      return err(spec_path, f"expected the number of seeds, an integer >= 1, got {arg!r}")
    if not (isinstance(start, int) and not isinstance(start, bool) and start >= 0):
      return err(f"{path}.start", f"expected an integer >= 0, got {start!r}")
    return list(range(start, start + arg))
  if form == "range":
    v = _numbers(arg, (2, 3), spec_path, err, ints=True)
    if v is None:
      return None
    if len(v) == 3 and v[2] == 0:
      return err(spec_path, "expected a non-zero step")
    values = list(range(*v))
    return values if values else err(spec_path, f"range {v} is empty (stop is excluded)")
  v = _numbers(arg, (3,), spec_path, err)
  if v is None:
    return None
  start, stop, num = v
  if not (isinstance(num, int) and num >= 1):
    return err(spec_path, f"expected [start, stop, num] with an integer num >= 1, got num = {num!r}")
  if not (math.isfinite(start) and math.isfinite(stop)):
    return err(spec_path, f"expected finite start and stop, got {v!r}")
  if form == "linspace":
    values = np.linspace(start, stop, num).tolist()
  else:
    if not (start > 0 and stop > 0):
      return err(spec_path, f"expected 0 < start and 0 < stop for a logarithmic range, got {v!r}")
    values = np.geomspace(start, stop, num).tolist()
  values[0] = float(start)
  if num > 1:
    values[-1] = float(stop)
  return values


def _show(v) -> str:
  return repr(v.item() if isinstance(v, np.generic) else v)


def _limits(exp: Experiment, fixed: dict, axes: dict, zipped: tuple, fixed_raw: dict, err) -> None:
  """Reports each :class:`~klrl.sweep.experiments.Limit` of the experiment that some grid point breaks.

  Each limit is evaluated once on every combination of the values of the axes it involves
  (zipped axes move together), and reported at the first failing one, counting the others.
  Limits on a parameter with an error of its own are skipped.
  """
  def path(k):
    return f"grid.{k}" if k in axes else f"fixed.{k}"

  for lim in exp.limits:
    if not all((k in axes) != (k in fixed) for k in lim.params):
      continue
    swept = [k for k in lim.params if k in axes]
    factors = [f for f in _crossed(axes, zipped) if set(f) & set(swept)]
    lengths = [len(axes[f[0]]) for f in factors]
    index = np.indices(lengths).reshape(len(factors), math.prod(lengths))
    values = {k: fixed[k] for k in lim.params if k in fixed}
    for f, i in zip(factors, index):
      values.update((k, np.asarray(axes[k])[i]) for k in f if k in swept)
    ok = np.broadcast_to(np.asarray(lim.check(values), bool), index.shape[1:])
    bad = np.flatnonzero(~ok)
    if not bad.size:
      continue
    blamed = (swept or [k for k in lim.params if k in fixed_raw] or list(lim.params))[0]
    at = {k: (v[bad[0]] if k in swept else v) for k, v in values.items()}
    shown = {k: _show(v) if k == blamed else
             f"{path(k)} = {_show(v)}" + ("" if k in axes or k in fixed_raw else " (default)") for k, v in at.items()}
    msg = lim.violation.format(**shown)
    if bad.size > 1:
      msg += (f"; {bad.size} of its {ok.size} values fail" if len(swept) == 1 else
              f"; {bad.size} of the {ok.size} combinations of {', '.join(map(path, swept))} fail")
    err(path(blamed), msg)


def _table(raw, key, err) -> dict:
  t = raw.get(key, {})
  if not isinstance(t, dict):
    err(key, f"expected a table [{key}], got {_kind(t)} {t!r}")
    return {}
  return t


def from_dict(raw: dict, source: str = "<dict>", overrides: Sequence[str] = ()) -> Config:
  """Checks a configuration given as the dict TOML parses to (see :func:`load`)."""
  raw, errors = override(raw, overrides)
  source = _described(source, overrides)

  def err(path, msg):
    errors.append((path, msg))

  for k in raw:
    if k not in _TOP:
      err(k, f"unknown key; a sweep configuration has {', '.join(_TOP)}")

  name = raw.get("experiment")
  exp = None
  if name is None:
    err("experiment", f"missing: the experiment to run, one of {', '.join(sorted(EXPERIMENTS))}")
  elif not isinstance(name, str) or name not in EXPERIMENTS:
    err("experiment", f"expected one of {', '.join(sorted(EXPERIMENTS))}, got {name!r}")
  else:
    exp = EXPERIMENTS[name]
  description = raw.get("description", "")
  if not isinstance(description, str):
    err("description", f"expected a string, got {_kind(description)}")
    description = ""

  def param(path, key):
    if exp is None:
      return None
    if key not in exp.params:
      err(path, f"unknown parameter of {exp.name}; its parameters are {', '.join(exp.params)}")
      return None
    return exp.params[key]

  # [fixed]
  fixed_raw, fixed = _table(raw, "fixed", err), {}
  for key, v in fixed_raw.items():
    p = param(f"fixed.{key}", key)
    if p is not None:
      value, msg = _value(p, v)
      if msg:
        err(f"fixed.{key}", msg)
      else:
        fixed[key] = value

  # [grid]
  axes: dict[str, tuple] = {}
  grid_raw = _table(raw, "grid", err)
  for key, spec in grid_raw.items():
    if key in fixed_raw:
      err(f"grid.{key}", "also set in [fixed]; a parameter is either fixed or swept")
    p = param(f"grid.{key}", key)
    values = _axis(key, spec, err)
    if values is None:
      continue
    if p is None:
      axes[key] = tuple(values)
      continue
    good, bad = [], []
    for i, v in enumerate(values):
      value, msg = _value(p, v)
      (bad if msg else good).append((i, msg) if msg else value)
    for i, msg in bad[:_MAX_PER_AXIS]:
      err(f"grid.{key}[{i}]", msg)
    if len(bad) > _MAX_PER_AXIS:
      err(f"grid.{key}", f"... and {len(bad) - _MAX_PER_AXIS} more bad values")
    if not bad:
      if len(set(good)) < len(good):
        err(f"grid.{key}", "expected distinct values, got repeats")
      axes[key] = tuple(good)

  # zip
  zipped = raw.get("zip", [])
  groups: list[tuple[str, ...]] = []
  if not (isinstance(zipped, list) and all(isinstance(g, list) and all(isinstance(a, str) for a in g) for g in zipped)):
    err("zip", f"expected a list of lists of axis names, e.g. [[\"vocab\", \"temperature\"]], got {zipped!r}")
    zipped = []
  used: set[str] = set()
  for i, g in enumerate(zipped):
    path, ok = f"zip[{i}]", True
    if len(g) < 2:
      err(path, f"expected at least two axis names, got {g!r}")
      ok = False
    for a in g:
      if a not in grid_raw:
        err(path, f"{a!r} is not an axis of [grid]")
        ok = False
      elif a in used:
        err(path, f"axis {a!r} appears in more than one zip group")
        ok = False
      used.add(a)
    if ok and all(a in axes for a in g):
      lengths = {a: len(axes[a]) for a in g}
      if len(set(lengths.values())) > 1:
        err(path, "zipped axes must have the same number of values, got "
                  + ", ".join(f"{a}: {n}" for a, n in lengths.items()))
      else:
        groups.append(tuple(g))

  # parameters neither fixed nor swept
  if exp is not None:
    resolved = {}
    for key, p in exp.params.items():
      if key in grid_raw or key in fixed_raw:     # (errors in them are already reported)
        if key in fixed:
          resolved[key] = fixed[key]
      elif p.required:
        err(f"fixed.{key}", f"missing: required parameter of {exp.name} ({p.doc}); "
                            "set it in [fixed] or sweep it in [grid]")
      else:
        resolved[key] = p.default
    fixed = resolved
    if not any(path.startswith("zip") for path, _ in errors):
      _limits(exp, fixed, axes, tuple(groups), fixed_raw, err)

  # [run]
  run = dict(_RUN)
  for key, v in _table(raw, "run", err).items():
    path = f"run.{key}"
    if key not in _RUN:
      err(path, f"unknown key; [run] has {', '.join(_RUN)}")
    elif key == "chunk_size" and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
      err(path, f"expected an integer >= 1, got {v!r}")
    elif key == "precision" and v not in ("float64", "float32"):
      err(path, f"expected \"float64\" or \"float32\", got {v!r}")
    elif key == "out" and not isinstance(v, str):
      err(path, f"expected a directory path (string), got {v!r}")
    else:
      run[key] = v

  # [distributed]
  dist = None
  if "distributed" in raw:
    dist = {}
    for key, v in _table(raw, "distributed", err).items():
      path = f"distributed.{key}"
      if key not in _DIST:
        err(path, f"unknown key; [distributed] has {', '.join(_DIST)}")
      elif key == "coordinator_address" and not (isinstance(v, str) and v.rpartition(":")[2].isdigit()):
        err(path, f"expected \"host:port\", got {v!r}")
      elif key != "coordinator_address" and not (isinstance(v, int) and not isinstance(v, bool)
                                                 and v >= (1 if key == "num_processes" else 0)):
        err(path, f"expected an integer >= {1 if key == 'num_processes' else 0}, got {v!r}")
      else:
        dist[key] = v
    if dist.get("process_id", 0) >= dist.get("num_processes", math.inf):
      err("distributed.process_id", f"expected < num_processes = {dist['num_processes']}, got {dist['process_id']}")

  if errors:
    raise ConfigError(source, errors)
  return Config(source=source, experiment=name, description=description, fixed=fixed, axes=axes,
                zip=tuple(groups), chunk_size=run["chunk_size"], precision=run["precision"], out=run["out"],
                distributed=dist)
