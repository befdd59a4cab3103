"""Exact gradients: of ``J``, of ``KL(q || p)`` split into its local and future parts, and the exact
expectation of every :class:`~klrl.autoregressive.Config`'s sampled gradient (docs: theory/autoregressive).

Gradients are taken in the tabular logits ``theta`` (one row per prefix) and, as in
:mod:`klrl.train`, are gradients of the loss ``-J``: what optax is handed. The expectation of a
configuration is exact: a sum over all ``V^T`` sequences weighted by their sampler probability,
in which a group advantage is replaced by its conditional mean given the sequence's own return
(closed forms for RLOO and Dr. GRPO; for GRPO a sum over the number of correct draws,
``Binom(G - 1, a)``, on 0/1 rewards, else an enumeration of the other ``G - 1`` draws).

References: Liu et al., arXiv 2510.01555 (KL estimators and their placement); Tang & Munos,
arXiv 2506.09477 (KL gradients of autoregressive policies); Vojnovic & Yun, arXiv 2502.18548
and Mroueh, arXiv 2503.06639 (GRPO's normalisation and fixed point).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from klrl._src import checks as _checks
from klrl.autoregressive import _estimators as _est
from klrl.autoregressive import configs as _configs
from klrl.autoregressive.configs import Config
from klrl.autoregressive.problems import (Problem, batch_of, chain_kl, policy, prefix_log_probs, public, table_arg,
                                          tokens, unpack, vmapped)

__all__ = ["Bias", "KLGradient", "BinaryAdvantage", "objective", "exact_gradient", "kl_gradient", "expected_gradient",
           "gradient_bias", "binary_advantage"]


class Bias(NamedTuple):
  """A configuration's expected gradient against the exact one (see :func:`gradient_bias`).

  Attributes:
    gradient: ``(..., P, V)`` the exact expectation of the configuration's gradient estimate.
    exact: ``(..., P, V)`` the gradient of ``-J``.
    error: ``|gradient - exact| / |exact|`` (Frobenius norms over the table).
    cosine: the cosine between the two.
  """
  gradient: Array
  exact: Array
  error: Array
  cosine: Array


class KLGradient(NamedTuple):
  """``grad KL(q || p) = local + future`` in the logits (see :func:`kl_gradient`).

  Attributes:
    total: ``grad KL(q || p) = E_q[sum_t grad log q_t sum_{s>=t} log rho_s]``.
    local: ``E_q[sum_t grad log q_t log rho_t]``: what the per-token ``k2`` loss follows.
    future: ``E_q[sum_t grad log q_t sum_{s>t} log rho_s]``: the future-KL terms it misses.
  """
  total: Array
  local: Array
  future: Array


class BinaryAdvantage(NamedTuple):
  """Expected advantage of a draw given its own 0/1 reward (see :func:`binary_advantage`).

  Attributes:
    correct: ``E[A | R = 1]``.
    wrong: ``E[A | R = 0]``.
    gain: ``correct - wrong``: the expected gradient is ``gain * grad a`` (fixed length, no KL).
  """
  correct: Array
  wrong: Array
  gain: Array


def _norm(x):
  return jnp.sqrt(jnp.sum(x * x, axis=(-2, -1)))


def objective_core(theta, logp, reward, end, beta, lay):
  """``J = E_q[R] - beta KL(q || p)`` of one problem."""
  lq = policy(theta, logp, end, lay)
  seq = prefix_log_probs(lq, lay)[-1]
  mean = jnp.sum(jnp.where(seq > -jnp.inf, jnp.exp(seq), 0.0) * reward.sum(-1))
  return mean - beta * chain_kl(lq, logp, lay)


def loss_gradient_core(theta, logp, reward, end, beta, lay):
  return jax.grad(lambda th: -objective_core(th, logp, reward, end, beta, lay))(theta)


def args(where, theta, prob, beta=None, behaviour=None):
  """Checks the common arguments; returns ``(batch, theta, logp, reward, end, beta, mu, layout)``
  in one floating dtype (``beta``/``mu`` ``None`` when not given; ``theta = None`` means ``log p``)."""
  logp, reward, end, lay = unpack(where, prob)
  if theta is None:      # the start of the loops: q = p
    theta = jnp.where(logp > -jnp.inf, logp, 0.0)
  theta = table_arg(where, "theta", theta, lay)
  shapes = {"problem": logp.shape[:-2], "theta": theta.shape[:-2], "end_token": end.shape}
  dtypes = [logp, theta]
  if beta is not None:
    beta = _checks.positive(where, "beta", _checks.floating(where, "beta", beta))
    shapes["beta"] = beta.shape
    dtypes.append(beta)
  if behaviour is not None:
    behaviour = table_arg(where, "behaviour", behaviour, lay)
    shapes["behaviour"] = behaviour.shape[:-2]
    dtypes.append(behaviour)
  batch = batch_of(where, **shapes)
  dtype = jnp.result_type(*dtypes)
  cast = lambda x: None if x is None else x.astype(dtype)
  return batch, cast(theta), cast(logp), cast(reward), end, cast(beta), cast(behaviour), lay


def binary_check(where, reward):
  """Ties ``reward`` to "every sequence reward is 0 or 1"."""
  r = reward.sum(-1)
  return _checks.holds(where, "problem.reward", reward, (r == 0) | (r == 1),
                       "must have sequence rewards in {0, 1} for binary=True")


def counted(cfg: Config, binary: bool) -> bool:
  """Whether a group advantage's expectation is a sum over the number of correct draws (0/1 values)."""
  return binary and (cfg.return_kind == "to_go" or not _configs.penalised_return(cfg))


def feasible(cfg: Config, size: int, binary: bool, split: bool = False) -> bool:
  """Whether the exact expectation of ``cfg`` on ``size`` sequences is computed (not refused): an
  enumeration of groups is needed for GRPO on real values, and for every group advantage on real
  values where the PPO clip can bind (``split``: its sign then matters)."""
  enumerated = (cfg.advantage in _configs.GROUP_ADVANTAGES and not counted(cfg, binary)
                and (cfg.advantage == "grpo" or split))
  return not (enumerated and size ** cfg.group > _est.ENUMERATION_LIMIT)


def strategy(where, cfg: Config, lay, binary: bool, split: bool = False) -> bool:
  """Whether group advantages use the binomial count; refuses enumerations that are too large."""
  if not feasible(cfg, lay.size, binary, split):
    hint = (" (0/1 rewards: pass binary=True)" if not binary else
            " (binary=True does not apply: the normalised return contains the KL penalty)")
    _checks._fail(where, "config", f"has group={cfg.group}: the exact expectation on real-valued returns "
                  f"enumerates N^group = {lay.size}^{cfg.group} groups, more than {_est.ENUMERATION_LIMIT}; use a "
                  f"smaller group or problem{hint}")
  return counted(cfg, binary)


@public(static=("problem",))
def objective(theta: Float[Array, "... prefixes vocab"], problem: Problem,
              beta: Float[Array, "..."]) -> Float[Array, "..."]:
  """``J(theta) = E_q[R] - beta KL(q || p)`` of the tabular policy ``theta`` (docs: theory/autoregressive).

  Args:
    theta: ``(..., P, V)`` logits.
    problem: a :class:`~klrl.autoregressive.Problem`.
    beta: KL coefficient ``> 0``, a scalar or one per problem.

  Returns:
    ``J`` of the broadcast batch shape.
  """
  where = "klrl.autoregressive.objective"
  batch, theta, logp, reward, end, beta, _, lay = args(where, theta, problem, beta)
  return vmapped(lambda *a: objective_core(*a, lay), batch, (theta, 2), (logp, 2), (reward, 2), (end, 0), (beta, 0))


@public(static=("problem",))
def exact_gradient(theta: Float[Array, "... prefixes vocab"], problem: Problem,
                   beta: Float[Array, "..."]) -> Float[Array, "... prefixes vocab"]:
  """The gradient of ``-J`` in the logits: what unbiased configurations estimate.

  ``grad J = E_q[sum_t grad log q_t (R - beta sum_{s>=t} log rho_s)]``, computed by
  differentiating ``J`` (chain-rule KL, no sampling). Arguments as in :func:`objective`.
  """
  where = "klrl.autoregressive.exact_gradient"
  batch, theta, logp, reward, end, beta, _, lay = args(where, theta, problem, beta)
  return vmapped(lambda *a: loss_gradient_core(*a, lay), batch, (theta, 2), (logp, 2), (reward, 2), (end, 0),
                 (beta, 0))


@public(static=("problem",))
def kl_gradient(theta: Float[Array, "... prefixes vocab"], problem: Problem) -> KLGradient:
  """``grad KL(q || p)`` and its split into the local and the future-KL terms (docs: theory/autoregressive).

  ``grad KL = E_q[sum_t grad log q_t sum_{s>=t} log rho_s]``: the ``s = t`` terms (``local``) are
  the expected gradient of the per-token ``k2`` loss; the ``s > t`` terms (``future``) are what it
  misses (Tang & Munos, arXiv 2506.09477). ``total`` is computed by differentiating the chain-rule
  KL, ``local`` and ``future`` by enumeration, so ``total = local + future`` is a check.

  Args:
    theta: ``(..., P, V)`` logits.
    problem: a :class:`~klrl.autoregressive.Problem`.

  Returns:
    A :class:`KLGradient`.
  """
  where = "klrl.autoregressive.kl_gradient"
  batch, theta, logp, _, end, _, _, lay = args(where, theta, problem)

  def one(th, lp, e):
    total = jax.grad(lambda t: chain_kl(policy(t, lp, e, lay), lp, lay))(th)
    lq0 = lax.stop_gradient(policy(th, lp, e, lay))
    s, weight = _est.enumerate_tokens(lp, lq0, jnp.zeros(lay.tokens.shape, th.dtype), e, lay)
    d = s.lmu - s.lp                                           # log rho_t (the sampler is q)

    def part(coef):
      return jax.grad(lambda t: jnp.sum(weight[:, None] * coef * jnp.where(
          s.mask, tokens(policy(t, lp, e, lay), lay), 0.0)))(th)

    return KLGradient(total, part(d), part(_est.to_go(d) - d))

  return vmapped(one, batch, (theta, 2), (logp, 2), (end, 0))


@public(static=("problem", "config", "binary"))
def expected_gradient(theta: Float[Array, "... prefixes vocab"], problem: Problem, beta: Float[Array, "..."],
                      config: Config, *, behaviour: Float[Array, "... prefixes vocab"] | None = None,
                      binary: bool = False) -> Float[Array, "... prefixes vocab"]:
  """The exact expectation of ``config``'s sampled gradient of the loss (docs: theory/autoregressive).

  Sequences are drawn from the sampler ``mu`` (the policy itself, or ``behaviour``); the
  expectation is a sum over all ``V^T`` sequences, with group advantages averaged over the other
  draws exactly (see the module docstring). Unbiased configurations return :func:`exact_gradient`.

  Args:
    theta: ``(..., P, V)`` logits of the policy ``q``.
    problem: a :class:`~klrl.autoregressive.Problem`.
    beta: KL coefficient ``> 0``, a scalar or one per problem.
    config: a :class:`~klrl.autoregressive.Config` (static).
    behaviour: ``(..., P, V)`` logits of the sampler ``mu`` (off-policy: e.g. an earlier policy,
      or ``problem.logp`` for the reference); ``None``: ``mu = q``.
    binary: the sequence rewards are 0/1 (checked): GRPO's expectation is a sum over the number
      of correct draws, for any group size, whenever the normalised values are the rewards.
      Otherwise GRPO enumerates ``V^(T group)`` groups, refused above ``2^24``; so does every group
      advantage off-policy with a PPO clip (the clip gates each sign of the advantage).

  Returns:
    ``(..., P, V)`` the expected gradient.
  """
  where = "klrl.autoregressive.expected_gradient"
  return _expected_and_exact(where, theta, problem, beta, config, behaviour, binary)[0]


def _expected_and_exact(where, theta, problem, beta, config, behaviour, binary, exact=False):
  """``(E[estimate], grad(-J) or None)``, checked under the public name ``where``."""
  cfg = _configs.check(where, config)
  batch, theta, logp, reward, end, beta, mu, lay = args(where, theta, problem, beta, behaviour)
  split = cfg.ratio_clip is not None and mu is not None
  count = strategy(where, cfg, lay, binary, split)
  if binary:
    reward = binary_check(where, reward)

  def one(th, lp, r, e, b, m):
    expectation = _est.expected(cfg, th, policy(th if m is None else m, lp, e, lay), lp, r, e, b, count, split, lay)
    return expectation, (loss_gradient_core(th, lp, r, e, b, lay) if exact else None)

  return vmapped(one, batch, (theta, 2), (logp, 2), (reward, 2), (end, 0), (beta, 0), (mu, 2))


def bias_of(gradient, exact) -> Bias:
  dot = jnp.sum(gradient * exact, axis=(-2, -1))
  return Bias(gradient, exact, _norm(gradient - exact) / _norm(exact), dot / (_norm(gradient) * _norm(exact)))


@public(static=("problem", "config", "binary"))
def gradient_bias(theta: Float[Array, "... prefixes vocab"], problem: Problem, beta: Float[Array, "..."],
                  config: Config, *, behaviour: Float[Array, "... prefixes vocab"] | None = None,
                  binary: bool = False) -> Bias:
  """``config``'s exact expected gradient against the gradient of ``-J``: relative error and cosine.

  Arguments as in :func:`expected_gradient`. Returns a :class:`Bias`; at a stationary point of
  ``J`` (``q = q*``) the relative error is not defined (the exact gradient is 0).
  """
  return bias_of(*_expected_and_exact("klrl.autoregressive.gradient_bias", theta, problem, beta, config, behaviour,
                                      binary, exact=True))


@public(static=("group", "advantage", "std"))
def binary_advantage(a: Float[Array, "..."], group: int, *, advantage: str = "grpo", std: str = "population",
                     eps: Float[Array, "..."] = 0.0) -> BinaryAdvantage:
  """Exact expected group advantage of a draw given its own 0/1 reward, at success probability ``a``.

  The other ``group - 1`` draws are correct with probability ``a`` each, so the expectation is a
  sum over their number ``k ~ Binom(group - 1, a)``; groups that are all correct or all wrong carry
  no signal (advantage 0). With a fixed length and no KL term a configuration's expected gradient
  is ``gain * grad a``: RLOO ``gain = 1`` (unbiased), Dr. GRPO ``1 - 1/group``, and GRPO with the
  population std and ``eps = 0``

      gain = sum_k Binom(k; G-1, a) [sqrt((G-k-1)/(k+1)) + sqrt(k/(G-k))]

  (the first term over ``k < G - 1``, the second over ``k > 0``), which increases to
  ``1/sqrt(a (1 - a)) = d/da 2 arcsin(sqrt(a))`` as ``group`` grows (the sample std gives the same
  limit): GRPO ascends ``2 arcsin(sqrt(a))`` instead of ``a`` (Mroueh, arXiv 2503.06639). The
  convention is the group mean of the per-draw losses, as trainers use; summing over the group
  multiplies everything by ``group``.

  Args:
    a: success probability in ``[0, 1]``.
    group: ``G >= 2`` (static; any size, the cost is ``O(G)``).
    advantage: ``"grpo"``, ``"rloo"`` or ``"dr_grpo"``.
    std: ``"population"`` or ``"sample"`` (GRPO).
    eps: added to the std (GRPO).

  Returns:
    A :class:`BinaryAdvantage` of the shape of ``a`` (and ``eps``).
  """
  where = "klrl.autoregressive.binary_advantage"
  g = _checks.integer(where, "group", group, 2)
  if advantage not in _configs.GROUP_ADVANTAGES:
    _checks._fail(where, "advantage", f"must be one of {_configs.GROUP_ADVANTAGES}, got {advantage!r}")
  if std not in _configs.CHOICES["std"]:
    _checks._fail(where, "std", f"must be one of {_configs.CHOICES['std']}, got {std!r}")
  a = _checks.in_unit_interval(where, "a", _checks.floating(where, "a", a))
  eps = _checks.nonnegative(where, "eps", _checks.floating(where, "eps", eps))
  a, eps = jnp.broadcast_arrays(a, eps.astype(a.dtype))
  eps = eps[..., None] if advantage == "grpo" else eps      # against the count axis
  correct, wrong = _est.binary_terms(a, g, advantage, int(std == "sample"), eps)
  correct, wrong = jnp.broadcast_to(correct, a.shape), jnp.broadcast_to(wrong, a.shape)
  return BinaryAdvantage(correct, wrong, correct - wrong)
