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


# ---------------------------------------------------------------------------------------------
# Command-line overrides (klrl sweep --set KEY=VALUE).

FRONTIER = """
experiment = "tilted.frontier"
[fixed]
vocab = 32
[grid]
delta = { logrange = [0.001, 1, 4] }
seed = { seeds = 2 }
"""


def test_overrides_replace_keys_before_the_check():
  sets = ["grid.delta=[0.1,0.2]", "fixed.vocab=64", "run.chunk_size=8", "fixed.problem=zipf",
          "grid.seed={ seeds = 3, start = 1 }"]
  cfg = config.parse(FRONTIER, "test.toml", sets)
  assert cfg.axes == {"delta": (0.1, 0.2), "seed": (1, 2, 3)}
  assert (cfg.fixed["vocab"], cfg.fixed["problem"], cfg.chunk_size) == (64, "zipf", 8)
  assert cfg.source == "test.toml " + " ".join(f"--set {s}" for s in sets)
  # the same configuration written out in the file has the same digest: overrides are not recorded in it
  written = FRONTIER.replace("vocab = 32", 'vocab = 64\nproblem = "zipf"').replace(
      "delta = { logrange = [0.001, 1, 4] }", "delta = [0.1, 0.2]").replace("seeds = 2", "seeds = 3, start = 1")
  assert parse(written + "[run]\nchunk_size = 8\n").digest() == cfg.digest()
  # sweeping a parameter the file holds fixed, and fixing one it sweeps
  cfg = config.parse(FRONTIER, "test.toml", ["grid.vocab=[8, 16]", "fixed.seed=4"])
  assert cfg.axes == {"delta": pytest.approx((0.001, 0.01, 0.1, 1.0)), "vocab": (8, 16)}
  assert cfg.fixed["seed"] == 4 and "vocab" not in cfg.fixed


def test_overrides_are_checked_like_the_file():
  raw = {"experiment": "tilted.frontier", "fixed": {"vocab": 32}, "grid": {"delta": [0.5]}}
  sets = ["fixed.vocab=1", "fixed.bogus=3", "grid.delta=\"x\"", "run.chunk_size=0", "grid", "fixed.vocab=[1",
          "experiment.name=3", "grid.delta.values=[1.0]"]
  with pytest.raises(ConfigError) as e:
    config.from_dict(raw, "test.toml", sets)
  errors = dict(e.value.errors)
  assert raw == {"experiment": "tilted.frontier", "fixed": {"vocab": 32}, "grid": {"delta": [0.5]}}   # untouched
  expected = {
      "fixed.vocab": "expected an integer >= 2, got 1",
      "fixed.bogus": "unknown parameter of tilted.frontier",
      "grid.delta": "expected a list of values or a table",
      "run.chunk_size": "expected an integer >= 1, got 0",
      "--set grid": "expected KEY=VALUE",
      "--set fixed.vocab=[1": "not a TOML value",
      "--set experiment.name=3": "experiment is a string, not a table",
      "--set grid.delta.values=[1.0]": "grid.delta is a string, not a table",
  }
  assert set(errors) == set(expected), sorted(errors)
  for path, fragment in expected.items():
    assert fragment in errors[path], (path, errors[path])
  assert str(e.value).startswith("test.toml --set fixed.vocab=1 --set fixed.bogus=3 ")
  assert f"{len(expected)} errors" in str(e.value).splitlines()[0]


# ---------------------------------------------------------------------------------------------
# Conditions between parameters (Limit), checked with the configuration.

MEMORYLESS = 'experiment = "memoryless.bon_vs_kl"\n[grid]\ndelta = [0.1, 0.2]\n'


def test_limits_are_reported_at_the_users_key_paths():
  errors, message = errors_of(MEMORYLESS + "n = [16, 4096, 8192]\n[fixed]\nn_max = 2048\n")
  assert errors == {"grid.n": "4096 exceeds fixed.n_max = 2048 (the buffers hold n <= n_max); 2 of its 3 values fail"}
  assert message == ("test.toml: 1 error in the sweep configuration:\n  grid.n: 4096 exceeds fixed.n_max = 2048 "
                     "(the buffers hold n <= n_max); 2 of its 3 values fail")
  errors, _ = errors_of(MEMORYLESS + "n = [16, 1001]\n")
  assert errors == {"grid.n": "1001 exceeds fixed.n_max = 1000 (default) (the buffers hold n <= n_max)"}
  errors, _ = errors_of(MEMORYLESS + "n = [8, 64]\nn_max = [32, 128]\n")     # crossed: (64, 32) fails
  assert errors == {"grid.n": "64 exceeds grid.n_max = 32 (the buffers hold n <= n_max)"}
  errors, _ = errors_of(MEMORYLESS + "n = [8, 64, 512]\nn_max = [4, 32]\n")
  assert errors["grid.n"].endswith("; 5 of the 6 combinations of grid.n, grid.n_max fail")
  # zipped axes move together: only their pairs are grid points
  assert parse('zip = [["n", "n_max"]]\n' + MEMORYLESS + "n = [8, 64]\nn_max = [8, 128]\n").size == 4
  errors, _ = errors_of('zip = [["n", "n_max"]]\n' + MEMORYLESS + "n = [8, 64]\nn_max = [128, 8]\n")
  assert errors == {"grid.n": "64 exceeds grid.n_max = 8 (the buffers hold n <= n_max)"}
  errors, _ = errors_of(MEMORYLESS + "[fixed]\nn = 50\nn_max = 40\n")
  assert errors == {"fixed.n": "50 exceeds fixed.n_max = 40 (the buffers hold n <= n_max)"}


def test_limits_come_with_every_other_problem_and_defer_to_a_parameters_own_error():
  rlvr = ('experiment = "rlvr.flow"\n[fixed]\nresponses = 8\nbeta = 1.0\nt = 1.0\n[grid]\n'
          "num_correct = [1, 8, 9]\naccuracy = [0.0, 0.5, 1.0]\n[run]\nchunk_size = 0\n")
  errors, _ = errors_of(rlvr)
  assert errors == {
      "grid.num_correct": "8 is not below fixed.responses = 8 (a prompt needs a wrong response); 2 of its 3 values fail",
      "grid.accuracy": "0.0 is not strictly between 0 and 1 (both kinds of response need mass); 2 of its 3 values fail",
      "run.chunk_size": "expected an integer >= 1, got 0"}
  errors, _ = errors_of(MEMORYLESS + "[fixed]\nn = 0\nn_max = 40\n")      # n's own error only
  assert list(errors) == ["fixed.n"] and "integer >= 1" in errors["fixed.n"]
  errors, _ = errors_of("zip = 3\n" + MEMORYLESS + 'n = [8, 64]\nn_max = [32]\n')   # a bad zip: limits on axes wait
  assert list(errors) == ["zip"]


def test_the_limits_are_the_experiments_own_requirements():
  """What a limit refuses, the experiment itself refuses (it would fail mid-sweep), and the
  shipped configurations meet every limit."""
  import jax.numpy as jnp
  rlvr = EXPERIMENTS["rlvr.flow"]
  p = dict(responses=4, num_correct=4, seed=0, accuracy=0.5, entropy_correct=0.9, entropy_wrong=0.9, beta=1.0, t=1.0)
  assert not rlvr.limits[0].check(p)
  with pytest.raises(ValueError, match="num_correct"):
    rlvr.fn(p, jnp.float64)
  p.update(num_correct=1, accuracy=1.0)
  assert rlvr.limits[0].check(p) and not rlvr.limits[1].check(p)
  with pytest.raises(ValueError, match="accuracy"):
    rlvr.fn(p, jnp.float64)
  mem = EXPERIMENTS["memoryless.bon_vs_kl"]
  p = dict(instance="bernoulli", vocab=8, seed=0, temperature=2.0, p_good=0.3, delta=0.1, n=11, n_max=10)
  assert not mem.limits[0].check(p)
  with pytest.raises(ValueError, match="'n' is too large"):
    mem.fn(p, jnp.float64)
  for path in CONFIGS:
    load(path)          # would raise ConfigError naming a broken limit


def test_a_limit_must_name_parameters():
  from klrl.sweep import Limit, Param, experiment
  with pytest.raises(ValueError, match=r"limits name \['m'\], which are not parameters"):
    experiment("x.limits", params=dict(n=Param(int)), outputs=("y",),
               limits=(Limit(("n", "m"), lambda v: v["n"] <= v["m"], "{n} exceeds {m}"),))(lambda p, dtype: {})
