"""klrl.rlvr: closed forms against mpmath, the flow against an ODE solver, theorem identities."""
import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import klrl
from klrl import divergences, rlvr, tilted

P, Y = 64, 7         # one shape for the jitted calls of this file: each function compiles once
DIGITS = 40          # mpmath precision, set per test (mpmath's precision is global)


def problem(seed, accuracy=None, h_c=0.9, h_w=0.6):
  return rlvr.random_problem(jax.random.PRNGKey(seed), P, Y, num_correct=3, accuracy=accuracy,
                             entropy_correct=h_c, entropy_wrong=h_w)


def random_q(seed, logp):
  g = 2.0 * jax.random.normal(jax.random.PRNGKey(1000 + seed), logp.shape)
  return jax.nn.log_softmax(jnp.where(logp > -jnp.inf, g, -jnp.inf), axis=-1)


def random_betas(seed):
  """One beta per prompt, log-uniform on [0.05, 20]."""
  return jnp.exp(jax.random.uniform(jax.random.PRNGKey(2000 + seed), (P,), minval=np.log(0.05), maxval=np.log(20.0)))


def random_accuracies(seed):
  """One reference accuracy per prompt, log-uniform on [1e-3, 0.5], some mirrored towards 1."""
  a = jnp.exp(jax.random.uniform(jax.random.PRNGKey(3000 + seed), (P,), minval=np.log(1e-3), maxval=np.log(0.5)))
  return jnp.where(jnp.arange(P) % 4 == 0, 1 - a, a)


# ---------------------------------------------------------------------------------------------
# Closed forms against mpmath.

def mp_row(logp):
  p = [mp.exp(mp.mpf(float(x))) for x in logp]
  s = sum(p)
  return [x / s for x in p]


@pytest.mark.parametrize("seed", [0, 1])
@mp.workdps(DIGITS)
def test_target_accuracy_and_partition_against_mpmath(seed):
  logp, correct = problem(seed, accuracy=random_accuracies(seed))
  beta = random_betas(seed)
  a_star = np.asarray(rlvr.target_accuracy(logp, correct, beta))
  log_z = np.asarray(rlvr.log_partition(logp, correct, beta))
  lp, c, b = np.asarray(logp), np.asarray(correct), np.asarray(beta)
  for i in range(P):
    p = mp_row(lp[i])
    a = sum(x for x, ci in zip(p, c[i]) if ci)
    e = mp.exp(1 / mp.mpf(float(b[i])))
    z = 1 - a + a * e
    assert abs(float(a * e / z) - a_star[i]) <= 1e-14
    assert abs(float(mp.log(z)) - log_z[i]) <= 2e-15 * max(1.0, abs(float(mp.log(z))))
  # log Z agrees with the general tilt's; logit a* = logit a_ref + 1/beta
  np.testing.assert_allclose(log_z, tilted.log_partition(logp, correct.astype(float), beta), rtol=1e-13, atol=1e-14)
  a_ref = rlvr.accuracy(logp, correct)
  np.testing.assert_allclose(a_star, jax.nn.sigmoid(jax.scipy.special.logit(a_ref) + 1 / beta), rtol=1e-14)


@pytest.mark.parametrize("seed", [0, 1])
@mp.workdps(DIGITS)
def test_gap_identity_against_mpmath(seed):
  """J(pi*) - J(q) computed directly in 40 digits equals beta KL(q || pi*); J(pi*) = beta log Z."""
  logp, correct = problem(seed, accuracy=random_accuracies(seed))
  logq, beta = random_q(seed, logp), random_betas(seed)
  gap = np.asarray(rlvr.suboptimality_gap(logq, logp, correct, beta))
  lp, lq, cc, bb = np.asarray(logp), np.asarray(logq), np.asarray(correct), np.asarray(beta)
  for i in range(P):
    p, q, c, b = mp_row(lp[i]), mp_row(lq[i]), [int(x) for x in cc[i]], mp.mpf(float(bb[i]))
    z = sum(pj * mp.exp(cj / b) for pj, cj in zip(p, c))
    pi = [pj * mp.exp(cj / b) / z for pj, cj in zip(p, c)]

    def j(r):
      return sum(rj * cj for rj, cj in zip(r, c)) - b * sum(rj * mp.log(rj / pj) for rj, pj in zip(r, p) if rj > 0)

    exact = j(pi) - j(q)
    assert abs(float(exact) - gap[i]) <= 1e-13 * max(1.0, float(exact))
    assert abs(j(pi) - b * mp.log(z)) < mp.mpf(10) ** -30


def test_optimal_policy_is_the_mixture():
  """pi* = a* p(.|correct) + (1 - a*) p(.|wrong)."""
  logp, correct = problem(2, accuracy=random_accuracies(2))
  beta = random_betas(2)
  pi = jnp.exp(rlvr.optimal_policy(logp, correct, beta))
  a_ref, a_star = rlvr.accuracy(logp, correct)[:, None], rlvr.target_accuracy(logp, correct, beta)[:, None]
  p = jnp.exp(logp)
  mixture = jnp.where(correct, a_star * p / a_ref, (1 - a_star) * p / (1 - a_ref))
  np.testing.assert_allclose(pi, mixture, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Natural-gradient flow.

def ode_flow(logp, correct, beta, t_end, logq0):
  """Integrates dtheta/dt = c - beta log(q_theta / p) with a high-order adaptive solver."""
  support = np.isfinite(logp)
  c = correct.astype(float)[support]
  lp = logp[support]

  def rhs(_, theta):
    logq = theta - np.logaddexp.reduce(theta)
    return c - beta * (logq - lp)

  sol = solve_ivp(rhs, (0.0, t_end), logq0[support], method="DOP853", rtol=1e-13, atol=1e-13)
  theta = sol.y[:, -1]
  out = np.full(logp.shape, -np.inf)
  out[support] = theta - np.logaddexp.reduce(theta)
  return out


@pytest.mark.slow
@pytest.mark.parametrize("start", ["reference", "off-family"])
def test_flow_closed_form_against_ode(start):
  logp, correct = problem(3)
  logp = logp.at[:, -1].set(-jnp.inf)
  logp = logp - jax.scipy.special.logsumexp(logp, axis=-1, keepdims=True)   # a zero-mass response
  logq0 = logp if start == "reference" else random_q(3, logp)
  beta, ts = 0.7, jnp.array([0.1, 1.0, 4.0])
  closed = rlvr.natural_gradient_flow(logp, correct, beta, ts[:, None], None if start == "reference" else logq0)
  for k, t in enumerate(ts):
    for i in range(8):
      ref = ode_flow(np.asarray(logp[i]), np.asarray(correct[i]), beta, float(t), np.asarray(logq0[i]))
      np.testing.assert_allclose(np.exp(closed[k, i]), np.exp(ref), rtol=0, atol=1e-10)
      assert np.all(np.isneginf(closed[k, i]) == np.isneginf(ref))


def test_flow_ends_and_tilted_family():
  logp, correct = problem(4)
  beta = 0.4
  at0 = rlvr.natural_gradient_flow(logp, correct, beta, 0.0)
  np.testing.assert_allclose(at0, logp, atol=1e-15)
  late = rlvr.natural_gradient_flow(logp, correct, beta, 200.0)
  np.testing.assert_allclose(late, rlvr.optimal_policy(logp, correct, beta), atol=1e-13)
  t = 1.3
  lam = (1 - np.exp(-beta * t)) / beta
  np.testing.assert_allclose(rlvr.natural_gradient_flow(logp, correct, beta, t),
                             tilted.tilt(logp, correct.astype(float), 1 / lam), atol=1e-14)


BETA_T = jnp.concatenate([jnp.zeros(1), jnp.geomspace(1e-3, 40.0, 39)])[:, None]   # beta t, (40, 1)


def along_flow(seed, logq0=None, **kw):
  """Random prompts with one beta each, and the flow on a grid of beta t: shapes (40, P, Y)."""
  logp, correct = problem(seed, accuracy=random_accuracies(seed), **kw)
  beta = random_betas(seed)
  t = BETA_T / beta[None, :]
  return logp, correct, beta, t, rlvr.natural_gradient_flow(logp, correct, beta, t, logq0)


@pytest.mark.parametrize("seed", [0, 1])
def test_gap_is_bernoulli_kl_along_flow(seed):
  """J(pi*) - J(q_t) = beta kl(a_t || a*) to 1e-12 on 64 prompts x 40 times; KL(q_t||p) = kl(a_t||a_ref)."""
  logp, correct, beta, t, logq = along_flow(seed)
  gap = rlvr.suboptimality_gap(logq, logp, correct, beta)
  fl = rlvr.flow(logp, correct, beta, t)
  a_t, a_star = rlvr.accuracy(logq, correct), rlvr.target_accuracy(logp, correct, beta)
  np.testing.assert_allclose(fl.accuracy, a_t, rtol=0, atol=1e-13)
  assert float(jnp.max(jnp.abs(gap - fl.gap) / jnp.maximum(1.0, gap))) <= 1e-12
  # the same from the accuracies as probabilities, where 1 - a* keeps its digits
  pk = beta[None] * divergences.bernoulli_kl(a_t, jnp.broadcast_to(a_star, a_t.shape))
  fair = jnp.broadcast_to(a_star < 1 - 1e-4, a_t.shape)
  assert float(jnp.max(jnp.where(fair, jnp.abs(gap - pk) / jnp.maximum(1.0, gap), 0.0))) <= 1e-12
  np.testing.assert_allclose(fl.gap, beta[None] * fl.kl_forward, rtol=1e-15)
  np.testing.assert_allclose(fl.kl_reference, divergences.kl(logq, logp), rtol=1e-9, atol=1e-13)


def test_reverse_bernoulli_kl_is_not_the_gap():
  logp = jnp.log(jnp.array([[0.05, 0.05, 0.9]]))
  correct = jnp.array([[True, False, False]])
  beta, t = 0.25, jnp.array([[0.0], [1.0]])
  fl = rlvr.flow(logp, correct, beta, t)
  gap = rlvr.suboptimality_gap(rlvr.natural_gradient_flow(logp, correct, beta, t), logp, correct, beta)
  np.testing.assert_allclose(fl.gap, gap, rtol=1e-13)
  assert bool(jnp.all(jnp.abs(beta * fl.kl_reverse / gap - 1) > 0.2))


def test_gap_decays_like_exp_minus_two_beta_t():
  logp, correct = problem(5)
  beta = 0.8
  t = jnp.array([6.0, 8.0])[:, None] / beta
  gap = rlvr.flow(logp, correct, beta, t).gap
  np.testing.assert_allclose(jnp.log(gap[1] / gap[0]) / (t[1] - t[0]), -2 * beta, rtol=1e-2)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.slow
def test_off_family_gap_exceeds_bernoulli_kl(seed):
  """Off the tilted family only gap >= beta kl(a || a*) holds, and strictly, on 64 x 38 instances."""
  logp, correct = problem(seed, accuracy=random_accuracies(seed))
  logq0 = random_q(seed, logp)
  _, _, beta, _, logq = along_flow(seed, logq0)
  logq = logq[1:-1]                                        # at t = inf every start reaches pi*
  gap = rlvr.suboptimality_gap(logq, logp, correct, beta)
  a = rlvr.accuracy(logq, correct)
  bound = beta[None] * divergences.bernoulli_kl(a, jnp.broadcast_to(rlvr.target_accuracy(logp, correct, beta), a.shape))
  assert bool(jnp.all(gap - bound >= -1e-14 * jnp.maximum(1.0, gap)))
  # strictly, by a margin, while the start's within-class error has not yet decayed (beta t <= 1)
  early = BETA_T[1:-1, 0] <= 1.0
  assert bool(jnp.all((gap - bound)[early] > 1e-6 * gap[early]))


@pytest.mark.parametrize("h_c,h_w", [(0.9, 0.6), (0.2, 0.95), (1.0, 0.0)])
@pytest.mark.slow
def test_entropy_along_flow(h_c, h_w):
  """H(q_t) = h(a_t) + a_t H_C + (1 - a_t) H_W; dH/da changes sign at sigmoid(H_C - H_W)."""
  logp, correct, beta, t, logq = along_flow(7, h_c=h_c, h_w=h_w)
  fl = rlvr.flow(logp, correct, beta, t)
  np.testing.assert_allclose(fl.entropy, divergences.entropy(logq), rtol=0, atol=1e-12)
  split = rlvr.entropy_split(logp, correct)
  # dH/da along the flow, by forward differentiation in t, has the sign of threshold - a
  tangent = jax.jvp(lambda s: rlvr.flow(logp, correct, beta, s), (t,), (jnp.ones_like(t),))[1]
  slope = tangent.entropy / tangent.accuracy
  expected = jnp.log((1 - fl.accuracy) / fl.accuracy) + (split.entropy_correct - split.entropy_wrong)[None]
  moving = jnp.abs(tangent.accuracy) > 1e-10
  np.testing.assert_allclose(jnp.where(moving, slope, expected), expected, rtol=1e-6, atol=1e-7)
  clear = moving & (jnp.abs(fl.accuracy - split.threshold[None]) > 1e-6)
  assert bool(jnp.all((jnp.sign(slope) == jnp.sign(split.threshold[None] - fl.accuracy)) | ~clear))


def test_accuracy_dynamics():
  """da/dt = beta a (1 - a)(logit a* - logit a), against differentiation of the closed form."""
  logp, correct, beta, t, _ = along_flow(6)
  fl = rlvr.flow(logp, correct, beta, t)
  da = jax.jvp(lambda s: rlvr.flow(logp, correct, beta, s), (t,), (jnp.ones_like(t),))[1].accuracy
  np.testing.assert_allclose(fl.velocity, da, rtol=1e-10, atol=1e-15)
  logit = jax.scipy.special.logit
  ok = (fl.accuracy < 1 - 1e-6) & (fl.target < 1 - 1e-6)            # where logits are accurate
  np.testing.assert_allclose(jnp.where(ok, fl.velocity, 0.0),
                             jnp.where(ok, beta[None] * fl.accuracy * (1 - fl.accuracy) * (logit(fl.target) - logit(fl.accuracy)), 0.0),
                             rtol=1e-6, atol=1e-14)


def test_generator_controls_accuracy_and_entropies():
  acc = random_accuracies(0)
  levels = jnp.linspace(0.0, 1.0, P)
  logp, correct = rlvr.random_problem(jax.random.PRNGKey(0), P, Y, num_correct=3, accuracy=acc,
                                      entropy_correct=levels, entropy_wrong=0.5)
  split = rlvr.entropy_split(logp, correct)
  np.testing.assert_allclose(split.accuracy, acc, rtol=1e-12)
  np.testing.assert_allclose(split.entropy_correct, levels * np.log(3), atol=1e-9)
  np.testing.assert_allclose(split.entropy_wrong, 0.5 * np.log(Y - 3), rtol=1e-9)
  np.testing.assert_array_equal(correct.sum(-1), 3)


@pytest.mark.slow
def test_vmap_grad_and_float32():
  logp, correct = problem(8)
  betas = jnp.array([0.1, 0.5, 2.0])
  out = jax.vmap(lambda b: rlvr.target_accuracy(logp, correct, b))(betas)
  np.testing.assert_allclose(out, rlvr.target_accuracy(logp, correct, betas[:, None]), rtol=1e-14)
  # d a*/d beta = -a*(1 - a*)/beta^2
  g = jax.grad(lambda b: rlvr.target_accuracy(logp, correct, b)[0])(0.5)
  a = rlvr.target_accuracy(logp, correct, 0.5)[0]
  np.testing.assert_allclose(g, -a * (1 - a) / 0.25, rtol=1e-12)
  lp32 = logp.astype(jnp.float32)
  g32 = rlvr.flow(lp32, correct, jnp.float32(0.5), jnp.float32(2.0))
  g64 = rlvr.flow(logp, correct, 0.5, 2.0)
  assert g32.gap.dtype == jnp.float32
  np.testing.assert_allclose(g32.gap, g64.gap, rtol=2e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Bad input.

def test_bad_input_raises_input_error():
  logp, correct = problem(9)
  with pytest.raises(klrl.InputError, match="'correct' must be a boolean mask"):
    rlvr.optimal_policy(logp, correct.astype(jnp.float64), 0.5)
  with pytest.raises(klrl.InputError, match="'correct' must be a boolean mask"):
    rlvr.target_accuracy(logp, correct.astype(jnp.int32), 0.5)
  with pytest.raises(klrl.InputError, match="argument 'correct' marks no response"):
    rlvr.target_accuracy(logp, correct.at[2].set(False), 0.5)
  zero = logp.at[1].set(jnp.where(correct[1], -jnp.inf, logp[1]))      # correct responses of mass 0
  zero = zero - jax.scipy.special.logsumexp(zero, axis=-1, keepdims=True)
  with pytest.raises(klrl.InputError, match="argument 'correct' marks no response of positive"):
    rlvr.suboptimality_gap(zero, zero, correct, 0.5)
  for bad in (0.0, -1.0, jnp.full(P, 0.5).at[3].set(0.0)):
    with pytest.raises(klrl.InputError, match="argument 'beta' must be > 0"):
      rlvr.optimal_policy(logp, correct, bad)
  with pytest.raises(klrl.InputError, match="argument 't' must be >= 0"):
    rlvr.natural_gradient_flow(logp, correct, 0.5, -1.0)
  with pytest.raises(klrl.InputError, match="argument 'logp' is not a log-probability"):
    rlvr.flow(logp + 0.1, correct, 0.5, 1.0)
  with pytest.raises(klrl.InputError, match="argument 'logp' contains NaN"):
    rlvr.entropy_split(logp.at[0, 0].set(jnp.nan), correct)
  with pytest.raises(klrl.InputError, match="argument 'correct' has support size"):
    rlvr.optimal_policy(logp, correct[:, :-1], 0.5)
  with pytest.raises(klrl.InputError, match="argument 'beta' has shape"):
    rlvr.target_accuracy(logp, correct, jnp.ones(3))
  q_outside = jnp.log(jnp.full((P, Y), 1.0 / Y))
  support_p = logp.at[:, 0].set(-jnp.inf)
  support_p = support_p - jax.scipy.special.logsumexp(support_p, axis=-1, keepdims=True)
  with pytest.raises(klrl.InputError, match="argument 'logq0' puts mass where 'logp' has none"):
    rlvr.natural_gradient_flow(support_p, correct, 0.5, 1.0, q_outside)
  with pytest.raises(klrl.InputError, match="num_correct"):
    rlvr.random_problem(jax.random.PRNGKey(0), 2, 5, num_correct=5)
  with pytest.raises(klrl.InputError, match="accuracy"):
    rlvr.random_problem(jax.random.PRNGKey(0), 2, 5, num_correct=2, accuracy=1.0)
  # also under the caller's jit: the same message arrives inside JAX's runtime error
  with pytest.raises(Exception, match="argument 'beta' must be > 0"):
    jax.jit(lambda b: rlvr.optimal_policy(logp, correct, b))(-1.0)
