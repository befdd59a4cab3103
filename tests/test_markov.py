"""klrl.markov (docs: theory/markov) against the memoryless case, closed forms in mpmath, brute-force
enumeration of all sequences, an exact log-space recursion, finite differences and theorem identities.

Instances are tiny and few shapes are used, so compilations are shared across tests.
"""
import itertools
import math

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.special import logsumexp

from klrl import InputError, memoryless as M, tilted as T
from klrl import markov as K

P3 = np.array([0.5, 0.3, 0.2])
R3 = np.array([0.0, 1.0, 3.0])
LP3 = np.log(P3)
IID = K.reference(LP3, np.log(np.tile(P3, (3, 1))), R3)          # identical rows: memoryless tokens


def chain(seed, v=4, **kw):
  return K.random_reference(jax.random.key(seed), v, levels=4, density=0.6, **kw)


def pair_chain(seed):
  return K.random_reference(jax.random.key(seed), 3, levels=3, pair=True)


# ---------------------------------------------------------------------------------------------
# Brute force and exact references.

def enumerate_sequences(ref, n):
  """Log-probabilities and rewards of all V^n sequences."""
  li, lt = np.asarray(ref.log_init), np.asarray(ref.log_trans)
  r, r0 = np.asarray(ref.reward), np.asarray(ref.first_reward)
  seqs = np.array(list(itertools.product(range(li.shape[-1]), repeat=n)))
  logp = li[seqs[:, 0]] + sum(lt[seqs[:, t - 1], seqs[:, t]] for t in range(1, n))
  s = r0[seqs[:, 0]] + sum(r[seqs[:, t - 1], seqs[:, t]] for t in range(1, n))
  return logp, s


def direct_law(ref, n):
  """log P(S_n = s), s = 0..L-1 (integer rewards, lowest 0), by the forward recursion in log space."""
  li, lt = np.asarray(ref.log_init), np.asarray(ref.log_trans)
  k, k0 = np.asarray(ref.reward).astype(int), np.asarray(ref.first_reward).astype(int)
  v = li.shape[-1]
  size = (n - 1) * k.max() + k0.max() + 1
  f = np.full((v, size), -np.inf)
  for j in range(v):
    f[j, k0[j]] = li[j]
  for _ in range(n - 1):
    g = np.full((v, size), -np.inf)
    for i, j in itertools.product(range(v), range(v)):
      if lt[i, j] > -np.inf:
        g[j, k[i, j]:] = np.logaddexp(g[j, k[i, j]:], f[i, :size - k[i, j]] + lt[i, j])
    f = g
  return logsumexp(f, axis=0)


def mp_two_state(p, r, lam):
  """log of the largest root of the characteristic quadratic of the 2x2 tilted matrix."""
  a, b = mp.mpf(p[0][0]) * mp.exp(lam * mp.mpf(r[0][0])), mp.mpf(p[0][1]) * mp.exp(lam * mp.mpf(r[0][1]))
  c, d = mp.mpf(p[1][0]) * mp.exp(lam * mp.mpf(r[1][0])), mp.mpf(p[1][1]) * mp.exp(lam * mp.mpf(r[1][1]))
  return mp.log((a + d) / 2 + mp.sqrt(((a - d) / 2) ** 2 + b * c))


# ---------------------------------------------------------------------------------------------
# Identical rows: everything reduces to the memoryless case.

def test_identical_rows_reduce_to_memoryless_generating_functions_and_rates():
  lam = np.array([-40.0, -2.0, 0.0, 0.5, 3.0, 200.0])
  np.testing.assert_allclose(K.scgf(IID, lam), M.cgf(LP3, R3, lam), rtol=1e-14, atol=1e-15)
  np.testing.assert_allclose(K.log_mgf(IID, lam, 7), 7 * M.cgf(LP3, R3, lam), rtol=1e-14, atol=1e-13)
  xs = np.array([-0.5, 0.0, 1e-9, 0.3, 0.9 + 1e-6, 1.5, 2.9, 3 - 1e-10, 3.0, 3.2])
  got, ref = np.asarray(K.rate_function(IID, xs)), np.asarray(M.rate_function(LP3, R3, xs))
  assert np.array_equal(np.isinf(got), np.isinf(ref))
  fin = np.isfinite(ref)
  # Near the mean I ~ (x - 0.9)^2 / 2 Var inherits the rounding of the mean (as in klrl.memoryless).
  np.testing.assert_allclose(got[fin], ref[fin], rtol=1e-9)
  rng = K.reward_range(IID)
  assert (float(rng.low), float(rng.high), float(rng.mean)) == pytest.approx((0.0, 3.0, 0.9), abs=1e-15)
  assert float(rng.rate_high) == pytest.approx(-math.log(0.2), rel=1e-14)
  assert float(rng.rate_low) == pytest.approx(-math.log(0.5), rel=1e-14)


def test_identical_rows_reduce_to_memoryless_kl_rl():
  delta = np.array([0.0, 1e-6, 0.1, 1.0, 1.6, 1.7])
  ref = T.kl_constrained(LP3, R3, delta)
  fin = np.isfinite(ref.lam)
  seq = K.kl_constrained(IID, delta, 5)
  lim = K.kl_constrained_rate(IID, delta)
  for got in (seq, lim):
    np.testing.assert_allclose(got.lam[fin], ref.lam[fin], rtol=1e-10)
    np.testing.assert_allclose(got.mean_reward, ref.mean_reward, rtol=1e-12)
    np.testing.assert_allclose(got.kl, ref.kl, rtol=1e-10, atol=1e-300)
    assert np.array_equal(got.saturated, ref.saturated) and bool(np.all(got.converged))
  # The limiting policy is the per-token tilt in every row.
  np.testing.assert_allclose(np.exp(lim.log_policy[2]), np.exp(np.tile(ref.log_policy[2], (3, 1))), rtol=1e-12)


def test_identical_rows_reduce_to_memoryless_sequence_law():
  law = K.sequence_law(IID, 12)
  ref = M.sequence_law(M.lattice(LP3, R3), 12)
  np.testing.assert_allclose(law.log_prob, ref.log_prob, rtol=1e-12)
  np.testing.assert_allclose(law.reward, ref.start + ref.span * np.arange(ref.log_prob.shape[-1]))


@pytest.mark.slow
def test_identical_rows_reduce_to_memoryless_best_of_n():
  delta = np.array([0.05, 0.3, 1.0])
  got, ref = K.bon_vs_kl(IID, delta, 12), M.bon_vs_kl(LP3, R3, delta, 12)
  for field in ref._fields:
    np.testing.assert_allclose(getattr(got, field), getattr(ref, field), rtol=1e-9, err_msg=field)
  np.testing.assert_allclose(got.limit_reward, ref.target_reward, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# Closed forms and brute force.

def test_two_state_perron_root_against_mpmath():
  p = [[0.7, 0.3], [0.6, 0.4]]
  r = [[0.0, 1.0], [2.0, -1.0]]
  ref = K.reference(np.log([0.5, 0.5]), np.log(p), pair_reward=np.array(r))
  lam = np.array([-60.0, -3.0, -1e-3, 0.0, 0.7, 5.0, 60.0])
  got = K.doob(ref, lam)
  with mp.workdps(50):
    val = [mp_two_state(p, r, mp.mpf(x)) for x in lam]
    der = [mp.diff(lambda t: mp_two_state(p, r, t), mp.mpf(x)) for x in lam]
    der2 = [mp.diff(lambda t: mp_two_state(p, r, t), mp.mpf(x), 2) for x in lam]
  np.testing.assert_allclose(got.scgf, [float(x) for x in val], rtol=1e-14, atol=1e-15)
  np.testing.assert_allclose(got.mean_reward, [float(x) for x in der], rtol=1e-12, atol=1e-14)
  np.testing.assert_allclose(got.var_reward, [float(x) for x in der2], rtol=1e-9, atol=1e-13)
  assert float(jax.grad(lambda l: K.scgf(ref, l))(lam[4])) == pytest.approx(float(der[4]), rel=1e-12)
  # The cycle means: self-loops 0 and -1, the 2-cycle (1 + 2) / 2.
  rng = K.reward_range(ref)
  assert (float(rng.low), float(rng.high)) == (-1.0, 1.5)
  assert float(rng.rate_high) == pytest.approx(-0.5 * math.log(0.3 * 0.6), rel=1e-14)
  assert float(rng.rate_low) == pytest.approx(-math.log(0.4), rel=1e-14)


def test_log_mgf_law_and_kl_rl_against_enumeration_of_all_sequences():
  ref, n = pair_chain(3), 5
  logp, s = enumerate_sequences(ref, n)
  lam = np.array([-2.0, 0.0, 0.3, 4.0])
  np.testing.assert_allclose(K.log_mgf(ref, lam, n), [logsumexp(logp + l * s) for l in lam], rtol=1e-13, atol=1e-14)
  law = K.sequence_law(ref, n)
  levels = np.rint(s * float(law.scale[()]) - float(law.start[()])).astype(int) // int(law.span[()])
  ref_law = np.full(law.log_prob.shape, -np.inf)
  for level in np.unique(levels):
    ref_law[level] = logsumexp(logp[levels == level])
  np.testing.assert_allclose(law.log_prob, ref_law, rtol=1e-12)
  # KL-RL at finite n: K_n(lam) = lam A_n' - A_n = n delta, by a bracketing root on the enumeration.
  delta = 0.2
  def k_n(l):
    w = logp + l * s
    q = np.exp(w - logsumexp(w))
    return l * (q @ s) - logsumexp(w) - n * delta
  lam_ref = brentq(k_n, 1e-9, 50.0, xtol=1e-15)
  sol = K.kl_constrained(ref, delta, n)
  assert float(sol.lam) == pytest.approx(lam_ref, rel=1e-10)
  w = logp + lam_ref * s
  assert float(sol.mean_reward) == pytest.approx(np.exp(w - logsumexp(w)) @ s / n, rel=1e-12)
  assert float(sol.top_reward) == pytest.approx(s.max() / n, rel=1e-15)
  assert float(sol.max_kl) == pytest.approx(-logsumexp(logp[s == s.max()]) / n, rel=1e-13)


@pytest.mark.slow
@pytest.mark.parametrize("n", [40, 400])
def test_sequence_law_against_exact_recursion_deep_tails(n):
  ref = chain(1)
  law = np.asarray(K.sequence_law(ref, n).log_prob)
  ref_law = direct_law(ref, n)
  keep = ref_law > -700
  assert keep.sum() > 3 * n - 10
  assert n < 400 or ref_law[keep].min() < -400                   # far tails, below 1e-170
  np.testing.assert_allclose(law[keep], ref_law[keep], rtol=1e-12)
  assert np.all(law[~np.isfinite(ref_law)] == -np.inf)


# ---------------------------------------------------------------------------------------------
# Theorems on random instances.

BATCH = K.random_reference(jax.random.key(11), 4, shape=(6,), levels=None, concentration=0.7)


def test_doob_transform_theorems_on_random_chains():
  lam = jnp.linspace(-2.0, 3.0, 6)
  d = K.doob(BATCH, lam)
  q, pi = np.exp(d.log_policy), np.exp(d.log_stationary)
  np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-13)
  np.testing.assert_allclose(np.einsum("bi,bij->bj", pi, q), pi, rtol=1e-12)       # pi stationary for Q
  np.testing.assert_allclose(d.kl_rate, lam * d.mean_reward - d.scgf, rtol=1e-11, atol=1e-14)
  # KL rate of Q to P computed independently, and the mean reward under pi(i) Q(i, j).
  p, r = np.exp(BATCH.log_trans), np.asarray(BATCH.reward)
  with np.errstate(divide="ignore", invalid="ignore"):
    kl = np.einsum("bi,bij->b", pi, np.where(q > 0, q * np.log(q / p), 0.0))
  np.testing.assert_allclose(d.kl_rate, kl, rtol=1e-11, atol=1e-14)
  np.testing.assert_allclose(d.mean_reward, np.einsum("bi,bij,bij->b", pi, q, r), rtol=1e-12)
  # A_n / n tends to Lambda with an O(1/n) error.
  gap = [np.max(np.abs(K.log_mgf(BATCH, lam, n) / n - d.scgf)) for n in (10, 1000)]
  assert gap[1] < gap[0] / 50


@pytest.mark.slow
def test_rate_function_theorems_on_random_chains():
  rng = K.reward_range(BATCH)
  x = np.asarray(rng.low)[:, None] + np.linspace(0.0, 1.0, 9)[None, :] * np.asarray(rng.high - rng.low)[:, None]
  x[:, 0], x[:, -1] = rng.low, rng.high
  batch = jax.tree.map(lambda a: a[:, None], BATCH)
  rate = np.asarray(K.rate_function(batch, x))
  assert np.all(rate >= 0) and np.all(np.isfinite(rate))
  assert np.all(np.diff(rate, 2, axis=-1) > -1e-12)                                  # convex
  np.testing.assert_allclose(rate[:, 0], rng.rate_low, rtol=1e-12)
  np.testing.assert_allclose(rate[:, -1], rng.rate_high, rtol=1e-12)
  assert np.all(np.asarray(K.rate_function(BATCH, rng.mean)) < 1e-20)
  # Outside the cycle-mean range: +inf; the ends are the limits lam high - Lambda(lam).
  assert np.all(np.isinf(K.rate_function(BATCH, rng.high + 1e-9)))
  assert np.all(np.isinf(K.rate_function(BATCH, rng.low - 1e-9)))
  np.testing.assert_allclose(300.0 * rng.high - K.scgf(BATCH, 300.0), rng.rate_high, rtol=1e-6)
  # I(x_Delta) = Delta at the per-token KL-RL solution, and lam_Delta = I'(x_Delta).
  delta = 0.5 * np.asarray(rng.rate_high)
  sol = K.kl_constrained_rate(BATCH, delta)
  np.testing.assert_allclose(K.rate_function(BATCH, sol.mean_reward), delta, rtol=1e-10)
  np.testing.assert_allclose(sol.kl, delta, rtol=1e-12)
  slope = jax.vmap(jax.grad(lambda b, x: K.rate_function(b, x), argnums=1))(BATCH, sol.mean_reward)
  np.testing.assert_allclose(slope, sol.lam, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# Derivatives.

@pytest.mark.slow
def test_derivatives_against_finite_differences():
  ref = chain(2)
  h = 1e-5
  fd = lambda f, x: (f(x + h) - f(x - h)) / (2 * h)
  lam = 0.7
  d = K.doob(ref, lam)
  assert float(d.mean_reward) == pytest.approx(float(fd(lambda l: K.scgf(ref, l), lam)), rel=1e-8)
  assert float(d.var_reward) == pytest.approx(float(fd(lambda l: K.doob(ref, l).mean_reward, lam)), rel=1e-7)
  grad2 = jax.jit(jax.grad(jax.grad(lambda l: K.scgf(ref, l))))(lam)
  assert float(grad2) == pytest.approx(float(d.var_reward), rel=1e-12)
  # A_n' in lam and the KL-RL root in delta (implicit derivative).
  a1 = jax.jit(jax.grad(lambda l: K.log_mgf(ref, l, 9)))(lam)
  assert float(a1) == pytest.approx(float(fd(lambda l: K.log_mgf(ref, l, 9), lam)), rel=1e-8)
  dl = jax.jit(jax.grad(lambda x: K.kl_constrained_rate(ref, x).lam))(0.03)
  assert float(dl) == pytest.approx(float(fd(lambda x: K.kl_constrained_rate(ref, x).lam, 0.03)), rel=1e-6)
  # The scgf in the transition matrix (a direction that keeps the rows normalised).
  e = np.asarray(jax.random.normal(jax.random.key(5), ref.log_trans.shape))
  def along(t):
    lt = jax.nn.log_softmax(jnp.where(ref.log_trans > -jnp.inf, ref.log_trans + t * e, -jnp.inf), axis=-1)
    return K.scgf(ref._replace(log_trans=lt), lam)
  assert float(jax.jit(jax.grad(along))(0.0)) == pytest.approx(float(fd(along, 0.0)), rel=1e-7)


# ---------------------------------------------------------------------------------------------
# Best-of-N and single steps.

@pytest.mark.slow
def test_bon_per_token_numbers_converge_toward_the_limit():
  ref = K.random_reference(jax.random.key(3), 5, levels=3)
  delta = 0.1
  out = [K.bon_vs_kl(ref, delta, n) for n in (8, 64, 512)]
  x = float(out[0].limit_reward)
  gaps = [abs(float(o.mean_reward) - x) for o in out]
  kls = [abs(float(o.kl) - delta) for o in out]
  klt = [float(o.kl_to_tilted) for o in out]
  assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.02
  assert kls[0] > kls[1] > kls[2] and kls[2] < 0.01
  assert klt[0] > klt[1] > klt[2] and klt[2] < 0.005
  assert float(out[2].target_reward) == pytest.approx(x, abs=1e-3)


def test_single_step_best_of_n_is_a_tilt_with_two_levels_only():
  two = IID._replace(first_reward=jnp.array([0.0, 1.0, 1.0]))          # two reward levels
  log_n = np.array([0.0, 1.0, 3.0])
  s2 = K.single_step(two, log_n)
  assert bool(np.all(s2.is_tilt)) and np.all(np.asarray(s2.kl_to_tilted) < 1e-14)
  s3 = K.single_step(IID, log_n)
  assert list(np.asarray(s3.is_tilt)) == [True, False, False]
  assert np.all(np.asarray(s3.kl_to_tilted[1:]) > 1e-3) and np.all(np.asarray(s3.residual[1:]) > 0.1)
  # Best-of-N's KL on one step, against klrl.bon on the same token law.
  from klrl import bon
  np.testing.assert_allclose(s3.kl, bon.stats(LP3, R3, np.exp(log_n)).kl, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Construction, errors, instances.

def test_random_reference_is_deterministic_and_valid():
  a, b = chain(4), chain(4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  np.testing.assert_allclose(logsumexp(np.asarray(a.log_trans), axis=-1), 0.0, atol=1e-14)
  assert np.any(np.isinf(a.log_trans))
  np.testing.assert_array_equal(a.reward[0], a.reward[1])        # per-token reward, stored per transition
  np.testing.assert_array_equal(a.first_reward, a.reward[0])


def test_bad_input_raises_input_error_naming_the_argument():
  lt = np.log(np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]))
  with pytest.raises(InputError, match="'log_trans' is not irreducible"):
    K.scgf(K.Reference(IID.log_init, jnp.asarray(lt), IID.reward, IID.first_reward), 0.5)
  with pytest.raises(InputError, match="'log_trans'"):
    K.reference(LP3, np.log(np.tile([0.5, 0.3, 0.3], (3, 1))), R3)
  with pytest.raises(InputError, match="'log_init'"):
    K.reference(LP3 + 0.1, np.log(np.tile(P3, (3, 1))), R3)
  with pytest.raises(InputError, match="exactly one"):
    K.reference(LP3, np.log(np.tile(P3, (3, 1))), R3, pair_reward=np.zeros((3, 3)))
  with pytest.raises(InputError, match="'reward'"):
    K.reference(LP3, np.log(np.tile(P3, (3, 1))), np.array([0.0, np.nan, 1.0]))
  with pytest.raises(InputError, match="'ref'"):
    K.scgf((LP3, R3), 0.5)
  with pytest.raises(InputError, match="not on a lattice"):
    K.sequence_law(IID._replace(reward=IID.reward + 0.25), 3)
  with pytest.raises(InputError, match="'x'"):
    K.rate_function(IID, np.nan)


@pytest.mark.slow
def test_float32():
  ref32 = jax.tree.map(lambda a: a.astype(jnp.float32), chain(2))
  ref64 = chain(2)
  lam, x = np.float32(0.7), np.float32(1.5)
  assert float(K.scgf(ref32, lam)) == pytest.approx(float(K.scgf(ref64, 0.7)), rel=1e-5)
  rng = K.reward_range(ref64)
  x = float(0.5 * (rng.mean + rng.high))
  assert float(K.rate_function(ref32, np.float32(x))) == pytest.approx(float(K.rate_function(ref64, x)), rel=1e-4)
  assert float(K.kl_constrained_rate(ref32, np.float32(0.02)).mean_reward) == pytest.approx(
      float(K.kl_constrained_rate(ref64, 0.02).mean_reward), rel=1e-5)


def test_english_bigram():
  pytest.importorskip("gensim")
  pytest.importorskip("vaderSentiment")
  big = K.english_bigram(100)
  ref = big.ref
  assert ref.log_trans.shape == (101, 101) and big.words[-1] == "<other>" and big.words[0] == "the"
  assert big.tokens > 50000
  p, mu = np.exp(np.asarray(ref.log_trans)), np.exp(np.asarray(ref.log_init))
  np.testing.assert_allclose(mu @ p, mu, rtol=1e-12)                       # the initial law is stationary
  lex = np.asarray(ref.reward[0])
  assert np.all(np.abs(lex * 10 - np.rint(lex * 10)) < 1e-9) and np.count_nonzero(lex) >= 3
  with pytest.raises(InputError, match="'k'"):
    K.english_bigram(0)


@pytest.mark.slow
def test_english_bigram_kl_rl_and_rates():
  pytest.importorskip("gensim")
  pytest.importorskip("vaderSentiment")
  ref = K.english_bigram(100).ref
  rng = K.reward_range(ref)
  sol = K.kl_constrained_rate(ref, np.array([0.01, 0.1]))
  assert bool(np.all(sol.converged)) and np.all(np.diff(np.asarray(sol.mean_reward)) > 0)
  np.testing.assert_allclose(K.rate_function(ref, sol.mean_reward), [0.01, 0.1], rtol=1e-9)
  assert float(rng.low) < 0 < float(rng.high)
