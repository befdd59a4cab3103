"""Compile once: public functions hold no host callback, so JAX's persistent compilation cache
keeps them across processes; bad input still raises ``klrl.InputError`` naming the argument,
eagerly and under a caller's own ``jit``, ``vmap`` and ``grad``."""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import klrl
from klrl import InputError, bon, divergences, problems, rlvr, tilted
from klrl._src import checks

ROOT = Path(__file__).resolve().parent.parent

FIRST_CALLS = """
import json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
hits = []
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
from klrl import problems, tilted
logp, r = problems.random_problem(jax.random.PRNGKey(0), 8, 4096)
t = time.perf_counter()
sol = jax.block_until_ready(tilted.kl_constrained(logp, r, 0.5))
print("RESULT " + json.dumps(dict(seconds=time.perf_counter() - t, hits=len(hits), lam=sol.lam.tolist())))
"""


def _first_call(cache):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", PYTHONPATH=str(ROOT))
  r = subprocess.run([sys.executable, "-c", FIRST_CALLS], env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.loads(r.stdout.split("RESULT ", 1)[1])


@pytest.mark.slow
def test_a_second_process_loads_kl_constrained_from_the_persistent_cache(tmp_path):
  """The first process fills the cache, the second compiles nothing (every compilation is a cache
  hit) and gets the same answer bit for bit. Times are measured in benchmarks/, not here."""
  first = _first_call(tmp_path)
  assert first["hits"] == 0 and any(tmp_path.iterdir())
  second = _first_call(tmp_path)
  assert second["hits"] >= 1
  assert second["lam"] == first["lam"]


@pytest.mark.parametrize("fn, args", [
    (tilted.kl_constrained, lambda lp, r: (lp, r, 0.5)),
    (tilted.stats, lambda lp, r: (lp, r, 1.0)),
    (bon.stats, lambda lp, r: (lp, r, 4.0)),
    (divergences.kl, lambda lp, r: (lp, lp[::-1])),
])
def test_compiled_public_functions_hold_no_host_callback(fn, args):
  logp, r = problems.random_problem(jax.random.PRNGKey(1), 2, 16)
  hlo = jax.jit(lambda *a: checks.collect(fn.__wrapped__)(*a)[:2]).lower(*args(logp, r)).as_text()
  assert "callback" not in hlo.lower()


BAD = [
    (lambda d: tilted.kl_constrained(jnp.log(jnp.array([0.5, 0.5])), jnp.array([0.0, 1.0]), d),
     "klrl.tilted.kl_constrained: argument 'delta' must be >= 0"),
    (lambda b: tilted.tilt(jnp.log(jnp.array([0.5, 0.5])), jnp.array([0.0, 1.0]), b),
     "klrl.tilted.tilt: argument 'beta' must be > 0"),
    (lambda a: divergences.bernoulli_kl(a, 0.5), "klrl.divergences.bernoulli_kl: argument 'a' must lie in [0, 1]"),
]


@pytest.mark.parametrize("fn, msg", BAD)
def test_bad_values_raise_input_error_eagerly(fn, msg):
  with pytest.raises(InputError, match=msg.replace("[", r"\[").replace("]", r"\]")):
    fn(-1.0)
  fn(0.25)   # and a good value passes


@pytest.mark.parametrize("fn, msg", BAD)
def test_bad_values_under_jit_name_the_function_and_argument_first(fn, msg, caplog):
  """Under a caller's ``jit`` the message is logged before JAX's runtime error, whose text holds it too."""
  with caplog.at_level(logging.ERROR, logger="klrl"), pytest.raises(Exception) as err:
    jax.block_until_ready(jax.jit(fn)(-1.0))
  assert msg in str(err.value)
  first = [r.getMessage() for r in caplog.records if r.name == "klrl"]
  assert first and first[0].startswith("klrl.InputError: " + msg)
  for a, b in zip(jax.tree.leaves(jax.jit(fn)(0.25)), jax.tree.leaves(fn(0.25)), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.slow
def test_one_bad_member_under_vmap_and_grad():
  logp, r = jnp.log(jnp.array([0.5, 0.5])), jnp.array([0.0, 1.0])
  f = jax.vmap(lambda d: tilted.kl_constrained(logp, r, d).mean_reward)
  np.testing.assert_allclose(f(jnp.array([0.1, 0.2])), tilted.frontier(logp, r, jnp.array([0.1, 0.2])))
  with pytest.raises(Exception, match="argument 'delta' must be >= 0"):
    jax.block_until_ready(jax.jit(f)(jnp.array([0.1, -0.2, 0.3])))
  g = jax.grad(lambda d: tilted.kl_constrained(logp, r, d).mean_reward)
  assert np.isfinite(g(0.1))
  with pytest.raises(Exception, match="argument 'delta' must be >= 0"):
    jax.block_until_ready(g(-0.1))


def test_the_first_failing_check_is_reported_once_per_call():
  logp = jnp.log(jnp.array([[0.5, 0.5], [0.3, 0.3]]))     # the second row does not normalise
  with pytest.raises(InputError, match="argument 'logq' is not a log-probability"):
    divergences.kl(jnp.log(jnp.array([0.5, 0.5])), logp)
  with pytest.raises(InputError, match="klrl.rlvr.accuracy: argument 'logq' contains NaN"):
    rlvr.accuracy(jnp.array([jnp.nan, 0.0]), jnp.array([True, False]))


def test_info_and_version():
  info = klrl.info()
  for key in ("klrl", "jax", "jaxlib", "backend", "devices", "path", "compilation_cache"):
    assert key in info
  assert info["path"] == "xla" and info["backend"] == jax.default_backend()
  r = subprocess.run([sys.executable, "-m", "klrl.cli", "--version"], capture_output=True, text=True, timeout=120,
                     env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert r.returncode == 0, r.stderr
  assert f"klrl: {klrl.__version__}" in r.stdout and "backend: " in r.stdout and "jaxlib: " in r.stdout
