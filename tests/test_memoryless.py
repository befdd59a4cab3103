"""klrl.memoryless (docs: theory/memoryless) against brute-force enumeration, mpmath and theorem
identities."""
import csv
import functools
import itertools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy.special import gammaln, logsumexp

from benchmarks.bench_memoryless import np_law_log as direct_law   # exact log-space convolution
from klrl import InputError, data, memoryless as M, tilted as T
from klrl.sweep import config as sweep_config, engine as sweep_engine

mp.mp.dps = 60

# One 3-letter alphabet used throughout (shapes are reused, so compilations are shared).
P3 = np.array([0.5, 0.3, 0.2])
R3 = np.array([0.0, 1.0, 3.0])
LP3 = np.log(P3)


# ---------------------------------------------------------------------------------------------
# mpmath references.

def mp_cgf(p, r, t):
  return mp.log(mp.fsum(mp.mpf(a) * mp.exp(t * mp.mpf(b)) for a, b in zip(p, r) if a > 0))


def mp_mean(p, r, t):
  w = [(mp.mpf(a) * mp.exp(t * mp.mpf(b)), mp.mpf(b)) for a, b in zip(p, r) if a > 0]
  return mp.fsum(x * y for x, y in w) / mp.fsum(x for x, _ in w)


def mp_slope(p, r, x):
  """t with A'(t) = x, by bisection (x strictly inside the range)."""
  a, b = mp.mpf(-1), mp.mpf(1)
  while mp_mean(p, r, a) > x:
    a *= 2
  while mp_mean(p, r, b) < x:
    b *= 2
  for _ in range(mp.mp.prec + 20):
    m = (a + b) / 2
    a, b = (m, b) if mp_mean(p, r, m) < x else (a, m)
  return (a + b) / 2


def mp_rate(p, r, x):
  x = mp.mpf(x)
  sup = [b for a, b in zip(p, r) if a > 0]
  if x < min(sup) or x > max(sup):
    return mp.inf
  if x in (min(sup), max(sup)):
    return -mp.log(mp.fsum(mp.mpf(a) for a, b in zip(p, r) if a > 0 and b == x))
  t = mp_slope(p, r, x)
  return t * x - mp_cgf(p, r, t)


def mp_lam(p, r, delta):
  """lam with K(lam) = delta (unsaturated), by bisection on K."""
  k = lambda l: l * mp_mean(p, r, l) - mp_cgf(p, r, l)
  a, b = mp.mpf(0), mp.mpf(1)
  while k(b) < delta:
    b *= 2
  for _ in range(mp.mp.prec + 20):
    m = (a + b) / 2
    a, b = (m, b) if k(m) < delta else (a, m)
  return (a + b) / 2


def mp_bon(levels, masses, n, delta, lam, a_lam):
  """Per-token BoN quantities from an exact law of S_n on integer levels (mpmath)."""
  big_n = mp.exp(n * mp.mpf(delta))
  acc, out = mp.mpf(0), []
  for s, m in zip(levels, masses):
    below = acc
    acc += m
    out.append((s, m, below, acc ** big_n - below ** big_n))
  mean = mp.fsum(q * s for s, _, _, q in out) / n
  kl = mp.fsum(q * mp.log(q / m) for s, m, _, q in out if q > 0) / n
  if lam is None:
    klt = mp.inf
  else:
    klt = mp.fsum(q * (mp.log(q / m) - lam * s + n * a_lam) for s, m, _, q in out if q > 0) / n
  win = mp.fsum(q * (b + m / 2) for s, m, b, q in out)
  return [mean, kl, klt, win]


# ---------------------------------------------------------------------------------------------
# Cumulants and rate functions.

def test_cgf_against_mpmath_for_both_signs():
  t = np.array([-40.0, -2.0, -1e-7, 0.0, 1e-7, 0.5, 3.0, 200.0])
  ref = [float(mp_cgf(P3, R3, mp.mpf(x))) for x in t]
  np.testing.assert_allclose(M.cgf(LP3, R3, t), ref, rtol=1e-13, atol=1e-20)


XS = np.array([-0.5, 0.0, 1e-9, 0.3, 0.9 + 1e-6, 1.5, 2.9, 3 - 1e-10, 3.0, 3.2])


def test_rate_function_against_mpmath_including_the_ends():
  got = np.asarray(M.rate_function(LP3, R3, XS))
  mean = float(P3 @ R3)
  for x, g in zip(XS, got):
    ref = mp_rate(P3, R3, x)
    if ref == mp.inf:
      assert g == np.inf
    else:
      # Near the mean I ~ (x - E r)^2 / 2 Var inherits the rounding of E r: 2 eps |E r| / |x - E r|.
      cond = 4 * np.finfo(float).eps * mean / max(abs(x - mean), 1e-300)
      assert g == pytest.approx(float(ref), rel=1e-12 + cond, abs=1e-300), x
  assert got[1] == pytest.approx(-math.log(0.5), rel=1e-15) and got[-2] == pytest.approx(-math.log(0.2), rel=1e-15)


def test_rate_function_with_ties_and_zero_mass():
  p = np.array([0.1, 0.0, 0.2, 0.3, 0.4])
  r = np.array([2.0, 9.0, 2.0, -1.0, 0.5])
  with np.errstate(divide="ignore"):
    lp = np.log(p)
  xs = np.array([-1.0, -0.2, 0.7, 1.99, 2.0, 5.0])
  got = M.rate_function(lp, r, xs)
  ref = [float(mp_rate(p, r, x)) for x in xs]
  np.testing.assert_allclose(got, ref, rtol=1e-12)
  assert float(got[4]) == pytest.approx(-math.log(0.3), rel=1e-15)       # tied maximum: p(r = 2) = 0.3


@pytest.mark.slow
def test_rate_far_from_the_mean_of_a_sharp_tilt():
  # A strongly tilted law (most mass on one point): the solver's function G is S-shaped there and
  # plain Newton oscillates between its two linear ends.
  logp = np.array([-20.06672438, -3.01746641, -18.90981026, -16.84232419, -0.05658994, -23.6280808,
                   -25.5846659, -5.10054299])
  logp = logp - logsumexp(logp)
  r = np.array([-1.0, 0.75, -0.75, -0.75, 1.0, -1.25, -1.5, 0.5])
  xs = np.array([-1.4, -0.9, 0.0875, 0.5, 0.99])
  got = M.rate_function(logp, r, xs)
  np.testing.assert_allclose(got, [float(mp_rate(np.exp(logp), r, x)) for x in xs], rtol=1e-12)


@pytest.mark.slow
def test_rate_derivatives_are_exact_and_implicit():
  f = lambda lg, r, x: M.rate_function(jax.nn.log_softmax(lg), r, x)
  logits, r, xs = jnp.log(jnp.array(P3)), jnp.array(R3), jnp.array([0.2, 1.5, 2.99])
  d1, d2, (dl, dr) = jax.jit(lambda lg, r, xs: (
      jax.vmap(jax.grad(f, 2), (None, None, 0))(lg, r, xs),
      jax.vmap(jax.grad(jax.grad(f, 2), 2), (None, None, 0))(lg, r, xs),
      jax.grad(f, (0, 1))(lg, r, xs[1])))(logits, r, xs)
  for x, g, h in zip(np.asarray(xs), d1, d2):
    t = mp_slope(P3, R3, x)
    assert float(g) == pytest.approx(float(t), rel=1e-10)                    # I'(x) = t*
    var = mp.diff(lambda u: mp_mean(P3, R3, u), t)
    assert float(h) == pytest.approx(float(1 / var), rel=1e-8)               # I''(x) = 1/A''(t*)
  # Derivatives in the logits and the rewards against central differences (one batched call).
  eps = 1e-6
  bumps = np.concatenate([np.eye(3), -np.eye(3)]) * eps
  lg = np.asarray(logits)[None, :] + np.concatenate([bumps, np.zeros((6, 3))])
  rr = np.asarray(r)[None, :] + np.concatenate([np.zeros((6, 3)), bumps])
  vals = np.asarray(M.rate_function(jax.nn.log_softmax(lg, axis=-1), rr, 1.5))
  np.testing.assert_allclose(dl, (vals[:3] - vals[3:6]) / (2 * eps), rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(dr, (vals[6:9] - vals[9:]) / (2 * eps), rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_tilted_rate_scgf_renyi_and_scaled_cumulants():
  delta, dmax = 0.3, -math.log(0.2)
  lam = mp_lam(P3, R3, delta)
  x_d = mp_mean(P3, R3, lam)
  sol = T.kl_constrained(LP3, R3, delta)
  assert float(sol.lam) == pytest.approx(float(lam), rel=1e-11)
  # I_p(x_delta) = delta.
  assert float(M.rate_function(LP3, R3, np.append(XS[:-1], sol.mean_reward))[-1]) == pytest.approx(delta, rel=1e-12)
  # Two rows: delta = 0.3, and a saturated budget (phi = p(. | r = 3)).
  logp, deltas = np.broadcast_to(LP3, (2, 3)), np.array([delta, dmax + 0.1])
  x = np.stack([np.append(XS, float(x_d)), np.append(XS, 3.0)])
  got = np.asarray(M.tilted_rate_function(logp[:, None], R3, deltas[:, None], x))
  # I_delta against mpmath (Cramer rate under phi), zero at x_delta; saturated: 0 at r_max, else inf.
  phi = [mp.mpf(a) * mp.exp(lam * b - mp_cgf(P3, R3, lam)) for a, b in zip(P3, R3)]
  np.testing.assert_allclose(got[0, :-1], [float(mp_rate(phi, R3, v)) for v in XS], rtol=1e-11)
  assert abs(got[0, -1]) < 1e-15
  assert np.all(got[1, x[1] != 3.0] == np.inf) and np.all(got[1, x[1] == 3.0] == 0.0)
  # SCGF: exact, and equal to the Renyi cross-entropy form; saturated: t r_max.
  t = np.array([-3.0, -0.4, 0.0, 1e-6, 0.7, 4.0])
  lam_t = np.array([[float(mp_cgf(P3, R3, lam + v) - mp_cgf(P3, R3, lam)) for v in t], 3 * t])
  tt = np.broadcast_to(t, (2, 6))
  np.testing.assert_allclose(M.scgf(logp[:, None], R3, deltas[:, None], tt), lam_t, rtol=1e-12, atol=1e-300)
  np.testing.assert_allclose(M.scgf_renyi(logp[:, None], R3, deltas[:, None], tt), lam_t, rtol=1e-12, atol=1e-14)
  # Scaled cumulants A^(k)(lam) against mpmath derivatives; saturated: r_max, then zeros.
  kappa = np.asarray(M.scaled_cumulants(logp, R3, deltas, 4))
  ref = [float(mp.diff(lambda u: mp_cgf(P3, R3, u), lam, k)) for k in range(1, 5)]
  np.testing.assert_allclose(kappa[0], ref, rtol=1e-10)
  assert kappa[0, 0] == pytest.approx(float(x_d), rel=1e-14)
  np.testing.assert_allclose(kappa[1], [3.0, 0, 0, 0], atol=1e-15)
  # All of them at once.
  ld = M.large_deviations(logp[:, None], R3, deltas[:, None], x, tt)
  np.testing.assert_array_equal(ld.tilted_rate, got)
  np.testing.assert_allclose(ld.rate[0, :-1], M.rate_function(LP3, R3, XS), rtol=1e-14)
  np.testing.assert_allclose(ld.scgf, lam_t, rtol=1e-12, atol=1e-300)
  np.testing.assert_allclose(ld.scgf_renyi, lam_t, rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(ld.cgf[0], [float(mp_cgf(P3, R3, v)) for v in t], rtol=1e-13)
  # I_p(x_delta) = delta (saturated: I_p(r_max) = delta_max) and I_delta(x_delta) = 0.
  np.testing.assert_allclose(ld.rate_at_target[:, 0], [delta, dmax], rtol=1e-12)
  assert np.all(np.abs(ld.tilted_rate_at_target) < 1e-15)


def _instance(seed, vocab=6):
  rng = np.random.default_rng(seed)
  p = rng.dirichlet(np.full(vocab, 0.7))
  r = np.round(rng.normal(size=vocab) * 4) / 4            # ties, sometimes at the maximum
  return np.log(p), r


@pytest.mark.slow
@given(st.integers(0, 10 ** 6), st.floats(0.02, 0.95))
def test_rate_identities_on_random_instances(seed, frac):
  logp, r = _instance(seed)
  p = np.exp(logp)
  dmax = float(T.max_kl(logp, r))
  delta = frac * dmax
  sol = T.kl_constrained(logp, r, delta)
  x_d = float(sol.mean_reward)
  lo, hi = r.min(), r.max()
  # Step of the curvature check: small against the distance to the ends too, where I_delta's
  # higher derivatives blow up (the central difference's error is ~ h^2 I''''/12).
  h = min(1e-4 * (hi - lo), 1e-3 * (hi - x_d), 1e-3 * (x_d - lo))
  # One array of points per call (a grid, E_p r, and x_delta +- h), so each function compiles once.
  x = np.concatenate([np.linspace(lo, hi, 41)[1:-1], [p @ r, x_d - h, x_d, x_d + h]])
  i_p = np.asarray(M.rate_function(logp, r, x))
  i_d = np.asarray(M.tilted_rate_function(logp, r, delta, x))
  g = slice(0, 39)
  # Convexity of I_p on a uniform grid, and I_p >= 0 with I_p(E r) = 0.
  assert np.all(np.diff(i_p[g], 2) >= -1e-12 * np.maximum(1, i_p[1:38]))
  assert np.all(i_p >= 0) and i_p[39] <= 1e-15
  # The identity I_delta = I_p - delta - lam (x - x_delta), and I_delta >= 0, zero only at x_delta.
  pred = i_p - delta - float(sol.lam) * (x - x_d)
  np.testing.assert_allclose(i_d, pred, rtol=1e-9, atol=1e-11 * max(1.0, dmax))
  far = np.abs(x[g] - x_d) > 1e-3 * (hi - lo)
  assert np.all(i_d[g][far] > 0) and np.all(i_d >= -1e-13) and abs(i_d[41]) <= 1e-14
  # Local curvature: I_delta''(x_delta) = 1 / Var_phi(r).
  phi = np.exp(np.asarray(sol.log_policy))
  var = phi @ r ** 2 - (phi @ r) ** 2
  assert (i_d[40] - 2 * i_d[41] + i_d[42]) / h ** 2 == pytest.approx(1 / var, rel=1e-4)
  # Legendre: I_p(x) >= t x - A(t) on a grid of t (the equality at t = I_p'(x) is tested above).
  t = np.linspace(-6, 6, 61)
  a = np.asarray(M.cgf(np.broadcast_to(logp, (61, 6)), np.broadcast_to(r, (61, 6)), t))
  assert np.all(i_p[g, None] >= x[g, None] * t[None, :] - a[None, :] - 1e-12 * (1 + np.abs(a)))


# ---------------------------------------------------------------------------------------------
# The lattice, and the exact law of S_n.

def test_lattice_merges_ties_and_divides_the_gaps():
  logp = np.log([0.2, 0.3, 0.1, 0.4])
  lat = M.lattice(logp, np.array([0.1, 0.3, 0.3, 0.7]), 10)
  np.testing.assert_allclose(np.exp(lat.log_mass), [0.2, 0.4, 0.0, 0.4], atol=1e-16)
  assert (float(lat.offset), float(lat.span), float(lat.scale)) == (1.0, 2.0, 10.0)
  np.testing.assert_allclose(lat.reward, [0.1, 0.3, 0.5, 0.7])


def test_non_lattice_rewards_are_refused_or_rounded():
  logp = np.log([0.2, 0.3, 0.5])
  with pytest.raises(InputError, match=r"klrl.memoryless.lattice: argument 'reward' is not on a lattice.*"
                                       r"reward\[1\] = 0.3333.*rounding=True"):
    M.lattice(logp, np.array([0.0, 1 / 3, 1.0]), 10)
  lat = M.lattice(logp, np.array([0.0, 1 / 3, 1.0]), 10, rounding=True)
  np.testing.assert_allclose(lat.reward[np.isfinite(lat.log_mass)], [0.0, 0.3, 1.0])
  with pytest.raises(InputError, match="argument 'reward' is not on a lattice"):
    M.bon_vs_kl(logp, np.array([0.0, 0.5, 1.25]), 0.1, 10, scale=2)
  with pytest.raises(InputError, match="argument 'scale' must be a finite Python number > 0"):
    M.lattice(logp, np.zeros(3), 0.0)
  with pytest.raises(InputError, match="argument 'reward' must be concrete"):
    jax.jit(lambda r: M.lattice(logp, r).log_mass)(jnp.zeros(3))




def test_sequence_law_matches_enumeration_of_all_sequences():
  lat = M.lattice(LP3, R3)                               # levels 0, 1, (2 empty), 3
  for n in [4, 8]:
    sums = {}
    for seq in itertools.product(range(3), repeat=n):
      s = sum(int(R3[i]) for i in seq)
      sums[s] = sums.get(s, mp.mpf(0)) + mp.fprod(mp.mpf(P3[i]) for i in seq)
    law = np.asarray(M.sequence_law(lat, n).log_prob)
    assert law.shape == (3 * n + 1,)
    for s in range(3 * n + 1):
      if s in sums:
        assert law[s] == pytest.approx(float(mp.log(sums[s])), rel=1e-12, abs=1e-13)
      else:
        assert law[s] == -np.inf                       # unreachable totals are exact zeros


@pytest.mark.parametrize("levels, n", [(10, 300)])
def test_sequence_law_against_log_space_convolution(levels, n):
  logq = np.log(np.random.default_rng(levels).dirichlet(np.ones(levels)))
  lat = M.Lattice(jnp.asarray(logq), jnp.asarray(0.0), jnp.asarray(1.0), jnp.asarray(1.0))
  got = np.asarray(M.sequence_law(lat, n).log_prob)
  ref = direct_law(logq, n)
  keep = ref >= -700
  np.testing.assert_allclose(got[keep], ref[keep], rtol=0, atol=1e-10)
  assert np.all(got[~keep] <= -600)


def test_sequence_law_binomial_tails_at_large_n():
  q = 0.3
  lat = M.lattice(np.log([1 - q, q]), np.array([0.0, 1.0]))
  for n in [100_000]:
    law = np.asarray(M.sequence_law(lat, n).log_prob)
    k = np.arange(n + 1)
    ref = gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1) + k * math.log(q) + (n - k) * math.log(1 - q)
    keep = ref >= -700                                  # probabilities down to 1e-304
    # Relative error of the probabilities <= 1e-8 (lgamma itself is good to ~1e-10 here).
    assert np.max(np.abs(law[keep] - ref[keep])) <= 1e-8
    for s in [int(k[keep][0]), n // 3, int(k[keep][-1])]:    # the 1e-304 tails, exactly
      exact = mp.log(mp.binomial(n, s)) + s * mp.log(q) + (n - s) * mp.log(1 - mp.mpf(q))
      assert law[s] == pytest.approx(float(exact), rel=1e-12, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# Best-of-N over sequences.

def mp_enumerated(p, r, delta, n):
  """All V^n sequences in mpmath: sequence-level KLs, levels for the win rate."""
  pm = [mp.mpf(x) for x in p]
  seqs = list(itertools.product(range(len(p)), repeat=n))
  prob = [mp.fprod(pm[i] for i in s) for s in seqs]
  total = [sum(int(r[i]) for i in s) for s in seqs]
  levels = sorted(set(total))
  mass = {k: mp.fsum(a for a, t in zip(prob, total) if t == k) for k in levels}
  big_n = mp.exp(n * mp.mpf(delta))
  acc, law, below = mp.mpf(0), {}, {}
  for k in levels:
    below[k] = acc
    acc += mass[k]
    law[k] = acc ** big_n - below[k] ** big_n
  pi = [a * law[t] / mass[t] for a, t in zip(prob, total)]
  dmax = -mp.log(pm[int(np.argmax(r))])
  if delta < dmax:
    lam = mp_lam(p, r, delta)
    phi = [a * mp.exp(lam * b - mp_cgf(p, r, lam)) for a, b in zip(pm, r)]
    phis = [mp.fprod(phi[i] for i in s) for s in seqs]
    klt = mp.fsum(a * mp.log(a / b) for a, b in zip(pi, phis) if a > 0) / n
  else:
    klt = mp.inf
  # Win rate against an independent reference sequence, over all pairs of sequences.
  win = mp.fsum(a * b * (1 if t > u else mp.mpf(1) / 2 if t == u else 0)
                for a, t in zip(pi, total) for b, u in zip(prob, total)) if n <= 5 else \
      mp.fsum(law[k] * (below[k] + mass[k] / 2) for k in levels)
  return [mp.fsum(a * t for a, t in zip(pi, total)) / n,
          mp.fsum(a * mp.log(a / b) for a, b in zip(pi, prob) if a > 0) / n, klt, win]


SMALL = [(1, 0.3), (3, 0.05), (5, 0.3), (8, 1.0), (4, 1.8), (6, 5.0), (2, 0.0)]


DERIVATIVE = [(30, 0.3), (30, 0.3 + 1e-5), (30, 0.3 - 1e-5)]


@functools.lru_cache(maxsize=1)
def _small_cases():
  """All small cases in one call (one compilation), with their derivatives in delta: the 3-letter
  alphabet (SMALL, then n = 60, then DERIVATIVE), and a point mass (last)."""
  lat = M.lattice(LP3, R3)
  point = lat._replace(log_mass=jnp.array([-jnp.inf, 0.0, -jnp.inf, -jnp.inf]))   # a constant reward
  cases = SMALL + [(60, 0.4)] + DERIVATIVE + [(7, 0.5)]
  ns, deltas = np.array([n for n, _ in cases]), np.array([d for _, d in cases])
  lats = jax.tree.map(lambda a, b: jnp.stack([a] * (len(cases) - 1) + [b]), lat, point)
  return jax.jvp(lambda d: M.bon_vs_kl_lattice(lats, d, ns, size=256), (deltas,), (np.ones_like(deltas),))


@pytest.mark.slow
def test_bon_vs_kl_against_enumeration_of_all_sequences():
  out = _small_cases()[0]
  for i, (n, delta) in enumerate(SMALL):
    ref = [float(x) for x in mp_enumerated(P3, R3, delta, n)]
    got = [float(out.mean_reward[i]), float(out.kl[i]), float(out.kl_to_tilted[i]), float(out.win_rate[i])]
    for g, x in zip(got, ref):
      if x == np.inf:
        assert g == np.inf
      else:
        assert g == pytest.approx(x, rel=1e-12, abs=1e-13), (n, delta)
    sat = delta >= -math.log(0.2)
    assert float(out.target_reward[i]) == pytest.approx(3.0 if sat else float(mp_mean(P3, R3, mp_lam(P3, R3, delta))),
                                                        rel=1e-13)
  # The brute-force reference implementation, on a batch of budgets.
  n, deltas = 5, np.array([0.0, 0.05, 0.3, 1.8, 5.0])
  enum = M.bon_vs_kl_enumerated(np.broadcast_to(LP3, (5, 3)), R3, deltas, n)
  for i, delta in enumerate(deltas):
    ref = [float(x) for x in mp_enumerated(P3, R3, delta, n)]
    for g, x in zip([enum.mean_reward[i], enum.kl[i], enum.kl_to_tilted[i], enum.win_rate[i]], ref):
      assert float(g) == (np.inf if x == np.inf else pytest.approx(x, rel=1e-12, abs=1e-13))
  # A constant reward is saturated at every budget, and best-of-N is the reference itself.
  assert float(out.kl[-1]) == 0.0 and float(out.kl_to_tilted[-1]) == 0.0 and float(out.mean_reward[-1]) == 1.0


@pytest.mark.slow
def test_bon_vs_kl_against_mpmath_binomial_at_moderate_n():
  q, delta = 0.3, 0.2
  lam = mp_lam([1 - q, q], [0, 1], delta)
  a_lam = mp_cgf([1 - q, q], [0, 1], lam)
  ns, out = _large_cases()
  for i, n in list(enumerate(ns))[8:11]:         # the Bernoulli rows
    n = int(n)
    with mp.workdps(int(n * delta / 2.3) + 40):       # F_k = 1 - O(e^{-n delta}) must be resolved
      masses = [mp.binomial(n, k) * mp.mpf(q) ** k * (1 - mp.mpf(q)) ** (n - k) for k in range(n + 1)]
      ref = mp_bon(range(n + 1), masses, n, delta, lam, a_lam)
    got = [out.mean_reward[i], out.kl[i], out.kl_to_tilted[i], out.win_rate[i]]
    for g, x in zip(got, ref):
      assert float(g) == pytest.approx(float(x), rel=1e-9, abs=1e-14)
    assert float(out.lam[i]) == pytest.approx(float(lam), rel=1e-11)


@pytest.mark.slow
def test_bon_vs_kl_three_letters_against_mpmath_convolution():
  delta, n = 0.4, 60
  lam = mp_lam(P3, R3, delta)
  law = [mp.mpf(1)]
  for _ in range(n):
    new = [mp.mpf(0)] * (len(law) + 3)
    for s, m in enumerate(law):
      for a, b in zip(P3, R3):
        new[s + int(b)] += m * mp.mpf(a)
    law = new
  levels = [s for s, m in enumerate(law) if m > 0]
  ref = mp_bon(levels, [law[s] for s in levels], n, delta, lam, mp_cgf(P3, R3, lam))
  out = _small_cases()[0]
  for g, x in zip([out.mean_reward, out.kl, out.kl_to_tilted, out.win_rate], ref):
    assert float(g[len(SMALL)]) == pytest.approx(float(x), rel=1e-10)


DMAX3 = -math.log(0.2)


@functools.lru_cache(maxsize=1)
def _english():
  u = M.english_unigram()
  return u, M.lattice(u.logp, u.reward, 10)


@functools.lru_cache(maxsize=1)
def _large_cases():
  """One call (one compilation): the 3-letter alphabet at delta = 0.3 for n = 10 ... 1e5, at three
  saturated budgets for n = 2000, Bernoulli(0.3) tokens at delta = 0.2 for n = 50, 400, 1500, and
  the English/VADER instance at delta = 0.1 for n = 1, 30, 1000 (all on its 74 lattice points)."""
  q = 0.3
  english = _english()[1]
  pad = lambda m: jnp.pad(jnp.asarray(m, jnp.float64), (0, 74 - len(m)), constant_values=-jnp.inf)
  lat3 = M.lattice(LP3, R3)
  lat3 = lat3._replace(log_mass=pad(lat3.log_mass))
  coin = lat3._replace(log_mass=pad(np.log([1 - q, q])))
  ns = np.array([10, 100, 1000, 10_000, 100_000, 2000, 2000, 2000, 50, 400, 1500, 1, 30, 1000])
  deltas = np.array([0.3] * 5 + [DMAX3, DMAX3 + 0.1, 3.0] + [0.2] * 3 + [0.1] * 3)
  lats = jax.tree.map(lambda a, b, c: jnp.stack([a] * 8 + [b] * 3 + [c] * 3), lat3, coin, english)
  return ns, M.bon_vs_kl_lattice(lats, deltas, ns)


@pytest.mark.slow
def test_convergence_trends_at_large_n():
  delta = 0.3
  ns, out = _large_cases()
  ns, out = ns[:5], jax.tree.map(lambda a: np.asarray(a)[:5], out)
  gap = out.target_reward - out.mean_reward
  assert np.all(np.diff(gap) < 0) and np.all(gap > 0)
  assert np.all(np.diff(np.abs(out.kl - delta)) < 0) and np.all(out.kl < delta)
  assert np.all(np.diff(out.kl_to_tilted) < 0) and np.all(out.kl_to_tilted > 0)
  # The finite-n gap approaches log n / (2 lam n): the ratio tends to 1 (slowly, O(1/log n)).
  ratio = gap / out.predicted_gap
  assert np.all(np.diff(np.abs(ratio - 1)) < 0) and abs(ratio[-1] - 1) < 0.03
  # n KL(pi_N || phi^n) / log n stays bounded (the KL itself grows like log n).
  growth = out.kl_to_tilted * ns / np.log(ns)
  assert np.all((growth > 0.1) & (growth < 1.0))


def test_saturated_budget_gives_the_reward_limit_and_infinite_kl():
  ns, out = _large_cases()
  n, out = 2000, jax.tree.map(lambda a: np.asarray(a)[5:8], out)
  # Past delta_max the top sequence is chosen with probability 1 - exp(-e^{n (delta - delta_max)});
  # at delta_max itself with probability 1 - 1/e, and otherwise the next total, 2 below the top.
  np.testing.assert_allclose(out.mean_reward[1:], 3.0, rtol=1e-12)
  assert 3.0 - out.mean_reward[0] == pytest.approx(2 * math.exp(-1) / n, rel=1e-8)
  np.testing.assert_allclose(out.kl[1:], DMAX3, rtol=1e-12)
  assert np.all(out.kl_to_tilted == np.inf) and np.all(np.isfinite(out.win_rate))
  assert np.all(out.lam == np.inf) and np.all(out.predicted_gap == 0)


def test_bon_vs_kl_derivative_in_delta():
  out, tangent = _small_cases()
  rows = slice(len(SMALL) + 1, len(SMALL) + 4)                 # n = 30 at delta = 0.3, 0.3 +- 1e-5
  for name in ["mean_reward", "kl", "kl_to_tilted", "win_rate"]:
    value, slope = np.asarray(getattr(out, name))[rows], np.asarray(getattr(tangent, name))[rows]
    assert slope[0] == pytest.approx((value[1] - value[2]) / 2e-5, rel=1e-6), name


@pytest.mark.slow
def test_float32():
  with jax.enable_x64(False):
    i32 = M.rate_function(LP3.astype(np.float32), R3.astype(np.float32), XS.astype(np.float32))
    o32 = M.bon_vs_kl(LP3.astype(np.float32), R3.astype(np.float32), np.float32(0.3), 100)
  assert i32.dtype == jnp.float32 and o32.kl.dtype == jnp.float32
  np.testing.assert_allclose(i32, M.rate_function(LP3, R3, XS), rtol=2e-5, atol=1e-12)
  o64 = jax.tree.map(lambda a: a[1], _large_cases()[1])       # delta = 0.3, n = 100
  for a, b in zip(o32[:4], o64[:4]):
    assert float(a) == pytest.approx(float(b), rel=1e-4)


def test_bad_input_is_refused_with_named_errors():
  # (Shapes of earlier calls, so that the compiled functions are reused.)
  with pytest.raises(InputError, match="klrl.memoryless.rate_function: argument 'logp' is not a log-probability"):
    M.rate_function(np.log([0.5, 0.6, 0.2]), R3, XS)
  with pytest.raises(InputError, match="argument 'reward' must be finite"):
    M.rate_function(LP3, np.array([0.0, np.nan, 1.0]), XS)
  with pytest.raises(InputError, match="argument 'delta' must be >= 0"):
    M.scgf(np.broadcast_to(LP3, (2, 1, 3)), R3, np.array([[0.3], [-0.1]]), np.zeros((2, 6)))
  with pytest.raises(InputError, match="argument 'n' must be an integer >= 1"):
    M.bon_vs_kl(LP3, R3, 0.1, 0)
  with pytest.raises(InputError, match="argument 'n' must be an integer >= 1"):
    M.bon_vs_kl_lattice(M.lattice(LP3, R3), 0.1, 2.5, size=256)
  with pytest.raises(InputError, match="argument 'n' must be a Python int >= 1"):
    M.sequence_law(M.lattice(LP3, R3), 0)
  with pytest.raises(InputError, match="argument 'lat' must be a klrl.memoryless.Lattice"):
    M.sequence_law((LP3,), 3)
  with pytest.raises(InputError, match=r"argument 'n' is too large for argument 'size' = 256"):
    M.bon_vs_kl_lattice(M.lattice(LP3, R3), 0.1, 86, size=256)


# ---------------------------------------------------------------------------------------------
# Users' files, and the sweep experiment.

def test_load_problem_reads_users_files_and_refuses_bad_ones(tmp_path):
  logp = np.log(np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
  reward = np.array([[0.0, 1.0, 3.0], [-0.5, 0.25, 0.25]])
  for suffix in (".npz", ".safetensors"):
    path = data.save(tmp_path / f"ok{suffix}", {"logp": logp, "reward": reward})
    u = M.load_problem(path, scale=4)
    np.testing.assert_array_equal(u.logp, logp)
    np.testing.assert_array_equal(u.reward, reward)
  # Two .npy files; the rows feed the lattice and best-of-N like any other input.
  lp_path, r_path = data.save(tmp_path / "logp.npy", {"a": logp}), data.save(tmp_path / "reward.npy", {"a": reward})
  u = M.load_problem(lp_path, reward_path=r_path, scale=4)
  lat = M.lattice(u.logp, u.reward, 4)
  np.testing.assert_allclose(np.exp(lat.log_mass), [[0.5, 0.3, 0.0, 0.2], [0.1, 0.9, 0.0, 0.0]], rtol=1e-14)
  np.testing.assert_array_equal(lat.span, [4.0, 3.0])
  # Bad files: missing array, shape, not normalised, unreadable, non-lattice rewards.
  with pytest.raises(InputError, match=r"klrl.memoryless.load_problem: '.*bad1.npz' has no array 'reward' \(it has: logp\)"):
    M.load_problem(data.save(tmp_path / "bad1.npz", {"logp": logp}))
  with pytest.raises(InputError, match=r"has shape \(2, 2\), expected \(2, 3\)"):
    M.load_problem(data.save(tmp_path / "bad2.npz", {"logp": logp, "reward": reward[:, :2]}))
  with pytest.raises(InputError, match=r"is not normalised: row \(1,\)"):
    M.load_problem(data.save(tmp_path / "bad3.npz", {"logp": logp + np.array([[0.0], [0.1]]), "reward": reward}))
  (tmp_path / "bad4.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(InputError, match=r"could not read '.*bad4.safetensors' as .safetensors"):
    M.load_problem(tmp_path / "bad4.safetensors")
  with pytest.raises(InputError, match=r"klrl.memoryless.load_problem: array 'reward' of '.*ok.npz' is not on a "
                                       r"lattice: reward\[1, 0\] = -0.5 gives reward \* scale = -1.5.*scale = 3"):
    M.load_problem(tmp_path / "ok.npz", scale=3)
  with pytest.raises(InputError, match=r"the array in '.*reward.npy' is not on a lattice"):
    M.load_problem(lp_path, reward_path=r_path, scale=1)
  np.testing.assert_allclose(M.load_problem(tmp_path / "ok.npz", scale=3, rounding=True).reward,
                             [[0.0, 1.0, 3.0], [-2 / 3, 1 / 3, 1 / 3]], rtol=1e-15)


@pytest.mark.slow
def test_sweep_experiment_rows_equal_direct_calls(tmp_path):
  path = Path(__file__).resolve().parent.parent / "configs" / "sweeps" / "memoryless_bon_vs_kl.toml"
  summary = sweep_engine.sweep(sweep_config.load(path), tmp_path / "out", quiet=True)
  with open(summary.merged.results, newline="") as f:
    rows = {(float(r["delta"]), int(r["n"])): r for r in csv.DictReader(f)}
  assert len(rows) == 21 and {r["instance"] for r in rows.values()} == {"three"}
  # Points that the direct calls of the other tests (compiled once) also compute.
  ns, large = _large_cases()
  direct = [((0.3, int(n)), jax.tree.map(lambda a: a[i], large)) for i, n in enumerate(ns[:3])]
  direct.append(((0.3, 1), jax.tree.map(lambda a: a[0], _small_cases()[0])))
  for key, out in direct:
    for name, value in out._asdict().items():
      assert float(rows[key][name]) == pytest.approx(float(value), rel=1e-11, abs=1e-14), (key, name)
  # Past delta_max = log 5 the KL to the KL-RL solution is infinite, below it finite.
  assert all((float(r["kl_to_tilted"]) == np.inf) == (d == 2.0) for (d, _), r in rows.items())


# ---------------------------------------------------------------------------------------------
# The real instance.

def test_english_unigram_with_vader_valence():
  u, lat = _english()
  assert len(u.words) > 300_000 and u.words[0] == "the"
  assert abs(float(jax.scipy.special.logsumexp(u.logp))) < 1e-12 and np.all(np.isfinite(u.logp))
  assert float(jnp.min(u.reward)) == pytest.approx(-3.9) and float(jnp.max(u.reward)) == pytest.approx(3.4)
  assert float(jnp.exp(u.logp)[u.reward == 0].sum()) > 0.9                # the massive tie at 0
  assert lat.log_mass.shape == (74,) and (float(lat.offset), float(lat.span)) == (-39.0, 1.0)
  # The lattice law is the reward law of the vocabulary.
  k = np.rint(np.asarray(u.reward) * 10).astype(int) + 39
  np.testing.assert_allclose(np.exp(lat.log_mass), np.bincount(k, np.exp(np.asarray(u.logp)), 74), rtol=1e-10)
  delta = 0.1
  out = jax.tree.map(lambda a: np.asarray(a)[-3:], _large_cases()[1])    # n = 1, 30, 1000
  for x in out:
    assert np.all(np.isfinite(x))
  assert np.all(np.diff(np.asarray(out.mean_reward)) > 0) and np.all(np.asarray(out.mean_reward) < float(out.target_reward[0]))
  assert np.all(np.diff(np.asarray(out.kl)) > 0) and np.all(np.asarray(out.kl) < delta)
  assert np.all(np.diff(np.asarray(out.win_rate)) > 0) and np.all((np.asarray(out.win_rate) > 0.5))
  assert np.all(np.asarray(out.win_rate) <= 1) and np.all(np.asarray(out.kl_to_tilted) > 0)
  # n = 1 is best-of-N over single words with N = e^delta: below the bound log N - (N-1)/N.
  big_n = math.exp(delta)
  assert 0 < float(out.kl[0]) <= math.log(big_n) - (big_n - 1) / big_n
  with pytest.raises(InputError, match="argument 'k' must be an int"):
    M.english_unigram(0)
