"""Training loops for KL-regularised RL with verifiable rewards, on optax
(docs: theory/training).

Every loop is one ``jax.lax.scan`` over optax updates, compiled once, with the metrics of each
iterate recorded inside the scan (no host round-trips), and ``vmap``-able over PRNG keys and
hyper-parameters (``beta``, ``delta``, and learning rates captured by the optimiser)::

    jax.vmap(lambda lr: train.policy_gradient(logp, correct, beta, optax.adam(lr), 500))(lrs)

Policies (``features=None`` or not):

- tabular softmax: the parameters are logits ``theta`` of the shape of ``logp``,
  ``q = softmax(theta)`` restricted to the support of ``p`` (start: ``theta = log p``);
- log-linear: ``q ∝ p exp(features @ w)`` with one weight vector ``w`` shared by all prompts
  (start: ``w = 0``, i.e. ``q = p``); the tilted family is the case ``features = c[..., None]``.

The objective is ``J(q) = E_q[c] - beta KL(q || p)`` averaged over prompts. Tabular logits of a
prompt see the gradient of that prompt's own ``J`` (so step sizes do not depend on the number
of prompts); shared weights see the gradient of the average. Optax minimises, so the loops
hand it the gradient of ``-J``.

Loops: :func:`policy_gradient` (exact gradient, any optimiser); :func:`natural_policy_gradient`
(Fisher-preconditioned: closed form for tabular, a ``d x d`` solve for log-linear; with
``optax.sgd(eta)`` from ``q = p`` it reproduces ``lam_{k+1} = (1 - eta beta) lam_k + eta``);
:func:`sampled_policy_gradient` (REINFORCE, leave-one-out and group-normalised advantages, with
the KL estimators ``k1, k2, k3`` in the reward or in the loss); :func:`kl_constrained_training`
(dual ascent on the Lagrange multiplier, converging to ``klrl.tilted.kl_constrained``).

What the sampled estimators estimate, exactly: :func:`expected_sampled_gradient` enumerates
every group of draws on a small problem, and :func:`kl_estimator_audit` gives the exact mean
and variance of ``k1, k2, k3`` and the exact bias of the gradient each induces against the true
gradient of ``KL(q || p)``, for a response set or a memoryless sequence.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jaxtyping import Array, Bool, Float

from klrl import divergences
from klrl._src import checks as _checks, logspace as _logspace
from klrl.divergences import expectation, log_normalize

__all__ = [
    "Metrics", "Trace", "DualTrace", "Audit", "log_policy", "policy_gradient",
    "natural_policy_gradient", "sampled_policy_gradient", "sampled_gradient",
    "expected_sampled_gradient", "exact_gradient", "kl_constrained_training", "kl_estimator_audit",
]

ADVANTAGES = ("reinforce", "loo", "grpo")
KL_ESTIMATORS = ("k1", "k2", "k3", "none")
PLACEMENTS = ("reward", "loss")


class Metrics(NamedTuple):
  """Exact metrics of an iterate, averaged over prompts (leading axis: the iterates).

  Attributes:
    objective: ``E_x J(q) = E_x (E_q[c] - beta KL(q || p))``.
    accuracy: ``E_x a``, ``a = q(correct)``.
    gap: ``E_x (J(pi*) - J(q)) = beta E_x KL(q || pi*)``.
    kl_forward: ``E_x kl(a || a*)``; along natural-gradient flow from ``p``, ``beta`` times it
      is the gap, elsewhere a lower bound on ``gap / beta``.
    kl_reverse: ``E_x kl(a* || a)``.
    entropy: ``E_x H(q)``.
    kl_reference: ``E_x KL(q || p)``.
  """
  objective: Array
  accuracy: Array
  gap: Array
  kl_forward: Array
  kl_reverse: Array
  entropy: Array
  kl_reference: Array


class Trace(NamedTuple):
  """Result of a training loop.

  Attributes:
    params: the final parameters (logits, or the weight vector of a log-linear policy).
    log_policy: the final policy ``log q``.
    metrics: :class:`Metrics` of iterates ``0 .. steps - 1`` (``metrics[0]`` is the start).
  """
  params: Any
  log_policy: Array
  metrics: Metrics


class DualTrace(NamedTuple):
  """Result of :func:`kl_constrained_training`.

  Attributes:
    params: final policy parameters.
    log_policy: the final policy ``log q``.
    multiplier: the final Lagrange multiplier per prompt (the ``beta`` it converges to).
    metrics: :class:`Metrics` of the iterates, with ``beta`` the current multiplier.
    multipliers: the multiplier of each iterate, averaged over prompts.
  """
  params: Any
  log_policy: Array
  multiplier: Array
  metrics: Metrics
  multipliers: Array


class Audit(NamedTuple):
  """Exact audit of the per-sample KL estimators ``k1, k2, k3`` (last axis of size 3).

  With ``K(y) = sum_t k(y_t)`` summed over the tokens of a sequence drawn from ``q`` (one token
  for a response set) and ``theta`` the logits of ``q``:

  Attributes:
    kl: ``KL(q^n || p^n)``, what the estimators estimate.
    mean: ``E_q K``; ``k1`` and ``k3`` are unbiased, ``k2`` is not.
    var: ``Var_q K``.
    true_gradient: ``grad_theta KL(q^n || p^n)`` (last axis: the vocabulary).
    reward_gradient: ``E_q[K grad log q^n]``, the gradient when ``K`` is subtracted from the
      reward (score function, ``K`` held fixed); ``k1`` gives the true gradient.
    loss_gradient: ``E_q[grad K]``, the gradient when ``K`` is added to the loss (pathwise,
      samples held fixed); ``k2`` gives the true gradient, ``k1`` gives 0, ``k3`` gives
      ``grad KL(p^n || q^n)``.
    reward_bias: ``|reward_gradient - true_gradient| / |true_gradient|``.
    loss_bias: ``|loss_gradient - true_gradient| / |true_gradient|``.
  """
  kl: Array
  mean: Array
  var: Array
  true_gradient: Array
  reward_gradient: Array
  loss_gradient: Array
  reward_bias: Array
  loss_bias: Array


# ---------------------------------------------------------------------------------------------
# Policies and objective (unchecked cores; inputs are checked at the public boundary).

def _log_policy(params, logp, features):
  if features is None:
    return jax.nn.log_softmax(jnp.where(logp > -jnp.inf, params, -jnp.inf), axis=-1)
  return jax.nn.log_softmax(logp + features @ params, axis=-1)


def _init(logp, features):
  if features is None:
    return jnp.where(logp > -jnp.inf, logp, 0.0)
  return jnp.zeros(features.shape[-1:], logp.dtype)


def _reduce(features, x):
  """Sum over prompts for tabular logits (each prompt its own), mean for shared weights."""
  return jnp.sum(x) if features is None else jnp.mean(x)


# Inside the loops the unchecked kernels of klrl.divergences are used: the inputs were checked
# once at the boundary, iterates are normalised by construction, and a diverging run returns
# NaN metrics instead of stopping in the middle of the scan.
_kl = _logspace.kl
_bernoulli_kl_logits = _logspace.bernoulli_kl_logits


def _entropy(logq):
  return -expectation(logq, logq)


def _objective(logq, logp, c, beta):
  return expectation(logq, c) - beta * _kl(logq, logp)


def _loss(params, logp, c, beta, features):
  logq = _log_policy(params, logp, features)
  return -_reduce(features, _objective(logq, logp, c, beta)), logq


class _Target(NamedTuple):
  log_pi: Array        # log pi* at the current beta
  logit_star: Array    # logit a*


def _target(logp, c, beta):
  """``pi*`` and ``logit a*`` at ``beta`` (the tilt of ``klrl.tilted.tilt``, unchecked for the loops)."""
  la, lw = _logspace.log_masses(logp, c > 0)
  return _Target(log_normalize(logp + c / beta[..., None]), la - lw + 1 / beta)


def _metrics(logq, logp, c, beta, target: _Target) -> Metrics:
  """Exact metrics of the iterate ``q``: expectations under ``q`` only (no ``logsumexp`` pass)."""
  a, w = expectation(logq, c), expectation(logq, 1 - c)       # accuracy and 1 - accuracy
  logit = jnp.log(a) - jnp.log(w)
  kl_ref = _kl(logq, logp)
  return Metrics(
      objective=jnp.mean(a - beta * kl_ref),
      accuracy=jnp.mean(a),
      gap=jnp.mean(beta * _kl(logq, target.log_pi)),
      kl_forward=jnp.mean(_bernoulli_kl_logits(logit, target.logit_star)),
      kl_reverse=jnp.mean(_bernoulli_kl_logits(target.logit_star, logit)),
      entropy=jnp.mean(_entropy(logq)),
      kl_reference=jnp.mean(kl_ref),
  )


# ---------------------------------------------------------------------------------------------
# Validation shared by the loops.

# The loops and gradients reduce over prompts, so a parameter's extra axes cannot become batch
# axes as elsewhere in klrl: they are refused, pointing to jax.vmap.
_ONE_RUN = ("; klrl.train reduces over prompts (one set of parameters per call), so extra axes cannot become "
            "batch axes: for several runs, jax.vmap over them")


def _problem(where, logp, correct, beta, features=None, beta_name="beta", beta_check=_checks.positive):
  logp, correct, _, _, prm = _checks.prompts(where, logp, correct, extend=False, why=_ONE_RUN, **{beta_name: beta})
  b = beta_check(where, beta_name, prm[beta_name])
  if features is not None:
    features = _checks.floating(where, "features", features, 2)
    if features.shape[-2] != logp.shape[-1]:
      _checks._fail(where, "features", f"must have shape (..., {logp.shape[-1]}, d) (one feature vector per "
                    f"response), got {features.shape}")
    try:
      shape = np.broadcast_shapes(features.shape[:-1], logp.shape)
    except ValueError:
      shape = None
    if shape != logp.shape:
      _checks._fail(where, "features", f"has shape {features.shape}, whose leading axes do not broadcast to {logp.shape[:-1]}")
    features = _checks.finite(where, "features", jnp.broadcast_to(features, logp.shape + features.shape[-1:]))
    features = features.astype(logp.dtype)
  return logp, correct.astype(logp.dtype), b, features


def _start(where, init, logp, features):
  default = _init(logp, features)
  if init is None:
    return default
  init = _checks.finite(where, "init", _checks.floating(where, "init", init))
  if init.shape != default.shape:
    _checks._fail(where, "init", f"must have the parameters' shape {default.shape}, got {init.shape}")
  return init.astype(logp.dtype)


def _static(where, steps, **choices):
  if not isinstance(steps, int) or steps < 1:
    _checks._fail(where, "steps", f"must be a positive int, got {steps!r}")
  allowed = {"advantage": ADVANTAGES, "kl": KL_ESTIMATORS, "kl_in": PLACEMENTS}
  for name, value in choices.items():
    if value not in allowed[name]:
      _checks._fail(where, name, f"must be one of {allowed[name]}, got {value!r}")


def _scan(step, carry, steps):
  return lax.scan(lambda s, _: step(s), carry, None, length=steps)


# ---------------------------------------------------------------------------------------------
# Exact policy gradient.

@_checks.public(static=("optimizer", "steps"))
def policy_gradient(logp: Float[Array, "... y"], correct: Bool[Array, "... y"], beta: Float[Array, "..."],
                    optimizer: optax.GradientTransformation, steps: int, *,
                    features: Float[Array, "... y d"] | None = None, init: Any = None) -> Trace:
  """Maximises ``J`` with its exact gradient and any optax optimiser (docs: theory/training).

  Args:
    logp: reference log-probabilities, one row per prompt.
    correct: the verifier's verdicts (bool), same shape.
    beta: KL coefficient ``> 0``, scalar or per prompt.
    optimizer: an optax ``GradientTransformation`` (it is handed the gradient of ``-J``).
    steps: number of updates (static).
    features: ``(..., y, d)`` features for a log-linear policy; ``None`` for tabular logits.
    init: starting parameters (default: the reference, ``q = p``).

  Returns:
    A :class:`Trace`.
  """
  where = "klrl.train.policy_gradient"
  _static(where, steps)
  logp, c, beta, features = _problem(where, logp, correct, beta, features)
  target = _target(logp, c, beta)
  grad = jax.value_and_grad(_loss, has_aux=True)

  def step(carry):
    params, state = carry
    (_, logq), g = grad(params, logp, c, beta, features)
    updates, state = optimizer.update(g, state, params)
    return (optax.apply_updates(params, updates), state), _metrics(logq, logp, c, beta, target)

  params = _start(where, init, logp, features)
  (params, _), metrics = _scan(step, (params, optimizer.init(params)), steps)
  return Trace(params, _log_policy(params, logp, features), metrics)


@_checks.public
def log_policy(params: Any, logp: Float[Array, "... y"], features: Float[Array, "... y d"] | None = None) -> Float[Array, "... y"]:
  """The policy of parameters ``params``: ``softmax(logits)`` on the support of ``p`` (tabular),
  or ``q ∝ p exp(features @ w)`` (log-linear)."""
  where = "klrl.train.log_policy"
  logp = _checks.log_probs(where, "logp", _checks.floating(where, "logp", logp, 1))
  return _log_policy(params, logp, features)


@_checks.public
def exact_gradient(params: Any, logp: Float[Array, "... y"], correct: Bool[Array, "... y"], beta: Float[Array, "..."],
                   features: Float[Array, "... y d"] | None = None) -> Any:
  """The gradient of ``-J`` that the loops use: what unbiased sampled estimators estimate."""
  where = "klrl.train.exact_gradient"
  logp, c, beta, features = _problem(where, logp, correct, beta, features)
  return jax.grad(lambda th: _loss(th, logp, c, beta, features)[0])(params)


# ---------------------------------------------------------------------------------------------
# Natural policy gradient.

def _natural_direction(params, logp, c, beta, features, damping):
  """Fisher-preconditioned ascent direction of ``J`` and the current ``log q``."""
  if features is None:
    logq = _log_policy(params, logp, features)
    g = jnp.where(logp > -jnp.inf, c - beta[..., None] * (logq - logp), 0.0)
    return g - expectation(logq, g)[..., None], logq            # F^+ grad J, per prompt
  (_, logq), grad = jax.value_and_grad(_loss, has_aux=True)(params, logp, c, beta, features)
  q = jnp.exp(logq)
  mean = jnp.einsum("...y,...yd->...d", q, features)
  second = jnp.einsum("...y,...yd,...ye->...de", q, features, features)
  fisher = jnp.mean((second - mean[..., :, None] * mean[..., None, :]).reshape(-1, *second.shape[-2:]), axis=0)
  fisher = fisher + damping * jnp.eye(fisher.shape[-1], dtype=fisher.dtype)
  return jax.scipy.linalg.solve(fisher, -grad, assume_a="pos"), logq


@_checks.public(static=("optimizer", "steps"))
def natural_policy_gradient(logp: Float[Array, "... y"], correct: Bool[Array, "... y"], beta: Float[Array, "..."],
                            optimizer: optax.GradientTransformation, steps: int, *,
                            features: Float[Array, "... y d"] | None = None, init: Any = None,
                            damping: Float[Array, ""] = 0.0) -> Trace:
  """Natural policy gradient: the Fisher-preconditioned gradient of ``J`` fed to optax.

  Tabular: ``F^+ grad J = c - beta log(q/p)`` centred under ``q``, per prompt (closed form).
  Log-linear: ``F = E_x Cov_q(features)`` and the direction solves ``(F + damping I) x = grad J``.
  With ``optax.sgd(eta)`` from ``q = p`` the iterates are the tilts ``q_k ∝ p exp(lam_k c)``
  with ``lam_{k+1} = (1 - eta beta) lam_k + eta`` (docs: theory/training), in both parametrisations
  when ``c`` is among the features.

  Args:
    logp: reference log-probabilities.
    correct: the verifier's verdicts (bool).
    beta: KL coefficient ``> 0``.
    optimizer: optax optimiser applied to the natural gradient (``optax.sgd(eta)`` is NPG).
    steps: number of updates (static).
    features: ``(..., y, d)`` features of a log-linear policy, or ``None`` (tabular).
    init: starting parameters (default ``q = p``).
    damping: ``>= 0`` added to the Fisher matrix of a log-linear policy.

  Returns:
    A :class:`Trace`.
  """
  where = "klrl.train.natural_policy_gradient"
  _static(where, steps)
  logp, c, beta, features = _problem(where, logp, correct, beta, features)
  damping = _checks.nonnegative(where, "damping", _checks.floating(where, "damping", damping)).astype(logp.dtype)
  target = _target(logp, c, beta)

  def step(carry):
    params, state = carry
    direction, logq = _natural_direction(params, logp, c, beta, features, damping)
    updates, state = optimizer.update(-direction, state, params)
    return (optax.apply_updates(params, updates), state), _metrics(logq, logp, c, beta, target)

  params = _start(where, init, logp, features)
  (params, _), metrics = _scan(step, (params, optimizer.init(params)), steps)
  return Trace(params, _log_policy(params, logp, features), metrics)


# ---------------------------------------------------------------------------------------------
# Sampled estimators.

def _kl_value(kl, lq, lp):
  """Per-sample KL estimators at samples from ``q`` (log-probabilities ``lq``, ``lp``)."""
  return _logspace.kl_estimate(kl, lq - lp)


def _advantage(advantage, reward, eps):
  g = reward.shape[-1]
  centred = reward - jnp.mean(reward, axis=-1, keepdims=True)
  if advantage == "reinforce":
    return reward
  if advantage == "loo":
    return centred * (g / (g - 1))    # r_i - mean_{j != i} r_j
  return centred / (jnp.std(reward, axis=-1, keepdims=True) + eps)


def _surrogate(params, y, weight, logp, c, beta, features, advantage, kl, kl_in, eps):
  """A loss whose gradient is the estimator at the draws ``y`` (``(..., group)`` indices)."""
  logq = _log_policy(params, logp, features)
  take = lambda x: jnp.take_along_axis(x, y, axis=-1)
  alive = (weight > 0)[..., None]                  # groups of probability 0 contribute 0
  lq, lp, r = jnp.where(alive, take(logq), 0.0), jnp.where(alive, take(logp), 0.0), take(c)
  k = _kl_value(kl, lq, lp)
  if kl_in == "reward":
    r = r - beta[..., None] * lax.stop_gradient(k)
  adv = lax.stop_gradient(_advantage(advantage, r, eps))
  per_prompt = -jnp.mean(adv * lq, axis=-1)
  if kl_in == "loss":
    per_prompt = per_prompt + beta * jnp.mean(k, axis=-1)
  return _reduce(features, weight * per_prompt)


def _draw(key, logq, group):
  """``group`` draws per row from ``q`` by inverse CDF: O(y) per row, not O(group * y)."""
  cdf = jnp.cumsum(jnp.exp(logq), axis=-1)
  flat = cdf.reshape(-1, cdf.shape[-1])
  u = jax.random.uniform(key, (flat.shape[0], group), cdf.dtype) * flat[:, -1:]
  idx = jax.vmap(lambda row, v: jnp.searchsorted(row, v, side="right"))(flat, u)
  return jnp.minimum(idx, cdf.shape[-1] - 1).reshape(logq.shape[:-1] + (group,))


def _sampled_grad(key, params, logp, c, beta, features, group, advantage, kl, kl_in, eps):
  logq = _log_policy(params, logp, features)
  y = _draw(key, lax.stop_gradient(logq), group)
  ones = jnp.ones(logp.shape[:-1], logp.dtype)
  return jax.grad(_surrogate)(params, y, ones, logp, c, beta, features, advantage, kl, kl_in, eps), logq


def _estimator_checks(where, group, advantage, kl, kl_in, steps=1):
  _static(where, steps, advantage=advantage, kl=kl, kl_in=kl_in)
  if not isinstance(group, int) or group < (1 if advantage == "reinforce" else 2):
    _checks._fail(where, "group", f"must be an int >= {1 if advantage == 'reinforce' else 2} for "
                  f"advantage={advantage!r}, got {group!r}")


_SAMPLED_STATIC = ("group", "advantage", "kl", "kl_in")


@_checks.public(static=_SAMPLED_STATIC)
def sampled_gradient(key: Array, params: Any, logp: Float[Array, "... y"], correct: Bool[Array, "... y"],
                     beta: Float[Array, "..."], *, group: int = 8, advantage: str = "loo", kl: str = "k1",
                     kl_in: str = "reward", features: Float[Array, "... y d"] | None = None,
                     eps: float = 1e-4) -> Any:
  """One sampled estimate of the gradient of ``-J`` from ``group`` draws per prompt.

  For each prompt, ``group`` responses are drawn from ``q``; their reward is ``c(y)``, minus
  ``beta k(y)`` if ``kl_in == "reward"`` (``k`` held fixed). The advantage is the reward itself
  (``"reinforce"``), the reward minus the mean of the other draws (``"loo"``, leave-one-out), or
  the reward centred and divided by the group's standard deviation plus ``eps`` (``"grpo"``).
  The estimate is the gradient of ``-mean_i A_i log q(y_i)``, plus ``beta mean_i k(y_i)``
  (differentiated with the draws fixed) if ``kl_in == "loss"`` (docs: theory/training).

  Args:
    key: PRNG key.
    params: policy parameters (see :func:`log_policy`).
    logp: reference log-probabilities.
    correct: the verifier's verdicts (bool).
    beta: KL coefficient ``> 0``.
    group: draws per prompt (static).
    advantage: ``"reinforce"``, ``"loo"`` or ``"grpo"``.
    kl: ``"k1"`` (``log q/p``), ``"k2"`` (``(log q/p)^2 / 2``), ``"k3"`` (``p/q - 1 - log p/q``)
      or ``"none"``.
    kl_in: ``"reward"`` or ``"loss"``.
    features: features of a log-linear policy, or ``None``.
    eps: added to the group standard deviation (``"grpo"``).

  Returns:
    A gradient estimate shaped like ``params``.
  """
  where = "klrl.train.sampled_gradient"
  _estimator_checks(where, group, advantage, kl, kl_in)
  logp, c, beta, features = _problem(where, logp, correct, beta, features)
  return _sampled_grad(key, params, logp, c, beta, features, group, advantage, kl, kl_in, eps)[0]


@_checks.public(static=_SAMPLED_STATIC)
def expected_sampled_gradient(params: Any, logp: Float[Array, "... y"], correct: Bool[Array, "... y"],
                              beta: Float[Array, "..."], *, group: int = 8, advantage: str = "loo",
                              kl: str = "k1", kl_in: str = "reward",
                              features: Float[Array, "... y d"] | None = None, eps: float = 1e-4) -> Any:
  """The exact expectation of :func:`sampled_gradient`, by enumerating all ``y^group`` groups.

  For small problems only (``y^group <= 2^20``). Unbiased combinations (any advantage but
  ``"grpo"``, with ``k1`` in the reward or ``k2`` in the loss) return :func:`exact_gradient`;
  the others return the gradient they really follow.
  """
  where = "klrl.train.expected_sampled_gradient"
  _estimator_checks(where, group, advantage, kl, kl_in)
  logp, c, beta, features = _problem(where, logp, correct, beta, features)
  size = logp.shape[-1]
  if size ** group > 2 ** 20:
    _checks._fail(where, "group", f"gives {size}^{group} groups to enumerate; at most 2^20 are allowed")
  groups = jnp.asarray(np.indices((size,) * group).reshape(group, -1).T)     # (size^group, group)
  logq = lax.stop_gradient(_log_policy(params, logp, features))

  def term(y):
    y = jnp.broadcast_to(y, logp.shape[:-1] + (group,))
    weight = jnp.exp(jnp.sum(jnp.take_along_axis(logq, y, axis=-1), axis=-1))   # prob. of the group
    return jax.grad(_surrogate)(params, y, weight, logp, c, beta, features, advantage, kl, kl_in, eps)

  terms = lax.map(term, groups, batch_size=min(256, groups.shape[0]))
  return jax.tree.map(lambda x: jnp.sum(x, axis=0), terms)


@_checks.public(static=("optimizer", "steps") + _SAMPLED_STATIC)
def sampled_policy_gradient(key: Array, logp: Float[Array, "... y"], correct: Bool[Array, "... y"],
                            beta: Float[Array, "..."], optimizer: optax.GradientTransformation, steps: int, *,
                            group: int = 8, advantage: str = "loo", kl: str = "k1", kl_in: str = "reward",
                            features: Float[Array, "... y d"] | None = None, init: Any = None,
                            eps: float = 1e-4) -> Trace:
  """Trains with a sampled gradient estimator (see :func:`sampled_gradient`) and optax.

  Each step draws ``group`` responses per prompt from the current policy with a fresh key
  (``jax.random.fold_in(key, step)``). The recorded metrics are exact (computed from ``q``).
  Arguments as in :func:`sampled_gradient` and :func:`policy_gradient`.
  """
  where = "klrl.train.sampled_policy_gradient"
  _estimator_checks(where, group, advantage, kl, kl_in, steps)
  logp, c, beta, features = _problem(where, logp, correct, beta, features)
  target = _target(logp, c, beta)

  def step(carry):
    params, state, k = carry
    g, logq = _sampled_grad(jax.random.fold_in(key, k), params, logp, c, beta, features, group, advantage,
                            kl, kl_in, eps)
    updates, state = optimizer.update(g, state, params)
    return (optax.apply_updates(params, updates), state, k + 1), _metrics(logq, logp, c, beta, target)

  params = _start(where, init, logp, features)
  (params, _, _), metrics = _scan(step, (params, optimizer.init(params), jnp.asarray(0)), steps)
  return Trace(params, _log_policy(params, logp, features), metrics)


# ---------------------------------------------------------------------------------------------
# KL-constrained training by dual ascent.

@_checks.public(static=("optimizer", "dual_optimizer", "steps", "natural"))
def kl_constrained_training(logp: Float[Array, "... y"], correct: Bool[Array, "... y"], delta: Float[Array, "..."],
                            optimizer: optax.GradientTransformation, dual_optimizer: optax.GradientTransformation,
                            steps: int, *, features: Float[Array, "... y d"] | None = None, init: Any = None,
                            multiplier: Float[Array, "..."] = 1.0, natural: bool = False) -> DualTrace:
  """Maximises ``E_q[c]`` subject to ``KL(q || p) <= delta`` per prompt by primal-dual updates.

  The Lagrangian ``L = E_q[c] - nu (KL(q || p) - delta)`` is ascended in the policy parameters
  (its gradient, or its natural gradient if ``natural``) by ``optimizer`` and descended in the
  multiplier ``nu = exp(u) > 0`` by ``dual_optimizer``, which is handed ``delta - KL`` as the
  gradient in ``u`` (mirror descent on ``nu``: with ``optax.sgd(eta)``,
  ``nu <- nu exp(eta (KL - delta))``). Both are updated simultaneously from the same iterate.
  At a fixed point ``q`` is the tilt ``pi_nu`` with ``KL = delta``: ``klrl.tilted.kl_constrained``'s
  ``phi_delta`` with ``nu = beta_delta`` (docs: theory/tilted, theory/training), reached when the
  policy class contains it (tabular policies, or a log-linear one with ``c`` among its features for
  one prompt) and the dual step is small against the primal one (too large a dual step makes the pair
  circle the saddle point instead of converging: e.g. primal ``sgd(1.0)`` natural steps with
  dual ``sgd(0.2)`` converge to 1e-12, dual ``sgd(0.5)`` may not).

  Args:
    logp: reference log-probabilities.
    correct: the verifier's verdicts (bool).
    delta: KL budget per prompt, ``0 < delta < -log a_ref`` for an active constraint.
    optimizer: optax optimiser for the policy parameters.
    dual_optimizer: optax optimiser for ``u = log nu``.
    steps: number of updates (static).
    features: features of a log-linear policy, or ``None``.
    init: starting policy parameters (default ``q = p``).
    multiplier: starting multiplier ``nu > 0``.
    natural: precondition the primal gradient with the Fisher matrix.

  Returns:
    A :class:`DualTrace`.
  """
  where = "klrl.train.kl_constrained_training"
  _static(where, steps)
  logp, c, delta, features = _problem(where, logp, correct, delta, features, "delta", _checks.nonnegative)
  nu0 = _checks.positive(where, "multiplier", _checks.batch_param(where, "multiplier", multiplier, logp.shape[:-1],
                                                                  why=_ONE_RUN))
  u0 = jnp.log(jnp.broadcast_to(nu0, logp.shape[:-1]).astype(logp.dtype))
  primal = jax.value_and_grad(_loss, has_aux=True)

  def step(carry):
    params, u, state, dual_state = carry
    nu = jnp.exp(u)
    if natural:
      direction, logq = _natural_direction(params, logp, c, nu, features, 0.0)
      g = -direction
    else:
      (_, logq), g = primal(params, logp, c, nu, features)
    kl = _kl(logq, logp)
    updates, state = optimizer.update(g, state, params)
    dual_updates, dual_state = dual_optimizer.update(delta - kl, dual_state, u)
    record = (_metrics(logq, logp, c, nu, _target(logp, c, nu)), jnp.mean(nu))
    return (optax.apply_updates(params, updates), optax.apply_updates(u, dual_updates), state, dual_state), record

  params = _start(where, init, logp, features)
  carry = (params, u0, optimizer.init(params), dual_optimizer.init(u0))
  (params, u, _, _), (metrics, nus) = _scan(step, carry, steps)
  return DualTrace(params, _log_policy(params, logp, features), jnp.exp(u), metrics, nus)


# ---------------------------------------------------------------------------------------------
# Exact audit of the KL estimators.

@_checks.public(static=("length",))
def kl_estimator_audit(logq: Float[Array, "... v"], logp: Float[Array, "... v"], length: int = 1) -> Audit:
  """Exact mean, variance and gradient bias of the KL estimators ``k1, k2, k3`` (docs: theory/training).

  Enumerates every sequence of ``length`` tokens drawn i.i.d. from ``q`` (``length = 1``: a
  response set), with the per-token estimators summed over the sequence as in practice, and
  differentiates in the logits of ``q``. The true gradient of ``KL(q^n || p^n) = n KL(q || p)``
  comes from differentiating the KL itself.

  Args:
    logq: log-probabilities of the sampling policy ``q`` (``q << p`` required).
    logp: reference log-probabilities.
    length: tokens per sequence (static; ``v^length <= 2^16``).

  Returns:
    An :class:`Audit`; its estimator axis (size 3) is the last, before the vocabulary axis of
    the gradients.
  """
  where = "klrl.train.kl_estimator_audit"
  logq = _checks.floating(where, "logq", logq, 1)
  logp = _checks.floating(where, "logp", logp, 1)
  _checks.same_support(where, "logq", logq, "logp", logp)
  if not isinstance(length, int) or length < 1 or logq.shape[-1] ** length > 2 ** 16:
    _checks._fail(where, "length", f"must be an int >= 1 with v^length <= 2^16, got {length!r} (v = {logq.shape[-1]})")
  shape = jnp.broadcast_shapes(logq.shape, logp.shape)
  dtype = jnp.result_type(logq, logp)
  logq = jnp.broadcast_to(_checks.log_probs(where, "logq", logq), shape).astype(dtype)
  logp = jnp.broadcast_to(_checks.log_probs(where, "logp", logp), shape).astype(dtype)
  logq = _checks.holds(where, "logq", logq, (logp > -jnp.inf) | (logq == -jnp.inf),
                       "puts mass where 'logp' has none (KL(q || p) is infinite)")
  seqs = jnp.asarray(np.indices((shape[-1],) * length).reshape(length, -1).T)    # (v^n, n)

  def tokens(theta):
    lq = jax.nn.log_softmax(theta, axis=-1)[..., seqs]                 # (..., v^n, n)
    weight = lax.stop_gradient(jnp.exp(jnp.sum(lq, axis=-1)))
    alive = weight > 0
    lq = jnp.where(alive[..., None], lq, 0.0)                           # keep dead branches finite
    lp = jnp.where(alive[..., None], logp[..., seqs], 0.0)
    return lq, lp, weight, alive

  def estimates(theta, kl):
    lq, lp, weight, alive = tokens(theta)
    return jnp.sum(_kl_value(kl, lq, lp), axis=-1), jnp.sum(lq, axis=-1), weight, alive

  def reward_surrogate(theta, kl):
    est, seq_lq, weight, alive = estimates(theta, kl)
    return jnp.sum(jnp.where(alive, lax.stop_gradient(weight * est) * seq_lq, 0.0))

  def loss_surrogate(theta, kl):
    est, _, weight, alive = estimates(theta, kl)
    return jnp.sum(jnp.where(alive, weight * est, 0.0))

  def moments(kl):
    est, _, weight, alive = estimates(logq, kl)
    mean = jnp.sum(jnp.where(alive, weight * est, 0.0), axis=-1)
    dev = est - mean[..., None]
    return mean, jnp.sum(jnp.where(alive, weight * dev * dev, 0.0), axis=-1)

  true = jax.grad(lambda th: length * jnp.sum(divergences.kl(jax.nn.log_softmax(th, axis=-1), logp)))(logq)
  names = ("k1", "k2", "k3")
  mean, var = (jnp.stack(x, axis=-1) for x in zip(*(moments(k) for k in names)))
  reward = jnp.stack([jax.grad(reward_surrogate)(logq, k) for k in names], axis=-2)
  loss = jnp.stack([jax.grad(loss_surrogate)(logq, k) for k in names], axis=-2)
  norm = lambda x: jnp.sqrt(jnp.sum(x * x, axis=-1))
  scale = norm(true)[..., None]
  return Audit(kl=length * divergences.kl(logq, logp), mean=mean, var=var, true_gradient=true,
               reward_gradient=reward, loss_gradient=loss,
               reward_bias=norm(reward - true[..., None, :]) / scale,
               loss_bias=norm(loss - true[..., None, :]) / scale)
