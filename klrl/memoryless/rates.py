"""Large deviations of the per-token reward ``S_n / n`` of a memoryless sequence
(docs: theory/memoryless).

Everything follows from the cumulant generating function ``A(t) = log E_p exp(t r)``
(:func:`cgf`): Cramer's rate ``I_p`` (:func:`rate_function`), the rate ``I_delta`` under the
KL-RL solution (:func:`tilted_rate_function`), its scaled cumulant generating function
``Lambda_delta`` (:func:`scgf`, :func:`scgf_renyi`) and scaled cumulants
(:func:`scaled_cumulants`), or all at once (:func:`large_deviations`).

Numerics of the rate function. With ``u = sigma (r - x)`` (``sigma`` the sign of ``x - E_p r``)
the rate is ``I_p(x) = -min_{s >= 0} log E_p exp(s u)``: one convex problem in ``s >= 0``,
solved by safeguarded Newton on ``log(m - u_min) - log(u_max - m)`` (``m = E_s[u]``), a
function that is close to linear in ``s`` both near the mean and near the ends of the reward
range, where the optimal slope diverges. Centring at ``x`` keeps ``I_p`` at full relative
accuracy near the mean and near the ends. Derivatives are implicit: the envelope theorem
(``dI = -dA_u`` at the optimal slope) with the slope carrying its implicit derivative, so
first and second derivatives are exact. At the ends of the reward range ``I_p(r_max) = -log
p(r = r_max)`` (likewise ``r_min``), outside it ``+inf``.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import logsumexp
from jaxtyping import Array, Float

from klrl import divergences, tilted
from klrl._src import checks as _checks, cumulants as _cumulants, roots as _roots
from klrl.divergences import expectation
from klrl.memoryless import _args

__all__ = ["LargeDeviations", "cgf", "rate_function", "tilted_rate_function", "scgf", "scgf_renyi",
           "scaled_cumulants", "large_deviations"]


# ---------------------------------------------------------------------------------------------
# Cumulant generating function (any sign of t, through klrl.tilted.cumulants).

def _cum(logp, reward, t, prep=None) -> _cumulants.Cumulants:
  """Cumulants of ``reward`` under ``p`` tilted by ``t`` of either sign: ``A``, ``A'``, ``A''``, KL.

  The one-pass sums of :func:`klrl.tilted.cumulants` (which takes ``t >= 0``), with the
  reward's sign flipped where ``t < 0``; inputs are checked by the caller. ``prep`` (the
  per-row constants of ``reward`` when every ``t >= 0``) may be passed to skip that pass.
  """
  neg = t < 0
  if prep is None:
    reward = jnp.where(neg[..., None], -reward, reward)
    prep = _cumulants.constants(logp, reward, top=False)[0]
  c = _cumulants.cumulants(logp, reward, jnp.where(neg, -t, t), prep)
  return c._replace(mean=jnp.where(neg, -c.mean, c.mean))


@_args.public
def cgf(logp: Float[Array, "... v"], reward: Float[Array, "... v"], t: Float[Array, "..."]) -> Float[Array, "..."]:
  """Cumulant generating function ``A(t) = log E_p exp(t r)`` of the reward, for real ``t``.

  Computed by :func:`klrl.tilted.cumulants` (which takes ``t >= 0``) with the
  reward's sign flipped for ``t < 0``, so it is accurate for small and large ``|t|``.

  Args:
    logp: reference log-probabilities over the last axis (``-inf`` for zero mass).
    reward: finite rewards, broadcasting with ``logp``.
    t: real argument; broadcasts with the batch axes (a grid of ``t`` for one ``p`` is fine).

  Returns:
    ``A(t)``, with the broadcast shape of the batch axes and ``t``.
  """
  where = "klrl.memoryless.cgf"
  logp, reward, t = _args.inputs(where, logp, reward, t=(t, _checks.finite))
  return _cum(logp, reward, t).log_z


# ---------------------------------------------------------------------------------------------
# Rate functions.

def _support_range(logp, reward):
  mass = logp > -jnp.inf
  return (jnp.min(jnp.where(mass, reward, jnp.inf), axis=-1), jnp.max(jnp.where(mass, reward, -jnp.inf), axis=-1))


def _slope_root(logp, u, u_lo, u_hi, active):
  """``(s, log E_p e^{s u}, converged)`` at the ``s >= 0`` with ``E_{p e^{s u}}[u] = 0`` (no derivatives).

  ``u_lo < 0 < u_hi`` bound ``u`` on the support of rows where ``active``. Safeguarded Newton on
  ``G(s) = log(m - u_lo) - log(u_hi - m) - log(-u_lo / u_hi)``, ``m`` the tilted mean of ``u``:
  ``G(0) <= 0`` by construction, ``G`` increases, and it is close to linear in ``s`` both for
  small ``s`` and for large ``s`` (where ``u_hi - m`` decays exponentially).
  """
  dtype = logp.dtype
  tiny = jnp.finfo(dtype).tiny
  tol = 1e-13 if jnp.finfo(dtype).bits > 32 else 1e-5
  logp, u = lax.stop_gradient((logp, jnp.where(active[..., None], u, 0.0)))
  u_lo = lax.stop_gradient(jnp.where(active, u_lo, -1.0))
  u_hi = lax.stop_gradient(jnp.where(active, u_hi, 1.0))
  target = jnp.log(-u_lo) - jnp.log(u_hi)
  prep = _cumulants.constants(logp, u, top=False)[0]
  s0 = jnp.where(active, jnp.maximum(-prep.mu / jnp.maximum(prep.var, tiny), 0.0), 0.0)

  def evaluate(s):
    c = _cum(logp, u, s, prep)
    a = jnp.maximum(c.mean - u_lo, tiny)
    b = jnp.maximum(u_hi - c.mean, tiny)
    return jnp.log(a) - jnp.log(b) - target, c.var * (1 / a + 1 / b), c.log_z

  # Newton unless it leaves the bracket or does not at least halve the step (G is S-shaped
  # between its two linear ends, where plain Newton can oscillate).
  root = _roots.solve(evaluate, s0, jnp.zeros_like(s0), jnp.full_like(s0, jnp.inf), active,
                      done=lambda s, v: ~(jnp.abs(v[0]) > tol), max_steps=200,
                      closed_rtol=4 * jnp.finfo(dtype).eps, geometric=False, halving=True)
  return jnp.where(active, root.x, 0.0), jnp.where(active, root.value[2], 0.0), root.converged


@jax.custom_jvp
def _legendre(logp, u, u_lo, u_hi, active):
  """``I = -min_{s >= 0} log E_p e^{s u}``, the minimiser ``s`` and whether its solve converged
  (see :func:`_slope_root`)."""
  s, log_z, converged = _slope_root(logp, u, u_lo, u_hi, active)
  return -log_z, s, converged


@_legendre.defjvp
def _legendre_jvp(primals, tangents):
  # Envelope theorem: dI = -dA_u(s*) at fixed s*. The slope inside is s* plus one Newton step,
  # whose derivative is the implicit one, so differentiating this rule again gives the exact
  # second derivatives (I'' = 1 / A''(s*) in x).
  logp, u, u_lo, u_hi, active = primals
  dlogp, du = tangents[:2]
  s, _, converged = _slope_root(logp, u, u_lo, u_hi, active)
  c = _cum(logp, u, s)
  s = s - (c.mean - lax.stop_gradient(c.mean)) / lax.stop_gradient(jnp.maximum(c.var, jnp.finfo(s.dtype).tiny))
  value, dvalue = jax.jvp(lambda lp, uu: -_cum(lp, uu, s).log_z, (logp, u), (dlogp, du))
  return (value, lax.stop_gradient(s), converged), (dvalue, jnp.zeros_like(s),
                                                   jnp.zeros(converged.shape, jax.dtypes.float0))


class _Rate(NamedTuple):
  value: Array      # I_p(x)
  slope: Array      # t = I_p'(x) (no derivatives), +-inf at the ends
  interior: Array


def _rate(where, logp, reward, x) -> _Rate:
  """``I_p(x)`` and its slope; a slope root that did not converge raises (never a value)."""
  r_min, r_max = _support_range(logp, reward)
  mu = expectation(logp, reward)
  interior = (x > r_min) & (x < r_max)
  xs = jnp.where(interior, x, mu)
  sign = jnp.where(xs >= mu, 1.0, -1.0)
  u = sign[..., None] * (reward - xs[..., None])
  u_hi = jnp.where(sign > 0, r_max - xs, xs - r_min)
  u_lo = jnp.where(sign > 0, r_min - xs, xs - r_max)
  value, s, converged = _legendre(logp, u, lax.stop_gradient(u_lo), lax.stop_gradient(u_hi), interior)

  def end(at):
    hit = (logp > -jnp.inf) & (reward == at[..., None])
    return -logsumexp(jnp.where(hit, logp, -jnp.inf), axis=-1)

  value = jnp.where(interior, value,
                    jnp.where(x == r_max, end(r_max), jnp.where(x == r_min, end(r_min), jnp.inf)))
  slope = jnp.where(interior, sign * s, jnp.where(x >= r_max, jnp.inf, -jnp.inf))
  value, slope = _checks.reward_range(where, (value, slope), r_min, r_max)
  value, slope = _checks.holds(where, "x", (value, slope), converged | ~interior,
                               "gives a rate-function root that did not converge in 200 steps (please report this input)")
  return _Rate(value, slope, interior)


@_args.public
def rate_function(logp: Float[Array, "... v"], reward: Float[Array, "... v"], x: Float[Array, "..."]) -> Float[Array, "..."]:
  """Cramer's rate function ``I_p(x) = sup_t (t x - A(t))`` of ``S_n / n`` under ``p``.

  Cramer's theorem (docs: theory/memoryless): ``P(S_n / n ~ x) = e^{-n I_p(x) + o(n)}``. Convex,
  zero at ``E_p r``, with ``I_p(x_delta) = delta`` at the mean reward of the KL-RL solution. At
  the ends of the reward range ``I_p(r_max) = -log p(r = r_max)`` and ``I_p(r_min) = -log p(r = r_min)`` exactly;
  outside ``[r_min, r_max]`` it is ``+inf``. Derivatives are exact and implicit:
  ``I_p'(x) = t*(x)``, ``I_p''(x) = 1 / A''(t*)``, and those in ``logp`` and ``reward`` follow
  from the envelope theorem. At the two ends, where ``I_p'`` is infinite, the derivative in
  ``x`` is reported as 0.

  Args:
    logp: reference log-probabilities over the last axis.
    reward: finite rewards, broadcasting with ``logp``.
    x: finite per-token reward levels; broadcasts with the batch axes.

  Returns:
    ``I_p(x) >= 0`` with the broadcast shape of the batch axes and ``x``.
  """
  where = "klrl.memoryless.rate_function"
  logp, reward, x = _args.inputs(where, logp, reward, x=(x, _checks.finite))
  return _rate(where, logp, reward, x).value


def _solution(where, logp, reward, delta):
  """``logp``, ``reward`` and ``delta`` checked and broadcast, and the KL-RL solution at ``delta``."""
  logp, reward, delta = _args.inputs(where, logp, reward, delta=(delta, _checks.nonnegative))
  logp, reward = _checks.reward_range(where, (logp, reward), *_support_range(logp, reward))
  return logp, reward, delta, tilted.kl_constrained(logp, reward, delta)


@_args.public
def tilted_rate_function(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."],
                         x: Float[Array, "..."]) -> Float[Array, "..."]:
  """Rate function of ``S_n / n`` under the KL-RL solution ``phi_delta^{(x) n}``.

  By the theory (docs: theory/memoryless),
  ``I_delta(x) = sup_t (t x - Lambda_delta(t)) = I_p(x) - delta - lam_delta (x - x_delta)``; zero
  only at ``x_delta = R(delta)``, ``I_delta''(x_delta) = 1 / Var_phi(r)``, ``+inf`` outside ``[r_min, r_max]``. Computed directly as Cramer's rate under ``phi_delta``
  (so it keeps its relative accuracy near ``x_delta``); the identity with ``I_p`` is a check.
  Saturated budgets (``delta >= delta_max``) give ``0`` at ``r_max`` and ``+inf`` elsewhere.

  Args:
    logp: reference log-probabilities over the last axis.
    reward: finite rewards.
    delta: per-token KL budget ``>= 0``, a scalar or one per row.
    x: per-token reward levels; broadcast with the batch axes.
  """
  where = "klrl.memoryless.tilted_rate_function"
  _, reward, delta, sol = _solution(where, logp, reward, delta)
  return _rate(where, *_args.points(where, "x", x, sol.log_policy, reward, delta=delta)).value


@_args.public
def scgf(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."],
         t: Float[Array, "..."]) -> Float[Array, "..."]:
  """Scaled cumulant generating function ``Lambda_delta(t) = A(lam_delta + t) - A(lam_delta)``.

  By the theory (docs: theory/memoryless), ``(1/n) log E exp(t S_n) = Lambda_delta(t)`` under
  ``phi_delta^{(x) n}``, for every ``n``. Computed as the cumulant generating function of ``r``
  under ``phi_delta`` (accurate for small ``t``); saturated budgets give ``t r_max``.

  Args:
    logp: reference log-probabilities over the last axis.
    reward: finite rewards.
    delta: per-token KL budget ``>= 0``, a scalar or one per row.
    t: real argument; broadcasts with the batch axes.
  """
  where = "klrl.memoryless.scgf"
  _, reward, delta, sol = _solution(where, logp, reward, delta)
  return _cum(*_args.points(where, "t", t, sol.log_policy, reward, delta=delta)).log_z


@_args.public
def scgf_renyi(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."],
               t: Float[Array, "..."]) -> Float[Array, "..."]:
  """The scaled cumulant generating function in Renyi cross-entropy form (Yang et al., 2024).

  With ``q_r = softmax(r)`` and ``H_alpha(p || q) = log(sum p q^(alpha-1)) / (1 - alpha)``
  (:func:`klrl.divergences.renyi_cross_entropy`), ``A(s) = s log sum e^r - s H_{1+s}(p || q_r)``,
  so (docs: theory/memoryless)::

      Lambda_delta(t) = t log sum e^r + lam H_{1+lam}(p || q_r) - (lam + t) H_{1+lam+t}(p || q_r).

  Equal to :func:`scgf` up to rounding (the log-sum-exp terms cancel); it is provided to check
  the identity. Saturated budgets (``lam = inf``) give the limit ``t r_max``.
  """
  where = "klrl.memoryless.scgf_renyi"
  logp, reward, delta, sol = _solution(where, logp, reward, delta)
  return _renyi_form(*_args.points(where, "t", t, logp, reward, delta=delta), sol)


def _renyi_form(logp, reward, t, sol):
  sat = jnp.broadcast_to(sol.saturated, t.shape)
  lam = jnp.where(sat, 0.0, jnp.broadcast_to(sol.lam, t.shape))
  log_q = jax.nn.log_softmax(reward, axis=-1)
  h = lambda a: divergences.renyi_cross_entropy(logp, log_q, 1 + a)
  value = t * logsumexp(reward, axis=-1) + lam * h(lam) - (lam + t) * h(lam + t)
  r_max = _support_range(logp, reward)[1]
  return jnp.where(sat, t * r_max, value)


class LargeDeviations(NamedTuple):
  """Large-deviation quantities of ``S_n / n`` at a budget (see :func:`large_deviations`).

  Attributes:
    rate: ``I_p(x)`` at the points ``x``.
    tilted_rate: ``I_delta(x)`` at the points ``x``.
    cgf: ``A(t)`` at the points ``t``.
    scgf: ``Lambda_delta(t) = A(lam_delta + t) - A(lam_delta)`` at the points ``t``.
    scgf_renyi: the same in Renyi cross-entropy form.
    lam: ``lam_delta`` (``inf`` when saturated).
    target: ``x_delta = R(delta)``.
    rate_at_target: ``I_p(x_delta)``, which equals ``delta`` below ``delta_max`` (a check of
      the two solves against each other).
    tilted_rate_at_target: ``I_delta(x_delta)``, which is 0.
  """
  rate: Array
  tilted_rate: Array
  cgf: Array
  scgf: Array
  scgf_renyi: Array
  lam: Array
  target: Array
  rate_at_target: Array
  tilted_rate_at_target: Array


@_args.public
def large_deviations(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."],
                     x: Float[Array, "..."], t: Float[Array, "..."]) -> LargeDeviations:
  """:func:`rate_function`, :func:`tilted_rate_function`, :func:`cgf`, :func:`scgf` and :func:`scgf_renyi` at once.

  One KL-constrained solve and one rate solve (under ``p`` and ``phi_delta``, at ``x`` and at
  ``x_delta``, together) for all of them: the same values as the separate functions, for a
  fraction of the compilation. The points ``x`` and ``t`` are separate grids: each field has the
  batch shape of the function it stands for (``rate`` and ``tilted_rate`` with ``x``, ``cgf``,
  ``scgf`` and ``scgf_renyi`` with ``t``, the others with ``delta`` only).

  Args:
    logp: reference log-probabilities over the last axis.
    reward: finite rewards.
    delta: per-token KL budget ``>= 0``, a scalar or one per row.
    x: per-token reward levels; broadcast with the batch axes.
    t: arguments of the generating functions; broadcast with the batch axes.
  """
  where = "klrl.memoryless.large_deviations"
  logp, reward, delta, sol = _solution(where, logp, reward, delta)

  def under_both(name, x):
    """The rows of ``p`` and of ``phi_delta`` (leading axis of 2) with the points ``x``."""
    lp, rw, xs = _args.points(where, name, x, logp, reward, delta=delta)
    pair = lambda a, b: jnp.stack([a, jnp.broadcast_to(b, a.shape)])
    return pair(lp, sol.log_policy), pair(rw, rw), pair(xs, xs), (lp, rw, xs)

  both = jnp.stack([logp, sol.log_policy])
  lp, rw, xs, _ = under_both("x", x)
  # Rows flattened so that the points x and the targets x_delta share one solve.
  v = logp.shape[-1]
  rates = _rate(where, jnp.concatenate([lp.reshape(-1, v), both.reshape(-1, v)]),
                jnp.concatenate([rw.reshape(-1, v), jnp.broadcast_to(reward, both.shape).reshape(-1, v)]),
                jnp.concatenate([xs.reshape(-1), jnp.broadcast_to(sol.mean_reward, both.shape[:-1]).reshape(-1)])).value
  at_x, at_target = rates[:xs.size].reshape(xs.shape), rates[xs.size:].reshape(both.shape[:-1])
  lp, rw, ts, at_t = under_both("t", t)
  gen = _cum(lp, rw, ts).log_z
  return LargeDeviations(rate=at_x[0], tilted_rate=at_x[1], cgf=gen[0], scgf=gen[1],
                         scgf_renyi=_renyi_form(*at_t, sol),
                         lam=sol.lam, target=sol.mean_reward, rate_at_target=at_target[0],
                         tilted_rate_at_target=at_target[1])


@_args.public(static=("order",))
def scaled_cumulants(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."],
                     order: int = 4) -> Float[Array, "... k"]:
  """Scaled cumulants ``kappa_k(S_n) / n = A^{(k)}(lam_delta)``, ``k = 1..order``, under ``phi_delta^{(x) n}``.

  The derivatives (docs: theory/memoryless) at ``t = 0`` of the scaled cumulant generating
  function ``Lambda_delta(t) = log E_phi exp(t r)`` (:func:`scgf`), taken by nested forward-mode
  automatic differentiation of its log-sum-exp form with the reward centred at ``x_delta`` (so that the
  derivatives of order ``>= 2`` are central moments combinations without cancellation):
  ``k = 1`` is the mean ``x_delta``, ``k = 2`` the variance, ``k = 3`` the third central moment.

  Args:
    logp: reference log-probabilities over the last axis.
    reward: finite rewards.
    delta: per-token KL budget ``>= 0``.
    order: highest order (a Python int ``>= 1``; compilation grows like ``2^order``).

  Returns:
    ``(..., order)`` array of ``A'(lam), ..., A^{(order)}(lam)``.
  """
  where = "klrl.memoryless.scaled_cumulants"
  if isinstance(order, bool) or not isinstance(order, int) or order < 1:
    raise _checks.InputError(f"{where}: argument 'order' must be a Python int >= 1, got {order!r}")
  logp, reward, delta, sol = _solution(where, logp, reward, delta)
  centred = reward - sol.mean_reward[..., None]
  f = lambda t: logsumexp(sol.log_policy + t[..., None] * centred, axis=-1)
  t0 = jnp.zeros(logp.shape[:-1], logp.dtype)
  out, d = [], f
  for _ in range(order):
    d = functools.partial(lambda g, t: jax.jvp(g, (t,), (jnp.ones_like(t),))[1], d)
    out.append(d(t0))
  return jnp.stack(out, axis=-1).at[..., 0].add(sol.mean_reward)
