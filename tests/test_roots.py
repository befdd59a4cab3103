"""The one scalar root solver (klrl._src.roots) on problems with known roots."""
import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest

from klrl._src import roots


def _cubic(a, b):
  """``G(x) = x^3 + a x - b``: increasing for ``a > 0``, one real root."""
  def evaluate(x):
    return x ** 3 + a * x - b, 3 * x ** 2 + a, 6 * x
  return evaluate


@pytest.mark.parametrize("halley", [False, True])
@pytest.mark.parametrize("geometric", [False, True])
def test_cubic_roots_against_mpmath(halley, geometric):
  rng = np.random.default_rng(0)
  a, b = rng.uniform(0.01, 5, 200), rng.uniform(0.01, 1e3, 200)
  lo, hi = jnp.zeros(200), jnp.full(200, jnp.inf)
  tol = 1e-13
  done = lambda x, v: ~(jnp.abs(v[0]) > tol * b)
  r = roots.solve(_cubic(a, b), jnp.ones(200), lo, hi, jnp.ones(200, bool), done=done, max_steps=100,
                  closed_rtol=1e-15, halley=halley, geometric=geometric)
  assert bool(jnp.all(r.converged))
  ref = np.array([float(mp.findroot(lambda x: x ** 3 + ai * x - bi, mp.cbrt(bi))) for ai, bi in zip(a, b)])
  np.testing.assert_allclose(r.x, ref, rtol=1e-12)
  assert np.all((np.asarray(r.lo) <= ref * (1 + 1e-12)) & (ref <= np.asarray(r.hi) * (1 + 1e-12)))


def test_log_newton_on_a_function_linear_in_log_x():
  """``G(x) = log x - c`` is linear in ``log x``: one Newton step there lands on ``e^c`` exactly
  (to rounding), from any start; in ``x`` Newton would need many."""
  c = jnp.linspace(-20.0, 20.0, 41)
  evaluate = lambda x: (jnp.log(x) - c, 1 / x)
  done = lambda x, v: ~(jnp.abs(v[0]) > 1e-14)
  args = (evaluate, jnp.ones(41), jnp.zeros(41), jnp.full(41, jnp.inf), jnp.ones(41, bool))
  log = roots.solve(*args, done=done, max_steps=5, log_newton=lambda x: jnp.ones(x.shape, bool))
  np.testing.assert_allclose(log.x, jnp.exp(c), rtol=1e-14)
  assert bool(jnp.all(log.converged)) and int(log.iterations) <= 2
  plain = roots.solve(*args, done=done, max_steps=5)
  assert not bool(jnp.all(plain.converged))     # reported, not returned as a root


def test_step_limit_and_nan_are_reported_not_converged():
  evaluate = _cubic(jnp.array([1.0, 1.0, 1.0]), jnp.array([2.0, jnp.nan, 5.0]))
  active = jnp.array([True, True, False])
  r = roots.solve(evaluate, jnp.full(3, 1e-3), jnp.zeros(3), jnp.full(3, jnp.inf), active,
                  done=lambda x, v: ~(jnp.abs(v[0]) > 1e-12), max_steps=2)
  assert r.converged.tolist() == [False, False, True]     # too few steps; NaN; inactive
  assert float(r.x[2]) == 1e-3                            # inactive rows keep their start
  full = roots.solve(evaluate, jnp.full(3, 1e-3), jnp.zeros(3), jnp.full(3, jnp.inf), active,
                     done=lambda x, v: ~(jnp.abs(v[0]) > 1e-12), max_steps=100)
  assert full.converged.tolist() == [True, False, True]
  np.testing.assert_allclose(full.x[0], 1.0, rtol=1e-12)  # x^3 + x = 2


def test_halving_keeps_newton_from_cycling():
  """``G(x) = arctan(x - c)``: plain Newton from far away overshoots and diverges; the halving
  safeguard with arithmetic bisection converges on every row."""
  c = jnp.linspace(-3.0, 3.0, 13)
  evaluate = lambda x: (jnp.arctan(x - c), 1 / (1 + (x - c) ** 2))
  r = roots.solve(evaluate, c + 5.0, jnp.full(13, -10.0), jnp.full(13, 10.0), jnp.ones(13, bool),
                  done=lambda x, v: ~(jnp.abs(v[0]) > 1e-14), max_steps=200, geometric=False, halving=True,
                  closed_rtol=4 * np.finfo(float).eps)
  assert bool(jnp.all(r.converged))
  np.testing.assert_allclose(r.x, c, atol=1e-13)


def test_vmap_and_jit():
  a = jnp.linspace(0.5, 2.0, 6)
  solve = lambda ai: roots.solve(_cubic(ai, 3.0), jnp.asarray(1.0), jnp.asarray(0.0), jnp.asarray(jnp.inf),
                                 jnp.asarray(True), done=lambda x, v: ~(jnp.abs(v[0]) > 1e-13), max_steps=60).x
  np.testing.assert_allclose(jax.jit(jax.vmap(solve))(a), [solve(ai) for ai in a], rtol=1e-14)
