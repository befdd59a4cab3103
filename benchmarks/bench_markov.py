"""Benchmarks of klrl.markov: the scaled CGF of a Markov-token reference and the exact law of the
sequence reward, against SciPy/NumPy.

Cases, on random references (Dirichlet(1) rows, integer rewards ``0 .. 3`` per token, float64):

- ``scgf``: ``Lambda(lam) = log rho(P_lam)`` at 16 values of ``lam`` for ``V`` from 10 up to
  ``--max-markov-v`` (default 100; the log-space products klrl uses for accuracy hold ``V^3``
  numbers). Baseline: SciPy's dense eigensolver (``scipy.linalg.eigvals`` of each tilted
  matrix, the largest real part), timed in the same rounds. ``max_diff`` compares the two.
- ``sequence_law``: the law of ``S_n`` at ``V = 10`` and ``50`` for ``n`` from 100 to 10^4
  (10^3 with ``--quick``). Baseline: the explicit forward recursion over (state, level) in
  linear space with NumPy, ``O(n V^2 L)``, where it is feasible (``n V^2 L <= 5e9``); it loses
  the tails below ``1e-16`` of the peak, so ``rel_err`` compares the two only where the
  baseline's probability is at least ``1e-12``.
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from benchmarks.harness import Row, median_time, paired_times
from klrl import markov

LEVELS = 4


def _reference(v: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  trans = rng.dirichlet(np.ones(v), size=v)
  init = rng.dirichlet(np.ones(v))
  reward = rng.integers(0, LEVELS, v).astype(float)
  return init, trans, reward


def _np_scgf(trans, reward, lams):
  return np.array([np.log(np.max(scipy.linalg.eigvals(trans * np.exp(lam * reward)[None, :]).real)) for lam in lams])


def _np_law(init, trans, reward, n):
  """Law of ``S_n = sum_t r(y_t)`` by the forward recursion over (state, level), linear space."""
  r = reward.astype(int)
  size = n * r.max() + 1
  f = np.zeros((len(init), size))
  f[np.arange(len(init)), r] = init
  for _ in range(n - 1):
    g = trans.T @ f                       # g[j, s] = sum_i P(i, j) f[i, s]
    f = np.zeros_like(g)
    for j, rj in enumerate(r):
      f[j, rj:] = g[j, :size - rj]
  return f.sum(axis=0)


def run(args):
  rounds = args.rounds or (2 if args.quick else 5)
  max_v = getattr(args, "max_markov_v", None) or (30 if args.quick else 100)
  lams = jnp.linspace(-2.0, 2.0, 16)
  for v in [x for x in (10, 30, 100, 300, 1000, 3000, 10000) if x <= max_v]:
    init, trans, reward = _reference(v)
    ref = markov.reference(jnp.log(init), jnp.log(trans), jnp.asarray(reward))
    fn = jax.jit(markov.scgf)
    t0 = time.perf_counter()
    got = np.asarray(fn(ref, lams))
    first = time.perf_counter() - t0
    expect = _np_scgf(trans, reward, np.asarray(lams))
    t, tb, ratios = paired_times(fn, (ref, lams), lambda: _np_scgf(trans, reward, np.asarray(lams)), rounds)
    yield Row("markov", "scgf (16 lam)", f"V={v}", max(first - t, 0.0), t, "scipy.linalg.eigvals", tb,
              8 * v * v * 16, {"max_diff": float(np.max(np.abs(got - expect)))}, ratios)
  for v in (10, 50):
    init, trans, reward = _reference(v, 1)
    ref = markov.reference(jnp.log(init), jnp.log(trans), jnp.asarray(reward))
    for n in (100, 1000) if args.quick else (100, 1000, 10000):
      call = lambda: markov.sequence_law(ref, n)
      t0 = time.perf_counter()
      law = call()
      got = np.asarray(law.log_prob)
      first = time.perf_counter() - t0
      size = n * (LEVELS - 1) + 1
      if n * v * v * size <= 5e9:
        p = _np_law(init, trans, reward, n)
        start = int(np.asarray(law.start))
        ok = p >= 1e-12 * p.max()
        idx = np.nonzero(ok)[0] - start
        rel = float(np.max(np.abs(got[idx] - np.log(p[ok]))))
        t, tb, ratios = paired_times(lambda: call().log_prob, (), lambda: _np_law(init, trans, reward, n), min(rounds, 3))
        yield Row("markov", "sequence_law", f"V={v}, n={n}", max(first - t, 0.0), t, "NumPy forward recursion", tb,
                  8 * got.size, {"rel_err": rel}, ratios)
      else:                               # one timed call: a steady call takes seconds here
        t = median_time(lambda: call().log_prob, repeats=1)
        yield Row("markov", "sequence_law", f"V={v}, n={n}", max(first - t, 0.0), t, "(recursion infeasible)", None,
                  8 * got.size, {}, None)
