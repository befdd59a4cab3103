"""klrl.chains (docs: theory/chains): chains with known answers, the theory on random instances, deeptime,
and assumption violations."""
import itertools

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, strategies as st

from klrl import InputError, chains as C

M = 6                                   # one size for the random instances: one compilation each
TRIANGLES = np.array([(0, i, j) for i, j in itertools.combinations(range(1, M), 2)])
EYE_LOG = np.where(np.eye(M) > 0, 0.0, -np.inf)     # point masses, as log-laws
SOLVE_RTOL = 1e-7       # stationary(method="solve"): 2 sqrt(eps) = 3e-8 per mass, to first order

mp.mp.dps = 40


def log(x):
  with np.errstate(divide="ignore"):
    return np.log(np.asarray(x, float))


def instance(seed, beta, eps_ref=0.0, eps_rew=0.0):
  """A random chain of the theory: reference from a joint, transition reward, tilted kernel."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  logp = C.reference_from_joint(C.random_joint(k1, M, eps_ref))
  rw = C.random_reward(k2, M, eps_rew)
  return logp, rw, C.kernel(logp, rw.reward, beta)


seeds = st.integers(0, 2 ** 31 - 1)
betas = st.floats(0.05, 20.0)


# ---------------------------------------------------------------------------------------------
# Chains with known answers.

def mp_birth_death_pi(up, down):
  w = [mp.mpf(1)]
  for u, d in zip(up, down):
    w.append(w[-1] * mp.mpf(u) / mp.mpf(d))
  z = sum(w)
  return [x / z for x in w]


@pytest.mark.parametrize("case", ["smooth", "bottleneck"])
def test_birth_death_stationary_law_is_analytic(case):
  n = 30
  i = np.arange(n)
  up = 0.2 + 0.2 * np.sin(i) ** 2
  down = 0.3 + 0.1 * np.cos(i) ** 2
  if case == "bottleneck":                 # two wells joined by a narrow gate: masses down to 1e-13
    up[12:15] = 1e-5
    up[15:] = 0.05
  logk = C.birth_death(up, down)
  ref = np.array([float(x) for x in mp_birth_death_pi(up, down)])
  pi = np.asarray(C.stationary(logk))
  assert ref.min() < (1e-12 if case == "bottleneck" else 1.0)
  np.testing.assert_allclose(pi, ref, rtol=1e-12, atol=0)         # GTH: relative accuracy everywhere
  assert float(C.detailed_balance(logk).max_residual) < 1e-12     # birth-death chains are reversible
  solved = C.stationary(logk, "solve")
  np.testing.assert_allclose(solved, ref, rtol=SOLVE_RTOL, atol=0)
  np.testing.assert_allclose(solved, ref, rtol=0, atol=1e-14)


@pytest.mark.parametrize("case", ["smooth", "bottleneck"])
def test_birth_death_hitting_times_closed_form(case):
  # E_0 tau_n = sum_i (sum_{j<=i} pi_j) / (pi_i up_i): the commute formula of birth-death chains.
  n = 30
  i = np.arange(n)
  up = 0.1 + 0.3 * (i % 3) / 2
  down = 0.35 - 0.01 * i
  if case == "bottleneck":                 # the way up is blocked: times of order 1e25
    up[10:16] = 1e-4
  pi = mp_birth_death_pi(up, down)
  steps = [sum(pi[: k + 1]) / (pi[k] * mp.mpf(up[k])) for k in range(n)]
  expected = np.array([float(sum(steps[s:])) for s in range(n)] + [0.0])
  target = np.arange(n + 1) == n
  logk = C.birth_death(up, down)
  np.testing.assert_allclose(C.hitting_times(logk, target), expected, rtol=1e-12)
  if case == "smooth":                     # an LU solve is accurate only when the times are moderate
    np.testing.assert_allclose(C.hitting_times(logk, target, "solve"), expected, rtol=1e-10)
  else:
    assert expected[0] > 1e20


def three_state_times(k):
  """E_s tau_{2} of a 3-state chain by Cramer's rule on (I - K_{01,01}) h = 1."""
  a, b, c, d = 1 - k[0, 0], k[0, 1], k[1, 0], 1 - k[1, 1]
  det = a * d - b * c
  return np.array([(d + b) / det, (a + c) / det, 0.0])


@pytest.mark.parametrize("k", [
    [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.4, 0.4, 0.2]],
    [[0.0, 1.0, 0.0], [0.5, 0.0, 0.5], [0.0, 1.0, 0.0]],          # periodic path
    [[0.9, 0.1, 0.0], [0.0, 0.99, 0.01], [0.3, 0.3, 0.4]],        # non-reversible, slow exit
])
def test_three_state_hitting_times_closed_form(k):
  k = np.array(k)
  logk = log(k)
  h = C.hitting_times(logk, np.array([False, False, True]))
  np.testing.assert_allclose(h, three_state_times(k), rtol=1e-13)
  # Kac: the mean return time to {2} from 2 is 1 / pi(2), reversible or not.
  hb = C.hitting_bounds(logk, np.array([False, False, True]))
  np.testing.assert_allclose(hb.return_time, hb.kac, rtol=1e-13)


def test_periodic_chains():
  flip = log([[0.0, 1.0], [1.0, 0.0]])
  np.testing.assert_allclose(C.spectrum(flip), [1.0, -1.0], atol=1e-15)
  assert float(C.absolute_spectral_gap(flip)) == pytest.approx(0.0, abs=1e-15)
  assert float(C.spectral_gap(flip)) == pytest.approx(2.0)        # 1 - l_2 with l_2 = -1
  assert float(C.relaxation_time(flip)) > 1e15
  # Random walk on a 4-cycle: periodic and reversible, spectrum cos(2 pi k / 4).
  walk = log(0.5 * (np.roll(np.eye(4), 1, 1) + np.roll(np.eye(4), -1, 1)))
  np.testing.assert_allclose(C.spectrum(walk), [1.0, 0.0, 0.0, -1.0], atol=1e-15)
  assert float(C.absolute_spectral_gap(walk)) == pytest.approx(0.0, abs=1e-15)
  assert float(C.spectral_gap(walk)) == pytest.approx(1.0)
  # Deterministic 3-cycle: not reversible; every eigenvalue has modulus one, so the modulus
  # gap 1 - |l_2| and the absolute gap are both 0.
  cycle = log(np.roll(np.eye(3), 1, 1))
  w = np.asarray(C.eigenvalues(cycle))
  np.testing.assert_allclose(np.abs(w), 1.0, atol=1e-14)
  assert w[0] == pytest.approx(1.0)
  np.testing.assert_allclose(C.stationary(cycle), np.full(3, 1 / 3), rtol=1e-14)
  np.testing.assert_allclose(C.hitting_times(cycle, np.array([True, False, False])), [0.0, 2.0, 1.0], rtol=1e-14)
  assert float(C.detailed_balance(cycle).max_residual) == np.inf


def test_absorbing_and_unreachable_targets_give_inf_not_nan():
  # 0 is the target; 1 reaches it surely; 2 may fall into the absorbing state 3.
  k = np.array([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 0.5, 0, 0.5], [0, 0, 0, 1.0]])
  logk = log(k)
  np.testing.assert_array_equal(C.hitting_times(logk, np.array([True, False, False, False])), [0, 2, np.inf, np.inf])
  # The absorbing state as target: hit surely from everywhere but 0, which is itself absorbing.
  h = C.hitting_times(logk, np.array([False, False, False, True]))
  np.testing.assert_allclose(h[1:], [np.inf, np.inf, 0.0])
  assert h[0] == np.inf
  # An empty target and a target in another closed class.
  assert np.all(np.isinf(C.hitting_times(logk, np.zeros(4, bool))))
  two = log(np.kron(np.eye(2), np.full((2, 2), 0.5)))
  np.testing.assert_array_equal(C.hitting_times(two, np.array([True, False, False, False])), [0, 2, np.inf, np.inf])
  # Derivatives of the finite entries are exact: E_1 tau_0 = 1 / K(1, 0) = 1 + exp(-1/beta).
  reward = np.array([[0.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
  g = jax.grad(lambda b: C.hitting_times(C.kernel(logk, reward, b), np.array([True, False, False, False]))[1])(0.5)
  assert float(g) == pytest.approx(np.exp(-2.0) / 0.5 ** 2, rel=1e-12)


def test_stationary_of_absorbing_chain_and_reducible_error():
  k = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])    # unichain, absorbing state 1
  np.testing.assert_allclose(C.stationary(log(k)), [0.0, 1.0, 0.0], atol=1e-15)
  with pytest.raises(InputError, match="log_kernel.*no unique stationary law"):
    C.stationary(log([[1.0, 0, 0], [0, 1.0, 0], [0.2, 0.3, 0.5]]))


# ---------------------------------------------------------------------------------------------
# Ill-conditioned chains: method="solve" answers to its stated accuracy (by an LU solve it has
# certified, or else by GTH), never a wrong law and never "several closed classes".

def kmr(n, p, eps):
  """QuantEcon's KMR matrix (sequential revisions): n players, mutation probability eps."""
  k = np.zeros((n + 1, n + 1))
  k[0, 0], k[0, 1] = 1 - eps / 2, eps / 2
  for i in range(1, n):
    k[i, i - 1] = i / n * (eps / 2 + (1 - eps) * (((i - 1) / (n - 1) < p) + ((i - 1) / (n - 1) == p) / 2))
    k[i, i + 1] = (n - i) / n * (eps / 2 + (1 - eps) * ((i / (n - 1) > p) + (i / (n - 1) == p) / 2))
    k[i, i] = 1 - k[i, i - 1] - k[i, i + 1]
  k[n, n - 1], k[n, n] = eps / 2, 1 - eps / 2
  return k


def mp_pi(k):
  """pi P = pi at 50 digits, by the subtraction-free elimination (exact to ~1e-48 relative for
  any conditioning); the chain is its off-diagonal entries, as for klrl."""
  with mp.workdps(50):
    a = [[mp.mpf(float(x)) for x in row] for row in k]
    m = len(a)
    for n in range(m - 1, 0, -1):
      s = mp.fsum(a[n][:n])
      for i in range(n):
        a[i][n] /= s
      for i in range(n):
        for j in range(n):
          if i != j:
            a[i][j] += a[i][n] * a[n][j]
    x = [mp.mpf(1)]
    for n in range(1, m):
      x.append(mp.fsum(x[i] * a[i][n] for i in range(n)))
    z = mp.fsum(x)
    return np.array([float(v / z) for v in x])


def mp_solve_pi(k):
  """pi Q = 0, sum pi = 1 at 50 digits by Gaussian elimination, Q = K - I with the diagonal
  -sum_{s' != s} K(s'|s); accurate where the condition number is far below 1e50."""
  with mp.workdps(50):
    m = len(k)
    q = mp.matrix(m, m)
    for i in range(m):
      for j in range(m):
        q[j, i] = mp.mpf(float(k[i][j])) if i != j else -mp.fsum(mp.mpf(float(x)) for s, x in enumerate(k[i]) if s != i)
      q[m - 1, i] = 1
    e = mp.matrix(m, 1)
    e[m - 1] = 1
    return np.array([float(v) for v in mp.lu_solve(q, e)])


@pytest.mark.parametrize("n", [3, 5, 10, 27])
@pytest.mark.parametrize("eps", [1e-6, 1e-10, 1e-14])
def test_stationary_of_kmr_chains(n, eps):
  # A birth-death chain: pi(i+1) / pi(i) = K(i, i+1) / K(i+1, i), masses down to 1.8e-251.
  logk = log(kmr(n, 1 / 3, eps))
  k = np.exp(logk)
  ref = mp_birth_death_pi(np.diag(k, 1), np.diag(k, -1))
  ref = np.array([float(x) for x in ref])
  np.testing.assert_allclose(mp_pi(k), ref, rtol=1e-14)
  np.testing.assert_allclose(C.stationary(logk), ref, rtol=1e-13)
  np.testing.assert_allclose(C.stationary(logk, "solve"), ref, rtol=SOLVE_RTOL)


@pytest.mark.parametrize("k", [
    [[1 - 1e-14, 5e-15, 5e-15], [5e-15, 1 - 1e-14, 5e-15], [5e-15, 5e-15, 1 - 1e-14]],   # three sticky states
    [[1 - 1e-14, 1e-14, 0.0], [0.0, 1 - 1e-14, 1e-14], [1e-14, 0.0, 1 - 1e-14]],         # a slow cycle
    [[1 - 1e-14, 1e-14, 0.0], [5e-15, 1 - 1e-14, 5e-15], [0.0, 1e-14, 1 - 1e-14]],        # a slow birth-death chain
    [[1 - 2e-14, 1e-14, 1e-14], [0.5, 0.5, 0.0], [1e-3, 0.0, 1 - 1e-3]],                 # one sticky state
])
def test_stationary_of_nearly_absorbing_three_state_chains(k):
  # An LU solve of pi (I - K + 1 1^T) = 1^T is off by 1e-3 to 3e-3 on the first and third, with
  # a residual pi K - pi that rounds to zero: 1 - K(s|s) keeps two digits when it is formed.
  logk = log(k)
  ref = mp_pi(np.exp(logk))
  np.testing.assert_allclose(mp_solve_pi(np.exp(logk)), ref, rtol=1e-14)
  np.testing.assert_allclose(C.stationary(logk), ref, rtol=1e-14)
  np.testing.assert_allclose(C.stationary(logk, "solve"), ref, rtol=SOLVE_RTOL)


def ill_conditioned(seed, m=M):
  """An irreducible chain with transition probabilities down to 1e-16 and rows that stay put
  with probability up to 1 - 1e-15: nearly decomposable blocks, log-uniform sparse entries,
  dense rows, or a path drifting to one end (masses down to 1e-38)."""
  rng = np.random.default_rng(seed)
  kind = seed % 4
  if kind == 0:
    label = rng.integers(0, 3, m)
    w = rng.random((m, m)) * np.where(label[:, None] == label[None, :], 1.0, 10.0 ** rng.uniform(-16, -4, (m, m)))
  elif kind == 1:
    w = 10.0 ** rng.uniform(-16, 0, (m, m)) * (rng.random((m, m)) < 0.6)
  elif kind == 2:
    w = rng.random((m, m))
  else:
    w = np.diag(10.0 ** rng.uniform(-14, -4, m - 1), 1) + np.diag(rng.uniform(0.1, 1, m - 1), -1)
    w[-1, 0] = 10.0 ** rng.uniform(-16, -8)
  w[np.arange(m), (np.arange(m) + 1) % m] += 10.0 ** rng.uniform(-16, 0, m)     # a ring: irreducible
  w[np.arange(m), np.arange(m)] = 0.0
  w /= w.sum(1, keepdims=True)
  stay = 1 - 10.0 ** rng.uniform(-15, 0, (m, 1))
  return (1 - stay) * w + stay * np.eye(m)


def test_stationary_solve_on_ill_conditioned_chains():
  # An LU solve of pi (I - K + 1 1^T) = 1^T, checked by its residual, returns 49 of these with
  # relative errors above 1e-7 (absolute errors up to 0.24) and declares 8 of them reducible.
  seeds = range(60)
  logk = log(np.stack([ill_conditioned(s) for s in seeds]))
  ref = np.stack([mp_pi(k) for k in np.exp(logk)])
  assert ref.min() < 1e-30
  pi = np.asarray(C.stationary(logk, "solve"))          # one batch: certified LU solves and GTH
  np.testing.assert_allclose(pi, ref, rtol=SOLVE_RTOL, atol=0)
  np.testing.assert_allclose(jax.jit(jax.vmap(lambda k: C.stationary(k, "solve")))(logk), pi, rtol=1e-15)
  np.testing.assert_allclose(C.stationary(logk), ref, rtol=1e-12, atol=0)
  # Both ways are taken: some LU solves certify their answers, some are handed to GTH.
  from klrl.chains import equilibrium
  _, certified = jax.vmap(equilibrium._solve_pi)(jnp.exp(logk))
  assert 0 < int(np.sum(certified)) < len(seeds)


def test_stationary_solve_still_refuses_several_closed_classes():
  for k in [np.kron(np.eye(2), np.full((2, 2), 0.5)), [[1.0, 0, 0], [0, 1.0, 0], [0.2, 0.3, 0.5]]]:
    with pytest.raises(InputError, match="log_kernel.*no unique stationary law .several closed classes"):
      C.stationary(log(k), "solve")
  f = jax.jit(lambda lk: C.stationary(lk, "solve"))
  with pytest.raises(Exception, match="no unique stationary law"):
    f(log(np.kron(np.eye(2), np.full((2, 2), 0.5)))).block_until_ready()
  # Transient states get mass 0, as with GTH.
  k = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5]])
  np.testing.assert_allclose(C.stationary(log(k), "solve"), [0.0, 1.0, 0.0], atol=1e-15)


def brute_force_hitting(k, target, horizon=4000):
  """E_s tau_A = sum_{n>=0} P_s(tau_A > n) by iterating the killed kernel (a path sum)."""
  kc = k * (~target)[None, :] * (~target)[:, None]
  alive = (~target).astype(float)
  total = np.zeros(len(k))
  for _ in range(horizon):
    total += alive
    alive = kc @ alive
  return total


def test_hitting_times_against_path_sums():
  _, _, logk = instance(3, 1.3)
  target = np.arange(M) % 4 == 0
  h = np.asarray(C.hitting_times(logk, target))
  np.testing.assert_allclose(h, brute_force_hitting(np.exp(np.asarray(logk)), target), rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# The theory (docs: theory/chains) on random reversible instances.

@given(seed=seeds, beta=betas)
def test_detailed_balance_and_pi_proportional_to_exp_v(seed, beta):
  logp, rw, logk = instance(seed, beta)
  v = C.potential(logp, rw.reward, beta)
  bal = C.detailed_balance(logk, v)
  assert float(bal.max_residual) <= 1e-12
  assert float(bal.flux) <= 1e-15
  np.testing.assert_allclose(C.stationary(logk), np.exp(v), rtol=1e-12)
  assert float(jnp.max(jnp.abs(C.kolmogorov_cycles(logk, TRIANGLES)))) <= 1e-12
  fit = C.reward_potential(rw.reward)
  assert float(fit.residual) <= 1e-13
  np.testing.assert_allclose(fit.potential, rw.potential - rw.potential.mean(), atol=1e-13)
  # Phi(s') as a vector gives the same chain class: V from the potential directly.
  v_phi = C.potential(logp, rw.potential, beta)
  np.testing.assert_allclose(C.stationary(C.kernel(logp, rw.potential, beta)), np.exp(v_phi), rtol=1e-12)


@given(seed=seeds, beta=betas)
def test_kl_non_increasing_free_energy_and_zero_drift(seed, beta):
  logp, rw, logk = instance(seed, beta)
  v = C.potential(logp, rw.reward, beta)
  p0 = jax.nn.log_softmax(3 * jax.random.normal(jax.random.PRNGKey(seed % 1000), (M,)))
  starts = jnp.concatenate([p0[None], EYE_LOG], axis=0)
  rel = C.relaxation(logk, starts, 40, v)
  kl = np.asarray(rel.kl)
  assert np.all(np.diff(kl, axis=-1) <= 1e-14 * np.maximum(1.0, kl[..., :-1]))
  # With logsumexp V = 0 the free energy -E_p V - H(p) is KL(p || e^V) = KL(p || pi).
  np.testing.assert_allclose(rel.free_energy, kl, atol=1e-11)
  assert np.all(np.diff(np.asarray(rel.free_energy), axis=-1) <= 1e-11)
  dr = C.drift(logk, v)
  assert abs(float(dr.mean)) <= 1e-13 * max(1.0, float(jnp.max(jnp.abs(dr.drift))))
  assert abs(float(C.drift(logk).mean)) <= 1e-13 * max(1.0, float(jnp.max(jnp.abs(C.drift(logk).drift))))


@given(seed=seeds, beta=betas)
def test_mixing_bounds_hold(seed, beta):
  _, _, logk = instance(seed, beta)
  p0 = jax.nn.log_softmax(3 * jax.random.normal(jax.random.PRNGKey(seed % 997), (M,)))
  starts = jnp.concatenate([p0[None], EYE_LOG], axis=0)
  rounds = 60
  rel = C.relaxation(logk, starts, rounds)
  mb = C.mixing_bounds(logk, starts, rounds)
  slack = 1e-12
  assert np.all(np.asarray(rel.tv) <= np.asarray(mb.tv) + slack)
  assert np.all(np.asarray(rel.kl) <= np.asarray(mb.kl) + slack)
  worst = np.max(np.asarray(rel.tv)[1:], axis=0)                  # over point-mass starts
  assert np.all(worst <= np.asarray(mb.worst_tv)[0] + slack)
  # t_mix(1/4) from the worst start, against its bound (when the horizon shows it).
  below = np.nonzero(worst <= 0.25)[0]
  if below.size:
    assert below[0] <= float(mb.mixing_time[0]) + 1e-9
  # Spectral decay of chi2: chi2(p_t || pi) <= lam*^(2t) chi2(p_0 || pi).
  lam = 1 - float(C.absolute_spectral_gap(logk))
  chi = np.asarray(rel.chi2)
  t = np.arange(rounds + 1)
  assert np.all(chi <= lam ** (2 * t) * chi[..., :1] * (1 + 1e-9) + 1e-14)


@given(seed=seeds, beta=betas, size=st.integers(1, 3))
def test_hitting_bounds_hold(seed, beta, size):
  _, _, logk = instance(seed, beta)
  target = np.arange(M) < size
  hb = C.hitting_bounds(logk, target)
  assert float(hb.mean_time) <= float(hb.spectral) * (1 + 1e-12)
  assert float(hb.return_time) == pytest.approx(float(hb.kac), rel=1e-12)
  h = np.asarray(hb.times)
  assert np.all(h <= np.asarray(hb.drift) * (1 + 1e-12) + 1e-12)
  # The drift bound is tight for V = -h: its drift is exactly 1 off the target. (Computing that
  # drift subtracts values of size max h, so it is checked where max h * eps is small.)
  if h.max() < 1e5:
    tight = C.hitting_bounds(logk, target, -hb.times)
    np.testing.assert_allclose(tight.drift, h, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(C.drift(logk, -hb.times).drift[size:], 1.0, rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# Against deeptime on the same matrices.

def deeptime_instances():
  out = []
  for seed, beta, size in [(0, 0.5, 6), (1, 2.0, 6), (2, 0.2, 40), (3, 5.0, 40)]:
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    logp = C.reference_from_joint(C.random_joint(k1, size))
    out.append(C.kernel(logp, C.random_reward(k2, size).reward, beta))
  return out


@pytest.mark.parametrize("idx", range(4))
def test_against_deeptime(idx):
  msm_mod = pytest.importorskip("deeptime.markov.msm")
  tools = pytest.importorskip("deeptime.markov.tools.analysis")
  logk = deeptime_instances()[idx]
  k = np.exp(np.asarray(logk))
  k = k / k.sum(axis=1, keepdims=True)
  msm = msm_mod.MarkovStateModel(k)
  size = len(k)
  assert msm.reversible and float(C.detailed_balance(logk).max_residual) < 1e-12
  # deeptime's stationary law is accurate in absolute terms (its smallest masses, ~1e-10 here,
  # differ from ours in the 7th digit); klrl's matches pi ∝ e^V to 1e-12 relative (see above).
  np.testing.assert_allclose(C.stationary(logk), msm.stationary_distribution, rtol=1e-10, atol=1e-15)
  ours = np.asarray(C.spectrum(logk))
  theirs = np.sort(np.real(msm.eigenvalues()))[::-1]
  np.testing.assert_allclose(ours, theirs, atol=1e-12)
  # implied timescales -1/log|l_i| from deeptime, against relaxation_time for the slowest one.
  lam = max(abs(ours[1]), abs(ours[-1]))
  assert float(C.relaxation_time(logk)) == pytest.approx(1 / (1 - lam), rel=1e-12)
  target = np.zeros(size, bool)
  target[[0, size // 2]] = True
  np.testing.assert_allclose(C.hitting_times(logk, target), tools.mfpt(k, np.nonzero(target)[0]), rtol=1e-10)


def test_non_reversible_against_deeptime():
  msm_mod = pytest.importorskip("deeptime.markov.msm")
  logp, _, logk = instance(12, 0.8, eps_ref=1.0, eps_rew=1.0)
  k = np.exp(np.asarray(logk))
  msm = msm_mod.MarkovStateModel(k / k.sum(1, keepdims=True), reversible=False)
  np.testing.assert_allclose(C.stationary(logk), msm.stationary_distribution, rtol=1e-10)
  ours = np.asarray(C.eigenvalues(logk))
  theirs = msm.eigenvalues()
  np.testing.assert_allclose(np.sort(np.abs(ours))[::-1], np.sort(np.abs(theirs))[::-1], atol=1e-12)
  assert abs(ours[0] - 1) < 1e-12
  assert np.max(np.abs(ours.imag)) > 1e-3        # a non-reversible kernel: complex eigenvalues here


# ---------------------------------------------------------------------------------------------
# Assumption violations: residuals grow with epsilon by the predicted amounts.

EPS = [0.0, 0.01, 0.1, 0.5, 1.0]


@pytest.mark.parametrize("seed", [0, 5])
def test_reward_violation_residuals_are_predicted(seed):
  beta = 0.6
  logp, rw0, _ = instance(seed, beta)
  fits = []
  for eps in EPS:
    _, rw, logk = instance(seed, beta, eps_rew=eps)
    b = np.asarray(rw.reward - rw0.reward)                # = eps * (cyclic, antisymmetric B)
    np.testing.assert_allclose(b, -b.T, atol=1e-14)
    fit = C.reward_potential(rw.reward)
    np.testing.assert_allclose(fit.residual, 2 * np.max(np.abs(b)), atol=1e-13)
    np.testing.assert_allclose(fit.potential, rw0.potential - rw0.potential.mean(), atol=1e-13)
    # Detailed balance against the canonical V fails by exactly 2 eps B / beta.
    v = C.potential(logp, rw.reward, beta)
    np.testing.assert_allclose(C.detailed_balance(logk, v).residual, 2 * b / beta, atol=1e-12)
    fits.append((float(fit.residual), float(C.detailed_balance(logk).flux)))
  res, flux = np.array(fits).T
  assert res[0] < 1e-13 and flux[0] < 1e-15
  assert np.all(np.diff(res) > 0) and np.all(np.diff(flux) > 0)


@pytest.mark.parametrize("seed", [1, 7])
def test_reference_violation_kolmogorov_cycles_are_predicted(seed):
  beta = 1.7
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  w0 = C.random_joint(k1, M)
  rw0 = C.random_reward(k2, M)
  fluxes = []
  for eps in EPS:
    w = C.random_joint(k1, M, eps)
    c = np.asarray(w - w0)
    c = (c - c.T) / 2                                   # eps C (the normalisation constant drops)
    logp = C.reference_from_joint(w)
    rw = C.random_reward(k2, M, eps)
    logk = C.kernel(logp, rw.reward, beta)
    b = np.asarray(rw.reward - rw0.reward)
    i, j, l = TRIANGLES.T
    around = lambda x: x[i, j] + x[j, l] + x[l, i]
    predicted = 2 * around(c) + 2 * around(b) / beta
    np.testing.assert_allclose(C.kolmogorov_cycles(logk, TRIANGLES), predicted, atol=1e-12)
    np.testing.assert_allclose(C.kolmogorov_cycles(logp, TRIANGLES), 2 * around(c), atol=1e-12)
    # Canonical V: the kernel's residual is the reference's own (against mu) plus 2 eps B / beta.
    v = C.potential(logp, rw.reward, beta)
    ref = C.detailed_balance(logp).residual
    np.testing.assert_allclose(C.detailed_balance(logk, v).residual, ref + 2 * b / beta, atol=1e-11)
    fluxes.append(float(C.detailed_balance(logk).flux))
  assert fluxes[0] < 1e-15 and np.all(np.diff(fluxes) > 0)


def test_offset_and_scaled_rewards_give_the_same_chain():
  """``r -> a r + c`` with ``beta -> a beta`` leaves the tilted kernel, and the sparse chain's
  kernel and stationary law, unchanged. Uncentred, ``r / beta`` rounded the rewards'
  differences away for rewards offset far from zero (1e-8 in ``log K`` at ``a = 2^-10``,
  ``c = -5e3``)."""
  k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(0), 4)
  logp = jax.nn.log_softmax(jax.random.normal(k1, (12, 12)), -1)
  r = jnp.round(2 * jax.random.normal(k2, (12, 12))) / 2      # on a grid of 1/2: a r + c is exact
  sj = C.random_sparse_joint(k3, 64)
  phi = jnp.round(2 * jax.random.normal(k4, (64,))) / 2
  beta = 0.05
  base = C.kernel(logp, r, beta), C.sparse_chain(sj.neighbors, sj.log_joint, phi, beta)
  for a, c in [(1.0, 1e4), (2.0 ** -10, -5e3)]:
    got = C.kernel(logp, a * r + c, a * beta), C.sparse_chain(sj.neighbors, sj.log_joint, a * phi + c, a * beta)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(base)):
      np.testing.assert_allclose(x, y, rtol=0, atol=1e-12)
