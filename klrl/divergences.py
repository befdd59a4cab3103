"""Divergences and entropies between distributions given as log-probabilities.

This is the one home of klrl's shared log-space numerics: every module computes a KL, an
entropy, a chi-square or a Renyi quantity through these functions. Distributions are arrays
whose last axis is the support; leading axes broadcast. Zero-mass entries are ``-inf`` and
follow the conventions ``0 log 0 = 0`` and ``p log(p/0) = +inf`` for ``p > 0``.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.special import logsumexp, xlogy
from jaxtyping import Array, Float

from klrl._src import checks as _checks, logspace as _logspace, rows as _rows
from klrl._src.logspace import expectation, log_normalize

__all__ = [
    "kl", "entropy", "cross_entropy", "bernoulli_kl", "bernoulli_kl_logits", "binary_entropy", "chi2", "tv",
    "renyi_divergence", "renyi_cross_entropy", "expectation", "log_normalize",
]


def _checked_rows(where, fn, names, arrays, *params):
  """``fn(*arrays, *params)``, a value per row, with each array checked to be log-probabilities
  over the last axis in the same pass: rows are taken in blocks while they are in cache
  (:mod:`klrl._src.rows`), and the checks hold the per-row results only (a check on a whole
  ``B x V`` input makes XLA copy it).

  ``params`` are per-row arrays (shape ``batch``); the arrays broadcast against each other.
  """
  shape = jnp.broadcast_shapes(*(a.shape for a in arrays))
  dtype = jnp.result_type(*arrays)
  arrays = [jnp.broadcast_to(a, shape).astype(dtype) for a in arrays]

  def rows(*args):
    return fn(*args), [jnp.exp(logsumexp(a, axis=-1)) for a in args[:len(arrays)]], ()

  return _rows.checked(where, rows, tuple(names), (), *arrays, *params)


def _pair(where, fn, logp, logq, alpha=None, alpha_check=None):
  """``fn(logp, logq)`` per row (``fn(logp, logq, alpha)`` with an order ``alpha``), both
  distributions checked (see :func:`_checked_rows`)."""
  logp = _checks.floating(where, "logp", logp, 1)
  logq = _checks.floating(where, "logq", logq, 1)
  _checks.same_support(where, "logp", logp, "logq", logq)
  if alpha is None:
    return _checked_rows(where, fn, ("logp", "logq"), (logp, logq))
  alpha = _checks.floating(where, "alpha", alpha)
  logp, logq, alpha = _checks.broadcast(where, {"logp": logp, "logq": logq}, {"alpha": alpha})
  alpha = alpha.astype(jnp.result_type(logp, logq))
  alpha = alpha if alpha_check is None else alpha_check(where, "alpha", alpha)
  return _checked_rows(where, fn, ("logp", "logq"), (logp, logq), alpha)


@_checks.public
def kl(logp: Float[Array, "... v"], logq: Float[Array, "... v"]) -> Float[Array, "..."]:
  """Kullback-Leibler divergence ``KL(p || q) = sum_y p(y) log(p(y)/q(y))``.

  Args:
    logp: log-probabilities of ``p``.
    logq: log-probabilities of ``q``.

  Returns:
    ``KL(p || q) >= 0``; ``+inf`` where ``p`` puts mass where ``q`` has none.
  """
  return _pair("klrl.divergences.kl", _logspace.kl, logp, logq)


@_checks.public
def cross_entropy(logp: Float[Array, "... v"], logq: Float[Array, "... v"]) -> Float[Array, "..."]:
  """Cross entropy ``H(p, q) = -sum_y p(y) log q(y)``."""
  return _pair("klrl.divergences.cross_entropy", lambda lp, lq: -expectation(lp, lq), logp, logq)


@_checks.public
def entropy(logp: Float[Array, "... v"]) -> Float[Array, "..."]:
  """Shannon entropy ``H(p) = -sum_y p(y) log p(y)`` (nats)."""
  where = "klrl.divergences.entropy"
  logp = _checks.floating(where, "logp", logp, 1)
  return _checked_rows(where, lambda lp: -expectation(lp, lp), ("logp",), (logp,))


@_checks.public
def bernoulli_kl(a: Float[Array, "..."], b: Float[Array, "..."]) -> Float[Array, "..."]:
  """Bernoulli KL ``kl(a || b) = a log(a/b) + (1-a) log((1-a)/(1-b))``.

  Never negative, and accurate to full relative precision even for close arguments: the
  first-order terms of the two logarithms are cancelled exactly rather than in rounding
  (``kl(0.3 || 0.3 + 1e-9)`` is ``2.4e-18``).

  Args:
    a: success probability of the first law, in [0, 1].
    b: success probability of the second law, in [0, 1].

  Returns:
    ``kl(a || b)``, with ``0 log 0 = 0`` and ``+inf`` where ``a`` is not absolutely
    continuous with respect to ``b``.
  """
  where = "klrl.divergences.bernoulli_kl"
  a = _checks.in_unit_interval(where, "a", _checks.floating(where, "a", a))
  b = _checks.in_unit_interval(where, "b", _checks.floating(where, "b", b))
  a, b = _checks.broadcast(where, params={"a": a, "b": b}, dtype=jnp.result_type(a, b))
  return _logspace.bernoulli_kl(a, b)


@_checks.public
def bernoulli_kl_logits(x: Float[Array, "..."], y: Float[Array, "..."]) -> Float[Array, "..."]:
  """Bernoulli KL ``kl(sigmoid(x) || sigmoid(y))`` from logits.

  Computed as ``softplus(y) - softplus(x) - sigmoid(x) (y - x)`` on the side of 1/2 where the
  terms are small, so that it keeps its accuracy when both laws are within ``1e-9`` of 0 or 1,
  where :func:`bernoulli_kl` of the probabilities loses digits to ``1 - a``.

  Args:
    x: logit of the first law's success probability (``+-inf`` allowed).
    y: logit of the second law's success probability.

  Returns:
    ``kl(sigmoid(x) || sigmoid(y)) >= 0``.
  """
  where = "klrl.divergences.bernoulli_kl_logits"
  x, y = _checks.floating(where, "x", x), _checks.floating(where, "y", y)
  x, y = _checks.holds(where, "x", x, ~jnp.isnan(x), "contains NaN"), _checks.holds(where, "y", y, ~jnp.isnan(y), "contains NaN")
  x, y = _checks.broadcast(where, params={"x": x, "y": y}, dtype=jnp.result_type(x, y))
  return _logspace.bernoulli_kl_logits(x, y)


@_checks.public
def binary_entropy(a: Float[Array, "..."]) -> Float[Array, "..."]:
  """Binary entropy ``h(a) = -a log a - (1-a) log(1-a)`` (nats)."""
  where = "klrl.divergences.binary_entropy"
  a = _checks.in_unit_interval(where, "a", _checks.floating(where, "a", a))
  return -xlogy(a, a) - xlogy(1 - a, 1 - a)


@_checks.public
def chi2(logp: Float[Array, "... v"], logq: Float[Array, "... v"]) -> Float[Array, "..."]:
  """Chi-square divergence ``chi2(p || q) = sum_y p(y)^2 / q(y) - 1``, in log space."""
  return _pair("klrl.divergences.chi2", _chi2, logp, logq)


def _chi2(logp, logq):
  terms = jnp.where(jnp.exp(logp) > 0, 2 * logp - logq, -jnp.inf)
  return jnp.expm1(logsumexp(terms, axis=-1))


@_checks.public
def tv(logp: Float[Array, "... v"], logq: Float[Array, "... v"]) -> Float[Array, "..."]:
  """Total-variation distance ``(1/2) sum_y |p(y) - q(y)|``."""
  return _pair("klrl.divergences.tv", lambda lp, lq: 0.5 * jnp.sum(jnp.abs(jnp.exp(lp) - jnp.exp(lq)), axis=-1),
               logp, logq)


@_checks.public
def renyi_divergence(logp: Float[Array, "... v"], logq: Float[Array, "... v"],
                     alpha: Float[Array, "..."]) -> Float[Array, "..."]:
  """Renyi divergence ``D_alpha(p || q) = log(sum_y p^alpha q^(1-alpha)) / (alpha - 1)``.

  ``alpha = 1`` gives ``KL(p || q)`` (the limit), ``alpha = 2`` gives ``log(1 + chi2)``.
  """
  where = "klrl.divergences.renyi_divergence"
  return _pair(where, _renyi_divergence, logp, logq, alpha, _checks.positive)


def _renyi_divergence(logp, logq, alpha):
  is_one = alpha == 1
  a = jnp.where(is_one, 2.0, alpha)[..., None]
  terms = jnp.where(jnp.exp(logp) > 0, a * logp + (1 - a) * logq, -jnp.inf)
  general = logsumexp(terms, axis=-1) / (a[..., 0] - 1)
  return jnp.where(is_one, _logspace.kl(logp, logq), general)


@_checks.public
def renyi_cross_entropy(logp: Float[Array, "... v"], logq: Float[Array, "... v"],
                        alpha: Float[Array, "..."]) -> Float[Array, "..."]:
  """Renyi cross entropy ``H_alpha(p || q) = log(sum_y p(y) q(y)^(alpha-1)) / (1 - alpha)``.

  This is the form of Yang et al. (2024) used for the scaled cumulants of the reward of
  memoryless sequences (docs: theory/memoryless); ``alpha = 1`` gives the Shannon cross entropy
  ``-sum p log q`` (the limit).
  """
  where = "klrl.divergences.renyi_cross_entropy"
  return _pair(where, _renyi_cross_entropy, logp, logq, alpha)


def _renyi_cross_entropy(logp, logq, alpha):
  is_one = alpha == 1
  safe = jnp.where(is_one, 2.0, alpha)
  terms = jnp.where(jnp.exp(logp) > 0, logp + (safe[..., None] - 1) * logq, -jnp.inf)
  general = logsumexp(terms, axis=-1) / (1 - safe)
  return jnp.where(is_one, -expectation(logp, logq), general)
