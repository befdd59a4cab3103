"""Sweep configuration files: parsing, expansion, the chunk plan and error reports."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from klrl.sweep import EXPERIMENTS, ConfigError, config, grid, load

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs" / "sweeps").glob("*.toml"))


def parse(text):
  return config.parse(text, "test.toml")


def errors_of(text):
  with pytest.raises(ConfigError) as e:
    parse(text)
  return dict(e.value.errors), str(e.value)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_parse_and_expand(path):
  cfg = load(path)
  g = grid.expand(cfg)
  chunks = grid.plan(cfg, g)
  assert g.size == cfg.size > 0
  points = np.concatenate([c.points for c in chunks])
  assert np.array_equal(np.sort(points), np.arange(g.size))
  assert all(len(c.points) <= cfg.chunk_size for c in chunks)


def test_shipped_configs_cover_every_experiment():
  assert {load(p).experiment for p in CONFIGS} == set(EXPERIMENTS)


def test_axis_forms_and_defaults():
  cfg = parse("""
experiment = "tilted.frontier"
[fixed]
vocab = 32
[grid]
delta = { logrange = [0.001, 10, 5] }
temperature = { linspace = [1, 2, 3] }
seed = { seeds = 2, start = 5 }
ties = { range = [0, 6, 3] }
exponent = { values = [0.5, 1] }
""")
  assert cfg.axes["delta"] == pytest.approx((1e-3, 1e-2, 1e-1, 1.0, 10.0), rel=1e-14)
  assert cfg.axes["delta"][0] == 0.001 and cfg.axes["delta"][-1] == 10.0   # endpoints exact
  assert cfg.axes["temperature"] == (1.0, 1.5, 2.0)
  assert cfg.axes["seed"] == (5, 6)
  assert cfg.axes["ties"] == (0, 3)
  assert cfg.axes["exponent"] == (0.5, 1.0) and all(type(x) is float for x in cfg.axes["exponent"])
  # Every parameter not swept is resolved, defaults included; precision and chunking default.
  assert cfg.fixed == dict(vocab=32, problem="random", relative=False)
  assert (cfg.chunk_size, cfg.precision, cfg.distributed) == (1024, "float64", None)
  assert cfg.size == 5 * 3 * 2 * 2 * 2


def test_cross_and_zip_order():
  cfg = parse("""
experiment = "tilted.stats"
zip = [["vocab", "exponent"]]
[grid]
beta = [1.0, 2.0]
vocab = [10, 20, 30]
exponent = [0.5, 1.0, 1.5]
""")
  g = grid.expand(cfg)
  assert g.size == 6
  # First factor slowest; zipped axes move together.
  assert g.columns["beta"].tolist() == [1, 1, 1, 2, 2, 2]
  assert g.columns["vocab"].tolist() == [10, 20, 30] * 2
  assert g.columns["exponent"].tolist() == [0.5, 1.0, 1.5] * 2


def test_plan_groups_static_parameters_and_respects_chunk_size():
  cfg = parse("""
experiment = "tilted.frontier"
[grid]
delta = { linspace = [0, 1, 7] }
vocab = [16, 8]
seed = { seeds = 3 }
[run]
chunk_size = 4
""")
  g = grid.expand(cfg)
  chunks = grid.plan(cfg, g)
  assert [c.id for c in chunks] == list(range(len(chunks)))
  for c in chunks:
    assert len(c.points) <= 4 and np.all(np.diff(c.points) > 0)
    assert set(g.columns["vocab"][c.points]) == {c.static["vocab"]}
  per_group = {v: sum(len(c.points) for c in chunks if c.static["vocab"] == v) for v in (8, 16)}
  assert per_group == {8: 21, 16: 21}
  assert len(chunks) == 2 * 6       # ceil(21 / 4) per group


@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.integers(1, 9), st.booleans())
def test_plan_covers_every_point_once(lengths, chunk_size, static_first):
  names = ["vocab", "seed", "temperature"][: len(lengths)]
  if not static_first:
    names = names[::-1]
  values = {"vocab": lambda n: list(range(2, 2 + n)), "seed": lambda n: list(range(n)),
            "temperature": lambda n: [1.0 + i for i in range(n)]}
  grid_toml = "\n".join(f"{a} = {values[a](n)}" for a, n in zip(names, lengths))
  cfg = parse('experiment = "tilted.stats"\n[fixed]\nbeta = 1.0\n' + ("vocab = 4\n" if "vocab" not in names else "")
              + f"[grid]\n{grid_toml}\n[run]\nchunk_size = {chunk_size}\n")
  g = grid.expand(cfg)
  chunks = grid.plan(cfg, g)
  points = np.concatenate([c.points for c in chunks])
  assert np.array_equal(np.sort(points), np.arange(int(np.prod(lengths))))


def test_digest_depends_on_the_points_not_the_spelling():
  a = parse('experiment = "tilted.stats"\n[fixed]\nvocab = 8\n[grid]\nbeta = { linspace = [1, 3, 3] }\n[run]\nout = "a"')
  b = parse('experiment = "tilted.stats"\n[fixed]\nvocab = 8\n[grid]\nbeta = [1.0, 2.0, 3.0]\n[run]\nout = "b"')
  c = parse('experiment = "tilted.stats"\n[fixed]\nvocab = 9\n[grid]\nbeta = [1.0, 2.0, 3.0]')
  assert a.digest() == b.digest() != c.digest()
  # the order of the axes orders the points, so it is part of the digest
  d = parse('experiment = "tilted.stats"\n[fixed]\nvocab = 8\n[grid]\nbeta = [1.0, 2.0]\nseed = [0, 1]')
  e = parse('experiment = "tilted.stats"\n[fixed]\nvocab = 8\n[grid]\nseed = [0, 1]\nbeta = [1.0, 2.0]')
  assert d.digest() != e.digest()
  from klrl.sweep.store import _diff
  assert _diff(d.resolved(), e.resolved()) == ["order of the grid axes: ['beta', 'seed'] -> ['seed', 'beta']"]


BAD = """
experiment = "tilted.frontier"
colour = "blue"
zip = [["seed", "nope"], ["delta"]]

[fixed]
vocab = 1
problem = "gaussian"
bogus = 3
seed = 0

[grid]
delta = { logrange = [0, 1, 10] }
temperature = [1.0, -2.0, "hot", true]
seed = { range = [0, 4], step = 2 }
ties = 3
relative = []

[run]
chunk_size = 0
precision = "float16"
speed = "fast"

[distributed]
num_processes = 2
process_id = 2
coordinator_address = "no-port"
"""


def test_every_error_is_reported_with_its_key_path():
  errors, message = errors_of(BAD)
  expected = {
      "colour": "unknown key",
      "zip[0]": "'nope' is not an axis",
      "zip[1]": "at least two axis names",
      "fixed.vocab": "integer >= 2",
      "fixed.problem": "'random', 'zipf'",
      "fixed.bogus": "unknown parameter of tilted.frontier",
      "grid.seed": "also set in [fixed]",
      "grid.delta.logrange": "0 < start",
      "grid.temperature[1]": ">= 0",
      "grid.temperature[2]": "got 'hot'",
      "grid.temperature[3]": "got True",
      "grid.seed.step": "unknown key",
      "grid.ties": "expected a list of values or a table",
      "grid.relative": "non-empty list",
      "run.chunk_size": "integer >= 1",
      "run.precision": "float64",
      "run.speed": "unknown key",
      "distributed.process_id": "< num_processes",
      "distributed.coordinator_address": "host:port",
  }
  for path, fragment in expected.items():
    assert path in errors, (path, sorted(errors))
    assert fragment in errors[path], (path, errors[path])
  assert set(errors) == set(expected), sorted(set(errors) ^ set(expected))
  assert message.startswith(f"test.toml: {len(errors)} errors")
  assert all(f"  {p}: " in message for p in expected)


def test_missing_and_unknown_experiment():
  errors, _ = errors_of("[grid]\nbeta = [1.0]\n")
  assert "missing" in errors["experiment"] and "tilted.stats" in errors["experiment"]
  errors, _ = errors_of('experiment = "tilted.nothing"\n[run]\nchunk_size = "big"\n')
  assert "tilted.frontier" in errors["experiment"] and "run.chunk_size" in errors
  errors, _ = errors_of('experiment = "tilted.stats"\n[grid]\nbeta = [1.0]\n')
  assert "required parameter" in errors["fixed.vocab"]
  errors, _ = errors_of('experiment = "tilted.stats"\nzip = "vocab"\n[fixed]\nvocab = 4\nbeta = 0.0\n')
  assert "> 0" in errors["fixed.beta"] and "list of lists" in errors["zip"]


def test_zip_lengths_and_repeats():
  errors, _ = errors_of("""
experiment = "tilted.stats"
zip = [["vocab", "beta"], ["beta", "seed"]]
[grid]
vocab = [4, 8]
beta = [1.0, 2.0, 3.0]
seed = [1, 1, 2]
""")
  assert "same number of values" in errors["zip[0]"] and "vocab: 2" in errors["zip[0]"]
  assert "more than one zip group" in errors["zip[1]"]
  assert "distinct" in errors["grid.seed"]


def test_many_bad_values_are_summarised():
  errors, _ = errors_of('experiment = "tilted.stats"\n[fixed]\nvocab = 4\n[grid]\nbeta = { linspace = [-5, -1, 9] }\n')
  assert {"grid.beta[0]", "grid.beta[1]", "grid.beta[2]"} <= set(errors)
  assert "6 more bad values" in errors["grid.beta"]


def test_toml_syntax_error_and_unreadable_file(tmp_path):
  errors, message = errors_of('experiment = "tilted.stats"\n[grid\n')
  assert "not valid TOML" in errors["(file)"] and "line 2" in message
  with pytest.raises(ConfigError, match="cannot be read"):
    load(tmp_path / "absent.toml")


def test_experiment_declarations_are_checked():
  from klrl.sweep import Param, experiment
  with pytest.raises(ValueError, match=r"\['flag'\] must be static"):
    experiment("x.flags", params=dict(flag=Param(bool)), outputs=("y",))(lambda p, dtype: {})
  with pytest.raises(ValueError, match="both parameters and outputs"):
    experiment("x.clash", params=dict(y=Param(float)), outputs=("y",))(lambda p, dtype: {})
