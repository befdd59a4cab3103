"""KL-regularised RL over Markov-token sequences: the finite-``n`` tilt and its per-token limit
(docs: theory/markov).

Maximising ``E_q[S_n]`` over laws ``q`` of length-``n`` sequences subject to
``KL(q || p) <= n Delta`` is solved by the tilt ``phi_n ∝ p e^{lam S_n}`` with
``K_n(lam) = lam A_n'(lam) - A_n(lam) = n Delta`` (:func:`kl_constrained`), past the budget
``-log p(S_n = s_max)`` by ``p`` conditioned on the best sequences. Per token, as ``n -> inf``,
``Delta = lam Lambda'(lam) - Lambda(lam)`` and the limit of the tilt is the Markov policy
``Q_lam`` (the Doob transform) whose KL rate to ``P`` is ``Delta`` and whose stationary mean
reward is ``x_Delta = Lambda'(lam_Delta)`` (:func:`kl_constrained_rate`); past ``Delta_max``
(:func:`klrl.markov.reward_range`) the per-token reward is the largest cycle mean.

Both roots are solved by :func:`klrl._src.roots.solve` (safeguarded Newton on
``log K - log(K_max - K)``, close to linear in ``log lam`` for small budgets and in ``lam`` near
saturation) and differentiated implicitly, ``d lam = (d target - dK|_lam) / (lam A'')``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from klrl._src import checks as _checks, roots as _roots
from klrl.markov import _core
from klrl.markov.references import Reference, unpack
from klrl.markov.rates import range_core

__all__ = ["SequenceSolution", "RateSolution", "kl_constrained", "kl_constrained_rate"]


def _g(k, gap, slope, target, tiny):
  k, gap = jnp.maximum(k, tiny), jnp.maximum(gap, tiny)
  return jnp.log(k) - jnp.log(gap) - target, slope * (1 / k + 1 / gap)


def _converged_or_fail(where, x, converged):
  return _checks.holds(where, "delta", x, converged,
                       "gives a KL-constrained root that did not converge (please report this input)")


# ---------------------------------------------------------------------------------------------
# Finite n.

class SequenceSolution(NamedTuple):
  """The KL-RL solution over sequences of ``n`` tokens at budget ``n delta`` (see :func:`kl_constrained`).

  Attributes (per token: divided by ``n``):
    lam: the tilt ``lam`` of ``phi_n ∝ p e^{lam S_n}`` (``inf`` when saturated).
    mean_reward: ``E_phi[S_n] / n``.
    kl: ``KL(phi_n || p) / n``, equal to ``delta`` below saturation.
    max_kl: ``-log p(S_n = s_max) / n``, the largest useful budget.
    top_reward: ``s_max / n``, the best sequence reward per token.
    saturated: ``delta >= max_kl`` (then ``phi_n`` is ``p`` conditioned on ``S_n = s_max``).
    converged: whether the root solve converged (a failure raises instead of returning).
  """
  lam: Array
  mean_reward: Array
  kl: Array
  max_kl: Array
  top_reward: Array
  saturated: Array
  converged: Array


def _centred_mgf(a, lam, m, c, c0):
  """``A_n(lam) - lam((n-1) c + c0)`` with the rewards centred inside the products."""
  u = a.log_init + lam[..., None] * (a.first_reward - c0[..., None])
  logm = a.log_trans + lam[..., None, None] * (a.reward - c[..., None, None])
  return _core.log_mgf(u, logm, m)


def _derivs(f, lam):
  """``(f, f', f'')`` in ``lam`` by nested forward-mode differentiation."""
  one = jnp.ones_like(lam)
  d1 = lambda l: jax.jvp(f, (l,), (one,))
  (v, dv), (_, d2v) = jax.jvp(d1, (lam,), (one,))
  return v, dv, d2v


def _k_n(a, lam, m):
  """``K_n(lam) = lam A_n' - A_n`` (centring-free), for the implicit derivative."""
  f = lambda l: _core.log_mgf(a.log_init + l[..., None] * a.first_reward, a.log_trans + l[..., None, None] * a.reward, m)
  v, dv = jax.jvp(f, (lam,), (jnp.ones_like(lam),))
  return lam * dv - v


def _solve_n(where, a, nd, m, s_max, log_top, s_min):
  """``lam`` with ``K_n(lam) = nd`` (no derivatives) and whether it converged."""
  dtype = a.log_trans.dtype
  tiny = jnp.finfo(dtype).tiny
  tol = 1e-12 if jnp.finfo(dtype).bits > 32 else 2e-6
  a = jax.tree.map(lax.stop_gradient, a)
  nmax = -log_top
  active = (nd > 0) & (nd < nmax)
  d = jnp.where(active, nd, 0.5 * jnp.where(nmax > 0, nmax, 1.0))
  target = jnp.log(d) - jnp.log(jnp.maximum(nmax - d, tiny))
  # Centre at the stationary mean for small lam, at the best sequence's mean for large lam.
  log_w = _core.perron(a.log_trans)[1]
  c = jnp.sum(jnp.where(log_w > -jnp.inf, jnp.exp(log_w) * a.reward, 0.0), axis=(-2, -1))
  c0 = jnp.sum(jnp.exp(a.log_init) * a.first_reward, axis=-1)
  mf = m.astype(dtype)
  c_top = s_max / (mf + 1)

  def evaluate(lam):
    v, dv, d2v = _derivs(lambda l: _centred_mgf(a, l, m, c, c0), lam)
    k = lam * dv - v
    vt, dvt = jax.jvp(lambda l: _centred_mgf(a, l, m, c_top, c_top), (lam,), (jnp.ones_like(lam),))
    gap = (vt - log_top) - lam * dvt          # both terms >= 0: no cancellation
    return _g(k, gap, lam * d2v, target, tiny)

  var0 = _derivs(lambda l: _centred_mgf(a, l, m, c, c0), jnp.zeros_like(d))[2]
  spread = jnp.maximum(s_max - s_min, tiny)
  lo = jnp.sqrt(8 * d) / spread                  # Hoeffding: K_n(lam) <= lam^2 (s_max - s_min)^2 / 8
  lam0 = jnp.maximum(jnp.sqrt(2 * d / jnp.maximum(var0, tiny)), lo)
  root = _roots.solve(evaluate, lam0, lo, jnp.full_like(lo, jnp.inf), active,
                      done=lambda l, v: ~(jnp.abs(v[0]) > tol), max_steps=100, closed_rtol=1e-14,
                      log_newton=lambda l: l * jnp.sqrt(jnp.maximum(var0, tiny)) <= 1.0)
  return jnp.where(active, root.x, 0.0), root.converged


@_core.public(name="kl_constrained")
def _kl_constrained(log_init, log_trans, reward, first_reward, delta, n):
  where = "klrl.markov.kl_constrained"
  a, delta, n = _core.check(where, log_init, log_trans, reward, first_reward, delta=(delta, _checks.nonnegative),
                            n=(n, None))
  n = _core.count_array(where, "n", n)
  m = (n - 1).astype(jnp.int32)
  s_max, log_top = _core.top(a.log_init, a.first_reward, a.log_trans, a.reward, m)
  s_min = -_core.top(a.log_init, -a.first_reward, a.log_trans, -a.reward, m)[0]
  s_max, log_top, s_min = lax.stop_gradient((s_max, log_top, s_min))
  nd = n * delta
  saturated = nd >= -log_top
  active = (nd > 0) & ~saturated
  root = _core.implicit_root(lambda data, t, act, aux: _solve_n(where, data, t, *aux),
                             lambda data, l, aux: _k_n(data, l, aux[0]))
  lam, converged = root(a, nd, active, (m, s_max, log_top, s_min))
  lam, converged = _converged_or_fail(where, (lam, converged), converged)
  f = lambda l: _core.log_mgf(a.log_init + l[..., None] * a.first_reward, a.log_trans + l[..., None, None] * a.reward, m)
  v, dv = jax.jvp(f, (lam,), (jnp.ones_like(lam),))
  kl = jnp.where(active, nd + lax.stop_gradient(lam * dv - v - nd), 0.0)
  return SequenceSolution(
      lam=jnp.where(saturated, jnp.inf, lam),
      mean_reward=jnp.where(saturated, s_max, dv) / n,
      kl=jnp.where(saturated, -log_top, kl) / n,
      max_kl=-log_top / n,
      top_reward=s_max / n,
      saturated=saturated,
      converged=converged)


def kl_constrained(ref: Reference, delta: Float[Array, "..."], n: Float[Array, "..."]) -> SequenceSolution:
  """KL-constrained RL over sequences of ``n`` tokens: ``max E_q[S_n]`` s.t. ``KL(q || p) <= n delta``.

  The solution is the tilt ``phi_n ∝ p e^{lam S_n}`` with ``K_n(lam) = lam A_n'(lam) - A_n(lam)
  = n delta`` (docs: theory/markov), ``A_n`` from :func:`klrl.markov.log_mgf`; for
  ``n delta >= -log p(S_n = s_max)`` it is ``p`` conditioned on the best sequences (``lam =
  inf``). For identical rows of ``P`` it is ``phi_delta^{(x) n}`` of :func:`klrl.tilted.kl_constrained`.
  The root is found by safeguarded Newton and differentiated implicitly (``d lam / d delta =
  n / (lam A_n'')``). ``K_n`` is formed with the rewards centred at the stationary mean, so small
  budgets keep their relative accuracy to about ``V eps / delta``; ties for the best sequence
  reward are exact for integer rewards (within ``1e3 eps n max|r|`` otherwise). A root that does
  not converge raises :class:`klrl.InputError`.

  Args:
    ref: the reference.
    delta: per-token KL budget ``>= 0``, a scalar or one per row.
    n: sequence length, an integer ``>= 1``, a scalar or one per row.

  Returns:
    :class:`SequenceSolution`, per token.
  """
  return _kl_constrained(*unpack("klrl.markov.kl_constrained", ref), delta, n)


# ---------------------------------------------------------------------------------------------
# Per token, n -> inf.

class RateSolution(NamedTuple):
  """The per-token limit of KL-RL at KL rate ``delta`` (see :func:`kl_constrained_rate`).

  Attributes:
    lam: ``lam_Delta`` with ``lam Lambda'(lam) - Lambda(lam) = delta`` (``inf`` when saturated).
    mean_reward: ``x_Delta = Lambda'(lam_Delta)``, the per-token reward (the largest cycle mean
      when saturated).
    kl: the KL rate of ``Q`` to ``P``, equal to ``delta`` below saturation.
    max_kl: ``Delta_max``, the largest KL rate of a tilt.
    log_policy: ``log Q_lam``, the limiting Markov policy (Doob transform), ``(..., V, V)``;
      ``-inf`` on saturated rows (the limit concentrates on the cycles of largest mean reward).
    log_stationary: ``log pi`` of ``Q_lam``, ``(..., V)`` (``-inf`` on saturated rows).
    saturated: ``delta >= max_kl``.
    converged: whether the root solve converged (a failure raises instead of returning).
  """
  lam: Array
  mean_reward: Array
  kl: Array
  max_kl: Array
  log_policy: Array
  log_stationary: Array
  saturated: Array
  converged: Array


def _k_rate(data, lam):
  log_trans, reward = data
  log_rho, log_w = _core.perron(log_trans + lam[..., None, None] * reward)
  return lam * jnp.sum(jnp.where(log_w > -jnp.inf, jnp.exp(log_w) * reward, 0.0), axis=(-2, -1)) - log_rho


def _solve_rate(data, delta, active, rt, dmax, var0):
  """``lam`` with ``lam Lambda' - Lambda = delta`` (no derivatives): the KL rate of the Doob
  transform (nonnegative terms) and its distance to ``Delta_max`` from the potential-shifted
  reward ``rt <= 0`` (two nonnegative terms)."""
  log_trans = lax.stop_gradient(data[0])
  dtype = log_trans.dtype
  tiny = jnp.finfo(dtype).tiny
  tol = 1e-12 if jnp.finfo(dtype).bits > 32 else 2e-6
  d = jnp.where(active, delta, 0.5 * jnp.where(dmax > 0, dmax, 1.0))
  target = jnp.log(d) - jnp.log(jnp.maximum(dmax - d, tiny))

  def evaluate(lam):
    def mean(l):
      log_rho, log_w = _core.perron(log_trans + l[..., None, None] * rt)
      return jnp.sum(jnp.where(log_w > -jnp.inf, jnp.exp(log_w) * rt, 0.0), axis=(-2, -1)), (log_rho, log_w)
    m, dm, (log_rho, log_w) = jax.jvp(mean, (lam,), (jnp.ones_like(lam),), has_aux=True)
    k = _core.kl_rate(log_w, log_trans)
    gap = (log_rho + dmax) - lam * m
    return _g(k, gap, lam * dm, target, tiny)

  lam0 = jnp.sqrt(2 * d / jnp.maximum(var0, tiny))
  root = _roots.solve(evaluate, lam0, jnp.zeros_like(lam0), jnp.full_like(lam0, jnp.inf), active,
                      done=lambda l, v: ~(jnp.abs(v[0]) > tol), max_steps=100, closed_rtol=1e-14,
                      geometric=False, log_newton=lambda l: l * jnp.sqrt(jnp.maximum(var0, tiny)) <= 1.0)
  return jnp.where(active, root.x, 0.0), root.converged


@_core.public(name="kl_constrained_rate")
def _kl_constrained_rate(log_init, log_trans, reward, first_reward, delta):
  where = "klrl.markov.kl_constrained_rate"
  a, delta = _core.check(where, log_init, log_trans, reward, first_reward, delta=(delta, _checks.nonnegative))
  rng, e = range_core(a.log_trans, a.reward)
  dmax = rng.rate_high
  saturated = delta >= dmax
  active = (delta > 0) & ~saturated
  var0 = jax.jvp(lambda l: jnp.sum(jnp.exp(_core.perron(a.log_trans + l[..., None, None] * a.reward)[1]) * a.reward,
                                   axis=(-2, -1)), (jnp.zeros_like(delta),), (jnp.ones_like(delta),))[1]
  var0 = lax.stop_gradient(var0)
  root = _core.implicit_root(lambda data, t, act, aux: _solve_rate(data, t, act, *aux), lambda d, l, aux: _k_rate(d, l))
  lam, converged = root((a.log_trans, a.reward), delta, active, (lax.stop_gradient(e.rt_high), dmax, var0))
  lam, converged = _converged_or_fail(where, (lam, converged), converged)
  log_w = _core.perron(a.log_trans + lam[..., None, None] * a.reward)[1]
  log_q, log_pi = _core.doob(log_w)
  mean = jnp.sum(jnp.where(log_w > -jnp.inf, jnp.exp(log_w) * a.reward, 0.0), axis=(-2, -1))
  kl = jnp.where(active, delta + lax.stop_gradient(_core.kl_rate(log_w, a.log_trans) - delta), 0.0)
  sat = saturated[..., None]
  return RateSolution(
      lam=jnp.where(saturated, jnp.inf, lam),
      mean_reward=jnp.where(saturated, rng.high, mean),
      kl=jnp.where(saturated, dmax, kl),
      max_kl=dmax,
      log_policy=jnp.where(sat[..., None], -jnp.inf, log_q),
      log_stationary=jnp.where(sat, -jnp.inf, log_pi),
      saturated=saturated,
      converged=converged)


def kl_constrained_rate(ref: Reference, delta: Float[Array, "..."]) -> RateSolution:
  """The per-token limit of KL-RL: ``Delta = lam Lambda'(lam) - Lambda(lam)``, ``x_Delta = Lambda'(lam)``.

  As ``n -> inf`` the KL-RL tilt at budget ``n delta`` (:func:`kl_constrained`) has per-token
  reward ``x_Delta`` and tilt ``lam_Delta``, and its limit is the Markov policy ``Q_lam`` (the
  Doob transform, :func:`klrl.markov.doob`) whose KL rate to ``P`` is ``delta`` (docs:
  theory/markov). For ``delta >= Delta_max`` (:func:`klrl.markov.reward_range`) the reward is the
  largest cycle mean and ``lam = inf``. The KL rate is summed as nonnegative terms and its
  distance to ``Delta_max`` from a potential-shifted reward that is ``<= 0`` on every edge, so
  the root keeps its accuracy at both ends. Derivatives are implicit
  (``d lam / d delta = 1 / (lam Lambda'')``); at ``delta = 0`` they are reported as 0 (the true
  ones are infinite), and ``Delta_max`` carries none.

  Args:
    ref: the reference.
    delta: per-token KL budget ``>= 0``, a scalar or one per row.

  Returns:
    :class:`RateSolution`.
  """
  return _kl_constrained_rate(*unpack("klrl.markov.kl_constrained_rate", ref), delta)
