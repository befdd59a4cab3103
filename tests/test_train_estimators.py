"""Sampled gradient estimators and the KL-estimator audit: exact enumeration, Monte Carlo, theory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import klrl
from klrl import divergences, rlvr, train

P, Y, G, BETA = 3, 4, 3, 0.7
LOGP, CORRECT = rlvr.random_problem(jax.random.PRNGKey(0), P, Y, num_correct=2, accuracy=jnp.array([0.1, 0.3, 0.6]))
C = CORRECT.astype(jnp.float64)
# a policy away from p and from pi*, where every estimator's bias shows
THETA = LOGP + jax.random.normal(jax.random.PRNGKey(1), (P, Y))


def grad_of(f):
  return jax.grad(lambda th: jnp.sum(f(jax.nn.log_softmax(th, axis=-1))))(THETA)


REWARD = grad_of(lambda lq: divergences.expectation(lq, C))      # grad E_q c, per prompt (tabular)
KL_QP = grad_of(lambda lq: divergences.kl(lq, LOGP))             # grad KL(q || p)
KL_PQ = grad_of(lambda lq: divergences.kl(LOGP, lq))             # grad KL(p || q)

# What each combination follows in expectation (gradient of the loss, i.e. of -J when unbiased):
EXPECTED = {
    ("k1", "reward"): -REWARD + BETA * KL_QP,                    # unbiased
    ("k2", "loss"): -REWARD + BETA * KL_QP,                      # unbiased
    ("k1", "loss"): -REWARD,                                     # the KL term vanishes in expectation
    ("k3", "loss"): -REWARD + BETA * KL_PQ,                      # the reverse KL's gradient
    ("k3", "reward"): -REWARD + BETA * (KL_QP - KL_PQ),
}


CASES = [("loo", kl, kl_in) for kl, kl_in in EXPECTED] + [("reinforce", "k1", "reward")]


@pytest.mark.parametrize("advantage,kl,kl_in", CASES)
def test_expected_gradient_by_enumeration_matches_theory(advantage, kl, kl_in):
  """Exact expectations over all Y^G groups: unbiased where theory says, biased by the exact amount."""
  exact = train.expected_sampled_gradient(THETA, LOGP, CORRECT, BETA, group=G, advantage=advantage, kl=kl, kl_in=kl_in)
  np.testing.assert_allclose(exact, EXPECTED[kl, kl_in], rtol=0, atol=1e-12)
  if (kl, kl_in) in (("k1", "reward"), ("k2", "loss")):
    np.testing.assert_allclose(exact, train.exact_gradient(THETA, LOGP, CORRECT, BETA), rtol=0, atol=1e-12)
  else:
    assert float(jnp.max(jnp.abs(exact - train.exact_gradient(THETA, LOGP, CORRECT, BETA)))) > 1e-3


def test_group_normalised_advantages_are_biased():
  exact = train.expected_sampled_gradient(THETA, LOGP, CORRECT, BETA, group=G, advantage="grpo", kl="k1", kl_in="reward")
  assert float(jnp.max(jnp.abs(exact - train.exact_gradient(THETA, LOGP, CORRECT, BETA)))) > 1e-2


@pytest.mark.parametrize("advantage,kl,kl_in", [("loo", "k1", "reward"), ("loo", "k3", "loss"), ("grpo", "k1", "reward")])
@pytest.mark.slow
def test_monte_carlo_mean_within_standard_error_of_exact(advantage, kl, kl_in):
  """The sampler draws from q: the mean of 4000 estimates is within 5 standard errors of the exact one."""
  n = 4000
  keys = jax.random.split(jax.random.PRNGKey(7), n)
  draws = jax.vmap(lambda k: train.sampled_gradient(k, THETA, LOGP, CORRECT, BETA, group=G, advantage=advantage,
                                                    kl=kl, kl_in=kl_in))(keys)
  exact = train.expected_sampled_gradient(THETA, LOGP, CORRECT, BETA, group=G, advantage=advantage, kl=kl, kl_in=kl_in)
  mean, se = draws.mean(0), draws.std(0) / np.sqrt(n)
  z = jnp.abs(mean - exact) / jnp.maximum(se, 1e-300)
  assert float(jnp.max(jnp.where(se > 0, z, 0.0))) < 5.0
  assert bool(jnp.all(jnp.where(se == 0, jnp.abs(mean - exact) < 1e-14, True)))


def test_sampler_frequencies():
  """Inverse-CDF draws have the law q, zero-mass responses are never drawn."""
  logq = LOGP.at[:, 0].set(-jnp.inf)
  logq = logq - jax.scipy.special.logsumexp(logq, axis=-1, keepdims=True)
  n = 20000
  y = train._draw(jax.random.PRNGKey(3), logq, n)
  freq = jax.vmap(lambda row: jnp.bincount(row, length=Y))(y) / n
  q = jnp.exp(logq)
  assert bool(jnp.all(freq[:, 0] == 0))
  assert float(jnp.max(jnp.abs(freq - q) / jnp.sqrt(q * (1 - q) / n + 1e-300))) < 5.0


# ---------------------------------------------------------------------------------------------
# The audit table.

V = 4
LOGQ_T = jax.nn.log_softmax(jax.random.normal(jax.random.PRNGKey(11), (2, V)), axis=-1)
LOGP_T = jax.nn.log_softmax(jax.random.normal(jax.random.PRNGKey(12), (2, V)), axis=-1)


def test_audit_single_token_against_closed_forms():
  audit = train.kl_estimator_audit(LOGQ_T, LOGP_T)
  q, d = np.exp(np.asarray(LOGQ_T)), np.asarray(LOGQ_T - LOGP_T)
  k = np.stack([d, 0.5 * d * d, np.expm1(-d) + d], axis=-2)        # (2, 3, V)
  mean = np.sum(q[:, None] * k, -1)
  var = np.sum(q[:, None] * (k - mean[..., None]) ** 2, -1)
  kl = np.sum(q * d, -1)
  np.testing.assert_allclose(audit.kl, kl, rtol=1e-13)
  np.testing.assert_allclose(audit.mean, mean, rtol=1e-12)
  np.testing.assert_allclose(audit.mean[:, 0], kl, rtol=1e-12)          # k1 unbiased
  np.testing.assert_allclose(audit.mean[:, 2], kl, rtol=1e-12)          # k3 unbiased
  assert bool(jnp.all(audit.mean[:, 1] > kl))                            # k2 biased here
  np.testing.assert_allclose(audit.var, var, rtol=1e-11)
  kl_pq = jax.grad(lambda th: jnp.sum(divergences.kl(LOGP_T, jax.nn.log_softmax(th, axis=-1))))(LOGQ_T)
  true = audit.true_gradient
  np.testing.assert_allclose(audit.reward_gradient[:, 0], true, atol=1e-14)           # k1 in reward: unbiased
  np.testing.assert_allclose(audit.loss_gradient[:, 1], true, atol=1e-14)             # k2 in loss: unbiased
  np.testing.assert_allclose(audit.loss_gradient[:, 0], 0.0, atol=1e-14)              # k1 in loss: zero
  np.testing.assert_allclose(audit.loss_gradient[:, 2], kl_pq, atol=1e-14)            # k3 in loss: reverse KL
  np.testing.assert_allclose(audit.reward_gradient[:, 2], true - kl_pq, atol=1e-14)
  np.testing.assert_allclose(audit.reward_bias[:, 0], 0.0, atol=1e-12)
  np.testing.assert_allclose(audit.loss_bias[:, 0], 1.0, rtol=1e-12)
  np.testing.assert_allclose(audit.loss_bias[:, 2], np.linalg.norm(kl_pq - true, axis=-1) / np.linalg.norm(true, axis=-1),
                             rtol=1e-12)


def test_audit_memoryless_sequences_by_enumeration():
  """For n i.i.d. tokens, with per-token estimators summed, every mean, variance and expected
  gradient is n times the one-token value (cross terms vanish since E grad log q = 0)."""
  one = train.kl_estimator_audit(LOGQ_T, LOGP_T)
  three = train.kl_estimator_audit(LOGQ_T, LOGP_T, length=3)
  for field in ("kl", "mean", "var", "true_gradient", "reward_gradient", "loss_gradient"):
    np.testing.assert_allclose(getattr(three, field), 3 * getattr(one, field), rtol=1e-11, atol=1e-14)
  np.testing.assert_allclose(three.reward_bias, one.reward_bias, rtol=1e-9, atol=1e-12)


def test_audit_bad_input():
  support = LOGP_T.at[:, 0].set(-jnp.inf)
  support = support - jax.scipy.special.logsumexp(support, axis=-1, keepdims=True)
  with pytest.raises(klrl.InputError, match="argument 'logq' puts mass where 'logp' has none"):
    train.kl_estimator_audit(LOGQ_T, support)
  with pytest.raises(klrl.InputError, match="argument 'length'"):
    train.kl_estimator_audit(LOGQ_T, LOGP_T, length=20)
  with pytest.raises(klrl.InputError, match="argument 'logq' is not a log-probability"):
    train.kl_estimator_audit(LOGQ_T + 1.0, LOGP_T)
