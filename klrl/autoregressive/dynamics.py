"""Where each configuration converges: exact expected-gradient dynamics with optax, and the audit
table of every preset (docs: theory/autoregressive).

:func:`fixed_point` runs ``theta <- optax update of E[config's gradient estimate]`` (exact, by
enumeration) in one ``lax.scan`` and reports where it lands: ``E[R]``, ``KL(q || p)``,
``KL(q || q*)`` and ``|grad J|`` (is the limit a stationary point of ``J``?). Unbiased
configurations land on ``q*``; biased ones land elsewhere, or nowhere (a configuration with no
KL gradient in expectation drifts to the reward's maximisers). :func:`audit` tabulates the bias
and the limit of many configurations on one problem (or a batch of problems).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax
from jaxtyping import Array, Float

from klrl._src import checks as _checks
from klrl.autoregressive import _estimators as _est
from klrl.autoregressive import configs as _configs
from klrl.autoregressive.configs import PRESETS, Config
from klrl.autoregressive.gradients import args, binary_check, feasible, gradient_bias, strategy
from klrl.autoregressive.problems import (Problem, chain_kl, force, policy, prefix_log_probs, public, soft_optimum,
                                          vmapped)

__all__ = ["Metrics", "FixedPoint", "AuditTable", "fixed_point", "audit", "DEFAULT_OPTIMIZER", "DEFAULT_STEPS"]

DEFAULT_STEPS = 3000
"""Updates of the exact dynamics in :func:`audit` and the default of ``klrl audit --steps``."""
DEFAULT_OPTIMIZER = optax.adam(optax.exponential_decay(0.3, DEFAULT_STEPS, 1e-3))
"""Adam from ``0.3`` decaying geometrically to ``3e-4`` over :data:`DEFAULT_STEPS`: the optimiser of
:func:`audit` (with ``natural=True`` it lands on ``q*`` to ``KL < 1e-14`` for the unbiased
configurations on the random problems of the tests, ``beta`` from 0.05 to 1)."""


class Metrics(NamedTuple):
  """Exact metrics of a policy (leading axis: the iterates, in a trajectory).

  Attributes:
    objective: ``J = E_q[R] - beta KL(q || p)``.
    reward: ``E_q[R]``.
    kl_reference: ``KL(q || p)``.
    kl_optimum: ``KL(q || q*)`` (``= (J(q*) - J(q))/beta``).
    grad_norm: ``|grad J|`` in the logits.
  """
  objective: Array
  reward: Array
  kl_reference: Array
  kl_optimum: Array
  grad_norm: Array


class FixedPoint(NamedTuple):
  """Where a run of :func:`fixed_point` (or :func:`~klrl.autoregressive.sampled_training`) ends.

  Attributes:
    params: ``(..., P, V)`` the final logits.
    log_policy: ``(..., P, V)`` the final policy ``q_inf``.
    metrics: :class:`Metrics` of the iterates ``0 .. steps - 1`` (leading axis after the batch: steps).
    reward: ``E_{q_inf}[R]``.
    kl_reference: ``KL(q_inf || p)``.
    kl_optimum: ``KL(q_inf || q*)``: 0 when the configuration is unbiased.
    grad_norm: ``|grad J(q_inf)|``: 0 when ``q_inf`` is a stationary point of ``J``.
    residual: the norm of the configuration's own gradient (exact expectation, or one sampled
      estimate) at ``q_inf``: near 0 when the run has reached its fixed point.
  """
  params: Array
  log_policy: Array
  metrics: Metrics
  reward: Array
  kl_reference: Array
  kl_optimum: Array
  grad_norm: Array
  residual: Array


class AuditTable(NamedTuple):
  """One row per configuration (last axis, in the order of ``configs``; see :func:`audit`).

  Attributes:
    error: ``|E[g] - grad(-J)| / |grad(-J)|`` at the evaluation point.
    cosine: cosine between ``E[g]`` and ``grad(-J)`` there.
    reward: ``E[R]`` where the dynamics end.
    kl_reference: ``KL(q_inf || p)``.
    kl_optimum: ``KL(q_inf || q*)``.
    grad_norm: ``|grad J(q_inf)|``.
    residual: norm of the configuration's expected gradient at ``q_inf``.
    optimum_reward: ``E_{q*}[R]`` (per problem, no configuration axis).
    optimum_kl: ``KL(q* || p)`` (per problem).
    reference_reward: ``E_p[R]`` (per problem).
  """
  error: Array
  cosine: Array
  reward: Array
  kl_reference: Array
  kl_optimum: Array
  grad_norm: Array
  residual: Array
  optimum_reward: Array
  optimum_kl: Array
  reference_reward: Array


def _norm(x):
  return jnp.sqrt(jnp.sum(x * x, axis=(-2, -1)))


def metrics_of(theta, logp, reward, end, beta, log_star, lay) -> Metrics:
  def objective(th):
    lq = policy(th, logp, end, lay)
    seq = prefix_log_probs(lq, lay)[-1]
    mean = jnp.sum(jnp.where(seq > -jnp.inf, jnp.exp(seq), 0.0) * reward.sum(-1))
    kl_ref = chain_kl(lq, logp, lay)
    return mean - beta * kl_ref, (mean, kl_ref, lq)

  (obj, (mean, kl_ref, lq)), grad = jax.value_and_grad(objective, has_aux=True)(theta)
  return Metrics(obj, mean, kl_ref, chain_kl(lq, log_star, lay), _norm(grad))


def natural_direction(g, theta, logp, end, lay):
  """``g`` preconditioned by the (block-diagonal) Fisher matrix of the tabular policy: row ``x``
  divided by ``q(x) q(v|x)``, so that no row stalls because its prefix is rarely visited (zero
  where ``q(x) q(v|x)`` underflows). Same fixed points as ``g``."""
  lq = policy(theta, logp, end, lay)
  prefix = jnp.concatenate(prefix_log_probs(lq, lay)[:-1])
  scale = prefix[:, None] + lq
  ok = scale > jnp.log(jnp.finfo(g.dtype).tiny) + 1
  return jnp.where(ok, g * jnp.exp(-jnp.where(ok, scale, 0.0)), 0.0)


def run(gradient, theta, logp, reward, end, beta, optimizer, steps, sampler, refresh, lay, natural=False):
  """One problem's ``lax.scan`` of ``steps`` optax updates with ``gradient(step, theta, sampler_logits)``;
  returns a :class:`FixedPoint`. The scan takes one more step, whose update is dropped, so that the
  final iterate's metrics and residual come from the same compiled step."""
  log_star = force(soft_optimum(logp, reward.sum(-1), beta, lay)[0], end, lay)

  def step(carry, k):
    th, state, mu, _ = carry
    mu = logp if sampler == "reference" else th if refresh == 1 else jnp.where(k % refresh == 0, th, mu)
    g = gradient(k, th, mu)
    updates, state = optimizer.update(natural_direction(g, th, logp, end, lay) if natural else g, state, th)
    return (optax.apply_updates(th, updates), state, mu, th), (metrics_of(th, logp, reward, end, beta, log_star, lay),
                                                                _norm(g))

  start = _checks.vary_alike((theta, optimizer.init(theta), theta, theta), (logp, reward))
  (_, _, _, theta), (trajectory, residual) = lax.scan(step, start, jnp.arange(steps + 1))
  last = jax.tree.map(lambda x: x[-1], trajectory)
  return FixedPoint(theta, policy(theta, logp, end, lay), jax.tree.map(lambda x: x[:-1], trajectory), last.reward,
                    last.kl_reference, last.kl_optimum, last.grad_norm, residual[-1])


def loop_args(where, prob, beta, config, optimizer, steps, sampler, refresh, init):
  """Checks the arguments of the training loops; returns those of :func:`run` (the start included)."""
  cfg = _configs.check(where, config)
  _checks.integer(where, "steps", steps, 1)
  _checks.integer(where, "refresh", refresh, 1)
  if sampler not in ("policy", "reference"):
    _checks._fail(where, "sampler", f"must be 'policy' or 'reference', got {sampler!r}")
  if not isinstance(optimizer, optax.GradientTransformation):
    _checks._fail(where, "optimizer", f"must be an optax GradientTransformation, got {type(optimizer).__name__}")
  batch, theta, logp, reward, end, beta, _, lay = args(where, init, prob, beta)
  return cfg, batch, theta, logp, reward, end, beta, lay


@public(static=("problem", "config", "optimizer", "steps", "binary", "sampler", "refresh", "natural"))
def fixed_point(problem: Problem, beta: Float[Array, "..."], config: Config, optimizer: optax.GradientTransformation,
                steps: int, *, binary: bool = False, sampler: str = "policy", refresh: int = 1, natural: bool = False,
                init: Float[Array, "... prefixes vocab"] | None = None) -> FixedPoint:
  """Runs the exact expected-gradient dynamics of ``config`` to its fixed point (docs: theory/autoregressive).

  Each step hands optax the exact expectation of ``config``'s gradient estimate
  (:func:`~klrl.autoregressive.expected_gradient`) at the current logits; one ``lax.scan``,
  ``vmap``-able (and ``vmap``-ed over a batch of problems).

  Args:
    problem: a :class:`~klrl.autoregressive.Problem`.
    beta: KL coefficient ``> 0``, a scalar or one per problem.
    config: a :class:`~klrl.autoregressive.Config` (static).
    optimizer: an optax ``GradientTransformation`` (static; e.g. :data:`DEFAULT_OPTIMIZER`).
    steps: number of updates (static).
    binary: 0/1 sequence rewards (checked), as in :func:`~klrl.autoregressive.expected_gradient`.
    sampler: ``"policy"``: samples from the policy of the start of the current round of
      ``refresh`` steps (``refresh = 1``: on-policy); ``"reference"``: samples from ``p``.
    refresh: steps per round of samples (PPO's epochs); the fixed point does not depend on it.
    init: starting logits (default ``theta = log p``, i.e. ``q = p``).

  Returns:
    A :class:`FixedPoint`.
  """
  where = "klrl.autoregressive.fixed_point"
  cfg, batch, theta, logp, reward, end, beta, lay = loop_args(where, problem, beta, config, optimizer, steps, sampler,
                                                              refresh, init)
  split = cfg.ratio_clip is not None and (sampler == "reference" or refresh > 1)
  count = strategy(where, cfg, lay, binary, split)
  if binary:
    reward = binary_check(where, reward)

  def one(th, lp, r, e, b):
    gradient = lambda k, t, m: _est.expected(cfg, t, policy(m, lp, e, lay), lp, r, e, b, count, split, lay)
    return run(gradient, th, lp, r, e, b, optimizer, steps, sampler, refresh, lay, natural)

  return vmapped(one, batch, (theta, 2), (logp, 2), (reward, 2), (end, 0), (beta, 0))


@_checks.named("klrl.autoregressive.audit")
def audit(where: str, problem: Problem, beta: Float[Array, "..."], configs: dict[str, Config] | None = None, *,
          theta: Float[Array, "... prefixes vocab"] | None = None,
          optimizer: optax.GradientTransformation | None = None,
          steps: int = DEFAULT_STEPS, natural: bool = True, binary: bool = False, sampler: str = "policy",
          refresh: int = 1) -> AuditTable:
  """The bias and the limit of each configuration on one problem or a batch (docs: theory/autoregressive).

  For each configuration: its exact expected gradient against ``grad(-J)`` at ``theta`` (relative
  error and cosine, :func:`~klrl.autoregressive.gradient_bias`), and where its exact dynamics end
  (:func:`fixed_point`). Each configuration is compiled once per problem shape and reused; pass
  several ``beta`` (or a batch of problems) in one call. A configuration whose exact expectation
  is refused (GRPO normalising real-valued returns with ``(V^T)^group > 2^24``) gets a row of NaN.

  Args:
    problem: a :class:`~klrl.autoregressive.Problem` (any batch shape).
    beta: KL coefficient ``> 0``, a scalar or one per problem (its axes are batch axes).
    configs: name -> :class:`~klrl.autoregressive.Config`; :data:`~klrl.autoregressive.PRESETS` by default.
    theta: the logits where the bias is measured; default: half-way from ``p`` to ``q*`` in the
      logits of each row, ``(log p + log q*)/2`` (both the reward and the KL terms of the gradient
      are alive there, and not collinear as at a tilted optimum such as ``q*`` at ``2 beta``).
    optimizer: the optax optimiser of the dynamics; :data:`DEFAULT_OPTIMIZER` by default.
    steps: updates of the dynamics (default :data:`DEFAULT_STEPS`).
    natural: precondition the dynamics by the tabular Fisher matrix (as :func:`fixed_point`; same
      fixed points, no stalling at rarely visited prefixes).
    binary: 0/1 rewards (checked): GRPO's expectation by the binomial count.
    sampler: the sampler of the dynamics, as in :func:`fixed_point`.
    refresh: how often the sampler is refreshed, as in :func:`fixed_point`.

  Returns:
    An :class:`AuditTable`; its per-configuration fields have a last axis in the order of ``configs``.
  """
  from klrl.autoregressive.problems import kl, optimum, sequence_log_probs
  configs = PRESETS if configs is None else configs
  if not isinstance(configs, dict) or not configs:
    raise _checks.InputError(f"{where}: argument 'configs' must be a non-empty dict of name -> Config")
  for name, cfg in configs.items():
    _configs.check(where, cfg, f"configs[{name!r}]")
  optimizer = DEFAULT_OPTIMIZER if optimizer is None else optimizer
  star = optimum(problem, beta)
  if theta is None:      # half-way from p to q* in the logits of each row
    logp = jnp.broadcast_to(jnp.asarray(problem.logp), star.log_policy.shape)
    theta = jnp.where(star.log_policy > -jnp.inf, (star.log_policy + logp) / 2, 0.0)
  size = jnp.shape(problem.reward)[-2]
  rows = []
  for cfg in configs.values():
    if not feasible(cfg, size, binary, cfg.ratio_clip is not None and (sampler == "reference" or refresh > 1)):
      rows.append(None)
      continue
    bias = gradient_bias(theta, problem, beta, cfg, binary=binary)
    end = fixed_point(problem, beta, cfg, optimizer, steps, binary=binary, sampler=sampler, refresh=refresh,
                      natural=natural)
    rows.append((bias.error, bias.cosine, end.reward, end.kl_reference, end.kl_optimum, end.grad_norm, end.residual))
  shape = jnp.shape(star.log_partition)
  nan = (jnp.full(shape, jnp.nan, star.log_partition.dtype),) * 7
  columns = [jnp.stack([jnp.broadcast_to(x, shape) for x in col], axis=-1) for col in zip(*(r or nan for r in rows))]
  reward = jnp.asarray(problem.reward).sum(-1)
  def mean(table):
    seq = jnp.exp(sequence_log_probs(table, problem))
    return jnp.sum(seq * jnp.broadcast_to(reward, seq.shape), axis=-1)

  return AuditTable(*columns, jnp.broadcast_to(mean(star.log_policy), shape), kl(star.log_policy, problem),
                    jnp.broadcast_to(mean(problem.logp), shape))
