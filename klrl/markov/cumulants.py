"""Generating functions of the sequence reward of a Markov-token reference (docs: theory/markov).

With the tilted matrix ``P_lam(i, j) = P(i, j) e^{lam r(i, j)}`` and the tilted initial law
``mu_lam(i) = mu(i) e^{lam r_0(i)}``, ``E_p[e^{lam S_n}] = mu_lam^T P_lam^{n-1} 1``
(:func:`log_mgf`, exact for every ``n``), and ``A_n(lam) / n -> Lambda(lam) = log rho(lam)``, the
log Perron root of ``P_lam`` (:func:`scgf`). The Doob transform ``Q_lam(i, j) = P_lam(i, j)
h(j) / (rho h(i))`` (``h`` the right Perron vector) is the Markov chain of the tilted sequences
in the limit; :func:`doob` returns it with its stationary law ``pi ∝ l h``, ``Lambda'`` (the
mean reward under ``pi``), ``Lambda''`` and the KL rate ``lam Lambda' - Lambda`` of ``Q`` to ``P``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from klrl._src import checks as _checks
from klrl.markov import _core
from klrl.markov.references import Reference, unpack

__all__ = ["Doob", "log_mgf", "scgf", "doob"]


@_core.public(name="log_mgf")
def _log_mgf(log_init, log_trans, reward, first_reward, lam, n):
  where = "klrl.markov.log_mgf"
  a, lam, n = _core.check(where, log_init, log_trans, reward, first_reward, lam=(lam, _checks.finite), n=(n, None))
  n = _core.count_array(where, "n", n)
  u = a.log_init + lam[..., None] * a.first_reward
  logm = a.log_trans + lam[..., None, None] * a.reward
  return _core.log_mgf(u, logm, (n - 1).astype(jnp.int32))


def log_mgf(ref: Reference, lam: Float[Array, "..."], n: Float[Array, "..."]) -> Float[Array, "..."]:
  """``A_n(lam) = log E_p[e^{lam S_n}] = log(mu_lam^T P_lam^{n-1} 1)``, exactly for every ``n``.

  The cumulant generating function of the reward of ``n`` tokens (docs: theory/markov), by
  binary powering in log space with a max-shift at every product, so it neither overflows nor
  underflows for large ``|lam| n``. Error about ``n V eps`` absolute (``exp(A_n)`` to that
  relative accuracy: sums of positive terms); float32 likewise with its ``eps``. Derivatives
  (``A_n'`` is the tilted mean of ``S_n``, ``A_n''`` its variance) are exact: the computation is
  a finite sequence of ``log sum exp`` products (31 squarings, ``n < 2^31``).

  Args:
    ref: the reference.
    lam: real tilt, a scalar or one per row.
    n: sequence length, an integer ``>= 1``, a scalar or one per row.

  Returns:
    ``A_n(lam)`` with the batch shape of ``ref``, ``lam`` and ``n``.
  """
  return _log_mgf(*unpack("klrl.markov.log_mgf", ref), lam, n)


def scgf_core(log_trans, reward, lam):
  """``(Lambda(lam), log w)``: log Perron root of ``P_lam`` and its stationary pair law."""
  return _core.perron(log_trans + lam[..., None, None] * reward)


@_core.public(name="scgf")
def _scgf(log_init, log_trans, reward, first_reward, lam):
  a, lam = _core.check("klrl.markov.scgf", log_init, log_trans, reward, first_reward, lam=(lam, _checks.finite))
  return scgf_core(a.log_trans, a.reward, lam)[0]


def scgf(ref: Reference, lam: Float[Array, "..."]) -> Float[Array, "..."]:
  """The scaled cumulant generating function ``Lambda(lam) = lim A_n(lam) / n = log rho(lam)``.

  ``rho(lam)`` is the Perron root of the tilted matrix ``P_lam(i, j) = P(i, j) e^{lam r(i, j)}``
  (docs: theory/markov); it depends on neither the initial law nor the first token's reward.
  The Perron vectors come from the powers of ``P_lam + c I`` squared in log space (64
  squarings), and ``rho = l^T P_lam h / l^T h``, a ratio of positive sums, so ``Lambda`` is
  accurate to a few ``V eps`` absolute for any ``lam``. Derivatives of every order are exact
  and implicit: ``Lambda' = l^T P_lam' h / (rho l^T h)``, the mean reward under the stationary
  pair law of the Doob transform, and higher ones through its fundamental matrix (never
  through the power iterations).

  Args:
    ref: the reference (``P`` irreducible).
    lam: real tilt, a scalar or one per row.

  Returns:
    ``Lambda(lam)`` with the batch shape of ``ref`` and ``lam``.
  """
  return _scgf(*unpack("klrl.markov.scgf", ref), lam)


class Doob(NamedTuple):
  """The Doob transform of the tilted matrix at ``lam`` (see :func:`doob`).

  Attributes:
    log_policy: ``log Q_lam(i, j) = log P(i, j) + lam r(i, j) + log h(j) - log h(i) - Lambda``,
      a Markov policy (rows normalised), ``(..., V, V)``.
    log_stationary: ``log pi``, the stationary law of ``Q_lam`` (``pi ∝ l h``), ``(..., V)``.
    scgf: ``Lambda(lam)``.
    mean_reward: ``Lambda'(lam) = E[r]`` under the stationary pair law ``pi(i) Q(i, j)``.
    var_reward: ``Lambda''(lam)``, the asymptotic variance of ``S_n / sqrt(n)`` under ``Q``.
    kl_rate: ``sum_i pi(i) KL(Q(i, .) || P(i, .))``, which equals ``lam Lambda' - Lambda``.
  """
  log_policy: Array
  log_stationary: Array
  scgf: Array
  mean_reward: Array
  var_reward: Array
  kl_rate: Array


def doob_core(log_trans, reward, lam) -> Doob:
  def mean(l):
    log_rho, log_w = scgf_core(log_trans, reward, l)
    return jnp.sum(jnp.where(log_w > -jnp.inf, jnp.exp(log_w) * reward, 0.0), axis=(-2, -1)), (log_rho, log_w)

  m, var, (log_rho, log_w) = jax.jvp(mean, (lam,), (jnp.ones_like(lam),), has_aux=True)
  log_q, log_pi = _core.doob(log_w)
  return Doob(log_q, log_pi, log_rho, m, var, _core.kl_rate(log_w, log_trans))


@_core.public(name="doob")
def _doob(log_init, log_trans, reward, first_reward, lam):
  a, lam = _core.check("klrl.markov.doob", log_init, log_trans, reward, first_reward, lam=(lam, _checks.finite))
  return doob_core(a.log_trans, a.reward, lam)


def doob(ref: Reference, lam: Float[Array, "..."]) -> Doob:
  """The Doob transform ``Q_lam`` of the tilted matrix: the limiting Markov policy of the tilt.

  ``Q_lam(i, j) = P_lam(i, j) h(j) / (rho h(i))`` is stochastic, its stationary law is
  ``pi ∝ l h`` (left and right Perron vectors), and ``Lambda'(lam)`` is the mean reward under
  ``pi(i) Q(i, j)``; its KL rate to ``P`` is ``lam Lambda' - Lambda`` (docs: theory/markov). The KL
  rate is summed as nonnegative terms, so it keeps its relative accuracy for small ``lam``.

  Args:
    ref: the reference.
    lam: real tilt, a scalar or one per row.

  Returns:
    A :class:`Doob`.
  """
  return _doob(*unpack("klrl.markov.doob", ref), lam)
