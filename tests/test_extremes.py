"""Extremes and bad input: every value is accurate or refused, never silently wrong.

Each test covers a class of inputs on many instances, in float64 and float32, against an
independent reference (mpmath at 50 digits, brute-force enumeration, or the closed form at
the limit). What the functions return at the extremes is stated in their docstrings.
"""
import math

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest

import klrl
from klrl import bon, divergences, memoryless, rlvr, tilted

RNG = np.random.default_rng(20261207)
DIGITS = 60     # mpmath references: local precision (other test modules set the global one)


def _reference_law(n_rows, v, rng):
  p = rng.dirichlet(np.full(v, 0.7), size=n_rows)
  return np.log(p), rng.normal(size=(n_rows, v))


# ---------------------------------------------------------------------------------------------
# Best-of-N KL estimator at huge and infinite N.

@mp.workdps(DIGITS)
def _estimator_mp(eps, n):
  eps = mp.mpf(eps)
  if n == math.inf:
    return -mp.log(eps)
  n = mp.mpf(n)
  stay = (1 - eps) ** n
  return stay * (mp.log(n) + (n - 1) * mp.log1p(-eps) - (n - 1) / n) + (1 - stay) * mp.log((1 - stay) / eps)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kl_estimator_at_huge_and_infinite_n(dtype):
  eps = np.concatenate([10.0 ** -RNG.uniform(0.01, 6, 60), RNG.uniform(0.05, 0.99, 20)])
  ns = np.array([1e3, 1e9, 1e20, 1e100, 1e300, 1e308, np.inf]) if dtype == np.float64 else np.array([1e3, 1e9, 1e20, 3e38, np.inf])
  e, n = (a.ravel().astype(dtype) for a in np.meshgrid(eps, ns))
  got = np.asarray(bon.kl_estimator(e, n))
  want = np.array([float(_estimator_mp(float(a), float(b))) for a, b in zip(e, n)])
  rtol = 1e-12 if dtype == np.float64 else 2e-5
  np.testing.assert_allclose(got, want, rtol=rtol, atol=0)     # 560 (float64) / 400 (float32) cases
  assert np.all(np.isfinite(got)) and got.dtype == dtype
  # eps = 0 gives the bound log N - (N-1)/N, +inf at N = inf; eps = 1 gives 0 for every N
  assert float(bon.kl_estimator(0.0, np.inf)) == np.inf and float(bon.kl_estimator(1.0, np.inf)) == 0.0


# ---------------------------------------------------------------------------------------------
# Soft best-of-N: accurate, or refused naming the temperature; N = inf is the tilt.

def _soft_brute(p, r, n, tau):
  """Soft best-of-N law by enumeration of all n-tuples of draws."""
  v = len(p)
  law = np.zeros(v)
  for draw in np.ndindex(*(v,) * n):
    w = np.exp((r[list(draw)] - r.max()) / tau)
    prob = np.prod(p[list(draw)])
    for i, y in enumerate(draw):
      law[y] += prob * w[i] / w.sum()
  return law


def test_soft_best_of_n_is_accurate_or_refuses_the_temperature():
  refused = accepted = 0
  for k in range(40):
    v, n = 3, 4
    p = RNG.dirichlet(np.ones(v))
    r = RNG.normal(size=v)
    tau = 10.0 ** RNG.uniform(-5, 0)
    longest = math.pi ** 2 * 1023 / math.log(1e10)
    length = np.ptp(r) / tau + 41.7          # a lower bound on the quadrature's integration length
    try:
      got = np.exp(np.asarray(bon.soft_log_policy(np.log(p), r, float(n), tau)))
    except klrl.InputError as e:
      assert "argument 'temperature'" in str(e) and "klrl.bon.log_policy" in str(e)
      assert length > longest - math.log(1 + n) - 1          # refused only beyond its range
      refused += 1
      continue
    np.testing.assert_allclose(got, _soft_brute(p, r, n, tau), atol=1e-10)
    accepted += 1
  assert refused >= 5 and accepted >= 5
  # the example of the report: tau = 1e-4 and 1e-3 with V = 3, N = 4 are refused, not off by 13
  for tau in (1e-4, 1e-3):
    with pytest.raises(klrl.InputError, match="argument 'temperature' is too small"):
      bon.soft_log_policy(np.log([0.2, 0.3, 0.5]), np.array([0.0, 1.0, 2.0]), 4.0, tau)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_soft_best_of_n_at_infinite_n_is_the_tilt(dtype):
  logp, r = (x.astype(dtype) for x in _reference_law(16, 12, RNG))
  tau = RNG.uniform(0.1, 3.0, 16).astype(dtype)
  got = bon.soft_log_policy(logp, r, np.inf, tau)
  np.testing.assert_allclose(np.exp(got), np.exp(tilted.tilt(logp, r, tau)), atol=1e-14 if dtype == np.float64 else 1e-6)
  # and the finite-N law approaches it: N = 1e15 is the tilt up to O(1/N)
  far = bon.soft_log_policy(logp.astype(np.float64), r.astype(np.float64), 1e15, tau.astype(np.float64))
  np.testing.assert_allclose(np.exp(far), np.exp(got), atol=2e-13 if dtype == np.float64 else 1e-6)


# ---------------------------------------------------------------------------------------------
# RLVR at beta = inf and tiny beta.

def test_suboptimality_gap_at_infinite_beta_is_its_limit():
  prob = rlvr.random_problem(jax.random.PRNGKey(3), 20, 16, num_correct=4)
  gap = rlvr.suboptimality_gap(prob.logp, prob.logp, prob.correct, np.inf)
  assert np.all(np.asarray(gap) == 0.0)
  other = jax.nn.log_softmax(prob.logp + jnp.asarray(RNG.normal(size=prob.logp.shape)))
  assert np.all(np.asarray(rlvr.suboptimality_gap(other, prob.logp, prob.correct, np.inf)) == np.inf)
  # the limit is approached, to full relative accuracy: beta KL(p || pi*) = beta kl(a || a*) ~ a(1-a)/(2 beta)
  a = np.exp(np.asarray(jax.scipy.special.logsumexp(jnp.where(prob.correct, prob.logp, -jnp.inf), axis=-1)))
  for beta in (1e-2, 1.0, 1e2, 1e6, 1e12, 1e100):
    near = np.asarray(rlvr.suboptimality_gap(prob.logp, prob.logp, prob.correct, beta))
    with mp.workdps(400):          # 1 - a* ~ e^{-100} at beta = 1e-2; kl ~ 1e-200 at beta = 1e100
      tilt = [mp.mpf(x) * mp.exp(1 / mp.mpf(beta)) for x in a]
      want = [float(beta * _bernoulli_mp(x, t / (t + 1 - mp.mpf(x)))) for x, t in zip(a, tilt)]
    np.testing.assert_allclose(near, want, rtol=1e-12)
    assert np.all(np.asarray(rlvr.suboptimality_gap(other, prob.logp, prob.correct, beta)) > 0)


def test_suboptimality_gap_of_policies_on_correct_or_wrong_responses_only():
  prob = rlvr.random_problem(jax.random.PRNGKey(4), 6, 10, num_correct=3)
  only_correct = jax.nn.log_softmax(jnp.where(prob.correct, prob.logp, -jnp.inf))
  only_wrong = jax.nn.log_softmax(jnp.where(prob.correct, -jnp.inf, prob.logp))
  for q in (only_correct, only_wrong):
    for beta in (1e-3, 0.5, 4.0, 1e6):
      want = beta * divergences.kl(q, tilted.tilt(prob.logp, prob.correct.astype(np.float64), beta))
      # (the direct formula, the reference, has rounding noise of about beta * 1e-16 near 0)
      np.testing.assert_allclose(rlvr.suboptimality_gap(q, prob.logp, prob.correct, beta), want, rtol=1e-9,
                                 atol=1e-14 * beta)
    assert np.all(np.asarray(rlvr.suboptimality_gap(q, prob.logp, prob.correct, np.inf)) == np.inf)


def test_suboptimality_gap_names_a_bad_logq():
  prob = rlvr.random_problem(jax.random.PRNGKey(3), 2, 8, num_correct=2)
  with pytest.raises(klrl.InputError, match=r"klrl.rlvr.suboptimality_gap: argument 'logq' is not a log-probability"):
    rlvr.suboptimality_gap(prob.logp + 1.0, prob.logp, prob.correct, 1.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_natural_gradient_flow_keeps_its_digits_at_tiny_beta(dtype):
  prob = rlvr.random_problem(jax.random.PRNGKey(5), 12, 24, num_correct=5)
  logp = prob.logp.astype(dtype)
  tol = 1e-15 if dtype == np.float64 else 3e-7
  betas = (1e-4, 1e-8, 1e-16, 1e-100) if dtype == np.float64 else (1e-4, 1e-8, 1e-16, 1e-30)
  for beta in betas:
    limit = np.exp(np.asarray(rlvr.optimal_policy(prob.logp, prob.correct, beta)))      # float64 reference
    for t in (1.0 / beta, 1e3 / beta):
      q = np.exp(np.asarray(rlvr.natural_gradient_flow(logp, prob.correct, beta, t), np.float64))
      lam = -math.expm1(-beta * t) / beta
      exact = np.exp(np.asarray(tilted.tilt(prob.logp, prob.correct.astype(np.float64), 1 / lam)))
      np.testing.assert_allclose(q, exact, atol=tol)
    q0 = np.exp(np.asarray(rlvr.natural_gradient_flow(logp, prob.correct, beta, 1e5 / beta, logq0=logp), np.float64))
    np.testing.assert_allclose(q0, limit, atol=tol)
    np.testing.assert_allclose(q0.sum(-1), 1.0, atol=tol)


# ---------------------------------------------------------------------------------------------
# Bernoulli KL: never negative, full relative accuracy for close arguments.

def _bernoulli_mp(a, b):
  """At the caller's mpmath precision."""
  a, b = mp.mpf(a), mp.mpf(b)
  term = lambda x, y: mp.mpf(0) if x == 0 else x * mp.log(x / y)
  return term(a, b) + term(1 - a, 1 - b)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bernoulli_kl_is_never_negative_and_accurate_for_close_arguments(dtype):
  b = RNG.uniform(1e-6, 1 - 1e-6, 600)
  rel = 10.0 ** RNG.uniform(-15 if dtype == np.float64 else -7, 0, 600) * RNG.choice([-1, 1], 600)
  a = np.clip(b * (1 + rel), 0, 1)
  a = np.concatenate([a, RNG.uniform(size=200), [0.3, 0.0, 1.0, 0.5]]).astype(dtype)
  b = np.concatenate([b, RNG.uniform(size=200), [0.3 + 1e-9, 0.5, 0.5, 0.5]]).astype(dtype)
  got = np.asarray(divergences.bernoulli_kl(a, b))
  with mp.workdps(DIGITS):
    want = np.array([float(_bernoulli_mp(float(x), float(y))) for x, y in zip(a, b)])
  assert np.all(got >= 0)
  np.testing.assert_allclose(got, want, rtol=1e-13 if dtype == np.float64 else 2e-6, atol=0)  # 804 cases


def test_bernoulli_kl_from_logits_keeps_its_accuracy_for_close_logits():
  x = RNG.normal(size=1500) * 10.0 ** RNG.uniform(-3, 1.7, 1500)
  y = x + RNG.normal(size=1500) * 10.0 ** RNG.uniform(-14, 1, 1500)
  got = np.asarray(divergences.bernoulli_kl_logits(x, y))
  with mp.workdps(120):   # 1 - sigmoid(x) and the cancellation of the two terms need the digits
    sig = lambda t: 1 / (1 + mp.exp(-mp.mpf(t)))
    want = np.array([float(_bernoulli_mp(sig(a), sig(b))) for a, b in zip(x, y)])
  assert np.all(got >= 0)
  np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bernoulli_kl_from_logits_at_infinite_and_underflowing_logits(dtype):
  grid = np.array([-np.inf, -800, -100, -40, -1e-9, 0, 1e-9, 40, 100, 800, np.inf], dtype)
  x, y = (a.ravel() for a in np.meshgrid(grid, grid))          # 121 pairs, the ends included
  got = np.asarray(divergences.bernoulli_kl_logits(x, y))
  with mp.workdps(2000):
    sig = lambda t: mp.mpf(0) if t == -np.inf else mp.mpf(1) if t == np.inf else 1 / (1 + mp.exp(-mp.mpf(float(t))))
    term = lambda p, q: mp.mpf(0) if p == 0 else (mp.inf if q == 0 else p * mp.log(p / q))
    want = np.array([float(term(sig(a), sig(b)) + term(1 - sig(a), 1 - sig(b))) for a, b in zip(x, y)])
  assert not np.isnan(got).any() and np.all(got >= 0)
  underflow = (want < np.finfo(dtype).tiny * 1e3) & (got == 0)  # below the dtype's normal range: 0 is right
  exact = (got == want) | underflow
  np.testing.assert_allclose(got[~exact], want[~exact], rtol=1e-12 if dtype == np.float64 else 1e-6)


def test_suboptimality_gap_is_never_negative_at_tiny_beta():
  prob = rlvr.random_problem(jax.random.PRNGKey(1), 4, 6, num_correct=2)
  policies = [prob.logp, jax.nn.log_softmax(jnp.where(prob.correct, prob.logp, -jnp.inf)),
              jax.nn.log_softmax(jnp.where(prob.correct, -jnp.inf, prob.logp))]
  for beta in (1e-30, 1e-8, 1e-3):
    for q in policies:
      gap = np.asarray(rlvr.suboptimality_gap(q, prob.logp, prob.correct, beta))
      assert np.all(gap >= 0) and not np.isnan(gap).any()


# ---------------------------------------------------------------------------------------------
# Reward scale: invariant within the documented range, refused outside.

SCALES64 = [10.0 ** k for k in (-200, -155, -151, -100, -10, 0, 10, 100, 151, 155, 200)]
SCALES32 = [10.0 ** k for k in (-30, -18, -16, -5, 0, 5, 16, 18, 30)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.slow
def test_reward_scale_is_invariant_in_range_and_refused_outside(dtype):
  logp, r = _reference_law(6, 20, RNG)
  r = r / np.abs(r).max()                     # |r| <= 1, spread about 2
  info = np.finfo(dtype)
  hi, lo = np.sqrt(info.max) / 100, np.sqrt(info.tiny) * 100
  lp = logp.astype(dtype)
  base = tilted.kl_constrained(lp, r.astype(dtype), 0.3)
  base_rate = memoryless.rate_function(lp, r.astype(dtype), 0.2)
  base_scgf = memoryless.scgf(lp, r.astype(dtype), 0.3, 0.5)
  tol = 1e-9 if dtype == np.float64 else 3e-4
  tried = 0
  for c in SCALES64 if dtype == np.float64 else SCALES32:
    rc = (r * c).astype(dtype)
    if not np.all(np.isfinite(rc)) or np.all(rc == 0):
      continue
    spread = np.ptp(rc, axis=-1)
    ok = np.abs(rc).max() <= hi and np.all(spread >= lo)
    calls = [lambda: tilted.kl_constrained(lp, rc, 0.3), lambda: memoryless.rate_function(lp, rc, 0.2 * c),
             lambda: memoryless.scgf(lp, rc, 0.3, 0.5 / c)]
    if not ok:
      for call in calls:
        with pytest.raises(klrl.InputError, match=r"argument 'reward' is outside the range resolved"):
          call()
      tried += 1
      continue
    sol, rate, cgf = (f() for f in calls)
    np.testing.assert_allclose(np.asarray(sol.lam, np.float64) * c, np.asarray(base.lam), rtol=tol)
    np.testing.assert_allclose(np.exp(sol.log_policy), np.exp(base.log_policy), atol=tol)
    np.testing.assert_allclose(rate, base_rate, rtol=tol, atol=tol)
    np.testing.assert_allclose(cgf, base_scgf, rtol=tol, atol=tol)
    assert np.all(sol.converged)
    tried += 1
  assert tried >= 7


# ---------------------------------------------------------------------------------------------
# bon_vs_kl composes with jit, vmap and grad.

@pytest.mark.slow
def test_bon_vs_kl_composes_with_jit_vmap_and_grad():
  logp, r = np.log(np.array([0.2, 0.3, 0.5])), np.array([0.0, 1.0, 2.0])
  deltas = np.array([0.1, 0.3, 0.3 - 1e-6, 0.3 + 1e-6])
  eager = [memoryless.bon_vs_kl(logp, r, d, 8) for d in deltas]
  mapped = jax.vmap(lambda d: memoryless.bon_vs_kl(logp, r, d, 8))(deltas)        # vmap over delta
  over_logp = jax.jit(lambda lp: memoryless.bon_vs_kl(lp, r, 0.3, 8))(logp)        # jit over logp
  for i, d in enumerate(deltas):
    for field in ("mean_reward", "kl", "kl_to_tilted", "win_rate"):
      np.testing.assert_allclose(float(getattr(mapped, field)[i]), float(getattr(eager[i], field)), rtol=1e-12)
  np.testing.assert_allclose(float(over_logp.mean_reward), float(eager[1].mean_reward), rtol=1e-12)
  g = jax.grad(lambda d: memoryless.bon_vs_kl(logp, r, d, 8).mean_reward)(0.3)
  fd = (float(mapped.mean_reward[3]) - float(mapped.mean_reward[2])) / 2e-6
  np.testing.assert_allclose(float(g), fd, rtol=1e-6)
  with pytest.raises(klrl.InputError, match=r"argument 'n' is traced.*bon_vs_kl_lattice"):
    jax.jit(lambda n: memoryless.bon_vs_kl(logp, r, 0.3, n))(8)
