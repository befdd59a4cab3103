"""klrl.tilted (docs: theory/tilted) against mpmath closed forms, brute force and theorem identities."""

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from jax.test_util import check_grads

from klrl import InputError, divergences as D, problems, tilted as T
from klrl._src import cumulants as _cumulants

mp.mp.dps = 30


# ---------------------------------------------------------------------------------------------
# mpmath references on small supports.

def mp_solution(p, r, delta):
  """lam, phi, R(delta), delta_max at 30 digits."""
  p = [mp.mpf(x) for x in p]
  r = [mp.mpf(x) for x in r]
  top = max(rr for pp, rr in zip(p, r) if pp > 0)
  ps = sum(pp for pp, rr in zip(p, r) if rr == top)
  dmax = -mp.log(ps)
  if delta >= dmax:
    phi = [pp / ps if rr == top else mp.mpf(0) for pp, rr in zip(p, r)]
    return mp.inf, phi, top, dmax

  def a(lam):
    return mp.log(sum(pp * mp.exp(lam * rr) for pp, rr in zip(p, r) if pp > 0))

  def k(lam):
    return lam * mp.diff(a, lam) - a(lam) - delta

  lo, hi = mp.mpf(0), mp.mpf(1)
  while k(hi) < 0:
    lo, hi = hi, hi * 2
  lam = mp.findroot(k, (lo, hi), solver="anderson", tol=mp.mpf(10) ** -28)
  z = mp.exp(a(lam))
  phi = [pp * mp.exp(lam * rr) / z for pp, rr in zip(p, r)]
  return lam, phi, sum(f * rr for f, rr in zip(phi, r)), dmax


CASES = [
    ([0.3, 0.7], [0.0, 1.0], 0.2),
    ([0.5, 0.25, 0.25], [1.0, -2.0, 0.5], 0.1),
    ([0.1, 0.2, 0.3, 0.4], [3.0, 1.0, 3.0, -1.0], 0.5),        # tied maxima
    ([0.1, 0.2, 0.3, 0.4], [3.0, 1.0, 3.0, -1.0], 5.0),        # saturated, tied maxima
    ([0.0, 0.2, 0.3, 0.5], [9.0, 1.0, 2.0, -1.0], 0.3),        # zero-mass entry holding the max reward
    ([0.25, 0.25, 0.25, 0.25], [0.0, 1.0, 2.0, 3.0], 1e-6),
]


@pytest.mark.parametrize("p, r, delta", CASES)
def test_closed_form_against_mpmath(p, r, delta):
  with np.errstate(divide="ignore"):
    logp = np.log(np.array(p))
  sol = T.kl_constrained(logp, np.array(r), delta)
  lam, phi, big_r, dmax = mp_solution(p, r, delta)
  assert float(T.max_kl(logp, np.array(r))) == pytest.approx(float(dmax), rel=1e-13)
  np.testing.assert_allclose(np.exp(sol.log_policy), [float(x) for x in phi], rtol=1e-11, atol=1e-15)
  assert float(sol.mean_reward) == pytest.approx(float(big_r), rel=1e-12, abs=1e-13)
  if lam == mp.inf:
    assert bool(sol.saturated) and float(sol.beta) == 0.0
  else:
    assert float(sol.lam) == pytest.approx(float(lam), rel=1e-9)
    assert float(sol.kl) == pytest.approx(delta, rel=1e-10)


def test_zero_mass_entries_stay_zero_and_delta_zero_is_p():
  logp = np.log(np.array([0.0, 0.5, 0.5]))
  r = np.array([10.0, 0.0, 1.0])
  for d in [0.0, 0.3, 10.0]:
    out = T.kl_constrained(logp, r, d)
    assert out.log_policy[0] == -np.inf
  out = T.kl_constrained(logp, r, 0.0)
  np.testing.assert_allclose(out.log_policy, logp)
  assert float(out.beta) == np.inf and float(out.mean_reward) == 0.5


def test_constant_reward_is_saturated_and_returns_p():
  logp = np.log(np.array([0.2, 0.3, 0.5]))
  out = T.kl_constrained(logp, np.full(3, 2.0), 0.7)
  np.testing.assert_allclose(out.log_policy, logp, atol=1e-15)
  assert bool(out.saturated) and float(out.beta) == 0.0 and float(out.kl) == 0.0


# ---------------------------------------------------------------------------------------------
# Accuracy of the constrained solve.

FRACS = np.array([1e-8, 1e-5, 1e-2, 0.2, 0.5, 0.8, 0.99, 1 - 1e-6, 1 - 1e-9])


@pytest.mark.slow
@pytest.mark.parametrize("vocab", [3, 1000, 10 ** 6])
def test_constraint_accuracy_float64(vocab):
  rows = 2 if vocab == 10 ** 6 else 9
  logp, r = problems.random_problem(jax.random.PRNGKey(vocab), 1, vocab)
  logp, r = jnp.broadcast_to(logp, (rows, vocab)), jnp.broadcast_to(r, (rows, vocab))
  dmax = T.max_kl(logp, r)
  fr = FRACS if rows == 9 else np.array([1e-8, 1 - 1e-9])
  deltas = np.concatenate([[1e-8, 1e-6], dmax[:rows - 2] * fr[2:]]) if rows == 9 else dmax * fr
  deltas = np.maximum(deltas, 1e-8)
  out = T.kl_constrained(logp, r, deltas)
  err = np.abs(D.kl(out.log_policy, logp) - deltas) / np.maximum(1, deltas)
  assert np.all(err <= 1e-10), err
  assert int(out.iterations) <= 12


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.5, 4.0])
def test_float32_phase_of_the_float64_solve(temperature, monkeypatch):
  """From V = 4096 a float64 solve starts with float32 steps: neither the accuracy nor the root
  may show it (against the same solve with float64 steps only)."""
  logp, r = problems.random_problem(jax.random.PRNGKey(11), len(FRACS), 5000, temperature=temperature,
                                    ties=8, zero_mass=5)
  deltas = np.maximum(np.asarray(T.max_kl(logp, r)) * FRACS, 1e-8)
  out = T.kl_constrained(logp, r, deltas)
  err = np.abs(D.kl(out.log_policy, logp) - deltas) / np.maximum(1, deltas)
  assert np.all(err <= 1e-10), err
  np.testing.assert_allclose(out.mean_reward, np.sum(np.exp(out.log_policy) * r, -1), rtol=1e-12)
  live = ~np.asarray(out.saturated)
  slope = jax.grad(lambda d: jnp.sum(T.kl_constrained(logp, r, d).mean_reward))(jnp.asarray(deltas))
  np.testing.assert_allclose(np.asarray(slope)[live], np.asarray(out.beta)[live], rtol=1e-8)   # dR/d delta = beta

  prep = _cumulants.constants(logp, r)[0]
  active = deltas < -np.asarray(prep.log_ps)
  solve = lambda: jax.jit(lambda lp, rr, d: T._solve(lp, rr, d, prep, active))(logp, r, deltas)
  lam_mixed = solve()[0]
  monkeypatch.setattr(T, "_PRESOLVE_MIN_V", 10 ** 9)
  # Next to saturation K is flat in lam (K' ~ 1e-9 K): lam itself is fixed only to ~1e-9 there.
  np.testing.assert_allclose(lam_mixed[:-2], solve()[0][:-2], rtol=1e-12)


@pytest.mark.slow
def test_offset_and_scaled_rewards_give_the_same_solution():
  """``r -> a r + c`` leaves the solution unchanged (``lam -> lam / a``), and the tilt with
  ``beta -> a beta``. Rewards offset far from zero stress the one-pass variance behind the
  starting point (float32 constants gave ``Var_p r = 0``, then ``lam = inf`` and a NaN policy),
  the rounding of ``A'(lam)`` in the policy (``lam`` times it shifted every log-probability by
  up to 1e-8) and ``r / beta`` in the tilt."""
  logp, r = problems.random_problem(jax.random.PRNGKey(11), 5, 5000, ties=2, zero_mass=5)   # r on a grid of 1/2
  deltas = T.max_kl(logp, r) * jnp.array([0.2, 0.5, 0.9, 0.999, 1 - 1e-9])
  assert np.all(np.asarray(deltas) > 0.125)   # float32 constants (see the test below)
  base = T.kl_constrained(logp, r, deltas)
  for a, c in [(1.0, 1e4), (2.0 ** -10, -5e3)]:
    shifted = a * r + c
    np.testing.assert_array_equal((shifted - c) / a, r)   # the same problem, exactly
    sol = T.kl_constrained(logp, shifted, deltas)
    np.testing.assert_allclose(sol.lam * a, base.lam, rtol=1e-9)
    np.testing.assert_allclose(sol.log_policy, base.log_policy, rtol=0, atol=1e-9)
    assert np.all(np.abs(D.kl(sol.log_policy, logp) - deltas) <= 1e-10 * np.maximum(1.0, deltas))
    np.testing.assert_allclose(T.tilt(logp, shifted, a * base.beta), T.tilt(logp, r, base.beta), rtol=0, atol=1e-9)


@pytest.mark.slow
def test_float32_constants_give_the_float64_solution(monkeypatch):
  """Where every budget exceeds 1/8 (float64, V >= 4096) the constants of ``kl_constrained`` are
  summed in float32 and ``log p(S*)`` comes from the maximisers (``_solve_constants``): the
  solution and its derivatives are those from the float64 constants. Three batches: one
  maximiser per row, tied maximisers, a zero-mass entry tied at the maximum."""
  logp, reward = problems.random_problem(jax.random.PRNGKey(7), 5, 5000, zero_mass=5)
  top = jnp.max(jnp.where(logp > -jnp.inf, reward, -jnp.inf), axis=-1)
  rows = jnp.arange(5)
  batches = [reward, reward.at[rows, jnp.argmax(logp, -1)].set(top),   # the most likely entry joins S*
             reward.at[rows, jnp.argmin(logp, -1)].set(top)]
  deltas = [np.asarray(T.max_kl(logp, r)) * np.array([0.2, 0.5, 0.9, 1.0, 3.0]) for r in batches]  # 2 saturated
  assert all(np.all(d > 0.125) for d in deltas)

  def solve(reward, deltas):
    c = T.kl_constrained(logp, reward, deltas)
    g = jax.grad(lambda lp, r: jnp.sum(T.kl_constrained(lp, r, deltas).mean_reward), (0, 1))(logp, reward)
    return c.log_policy, c.lam, c.mean_reward, c.kl, g

  fast = [solve(r, d) for r, d in zip(batches, deltas)]
  monkeypatch.setattr(T, "_solve_constants", lambda lp, r, d: _cumulants.constants_block(lp, r, True))
  jax.clear_caches()
  for got, r, d in zip(fast, batches, deltas):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(solve(r, d))):
      np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)
  jax.clear_caches()


@pytest.mark.slow
def test_constraint_accuracy_float32_and_agreement_with_float64():
  logp, r = problems.random_problem(jax.random.PRNGKey(3), 1, 10 ** 6)
  logp, r = jnp.broadcast_to(logp, (len(FRACS), 10 ** 6)), jnp.broadcast_to(r, (len(FRACS), 10 ** 6))
  deltas = T.max_kl(logp, r) * FRACS
  o64 = T.kl_constrained(logp, r, deltas)
  o32 = T.kl_constrained(logp.astype(jnp.float32), r.astype(jnp.float32), deltas.astype(jnp.float32))
  assert o32.log_policy.dtype == jnp.float32
  assert np.all(np.abs(o32.kl - deltas) / deltas <= 1e-5)
  # Documented float32 agreement: frontier to 1e-5 relative; lam to 1e-4 away from saturation.
  np.testing.assert_allclose(o32.mean_reward, o64.mean_reward, rtol=1e-5)
  np.testing.assert_allclose(o32.lam[:-2], o64.lam[:-2], rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Theorem identities on random instances (hypothesis).

def _instance(seed, vocab, ties, zeros):
  logp, r = problems.random_problem(jax.random.PRNGKey(seed), 8, vocab, ties=ties, zero_mass=zeros)
  k = jax.random.split(jax.random.PRNGKey(seed + 1), 3)
  logq = jax.nn.log_softmax(jnp.where(logp > -jnp.inf, 3 * jax.random.normal(k[0], logp.shape), -jnp.inf), -1)
  beta = jnp.exp(jax.random.uniform(k[1], (8,), minval=-3, maxval=3))
  frac = jax.random.uniform(k[2], (8,), minval=1e-4, maxval=1 - 1e-4)
  return logp, r, logq, beta, frac * T.max_kl(logp, r)


instances = st.builds(_instance, st.integers(0, 10 ** 6), st.sampled_from([6]), st.sampled_from([0, 2]),
                      st.sampled_from([0, 2]))


@given(instances)
def test_gibbs_identity(inst):
  logp, r, logq, beta, _ = inst
  lhs = T.objective(logq, logp, r, beta)
  rhs = beta * T.log_partition(logp, r, beta) - beta * D.kl(logq, T.tilt(logp, r, beta))
  np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-12)
  # The tilt is the maximiser: J(pi_beta) = beta log Z >= J(q).
  assert np.all(T.objective(T.tilt(logp, r, beta), logp, r, beta) >= lhs - 1e-12)


@given(instances)
@pytest.mark.slow
def test_primal_equals_dual_and_closeness_identity(inst):
  logp, r, logq, _, delta = inst
  sol = T.kl_constrained(logp, r, delta)
  # Dual value at lam_delta equals R(delta); every other lam gives an upper bound.
  a = T.cumulants(logp, r, sol.lam).log_z
  np.testing.assert_allclose((delta + a) / sol.lam, sol.mean_reward, rtol=1e-11, atol=1e-12)
  grid = T.dual_frontier(logp, r, delta, jnp.exp(jnp.linspace(-5, 5, 200)))
  assert np.all(grid.min(-1) >= sol.mean_reward - 1e-12)
  # KL(q || phi) = KL(q || p) - delta + lam (R - E_q r).
  eq, klq = D.expectation(logq, r), D.kl(logq, logp)
  pred = klq - delta + sol.lam * (sol.mean_reward - eq)
  np.testing.assert_allclose(D.kl(logq, sol.log_policy), pred, rtol=1e-10, atol=1e-11)
  # No method beats the frontier.
  assert np.all(eq <= T.frontier(logp, r, jnp.minimum(klq, T.max_kl(logp, r))) + 1e-12)


@given(instances)
def test_kl_increasing_in_lam_and_frontier_concave(inst):
  logp, r, *_ = inst
  lams = jnp.linspace(0.0, 20.0, 60)
  kl = jax.vmap(lambda l: T.cumulants(logp, r, jnp.full((8,), l)).kl, out_axes=-1)(lams)
  assert np.all(np.diff(kl, axis=-1) >= -1e-13)
  dm = T.max_kl(logp, r)
  fr = jnp.linspace(0.0, 0.999, 40)
  big_r = jax.vmap(lambda f: T.frontier(logp, r, f * dm), out_axes=-1)(fr)
  assert np.all(np.diff(big_r, axis=-1) >= -1e-12)
  assert np.all(np.diff(big_r, 2, axis=-1) <= 1e-10)


def test_stats_against_numpy_in_both_regimes():
  logp, r = problems.random_problem(jax.random.PRNGKey(5), 6, 50, zero_mass=3)
  beta = jnp.array([1e-3, 0.05, 0.5, 5.0, 50.0, 1e4])      # mixed small/large lam in one batch
  s = T.stats(logp, r, beta)
  lp, rr, b = np.asarray(logp), np.asarray(r), np.asarray(beta)[:, None]
  lw = lp + rr / b
  logz = np.logaddexp.reduce(lw, axis=-1)
  pi = np.exp(lw - logz[:, None])
  mean = (pi * rr).sum(-1)
  with np.errstate(invalid="ignore"):
    kl = np.where(pi > 0, pi * (np.log(pi) - lp), 0).sum(-1)
    ent = -np.where(pi > 0, pi * np.log(pi), 0).sum(-1)
  np.testing.assert_allclose(s.log_z, logz, rtol=1e-12, atol=1e-15)  # NumPy loses digits at log Z ~ 1e-5
  np.testing.assert_allclose(s.mean_reward, mean, rtol=1e-11)
  np.testing.assert_allclose(s.var_reward, (pi * (rr - mean[:, None]) ** 2).sum(-1), rtol=1e-8, atol=1e-14)
  np.testing.assert_allclose(s.kl, kl, rtol=1e-9, atol=1e-12)
  # entropy = cross entropy - KL: absolute accuracy ~ eps * (cross entropy), relative where H is O(1).
  np.testing.assert_allclose(s.entropy, ent, rtol=1e-11, atol=1e-13)
  # Small KL keeps its relative accuracy (expm1 path): KL ~ Var/(2 beta^2).
  assert float(s.kl[-1]) == pytest.approx(float(s.var_reward[-1]) / (2 * 1e8), rel=1e-3)


def test_beta_limits():
  logp = np.log(np.array([0.1, 0.2, 0.3, 0.4]))
  r = np.array([3.0, 1.0, 3.0, -1.0])
  np.testing.assert_allclose(np.exp(T.tilt(logp, r, 1e-4)), [0.25, 0, 0.75, 0], atol=1e-12)
  np.testing.assert_allclose(T.tilt(logp, r, 1e9), logp, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# Derivatives.

P4 = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))
R4 = jnp.array([0.5, 1.0, -0.3, 0.2])


@pytest.mark.slow
def test_check_grads_mean_reward_and_kl():
  f = lambda lg, rr: T.kl_constrained(jax.nn.log_softmax(lg), rr, 0.1)
  check_grads(lambda lg, rr: f(lg, rr).mean_reward, (P4, R4), order=1, modes=["fwd", "rev"], atol=1e-6, rtol=1e-6)
  check_grads(lambda lg, rr: f(lg, rr).kl, (P4, R4), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)
  check_grads(lambda lg, rr: T.stats(jax.nn.log_softmax(lg), rr, 0.7).entropy, (P4, R4), order=1, modes=["rev"])


def test_frontier_slope_is_beta_and_implicit():
  for d in [1e-6, 0.05, 0.2, 0.3]:
    g = jax.grad(lambda x: T.frontier(P4, R4, x))(d)
    beta = T.kl_constrained(P4, R4, d).beta
    assert float(g) == pytest.approx(float(beta), rel=1e-8)
  # The derivative does not depend on how many Newton steps were taken.
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: T.frontier(P4, R4, x)))(0.1))
  assert "while" in jaxpr  # the solve is a while loop (not differentiable by unrolling) ...
  # ... so its gradient is necessarily the implicit one; cross-check against finite differences.
  h = 1e-6
  fd = (T.frontier(P4, R4, 0.1 + h) - T.frontier(P4, R4, 0.1 - h)) / (2 * h)
  assert float(jax.grad(lambda x: T.frontier(P4, R4, x))(0.1)) == pytest.approx(float(fd), rel=1e-6)


@pytest.mark.slow
def test_derivatives_at_zero_budget_and_at_saturation():
  g0 = jax.grad(lambda d: T.frontier(P4, R4, d))(0.0)
  assert float(g0) == np.inf                                    # R'(0+) = +inf
  assert float(jax.grad(lambda d: T.kl_constrained(P4, R4, d).kl)(0.0)) == 1.0
  gl = jax.grad(lambda lg: T.frontier(jax.nn.log_softmax(lg), R4, 0.0))(P4)
  ref = jax.grad(lambda lg: D.expectation(jax.nn.log_softmax(lg), R4))(P4)
  np.testing.assert_allclose(gl, ref, atol=1e-15)                # derivative of E_p r
  dmax = float(T.max_kl(P4, R4))
  assert float(jax.grad(lambda d: T.frontier(P4, R4, d))(dmax + 1)) == 0.0
  assert float(jax.grad(lambda d: T.kl_constrained(P4, R4, d).kl)(dmax + 1)) == 0.0
  gs = jax.grad(lambda rr: T.frontier(P4, rr, dmax + 1))(R4)
  np.testing.assert_allclose(gs, [0, 1, 0, 0])
  for d in [0.0, dmax * 0.5, dmax + 1]:
    g = jax.grad(lambda lg, rr: T.kl_constrained(jax.nn.log_softmax(lg), rr, d).mean_reward, (0, 1))(P4, R4)
    assert all(np.all(np.isfinite(x)) for x in g)


@pytest.mark.slow
def test_jit_vmap_grad_compose():
  logp, r = problems.random_problem(jax.random.PRNGKey(2), 5, 7)
  deltas = jnp.linspace(0.05, 0.5, 5)
  f = jax.jit(jax.vmap(jax.grad(lambda lp, rr, d: T.frontier(lp, rr, d), argnums=2)))
  g = f(logp, r, deltas)
  np.testing.assert_allclose(g, T.kl_constrained(logp, r, deltas).beta, rtol=1e-8)
  # vmap over a batch equals the batched call.
  a = jax.vmap(lambda lp, rr, d: T.kl_constrained(lp, rr, d).mean_reward)(logp, r, deltas)
  np.testing.assert_allclose(a, T.frontier(logp, r, deltas), rtol=1e-13)


# ---------------------------------------------------------------------------------------------
# Bad input.

GOOD_P = np.log(np.array([0.2, 0.3, 0.5]))
GOOD_R = np.array([0.0, 1.0, 2.0])


@pytest.mark.parametrize("call, arg", [
    (lambda: T.tilt(GOOD_P + 0.1, GOOD_R, 1.0), "logp"),
    (lambda: T.tilt(np.array([np.nan, 0.0, 0.0]), GOOD_R, 1.0), "logp"),
    (lambda: T.kl_constrained(np.array([np.nan, 0.0, 0.0]), GOOD_R, 1.0), "logp.*NaN"),
    (lambda: T.stats(GOOD_P, np.array([0.0, np.inf, 1.0]), 1.0), "reward"),
    (lambda: T.kl_constrained(GOOD_P, np.array([0.0, np.nan, 1.0]), 1.0), "reward"),
    (lambda: T.tilt(GOOD_P, GOOD_R, 0.0), "beta"),
    (lambda: T.stats(GOOD_P, GOOD_R, -1.0), "beta"),
    (lambda: T.kl_constrained(GOOD_P, GOOD_R, -0.1), "delta"),
    (lambda: T.frontier(GOOD_P, GOOD_R, np.nan), "delta"),
    (lambda: T.kl_constrained(GOOD_P, GOOD_R[:2], 0.1), "reward"),
    (lambda: T.tilt(np.stack([GOOD_P] * 2), np.stack([GOOD_R] * 2), np.ones(3)), "beta"),
    (lambda: T.stats(np.stack([GOOD_P] * 3), GOOD_R, np.ones(2)), "beta"),
    (lambda: T.max_kl(GOOD_P + 1.0, GOOD_R), "logp"),
    (lambda: T.max_kl(GOOD_P, np.array([0.0, -np.inf, 1.0])), "reward"),
    (lambda: T.tilt(GOOD_P, np.array([0.0, np.nan, 1.0]), 1.0), "reward"),
    (lambda: T.tilt(np.array([np.inf, 0.0, 0.0]), GOOD_R, 1.0), r"logp.*\+inf"),
    (lambda: T.log_partition(GOOD_P - 0.1, GOOD_R, 1.0), "logp.*log_softmax"),
    (lambda: T.log_partition(GOOD_P, np.array([np.inf, 0.0, 1.0]), 1.0), "reward"),
])
def test_bad_input_raises_named_error(call, arg):
  with pytest.raises(InputError, match=arg):
    call()


@pytest.mark.parametrize("value, what", [(np.nan, "contains NaN"), (np.inf, r"contains \+inf"),
                                         (0.1, "is not a log-probability vector")])
def test_a_bad_row_under_vmap_gets_its_own_message(value, what):
  bad = np.stack([GOOD_P, GOOD_P, GOOD_P + 0.5])   # the last row is not normalised either
  bad[1, 0] = value
  with pytest.raises(InputError, match=f"argument 'logp' {what}"):
    jax.vmap(lambda p: T.tilt(p, GOOD_R, 1.0))(bad)


def test_bad_input_under_jit_still_names_the_argument():
  f = jax.jit(lambda d: T.kl_constrained(GOOD_P, GOOD_R, d).mean_reward)
  with pytest.raises(Exception, match="argument 'delta' must be >= 0"):
    f(-1.0).block_until_ready()


def test_a_passing_check_leaves_values_bit_for_bit():
  from klrl._src import checks as _checks
  x = jnp.array([-0.0, 0.0, 1.5, -jnp.inf])
  out = _checks.finite_probe("w", "x", x, jnp.zeros(()))
  assert np.array_equal(np.signbit(out), np.signbit(x)) and np.array_equal(out, x)


def test_parameters_broadcast_against_batch_axes():
  # One reference, many budgets / temperatures: leading axes broadcast.
  deltas = jnp.array([0.01, 0.1, 0.2])
  out = T.kl_constrained(P4, R4, deltas)
  assert out.log_policy.shape == (3, 4)
  np.testing.assert_allclose(out.mean_reward, [T.frontier(P4, R4, d) for d in deltas], rtol=1e-13)
  s = T.stats(P4, R4, jnp.array([[0.5], [2.0]]))
  assert s.kl.shape == (2, 1)
  q = jax.nn.log_softmax(jnp.ones((2, 4)))
  assert T.objective(q, P4, R4, 1.0).shape == (2,)


@pytest.mark.slow
@pytest.mark.parametrize("rows_per_block", [1, 3])
def test_row_blocks_give_the_whole_batch_results(row_blocks, rows_per_block):
  """On the CPU rows are reduced in blocks (``klrl._src.rows``); values and gradients do not change."""
  logp, reward = problems.random_problem(jax.random.PRNGKey(3), 12, 64, ties=2, zero_mass=3)
  logp, reward = logp.reshape(3, 4, 64), reward.reshape(3, 4, 64)

  def everything(logp, reward, delta):
    s = T.stats(logp, reward, 0.7)
    c = T.kl_constrained(logp, reward, delta)
    g = jax.grad(lambda lp, d: jnp.sum(T.kl_constrained(lp, reward, d).mean_reward), (0, 1))(logp, delta)
    return s, c.log_policy, c.lam, c.kl, g

  row_blocks(everything, logp, reward, 0.4 * T.max_kl(logp, reward), rows_per_block=rows_per_block)


def test_single_row_blocks_give_the_same_solution(row_blocks):
  """With one row per block the float32 phase accumulates its sums in float64 (``_presolve32``)."""
  logp, reward = problems.random_problem(jax.random.PRNGKey(11), 3, 5000, ties=4)
  fn = lambda lp, r, d: (lambda c: (c.log_policy, c.lam, c.mean_reward, c.kl))(T.kl_constrained(lp, r, d))
  row_blocks(fn, logp, reward, 0.6 * T.max_kl(logp, reward), rows_per_block=1, rtol=1e-10, atol=1e-12)
