"""klrl.train loops: NPG against the lam recursion, every loop against its closed-form end point."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import klrl
from klrl import divergences, rlvr, tilted, train

P, Y, BETA = 4, 6, 0.5
LOGP, CORRECT = rlvr.random_problem(jax.random.PRNGKey(0), P, Y, num_correct=2, accuracy=jnp.array([0.05, 0.2, 0.4, 0.7]))
C = CORRECT.astype(jnp.float64)
# log-linear features: the verdict and two Gaussian features (so pi* is in the family, w* = (1/beta, 0, 0))
FEATURES = jnp.concatenate([C[..., None], jax.random.normal(jax.random.PRNGKey(1), (P, Y, 2))], axis=-1)
PI_STAR = rlvr.optimal_policy(LOGP, CORRECT, BETA)


def lam_recursion(eta, steps):
  """lam_{k+1} = (1 - eta beta) lam_k + eta from lam_0 = 0: lam_0 .. lam_steps."""
  lam = [0.0]
  for _ in range(steps):
    lam.append((1 - eta * BETA) * lam[-1] + eta)
  return np.array(lam)


@pytest.mark.parametrize("features", [None, FEATURES], ids=["tabular", "log-linear"])
def test_npg_reproduces_the_recursion(features):
  """Discrete NPG from p: q_k ∝ p exp(lam_k c), lam_{k+1} = (1 - eta beta) lam_k + eta, to 1e-12."""
  etas, steps = jnp.array([0.3, 1.0, 1.9]), 30
  run = jax.vmap(lambda eta: train.natural_policy_gradient(LOGP, CORRECT, BETA, optax.sgd(eta), steps, features=features))
  trace = run(etas)
  logit_ref = jax.scipy.special.logit(rlvr.accuracy(LOGP, CORRECT))
  for i, eta in enumerate(np.asarray(etas)):
    lam = lam_recursion(eta, steps)
    final = divergences.log_normalize(LOGP + lam[-1] * C)
    assert float(jnp.max(jnp.abs(trace.log_policy[i] - final))) <= 1e-12
    accuracy = jnp.mean(jax.nn.sigmoid(logit_ref[None, :] + jnp.asarray(lam[:-1])[:, None]), axis=-1)
    assert float(jnp.max(jnp.abs(trace.metrics.accuracy[i] - accuracy))) <= 1e-12
    # along the iterates (tilts of p) the gap is exactly beta kl(a_k || a*)
    assert float(jnp.max(jnp.abs(trace.metrics.gap[i] - BETA * trace.metrics.kl_forward[i]))) <= 1e-12
  if features is not None:
    np.testing.assert_allclose(trace.params[:, 0], [lam_recursion(e, steps)[-1] for e in np.asarray(etas)], rtol=1e-12)
    np.testing.assert_allclose(trace.params[:, 1:], 0.0, atol=1e-12)


def test_gradient_descent_leaves_the_tilted_family():
  """Plain gradient ascent from p: gap >= beta kl(a || a*), strictly on the way; converges to pi*."""
  trace = train.policy_gradient(LOGP, CORRECT, BETA, optax.sgd(1.0), 1500)
  assert float(jnp.mean(rlvr.suboptimality_gap(trace.log_policy, LOGP, CORRECT, BETA))) <= 1e-5
  m = trace.metrics
  assert bool(jnp.all(m.gap - BETA * m.kl_forward >= -1e-15))
  assert float(jnp.max(m.gap - BETA * m.kl_forward)) > 1e-3
  np.testing.assert_allclose(m.gap[0], jnp.mean(rlvr.suboptimality_gap(LOGP, LOGP, CORRECT, BETA)), rtol=1e-13)
  # metrics are the exact ones of the iterate: at the start, q = p
  np.testing.assert_allclose(m.kl_reference[0], 0.0, atol=1e-15)
  np.testing.assert_allclose(m.entropy[0], jnp.mean(divergences.entropy(LOGP)), rtol=1e-13)
  assert bool(jnp.all(jnp.diff(m.objective) > 0))


ADAM = optax.adam(0.1)


@pytest.mark.parametrize("start", ["reference", "off-family"])
@pytest.mark.slow
def test_adam_converges(start):
  """Adam from p stays in the tilted family: per coordinate it divides the softmax gradient
  q(y) (g(y) - E_q g) by its own scale, so every response of a class moves by the same amount
  (exactly, but for Adam's eps). From an off-family start gap > beta kl(a || a*)."""
  init = None if start == "reference" else jnp.where(LOGP > -jnp.inf, jax.random.normal(jax.random.PRNGKey(5), LOGP.shape), 0.0)
  trace = train.policy_gradient(LOGP, CORRECT, BETA, ADAM, 1500, init=init)
  assert float(jnp.mean(rlvr.suboptimality_gap(trace.log_policy, LOGP, CORRECT, BETA))) <= 1e-12
  excess = trace.metrics.gap - BETA * trace.metrics.kl_forward
  if start == "reference":
    assert float(jnp.max(jnp.abs(excess))) <= 1e-10
  else:
    assert bool(jnp.all(excess[:100] > 1e-3 * trace.metrics.gap[:100]))


def test_log_linear_policy_gradient_converges():
  trace = train.policy_gradient(LOGP, CORRECT, BETA, optax.adam(0.05), 1500, features=FEATURES)
  np.testing.assert_allclose(trace.params, [1 / BETA, 0.0, 0.0], atol=1e-6)
  assert float(jnp.mean(rlvr.suboptimality_gap(trace.log_policy, LOGP, CORRECT, BETA))) <= 1e-12


@pytest.mark.slow
def test_sampled_loop_converges_and_vmaps_over_seeds():
  """Leave-one-out REINFORCE with k1 in the reward is unbiased, and its variance vanishes at pi*
  (the regularised reward c - beta log(pi*/p) = beta log Z is constant), so it converges."""
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  run = jax.vmap(lambda k: train.sampled_policy_gradient(k, LOGP, CORRECT, BETA, optax.adam(0.05), 1500,
                                                         group=8, advantage="loo", kl="k1", kl_in="reward"))
  trace = run(keys)
  gaps = jax.vmap(lambda lq: jnp.mean(rlvr.suboptimality_gap(lq, LOGP, CORRECT, BETA)))(trace.log_policy)
  assert float(gaps.max()) <= 1e-10
  assert not bool(jnp.all(trace.log_policy[0] == trace.log_policy[1]))     # different seeds, different paths


@pytest.mark.parametrize("natural,optimizer,dual,steps,tol", [
    (True, optax.sgd(1.0), optax.sgd(0.2), 1000, 1e-12),
    (False, optax.sgd(1.0), optax.sgd(0.05), 4000, 1e-6),
])
@pytest.mark.slow
def test_dual_ascent_reaches_the_kl_constrained_optimum(natural, optimizer, dual, steps, tol):
  delta = 0.5 * tilted.max_kl(LOGP, C)
  sol = tilted.kl_constrained(LOGP, C, delta)
  trace = train.kl_constrained_training(LOGP, CORRECT, delta, optimizer, dual, steps, natural=natural)
  assert float(divergences.kl(trace.log_policy, sol.log_policy).max()) <= tol
  assert float(jnp.max(jnp.abs(divergences.kl(trace.log_policy, LOGP) - delta))) <= 10 * np.sqrt(tol)
  np.testing.assert_allclose(trace.multiplier, sol.beta, rtol=10 * np.sqrt(tol))
  np.testing.assert_allclose(trace.multipliers[-1], jnp.mean(sol.beta), rtol=10 * np.sqrt(tol))


def test_float32_loop():
  lp32 = LOGP.astype(jnp.float32)
  trace = train.natural_policy_gradient(lp32, CORRECT, jnp.float32(BETA), optax.sgd(0.5), 60)
  assert trace.log_policy.dtype == jnp.float32 and trace.metrics.gap.dtype == jnp.float32
  lam = lam_recursion(0.5, 60)[-1]
  np.testing.assert_allclose(trace.log_policy, divergences.log_normalize(LOGP + lam * C), atol=2e-5)


def test_bad_input():
  sgd = optax.sgd(0.1)
  with pytest.raises(klrl.InputError, match="'correct' must be a boolean mask"):
    train.policy_gradient(LOGP, C, BETA, sgd, 3)
  with pytest.raises(klrl.InputError, match="argument 'beta' must be > 0"):
    train.policy_gradient(LOGP, CORRECT, -0.5, sgd, 3)
  with pytest.raises(klrl.InputError, match="argument 'correct' marks no response"):
    train.natural_policy_gradient(LOGP, CORRECT.at[1].set(False), BETA, sgd, 3)
  with pytest.raises(klrl.InputError, match="argument 'steps' must be a positive int"):
    train.policy_gradient(LOGP, CORRECT, BETA, sgd, 0)
  with pytest.raises(klrl.InputError, match="argument 'advantage' must be one of"):
    train.sampled_policy_gradient(jax.random.PRNGKey(0), LOGP, CORRECT, BETA, sgd, 3, advantage="ppo")
  with pytest.raises(klrl.InputError, match="argument 'group' must be an int >= 2"):
    train.sampled_gradient(jax.random.PRNGKey(0), LOGP, LOGP, CORRECT, BETA, group=1, advantage="grpo")
  with pytest.raises(klrl.InputError, match="argument 'features' must have shape"):
    train.policy_gradient(LOGP, CORRECT, BETA, sgd, 3, features=FEATURES[:, :-1])
  with pytest.raises(klrl.InputError, match="argument 'init' must have the parameters' shape"):
    train.policy_gradient(LOGP, CORRECT, BETA, sgd, 3, init=jnp.zeros(5))
  with pytest.raises(klrl.InputError, match="argument 'delta' must be >= 0"):
    train.kl_constrained_training(LOGP, CORRECT, -0.1, sgd, sgd, 3)
