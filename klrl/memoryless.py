"""Memoryless sequences with an additive reward: large deviations, exact laws, BoN ≍ KL-RL.

Tokens are i.i.d. from ``p`` and a length-``n`` sequence has reward ``S_n = sum_i r(y_i)``
(SPEC section 3; Yang et al., *Asymptotics of Language Model Alignment*, 2024). Everything
follows from the cumulant generating function ``A(t) = log E_p exp(t r)``:

* Cramer's rate ``I_p(x) = sup_t (t x - A(t))`` of ``S_n / n`` under ``p`` (:func:`rate_function`),
  with ``I_p(x_delta) = delta`` at the mean reward ``x_delta = R(delta)`` of the KL-RL solution;
* the rate under the KL-RL solution ``phi_delta^{(x) n}``, ``I_delta(x) = I_p(x) - delta -
  lam_delta (x - x_delta)`` (:func:`tilted_rate_function`), and its scaled cumulant generating
  function ``Lambda_delta(t) = A(lam_delta + t) - A(lam_delta)`` (:func:`scgf`), also in the
  Renyi cross-entropy form of the paper (:func:`scgf_renyi`), with scaled cumulants of any
  order by automatic differentiation (:func:`scaled_cumulants`);
* the exact law of ``S_n`` when the rewards lie on a lattice (:func:`lattice`,
  :func:`sequence_law`), and best-of-N over whole sequences with ``N = e^{n delta}`` against
  ``phi_delta^{(x) n}`` (:func:`bon_vs_kl`);
* instances: English word frequencies with VADER valence (:func:`english_unigram`), and users'
  arrays read through :mod:`klrl.data` (:func:`load_problem`).

Numerics of the rate function. With ``u = sigma (r - x)`` (``sigma`` the sign of ``x - E_p r``)
the rate is ``I_p(x) = -min_{s >= 0} log E_p exp(s u)``: one convex problem in ``s >= 0``,
solved by safeguarded Newton on ``log(m - u_min) - log(u_max - m)`` (``m = E_s[u]``), a
function that is close to linear in ``s`` both near the mean and near the ends of the reward
range, where the optimal slope diverges. Centring at ``x`` keeps ``I_p`` at full relative
accuracy near the mean and near the ends. Derivatives are implicit: the envelope theorem
(``dI = -dA_u`` at the optimal slope) with the slope carrying its implicit derivative, so
first and second derivatives are exact. At the ends of the reward range ``I_p(r_max) = -log
p(r = r_max)`` (likewise ``r_min``), outside it ``+inf``.

Numerics of the sequence law. A plain FFT convolution has an absolute error of about
``1e-16`` times the peak of the law, so it loses the tails that best-of-N lives in. Here the
law is computed under several exponential tilts ``theta``: the ``n``-fold convolution of the
tilted token law ``q_theta(j) = p(j) e^{theta j - A(theta)}`` is ``P_n(s) e^{theta s - n
A(theta)}`` (exactly, for any value of the normalising constant used), it is computed by a
power in Fourier space, and every lattice point ``s`` takes its value from the tilt under
which it is largest relative to that tilt's peak, where the relative error is about ``n 1e-16
e^{n D}`` (``D`` the Bregman distance of ``s/n`` to the tilt's centre). Tilts are spaced
evenly in Fisher-Rao arc length (``sum sqrt(d theta d x)``) over the part of the range asked
for, so that ``n D`` stays small between neighbours. By Hoeffding's inequality a tilted law
of ``n`` tokens whose rewards span ``L - 1`` lattice steps has mass below ``2 e^{-67}``
farther than ``5.8 (L-1) sqrt(n)`` from its mean, so each tilt needs a cyclic FFT of only
``~9 (L-1) sqrt(n)`` points (aliasing stays below ``1e-13`` relative where a tilt is used),
not ``n (L-1)``. Best-of-N with ``N = e^{n delta}`` only needs the law where ``N`` draws can
land (beyond ``e^{-40}``): a window around ``n x_delta`` whose width is set by Chernoff bounds,
plus the total mass below it.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import logsumexp
from jaxtyping import Array, Float

from klrl import bon, data, divergences, tilted
from klrl._src import checks as _checks, cumulants as _cumulants
from klrl.divergences import expectation

__all__ = [
    "Lattice", "SequenceLaw", "BonVsKL", "LargeDeviations", "Unigram",
    "cgf", "rate_function", "tilted_rate_function", "scgf", "scgf_renyi", "scaled_cumulants", "large_deviations",
    "lattice", "sequence_law", "bon_vs_kl", "bon_vs_kl_lattice", "bon_vs_kl_enumerated",
    "english_unigram", "load_problem",
]


# ---------------------------------------------------------------------------------------------
# Validation.

def _named(name):
  """Gives a private core the public name used in its error messages."""
  def rename(fn):
    fn.__name__ = fn.__qualname__ = name
    return fn
  return rename


def _inputs(where, logp, reward):
  return tuple(_checks.logp_reward(where, logp, reward))   # the checks of the tilted policies


def _points(where, name, logp, reward, x):
  """Broadcasts per-row points ``x`` against the batch axes; returns the broadcast triple."""
  x = _checks.finite(where, name, _checks.floating(where, name, x)).astype(logp.dtype)
  try:
    shape = jnp.broadcast_shapes(logp.shape[:-1], x.shape)
  except ValueError:
    raise _checks.InputError(f"{where}: argument '{name}' has shape {x.shape}, which does not broadcast "
                             f"with the batch shape {logp.shape[:-1]}") from None
  v = logp.shape[-1]
  return (jnp.broadcast_to(logp, shape + (v,)), jnp.broadcast_to(reward, shape + (v,)),
          jnp.broadcast_to(x, shape))


def _row(where, name, x, batch, dtype, check):
  return check(where, name, _checks.batch_param(where, name, x, batch, dtype))


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


@_checks.public
def cgf(logp: Float[Array, "... v"], reward: Float[Array, "... v"], t: Float[Array, "..."]) -> Float[Array, "..."]:
  """Cumulant generating function ``A(t) = log E_p exp(t r)`` of the reward, for real ``t``.

  SPEC section 3. Computed by :func:`klrl.tilted.cumulants` (which takes ``t >= 0``) with the
  reward's sign flipped for ``t < 0``, so it is accurate for small and large ``|t|``.

  Args:
    logp: reference log-probabilities over the last axis (``-inf`` for zero mass).
    reward: finite rewards, broadcasting with ``logp``.
    t: real argument; broadcasts with the batch axes (a grid of ``t`` for one ``p`` is fine).

  Returns:
    ``A(t)``, with the broadcast shape of the batch axes and ``t``.
  """
  where = "klrl.memoryless.cgf"
  logp, reward = _inputs(where, logp, reward)
  logp, reward, t = _points(where, "t", logp, reward, t)
  return _cum(logp, reward, t).log_z


# ---------------------------------------------------------------------------------------------
# Rate functions.

def _support_range(logp, reward):
  mass = logp > -jnp.inf
  return (jnp.min(jnp.where(mass, reward, jnp.inf), axis=-1), jnp.max(jnp.where(mass, reward, -jnp.inf), axis=-1))


def _slope_root(logp, u, u_lo, u_hi, active):
  """``(s, log E_p e^{s u})`` at the ``s >= 0`` with ``E_{p e^{s u}}[u] = 0`` (no derivatives).

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

  def cond(state):
    s, lo, hi, g, dg, a, step, it = state
    open_ = ~jnp.isfinite(hi) | (hi - lo > 4 * jnp.finfo(dtype).eps * hi)
    return (it == 0) | ((it < 200) & jnp.any(active & (jnp.abs(g) > tol) & open_))

  def body(state):
    s, lo, hi, g, dg, _, step, it = state
    lo = jnp.where(g < 0, s, lo)
    hi = jnp.where(g > 0, s, hi)
    new = s - g / dg
    bisect = jnp.where(jnp.isfinite(hi), 0.5 * (lo + hi), 4 * jnp.maximum(s, tiny) + 1e-3)
    # Newton unless it leaves the bracket or does not at least halve the step (G is S-shaped
    # between its two linear ends, where plain Newton can oscillate).
    ok = jnp.isfinite(new) & (new > lo) & (new < hi) & (jnp.abs(new - s) <= 0.5 * step)
    new = jnp.where(ok, new, bisect)
    new = jnp.where(it == 0, s0, jnp.where(active & (jnp.abs(g) > tol), new, s))
    c = _cum(logp, u, new, prep)
    a = jnp.maximum(c.mean - u_lo, tiny)
    b = jnp.maximum(u_hi - c.mean, tiny)
    return (new, lo, hi, jnp.log(a) - jnp.log(b) - target, c.var * (1 / a + 1 / b), c.log_z,
            jnp.where(it == 0, jnp.inf, jnp.abs(new - s)), it + 1)

  nan = jnp.full_like(s0, jnp.nan)       # the first pass only evaluates G at s0
  inf = jnp.full_like(s0, jnp.inf)
  start = (s0, jnp.zeros_like(s0), inf, nan, nan, nan, inf, jnp.array(0))
  s, *_, log_z, _, _ = lax.while_loop(cond, body, start)
  return jnp.where(active, s, 0.0), jnp.where(active, log_z, 0.0)


@jax.custom_jvp
def _legendre(logp, u, u_lo, u_hi, active):
  """``I = -min_{s >= 0} log E_p e^{s u}`` and the minimiser ``s`` (see :func:`_slope_root`)."""
  s, log_z = _slope_root(logp, u, u_lo, u_hi, active)
  return -log_z, s


@_legendre.defjvp
def _legendre_jvp(primals, tangents):
  # Envelope theorem: dI = -dA_u(s*) at fixed s*. The slope inside is s* plus one Newton step,
  # whose derivative is the implicit one, so differentiating this rule again gives the exact
  # second derivatives (I'' = 1 / A''(s*) in x).
  logp, u, u_lo, u_hi, active = primals
  dlogp, du = tangents[:2]
  s, _ = _slope_root(logp, u, u_lo, u_hi, active)
  c = _cum(logp, u, s)
  s = s - (c.mean - lax.stop_gradient(c.mean)) / lax.stop_gradient(jnp.maximum(c.var, jnp.finfo(s.dtype).tiny))
  value, dvalue = jax.jvp(lambda lp, uu: -_cum(lp, uu, s).log_z, (logp, u), (dlogp, du))
  return (value, lax.stop_gradient(s)), (dvalue, jnp.zeros_like(s))


class _Rate(NamedTuple):
  value: Array      # I_p(x)
  slope: Array      # t = I_p'(x) (no derivatives), +-inf at the ends
  interior: Array


def _rate(logp, reward, x) -> _Rate:
  r_min, r_max = _support_range(logp, reward)
  mu = expectation(logp, reward)
  interior = (x > r_min) & (x < r_max)
  xs = jnp.where(interior, x, mu)
  sign = jnp.where(xs >= mu, 1.0, -1.0)
  u = sign[..., None] * (reward - xs[..., None])
  u_hi = jnp.where(sign > 0, r_max - xs, xs - r_min)
  u_lo = jnp.where(sign > 0, r_min - xs, xs - r_max)
  value, s = _legendre(logp, u, lax.stop_gradient(u_lo), lax.stop_gradient(u_hi), interior)

  def end(at):
    hit = (logp > -jnp.inf) & (reward == at[..., None])
    return -logsumexp(jnp.where(hit, logp, -jnp.inf), axis=-1)

  value = jnp.where(interior, value,
                    jnp.where(x == r_max, end(r_max), jnp.where(x == r_min, end(r_min), jnp.inf)))
  slope = jnp.where(interior, sign * s, jnp.where(x >= r_max, jnp.inf, -jnp.inf))
  return _Rate(value, slope, interior)


@_checks.public
def rate_function(logp: Float[Array, "... v"], reward: Float[Array, "... v"], x: Float[Array, "..."]) -> Float[Array, "..."]:
  """Cramer's rate function ``I_p(x) = sup_t (t x - A(t))`` of ``S_n / n`` under ``p``.

  SPEC section 3: ``P(S_n / n ~ x) = e^{-n I_p(x) + o(n)}``. Convex, zero at ``E_p r``, with
  ``I_p(x_delta) = delta`` at the mean reward of the KL-RL solution. At the ends of the reward
  range ``I_p(r_max) = -log p(r = r_max)`` and ``I_p(r_min) = -log p(r = r_min)`` exactly;
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
  logp, reward = _inputs(where, logp, reward)
  return _rate(*_points(where, "x", logp, reward, x)).value


def _solution(where, logp, reward, delta):
  delta = _row(where, "delta", delta, logp.shape[:-1], logp.dtype, _checks.nonnegative)
  return tilted.kl_constrained(logp, reward, delta)


@_checks.public
def tilted_rate_function(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."],
                         x: Float[Array, "..."]) -> Float[Array, "..."]:
  """Rate function of ``S_n / n`` under the KL-RL solution ``phi_delta^{(x) n}``.

  SPEC section 3: ``I_delta(x) = sup_t (t x - Lambda_delta(t)) = I_p(x) - delta - lam_delta (x -
  x_delta)``; zero only at ``x_delta = R(delta)``, ``I_delta''(x_delta) = 1 / Var_phi(r)``,
  ``+inf`` outside ``[r_min, r_max]``. Computed directly as Cramer's rate under ``phi_delta``
  (so it keeps its relative accuracy near ``x_delta``); the identity with ``I_p`` is a check.
  Saturated budgets (``delta >= delta_max``) give ``0`` at ``r_max`` and ``+inf`` elsewhere.

  Args:
    logp: reference log-probabilities over the last axis.
    reward: finite rewards.
    delta: per-token KL budget ``>= 0``, a scalar or one per row.
    x: per-token reward levels; broadcast with the batch axes.
  """
  where = "klrl.memoryless.tilted_rate_function"
  logp, reward = _inputs(where, logp, reward)
  phi = _solution(where, logp, reward, delta).log_policy
  return _rate(*_points(where, "x", phi, reward, x)).value


@_checks.public
def scgf(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."],
         t: Float[Array, "..."]) -> Float[Array, "..."]:
  """Scaled cumulant generating function ``Lambda_delta(t) = A(lam_delta + t) - A(lam_delta)``.

  SPEC section 3: ``(1/n) log E exp(t S_n) = Lambda_delta(t)`` under ``phi_delta^{(x) n}``, for
  every ``n``. Computed as the cumulant generating function of ``r`` under ``phi_delta``
  (accurate for small ``t``); saturated budgets give ``t r_max``.

  Args:
    logp: reference log-probabilities over the last axis.
    reward: finite rewards.
    delta: per-token KL budget ``>= 0``, a scalar or one per row.
    t: real argument; broadcasts with the batch axes.
  """
  where = "klrl.memoryless.scgf"
  logp, reward = _inputs(where, logp, reward)
  phi = _solution(where, logp, reward, delta).log_policy
  phi, reward, t = _points(where, "t", phi, reward, t)
  return _cum(phi, reward, t).log_z


@_checks.public
def scgf_renyi(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."],
               t: Float[Array, "..."]) -> Float[Array, "..."]:
  """The scaled cumulant generating function in Renyi cross-entropy form (Yang et al., 2024).

  With ``q_r = softmax(r)`` and ``H_alpha(p || q) = log(sum p q^(alpha-1)) / (1 - alpha)``
  (:func:`klrl.divergences.renyi_cross_entropy`), ``A(s) = s log sum e^r - s H_{1+s}(p || q_r)``,
  so (SPEC section 3)::

      Lambda_delta(t) = t log sum e^r + lam H_{1+lam}(p || q_r) - (lam + t) H_{1+lam+t}(p || q_r).

  Equal to :func:`scgf` up to rounding (the log-sum-exp terms cancel); it is provided to check
  the identity. Saturated budgets (``lam = inf``) give the limit ``t r_max``.
  """
  where = "klrl.memoryless.scgf_renyi"
  logp, reward = _inputs(where, logp, reward)
  sol = _solution(where, logp, reward, delta)
  return _renyi_form(*_points(where, "t", logp, reward, t), sol)


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


@_checks.public
def large_deviations(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."],
                     x: Float[Array, "..."], t: Float[Array, "..."]) -> LargeDeviations:
  """:func:`rate_function`, :func:`tilted_rate_function`, :func:`cgf`, :func:`scgf` and :func:`scgf_renyi` at once.

  One KL-constrained solve and one rate solve (under ``p`` and ``phi_delta``, at ``x`` and at
  ``x_delta``, together) for all of them: the same values as the separate functions, for a
  fraction of the compilation.

  Args:
    logp: reference log-probabilities over the last axis.
    reward: finite rewards.
    delta: per-token KL budget ``>= 0``, a scalar or one per row.
    x: per-token reward levels; broadcast with the batch axes.
    t: arguments of the generating functions; broadcast with the batch axes.
  """
  where = "klrl.memoryless.large_deviations"
  logp, reward = _inputs(where, logp, reward)
  sol = _solution(where, logp, reward, delta)
  both = jnp.stack([logp, sol.log_policy])
  lp, rw, xs = _points(where, "x", both, jnp.broadcast_to(reward, both.shape), x)
  # Rows flattened so that the points x and the targets x_delta share one solve.
  v = logp.shape[-1]
  rates = _rate(jnp.concatenate([lp.reshape(-1, v), both.reshape(-1, v)]),
                jnp.concatenate([rw.reshape(-1, v), jnp.broadcast_to(reward, both.shape).reshape(-1, v)]),
                jnp.concatenate([xs.reshape(-1), jnp.broadcast_to(sol.mean_reward, both.shape[:-1]).reshape(-1)])).value
  at_x, at_target = rates[:xs.size].reshape(xs.shape), rates[xs.size:].reshape(both.shape[:-1])
  gen = _cum(*_points(where, "t", both, jnp.broadcast_to(reward, both.shape), t)).log_z
  return LargeDeviations(rate=at_x[0], tilted_rate=at_x[1], cgf=gen[0], scgf=gen[1],
                         scgf_renyi=_renyi_form(*_points(where, "t", logp, reward, t), sol),
                         lam=sol.lam, target=sol.mean_reward, rate_at_target=at_target[0],
                         tilted_rate_at_target=at_target[1])


@_checks.public(static=("order",))
def scaled_cumulants(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."],
                     order: int = 4) -> Float[Array, "... k"]:
  """Scaled cumulants ``kappa_k(S_n) / n = A^{(k)}(lam_delta)``, ``k = 1..order``, under ``phi_delta^{(x) n}``.

  SPEC section 3. The derivatives at ``t = 0`` of the scaled cumulant generating function
  ``Lambda_delta(t) = log E_phi exp(t r)`` (:func:`scgf`), taken by nested forward-mode automatic
  differentiation of its log-sum-exp form with the reward centred at ``x_delta`` (so that the
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
  logp, reward = _inputs(where, logp, reward)
  sol = _solution(where, logp, reward, delta)
  centred = reward - sol.mean_reward[..., None]
  f = lambda t: logsumexp(sol.log_policy + t[..., None] * centred, axis=-1)
  t0 = jnp.zeros(logp.shape[:-1], logp.dtype)
  out, d = [], f
  for _ in range(order):
    d = functools.partial(lambda g, t: jax.jvp(g, (t,), (jnp.ones_like(t),))[1], d)
    out.append(d(t0))
  return jnp.stack(out, axis=-1).at[..., 0].add(sol.mean_reward)


# ---------------------------------------------------------------------------------------------
# Lattice rewards.

class Lattice(NamedTuple):
  """A per-token reward law on a lattice: ``P(r = (offset + span j) / scale) = exp(log_mass[..., j])``.

  Attributes:
    log_mass: log-probabilities of the lattice points ``j = 0..L-1`` (``-inf`` for none).
    offset: integer (stored as a float) of the lowest point, ``min r * scale``.
    span: step between lattice points, the greatest common divisor of the gaps.
    scale: rewards times ``scale`` are integers.
  """
  log_mass: Array
  offset: Array
  span: Array
  scale: Array

  @property
  def reward(self) -> Array:
    """The reward of each lattice point, ``(offset + span j) / scale``, shape ``(..., L)``."""
    j = jnp.arange(self.log_mass.shape[-1], dtype=self.log_mass.dtype)
    return (self.offset[..., None] + self.span[..., None] * j) / self.scale[..., None]


def _concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _integer_rewards(where, reward, scale, rounding, what="argument 'reward'"):
  """``reward * scale`` as integers (NumPy), or a clear error when they are not on the lattice."""
  if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
      or not math.isfinite(scale) or scale <= 0:
    raise _checks.InputError(f"{where}: argument 'scale' must be a finite Python number > 0, got {scale!r}")
  if not _concrete(reward):
    raise _checks.InputError(
        f"{where}: argument 'reward' must be concrete (the lattice size depends on its values): pass a NumPy "
        f"array, or build the lattice with klrl.memoryless.lattice outside jit/vmap and pass it to the "
        f"lattice-level functions")
  r = np.asarray(reward)
  r = r if np.issubdtype(r.dtype, np.floating) else r.astype(np.float64)
  if not np.all(np.isfinite(r)):
    raise _checks.InputError(f"{where}: {what} must be finite (got NaN or +-inf)")
  k = r.astype(np.float64) * float(scale)
  near = np.rint(k)
  tol = max(1e-6, 32 * float(np.finfo(r.dtype).eps)) * np.maximum(1.0, np.abs(k))
  bad = np.abs(k - near) > tol
  if bad.any() and not rounding:
    i = np.unravel_index(np.argmax(bad), bad.shape)
    raise _checks.InputError(
        f"{where}: {what} is not on a lattice: reward{[int(a) for a in i]} = {float(r[i])!r} gives "
        f"reward * scale = {float(k[i])!r}, which is not an integer (scale = {scale!r}). Pass the scale that makes every reward an "
        f"integer (e.g. scale=10 for multiples of 0.1), or rounding=True to round rewards to the nearest "
        f"multiple of 1/scale")
  if np.abs(near).max(initial=0.0) > 2.0 ** 52:
    raise _checks.InputError(f"{where}: {what} times scale exceeds 2^52; use a smaller scale")
  return near.astype(np.int64)


@_checks.public(static=("size",))
@_named("lattice")
def _lattice_masses(logp, index, size):
  where = "klrl.memoryless.lattice"
  logp = _checks.log_probs(where, "logp", logp)
  rows = math.prod(logp.shape[:-1])
  flat = (index + size * jnp.arange(rows).reshape(logp.shape[:-1] + (1,))).reshape(-1)
  lp = logp.reshape(-1)
  top = lax.stop_gradient(jax.ops.segment_max(lp, flat, rows * size))
  shift = jnp.where(top > -jnp.inf, top, 0.0)
  total = jax.ops.segment_sum(jnp.exp(lp - shift[flat]), flat, rows * size)
  pos = total > 0
  out = jnp.where(pos, jnp.log(jnp.where(pos, total, 1.0)) + shift, -jnp.inf).reshape(logp.shape[:-1] + (size,))
  return out - logsumexp(out, axis=-1, keepdims=True)    # sums over large vocabularies round


def lattice(logp: Float[Array, "... v"], reward: Float[Array, "... v"], scale: float = 1.0, *,
            rounding: bool = False) -> Lattice:
  """The per-token reward law on its lattice: tokens of equal reward merged, gaps divided out.

  The exact sequence law (SPEC section 3) needs rewards on a lattice: ``reward * scale`` must be
  integers (to ``1e-6`` relative); otherwise this raises :class:`klrl.InputError`, unless
  ``rounding=True`` asks to round them to the nearest multiple of ``1/scale``. The lattice runs
  from the smallest to the largest reward of positive mass (all rewards when ``logp`` is traced)
  in steps of the greatest common divisor of their gaps, so the law is aperiodic. Masses are
  summed in log space per lattice point (differentiable in ``logp``) and renormalised.

  This is a preparation step: its output size depends on the values of ``reward`` (and of
  ``scale``), so ``reward`` must be concrete (not traced by ``jit``/``vmap``). Everything
  downstream (:func:`sequence_law`, :func:`bon_vs_kl_lattice`) takes the :class:`Lattice` and
  is jittable.

  Args:
    logp: reference log-probabilities over the last axis.
    reward: finite rewards (concrete), broadcasting with ``logp``.
    scale: positive Python number such that ``reward * scale`` are integers.
    rounding: round ``reward * scale`` to integers instead of refusing non-lattice rewards.

  Returns:
    A :class:`Lattice` with ``log_mass`` of shape ``batch + (L,)``.
  """
  where = "klrl.memoryless.lattice"
  given_logp, given_reward = logp, reward   # as given: NumPy constants stay concrete under jit
  logp = _checks.floating(where, "logp", logp, 1)
  reward = _checks.floating(where, "reward", reward, 1)
  _checks.same_support(where, "logp", logp, "reward", reward)
  shape = jnp.broadcast_shapes(logp.shape, reward.shape)
  k = np.broadcast_to(_integer_rewards(where, given_reward, scale, rounding), shape)
  mass = np.broadcast_to(np.asarray(given_logp) > -np.inf, shape) if _concrete(given_logp) else np.ones(shape, bool)
  mass = mass | ~mass.any(axis=-1, keepdims=True)      # rows without mass fail the logp check later
  big = np.iinfo(np.int64).max
  k_min = np.where(mass, k, big).min(axis=-1)
  k_max = np.where(mass, k, -big).max(axis=-1)
  span = np.maximum(np.gcd.reduce(np.where(mass, k - k_min[..., None], 0), axis=-1), 1)
  size = int(((k_max - k_min) // span).max(initial=0)) + 1
  if size > 2 ** 24:
    raise _checks.InputError(f"{where}: argument 'reward' spans {size} lattice points (more than 2^24); use a "
                             f"coarser scale")
  index = np.where(mass, (k - k_min[..., None]) // span[..., None], size).astype(np.int32)
  log_mass = _lattice_masses(jnp.broadcast_to(logp, shape), jnp.asarray(index), size)
  dtype = log_mass.dtype
  return Lattice(log_mass, jnp.asarray(k_min, dtype), jnp.asarray(span, dtype), jnp.full(shape[:-1], float(scale), dtype))


# ---------------------------------------------------------------------------------------------
# Exact law of S_n on the lattice, by tilted FFTs.

class SequenceLaw(NamedTuple):
  """Law of the sequence reward ``S_n`` on its lattice (see :func:`sequence_law`).

  ``P(S_n = (start + span i) / scale) = exp(log_prob[..., i])`` for ``i = 0..n (L-1)``.

  Attributes:
    log_prob: log-probabilities; ``-inf`` off the support (and below the resolution, see
      :func:`sequence_law`).
    start: ``n * offset``, the lattice integer of ``i = 0``.
    span: lattice step.
    scale: ``S_n * scale`` are integers.
  """
  log_prob: Array
  start: Array
  span: Array
  scale: Array


def _fft_size(t: int) -> int:
  """The smallest ``2^a`` or ``3 * 2^a`` that is at least ``t``."""
  m = 1
  while m < t:
    m *= 2
  return 3 * m // 4 if m >= 4 and 3 * m // 4 >= t else m


def _window(levels: int, n_max: int, total: int) -> int:
  """FFT size per tilt: ``~9 (L-1) sqrt(n)`` points, or the whole support when that is smaller."""
  w = _fft_size(int(math.ceil(9 * (levels - 1) * math.sqrt(n_max))) + 16)
  return _fft_size(total) if w >= total else w


def _gcd(d, mask):
  """Greatest common divisor of the integers ``d`` where ``mask`` holds (1 if none)."""
  g0 = _checks.vary_alike(jnp.zeros((), d.dtype), (d, mask))
  g = lax.fori_loop(0, d.shape[-1], lambda i, g: jnp.where(mask[i], jnp.gcd(g, d[i]), g), g0)
  return jnp.maximum(g, 1)


class _Support(NamedTuple):
  lo: Array     # lowest and highest index of positive mass (ints)
  hi: Array
  span: Array   # gcd of the gaps (int)


def _support(log_mass) -> _Support:
  size = log_mass.shape[-1]
  j = jnp.arange(size, dtype=jnp.int32)
  has = log_mass > -jnp.inf
  lo = jnp.min(jnp.where(has, j, size - 1))
  hi = jnp.max(jnp.where(has, j, 0))
  return _Support(lo, hi, _gcd(j - lo, has))


class _Grid(NamedTuple):
  theta: Array   # tilts, increasing, symmetric and log-spaced around 0
  x: Array       # their means A'(theta) (lattice index units)
  rate: Array    # I(x) = theta x - A(theta), the KL of the tilt to p


def _grid(log_mass, j, points: int = 400) -> _Grid:
  """The tilted family on ``theta = 0, +-10^[-5, 5] / spread`` (``2 points + 1`` tilts, 6% apart).

  Only used to place tilts: ``x`` and ``I(x)`` need not be accurate beyond a few digits, and
  any value of the constant ``I`` gives an exact tilted law (its normalisation is divided out).
  """
  dtype = log_mass.dtype
  has = log_mass > -jnp.inf
  spread = jnp.maximum(jnp.max(jnp.where(has, j, -jnp.inf)) - jnp.min(jnp.where(has, j, jnp.inf)), 1.0)
  pos = jnp.logspace(-5.0, 5.0, points, dtype=dtype) / spread
  theta = jnp.concatenate([-pos[::-1], jnp.zeros(1, dtype), pos])
  lw = log_mass[None, :] + theta[:, None] * j[None, :]
  a = logsumexp(lw, axis=-1)
  x = jnp.sum(jnp.exp(lw - a[:, None]) * j[None, :], axis=-1)
  return lax.stop_gradient(_Grid(theta, x, jnp.maximum(theta * x - a, 0.0)))


def _arc(grid: _Grid, x_lo, x_hi, count: int) -> _Grid:
  """``count`` tilts of the grid with means in ``[x_lo, x_hi]``, evenly spaced in Fisher-Rao length.

  The length of the tilted family between tilts ``a`` and ``b`` is ``sum sqrt(d theta d x)``
  along the curve (``d x = A'' d theta``; the summand is the square root of the symmetric KL
  between neighbours), so tilts evenly spaced in it are evenly spaced in the error exponent
  ``n D``. Each tilt is the grid point nearest its target length.
  """
  keep = (grid.x >= x_lo) & (grid.x <= x_hi)
  keep = jnp.where(keep.any(), keep, jnp.arange(keep.shape[0]) == keep.shape[0] // 2)
  seg = jnp.sqrt(jnp.maximum(jnp.diff(grid.theta) * jnp.diff(grid.x), 0.0)) * (keep[1:] & keep[:-1])
  u = jnp.concatenate([jnp.zeros(1, seg.dtype), jnp.cumsum(seg)])
  t = jnp.linspace(0.0, 1.0, count, dtype=u.dtype) * jnp.max(jnp.where(keep, u, 0.0))
  dist = jnp.where(keep[None, :], jnp.abs(u[None, :] - t[:, None]), jnp.inf)
  return jax.tree.map(lambda a: a[jnp.argmin(dist, axis=-1)], grid)


def _x_at_kl(grid: _Grid, kl, upper: bool):
  """Mean of the tilt with the given KL on one side of ``theta = 0`` (clamped to the grid)."""
  half = grid.theta.shape[0] // 2
  if upper:
    return jnp.interp(kl, grid.rate[half:], grid.x[half:])
  return jnp.interp(kl, grid.rate[: half + 1][::-1], grid.x[: half + 1][::-1])


def _caps(sup: _Support, n, dtype):
  """Half a lattice step of ``S_n / n`` inside the two end points (the ends themselves are exact)."""
  half = 0.5 * sup.span.astype(dtype) / n
  return sup.lo.astype(dtype) + half, sup.hi.astype(dtype) - half


def _tilted_law(log_mass, n, tilts: _Grid, sup: _Support, base, buf: int, window: int):
  """``log P_n(s)`` for ``s = base..base+buf-1`` (lattice index units) from the given tilts.

  Each tilt's ``n``-fold convolution is the inverse FFT of ``X^n``, ``X`` the FFT of the tilted
  token law placed at its (integer) centre, on ``window`` points; the window is laid over the
  lattice around ``n`` times the tilt's mean. A point takes the value of the tilt under which it
  is largest relative to the tilt's peak (the most accurate one); points resolved by no tilt,
  and points off the support, are ``-inf``. The two end points are exact: ``n log p(end)``.
  """
  dtype = log_mass.dtype
  length = log_mass.shape[-1]
  j = jnp.arange(length, dtype=dtype)
  ni = jnp.round(n).astype(jnp.int32)
  lo, hi = ni * sup.lo, ni * sup.hi
  resolved = jnp.log(16 * n * jnp.finfo(dtype).eps)   # relative error ~ n eps e^{-score}: keep < ~1/2

  def one(carry, tilt):
    best_score, best_val = carry
    theta, mean, rate = tilt
    centre = jnp.clip(jnp.round(mean).astype(jnp.int32), 0, length - 1)
    q = jnp.exp(log_mass + theta * (j - mean) + rate)   # the tilted token law: p e^{theta j - A(theta)}
    slot = jnp.mod(jnp.arange(length, dtype=jnp.int32) - centre, window)
    x = jnp.fft.rfft(jnp.zeros(window, dtype).at[slot].add(q))
    mag, ph = n * jnp.log(jnp.abs(x)), n * jnp.angle(x)
    law = jnp.fft.irfft(jnp.exp(mag) * lax.complex(jnp.cos(ph), jnp.sin(ph)), window)
    # The window (global start w0) around n * mean, inside the support when it fits; its place in
    # the padded buffer, which holds positions base - window .. base + buf + window.
    w0 = jnp.clip(jnp.round(n * mean).astype(jnp.int32) - window // 2, lo, jnp.maximum(hi + 1 - window, lo))
    p0 = w0 - base + window
    inside = (p0 >= 0) & (p0 <= buf + window)
    p0 = jnp.clip(p0, 0, buf + window)
    w = w0 + jnp.arange(window, dtype=jnp.int32)
    vals = law[jnp.mod(w - ni * centre, window)]
    ok = (vals > 0) & inside
    log_v = jnp.log(jnp.where(ok, vals, 1.0))
    score = jnp.where(ok, log_v - jnp.log(jnp.max(law)), -jnp.inf)
    # log q sums to 0 only up to rounding, and the n-fold law inherits n times that error:
    # dividing by (sum q)^n removes it (the dominant error of the bulk).
    cand = log_v - n * jnp.log(jnp.sum(q)) - theta * (w.astype(dtype) - n * mean) - n * rate
    bs = lax.dynamic_slice(best_score, (p0,), (window,))
    bv = lax.dynamic_slice(best_val, (p0,), (window,))
    better = score > bs
    best_score = lax.dynamic_update_slice(best_score, jnp.where(better, score, bs), (p0,))
    best_val = lax.dynamic_update_slice(best_val, jnp.where(better, cand, bv), (p0,))
    return (best_score, best_val), None

  init = (jnp.full(buf + 2 * window, -jnp.inf, dtype), jnp.full(buf + 2 * window, -jnp.inf, dtype))
  (score, value), _ = lax.scan(one, _checks.vary_alike(init, (log_mass, tilts)), tuple(tilts))
  score, value = score[window:window + buf], value[window:window + buf]
  s = base + jnp.arange(buf, dtype=jnp.int32)
  valid = (s >= lo) & (s <= hi) & (jnp.mod(s - lo, sup.span) == 0) & (score > resolved)
  out = jnp.where(valid, value, -jnp.inf)
  return jnp.where(s == hi, n * log_mass[sup.hi], jnp.where(s == lo, n * log_mass[sup.lo], out))


def _unpack(where, lat):
  """The fields of a :class:`Lattice` (a tuple, which the public wrapper would turn into one array)."""
  if not isinstance(lat, Lattice):
    raise _checks.InputError(f"{where}: argument 'lat' must be a klrl.memoryless.Lattice (see lattice()), got "
                             f"{type(lat).__name__}")
  return tuple(lat)


def _check_lattice(where, log_mass, *rest):
  log_mass = _checks.log_probs(where, "lat", _checks.floating(where, "lat", log_mass, 1))
  batch = log_mass.shape[:-1]
  return (log_mass,) + tuple(jnp.broadcast_to(_checks.floating(where, "lat", a), batch).astype(log_mass.dtype)
                             for a in rest)


def _count(where, name, x, low):
  if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < low:
    raise _checks.InputError(f"{where}: argument '{name}' must be a Python int >= {low}, got {x!r}")
  return int(x)


@_checks.public(static=("n", "tilts", "window"))
@_named("sequence_law")
def _sequence_law(log_mass, offset, span, scale, n, tilts, log_floor, window):
  where = "klrl.memoryless.sequence_law"
  log_mass, offset, span, scale = _check_lattice(where, log_mass, offset, span, scale)
  log_floor = _checks.finite(where, "log_floor", _checks.floating(where, "log_floor", log_floor)).astype(log_mass.dtype)
  length = log_mass.shape[-1]
  size = n * (length - 1) + 1
  nf = jnp.asarray(float(n), log_mass.dtype)
  j = jnp.arange(length, dtype=log_mass.dtype)

  def row(lm):
    sup = _support(lm)
    grid = _grid(lm, j)
    lo, hi = _caps(sup, nf, lm.dtype)
    x_lo = jnp.clip(_x_at_kl(grid, -log_floor / nf, False), lo, hi)
    x_hi = jnp.clip(_x_at_kl(grid, -log_floor / nf, True), x_lo, hi)
    law = _tilted_law(lm, nf, _arc(grid, x_lo, x_hi, tilts), sup, 0, size, window)
    # The computed law sums to 1 within ~n 1e-16 (rounding in the Fourier powers); renormalising
    # removes that from cumulative sums at no cost to the relative accuracy.
    return law - lax.stop_gradient(logsumexp(law))

  batch = log_mass.shape[:-1]
  out = jax.vmap(row)(log_mass.reshape((-1, length))).reshape(batch + (size,))
  return SequenceLaw(out, n * offset, span, scale)


def sequence_law(lat: Lattice, n: int, *, tilts: int = 16, log_floor: float = -700.0) -> SequenceLaw:
  """Exact law of the sequence reward ``S_n = sum_i r(y_i)`` of ``n`` i.i.d. tokens (SPEC section 3).

  The ``n``-fold convolution of the per-token lattice law, computed by FFT under ``tilts``
  exponential tilts (see the module docstring) placed over the range of ``S_n / n`` where
  ``log P(S_n = s) >= log_floor`` (by Chernoff's bound, outside it the probabilities are
  smaller). On that range every log-probability is accurate to about ``n 1e-15`` relative in
  float64 (measured: below ``1e-9`` for ``n <= 1e5``); the two end points are exact. Points
  outside it get the value of the nearest tilt when that is resolved, else ``-inf``. Cost:
  ``tilts`` FFTs of ``~9 (L-1) sqrt(n)`` points plus ``O(n L)``.

  Args:
    lat: the per-token law, from :func:`lattice`.
    n: sequence length, a Python int ``>= 1`` (static: the output has ``n (L-1) + 1`` points).
    tilts: number of tilts (static).
    log_floor: smallest log-probability that must be accurate (default ``-700``, i.e. ``1e-304``).

  Returns:
    :class:`SequenceLaw` with ``log_prob`` of shape ``batch + (n (L-1) + 1,)``.
  """
  where = "klrl.memoryless.sequence_law"
  fields = _unpack(where, lat)
  n = _count(where, "n", n, 1)
  window = _fft_window(where, lat.log_mass, n, n * (int(np.shape(lat.log_mass)[-1]) - 1) + 1)
  return _sequence_law(*fields, n, _count(where, "tilts", tilts, 2), log_floor, window)


# ---------------------------------------------------------------------------------------------
# Best-of-N over whole sequences against the KL-RL solution.

class BonVsKL(NamedTuple):
  """Best-of-N over sequences of ``n`` tokens, ``N = e^{n delta}``, against ``phi_delta^{(x) n}``.

  Attributes (per token, i.e. divided by ``n``, except the win rate):
    mean_reward: ``E_{pi_N}[S_n] / n``; tends to ``x_delta`` as ``n -> inf``.
    kl: ``KL(pi_N || p^{(x) n}) / n``; tends to ``delta``.
    kl_to_tilted: ``KL(pi_N || phi_delta^{(x) n}) / n``; tends to 0 (``+inf`` when saturated).
    win_rate: ``P(S_n > S_n') + P(S_n = S_n') / 2``, ``S_n ~ pi_N`` against ``S_n' ~ p^{(x) n}``.
    target_reward: ``x_delta = R(delta)``, the per-token reward of the KL-RL solution.
    lam: ``lam_delta`` (``inf`` when saturated).
    predicted_gap: ``log n / (2 lam_delta n)``, the predicted ``x_delta - mean_reward``.
  """
  mean_reward: Array
  kl: Array
  kl_to_tilted: Array
  win_rate: Array
  target_reward: Array
  lam: Array
  predicted_gap: Array


class _Plan(NamedTuple):
  """Per-row set-up of best-of-N over sequences (lattice index units)."""
  log_mass: Array
  offset: Array
  span: Array
  scale: Array
  delta: Array
  n: Array
  sol: tilted.Constrained   # the KL-RL solution at delta (log_policy dropped)
  tilts: _Grid              # (batch, tilts) tilts of the law of S_n
  first: Array              # range of S_n where best-of-N has mass (beyond e^-40)
  last: Array


def _plan_row(log_mass, n, delta, sol, x_up, x_hi, x_down, tilts: int):
  dtype = log_mass.dtype
  j = jnp.arange(log_mass.shape[-1], dtype=dtype)
  sup = _support(log_mass)
  grid = _grid(log_mass, j)
  lo, hi = _caps(sup, n, dtype)
  x_a = jnp.clip(jnp.where(delta - (8 + jnp.log1p(n)) / n > 0, x_up, x_down), lo, hi)
  x_b = jnp.clip(x_hi, x_a, hi)
  arc = _arc(grid, x_a, x_b, tilts - 4)
  # The bulk: tilts at 0 and at +-5 standard deviations of S_n (so that the mass below the range
  # is right to ~1e-16, for the win rate), sigma from the grid points next to 0.
  half = grid.theta.shape[0] // 2
  var = (grid.x[half + 1] - grid.x[half - 1]) / (grid.theta[half + 1] - grid.theta[half - 1])
  reach = 5 * jnp.sqrt(jnp.maximum(var, 0.0) / n)
  near = lambda x: jnp.argmin(jnp.abs(grid.x - x))
  bulk = jnp.stack([half, near(grid.x[half] - reach), near(grid.x[half] + reach)])
  sat = sol.saturated
  at_lam = _Grid(jnp.where(sat, arc.theta[-1], sol.lam), jnp.where(sat, arc.x[-1], sol.mean_reward),
                 jnp.where(sat, arc.rate[-1], sol.kl))
  chosen = jax.tree.map(lambda g, a, b: jnp.concatenate([g[bulk], a[None], b]), grid, at_lam, arc)
  ni = jnp.round(n).astype(jnp.int32)
  first = jnp.clip(jnp.floor(n * x_a).astype(jnp.int32) - 2, ni * sup.lo, ni * sup.hi)
  last = jnp.clip(jnp.ceil(n * x_b).astype(jnp.int32) + 2, first, ni * sup.hi)
  return lax.stop_gradient(chosen), first, last


@_checks.public(static=("tilts", "size"))
@_named("bon_vs_kl_lattice")
def _bon_plan(log_mass, offset, span, scale, delta, n, tilts, size) -> _Plan:
  where = "klrl.memoryless.bon_vs_kl_lattice"
  log_mass, offset, span, scale = _check_lattice(where, log_mass, offset, span, scale)
  dtype = log_mass.dtype
  length = log_mass.shape[-1]
  delta = _checks.nonnegative(where, "delta", _checks.floating(where, "delta", delta)).astype(dtype)
  n = _checks.floating(where, "n", n).astype(dtype)
  n = _checks.holds(where, "n", n, (n >= 1) & (n == jnp.round(n)), "must be an integer >= 1")
  if size is not None:
    n = _checks.holds(where, "n", n, n * (length - 1) + 1 <= size,
                      f"is too large for argument 'size' = {size} (n (L-1) + 1 <= size, L = {length} lattice points)")
  try:
    batch = jnp.broadcast_shapes(log_mass.shape[:-1], delta.shape, n.shape)
  except ValueError:
    raise _checks.InputError(f"{where}: arguments 'delta' {delta.shape} and 'n' {n.shape} do not broadcast with "
                             f"the batch shape {log_mass.shape[:-1]}") from None
  log_mass = jnp.broadcast_to(log_mass, batch + (length,))
  offset, span, scale, delta, n = (jnp.broadcast_to(a, batch) for a in (offset, span, scale, delta, n))
  j = jnp.broadcast_to(jnp.arange(length, dtype=dtype), log_mass.shape)
  # Where best-of-N has mass (beyond e^-40): P_N(s) <= N P_n(s) <= e^{n delta - n I(s/n)} bounds it
  # above by the tilt with KL delta + 40/n; P_N(s) <= exp(-N P(S_n > s)) bounds it below by about
  # KL delta - (8 + log n)/n on the upper side, or, when N is moderate, P_N(s) <= N F(s)^{N-1}
  # P_n(s) <= N e^{-n I(s/n) max(N-1, 1)} by the tilt with that KL on the lower side. One solve
  # for the four budgets.
  kl_up = jnp.maximum(delta - (8 + jnp.log1p(n)) / n, 0.0)
  kl_down = (40 + n * delta) / (n * jnp.maximum(jnp.expm1(n * delta), 1.0))
  sols = tilted.kl_constrained(jnp.stack([log_mass] * 4), jnp.stack([j, j, j, -j]),
                               jnp.stack([delta, kl_up, delta + 40 / n, kl_down]))
  sol = sols._replace(log_policy=sols.log_policy[..., :1], iterations=jnp.zeros((4,) + batch, jnp.int32))
  sol = jax.tree.map(lambda a: a[0], sol)
  x_up, x_hi, x_down = sols.mean_reward[1], sols.mean_reward[2], -sols.mean_reward[3]
  flat = lambda a: a.reshape((-1,) + a.shape[len(batch):])
  row = lambda *args: _plan_row(*args, tilts)
  out = jax.vmap(row)(*map(flat, (log_mass, n, delta)), jax.tree.map(flat, sol), *map(flat, (x_up, x_hi, x_down)))
  chosen, first, last = jax.tree.map(lambda a: a.reshape(batch + a.shape[1:]), out)
  return _Plan(log_mass, offset, span, scale, delta, n, sol, chosen, first, last)


class _Window(NamedTuple):
  log_pn: Array       # log P(S_n in level), levels: [everything below, first, ..., first + width - 1]
  log_tilted: Array   # the same under phi^n
  level: Array        # lattice index of each level (the lump below at first - 1)


def _bon_window(plan: _Plan, width: int, window: int) -> _Window:
  """The law of ``S_n`` on ``width`` points from ``plan.first`` (and the mass below, lumped)."""

  def row(log_mass, n, sol, chosen, first):
    sup = _support(log_mass)
    ni = jnp.round(n).astype(jnp.int32)
    base = jnp.maximum(jnp.minimum(first, ni * sup.hi + 1 - width), ni * sup.lo)
    law = _tilted_law(log_mass, n, chosen, sup, base, width, window)
    s = base + jnp.arange(width, dtype=jnp.int32)
    sf = s.astype(log_mass.dtype)
    lam = jnp.where(sol.saturated, 0.0, sol.lam)
    tilt = jnp.where(sol.saturated, jnp.where(s == ni * sup.hi, 0.0, -jnp.inf),
                     law + lam * (sf - n * sol.mean_reward) + n * sol.kl)
    # Mass above the range is below e^{-n delta - 40}; the mass below is 1 minus the rest. It is
    # positive when the range starts above the support (floored at the smallest double, where
    # rounding leaves nothing: best-of-N puts at most e^-40 there), and none below the top when
    # the tilted law is the point mass at the top (saturated).
    tiny = jnp.finfo(log_mass.dtype).tiny
    some = (base > ni * sup.lo)
    below = lambda lw, some: jnp.where(some, jnp.log(jnp.maximum(-jnp.expm1(logsumexp(lw)), tiny)), -jnp.inf)
    lump = lambda lw, some: jnp.concatenate([below(lw, some)[None], lw])
    return _Window(lump(law, some), lump(tilt, some & ~sol.saturated),
                   jnp.concatenate([(base - 1)[None], s]).astype(log_mass.dtype))

  batch = plan.n.shape
  flat = lambda a: a.reshape((-1,) + a.shape[len(batch):])
  out = jax.vmap(row)(flat(plan.log_mass), flat(plan.n), jax.tree.map(flat, plan.sol), jax.tree.map(flat, plan.tilts),
                      flat(plan.first))
  return jax.tree.map(lambda a: a.reshape(batch + a.shape[1:]), out)


def _per_token(plan: _Plan, st, kl_t, singular) -> BonVsKL:
  n, sol = plan.n, plan.sol
  lam = sol.lam * plan.scale / plan.span
  gap = jnp.where(n == 1, 0.0, jnp.log(n) / (2 * jnp.where(n == 1, 1.0, lam) * n))
  return BonVsKL(
      mean_reward=plan.offset / plan.scale + plan.span * st.mean_reward / (plan.scale * n),
      kl=st.kl / n,
      kl_to_tilted=jnp.where(singular | (sol.saturated & (sol.kl > 0)), jnp.inf, kl_t / n),
      win_rate=jnp.clip(st.win_rate, 0.0, 1.0),   # the level law at log N ~ 1e4 rounds to ~1e-12
      target_reward=(plan.offset + plan.span * sol.mean_reward) / plan.scale,
      lam=lam,
      predicted_gap=gap)


@functools.partial(jax.jit, static_argnames=("width", "window"))
def _bon_stats(plan: _Plan, width: int, window: int) -> BonVsKL:
  """Best-of-N level law and statistics of SPEC sections 2-3 on the law of ``S_n`` (one compilation)."""
  win = _bon_window(plan, width, window)
  log_law = bon.level_law(win.log_pn, log_n=plan.n * plan.delta)
  st = bon.level_stats(win.log_pn, win.level, log_law)
  # KL to the tilted law is +inf where best-of-N has mass (even far below the smallest double,
  # which the log-space level law still resolves) where the tilted law has none.
  singular = jnp.any((log_law > -jnp.inf) & (win.log_tilted == -jnp.inf), axis=-1)
  return _per_token(plan, st, divergences.kl(log_law, win.log_tilted), singular)


def _fft_window(where, log_mass, n, size):
  """Static FFT size per tilt (``~9 (L-1) sqrt(n)``): from the data when concrete, else from ``size``."""
  length = int(np.shape(log_mass)[-1])
  if _concrete(n) and _concrete(log_mass):
    n_arr = np.asarray(n, dtype=np.float64)
    if n_arr.size == 0 or not np.all(np.isfinite(n_arr)) or n_arr.min() < 1 or np.any(n_arr != np.round(n_arr)):
      raise _checks.InputError(f"{where}: argument 'n' must be an integer >= 1, got {n!r}")
    has = np.asarray(log_mass) > -np.inf
    j = np.arange(length)
    spread = np.maximum(np.where(has, j, 0).max(axis=-1) - np.where(has, j, length).min(axis=-1), 0)
    spread, n_arr = np.broadcast_arrays(spread, n_arr)
    total = int((n_arr * spread).max()) + 1
    return min(_fft_size(int(math.ceil(9 * (spread * np.sqrt(n_arr)).max())) + 16), _fft_size(total))
  if size is None:
    raise _checks.InputError(f"{where}: argument 'n' or 'lat' is traced; pass a static size >= max(n) (L-1) + 1")
  return _window(length, max((size - 1) // max(length - 1, 1), 1), size)


def bon_vs_kl_lattice(lat: Lattice, delta: Float[Array, "..."], n, *, size: int | None = None,
                      tilts: int = 10) -> BonVsKL:
  """:func:`bon_vs_kl` on a per-token law already on its lattice (jittable in ``delta`` and ``n``).

  Args:
    lat: the per-token law (:func:`lattice`).
    delta: per-token KL budget ``>= 0``; broadcasts with the batch axes of ``lat`` and ``n``.
    n: sequence length(s), integers ``>= 1`` (an array: one compilation for all of them).
    size: static length of the lattice buffer, ``>= max(n) (L-1) + 1`` (checked, also under
      ``jit``); by default the next FFT size above it, computed from ``n`` (which must then be
      concrete).
    tilts: number of exponential tilts of the sequence law (static, ``>= 5``): three for the
      bulk, one at ``lam_delta`` and the rest spread over the range where best-of-N has mass.

  Returns:
    :class:`BonVsKL`, with the broadcast batch shape of ``lat``, ``delta`` and ``n``.
  """
  where = "klrl.memoryless.bon_vs_kl_lattice"
  fields = _unpack(where, lat)
  if size is not None:
    size = _count(where, "size", size, 1)
  window = _fft_window(where, lat.log_mass, n, size)
  length = int(np.shape(lat.log_mass)[-1])
  if size is not None and _concrete(n) and np.max(np.asarray(n)) * (length - 1) + 1 > size:   # else checked in the jit
    raise _checks.InputError(f"{where}: argument 'n' is too large for argument 'size' = {size} (n (L-1) + 1 <= size, "
                             f"L = {length} lattice points)")
  plan = _bon_plan(*fields, delta, n, _count(where, "tilts", tilts, 5), size)
  if _concrete(plan.first):
    width = _fft_size(int(np.max(np.asarray(plan.last) - np.asarray(plan.first))) + 1)
  else:
    width = size
  return _bon_stats(plan, width, window)


def bon_vs_kl(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."], n,
              scale: float = 1.0, *, rounding: bool = False, tilts: int = 10) -> BonVsKL:
  """Best-of-N over whole sequences with ``N = e^{n delta}`` against the KL-RL solution (SPEC section 3).

  A sequence of ``n`` i.i.d. tokens from ``p`` has reward ``S_n = sum_i r(y_i)``. Best-of-N
  with ``N = e^{n delta}`` draws ``N`` sequences and keeps one of largest ``S_n``; the KL-RL
  solution at budget ``n delta`` is ``phi_delta^{(x) n}``. Both depend on a sequence only through
  ``S_n``, so every quantity reduces to the law of ``S_n`` on its lattice (:func:`sequence_law`):
  the best-of-N level law of SPEC section 2 with ``log N = n delta`` (:func:`klrl.bon.level_law`,
  never forming ``N``), ``KL(pi_N || p^n) = sum_s P_N(s) log(P_N(s) / P_n(s))`` and
  ``KL(pi_N || phi^n) = sum_s P_N(s) log(P_N(s) / P_{n,lam}(s))`` with the tilted law
  ``P_{n,lam}(s) = P_n(s) e^{lam s - n A(lam)}``. As ``n -> inf`` the per-token reward, KL and KL
  to ``phi`` tend to ``(x_delta, delta, 0)``, the reward gap being about ``log n / (2 lam n)``.
  For ``delta >= delta_max`` the rewards still tend to ``r_max`` but ``KL(pi_N || phi^n) = +inf``.

  The sequence law is computed only where it matters: accurately (relative) where best-of-N has
  mass, and to absolute accuracy in the bulk (for the win rate). Rewards must lie on a lattice
  (``reward * scale`` integers; see :func:`lattice`); ``reward`` and ``n`` must be concrete
  (use :func:`bon_vs_kl_lattice` under ``jit``). Differentiable in ``delta`` and ``logp``.

  Args:
    logp: reference log-probabilities over the last axis.
    reward: per-token rewards on the lattice ``(1/scale) Z`` (concrete).
    delta: per-token KL budget ``>= 0``; broadcasts with the batch axes and ``n``.
    n: sequence length(s), integers ``>= 1``, up to ``~1e5`` (and beyond, memory permitting).
    scale: rewards times ``scale`` are integers (e.g. 10 for multiples of 0.1).
    rounding: round rewards to the lattice instead of refusing non-lattice rewards.
    tilts: number of exponential tilts of the sequence law (static).

  Returns:
    :class:`BonVsKL`: per-token ``mean_reward``, ``kl``, ``kl_to_tilted``, the ``win_rate``, the
    targets ``target_reward = x_delta`` and ``lam = lam_delta``, and ``predicted_gap``.
  """
  lat = lattice(logp, reward, scale, rounding=rounding)
  return bon_vs_kl_lattice(lat, delta, n, tilts=tilts)


@_checks.public(static=("n",))
@_named("bon_vs_kl_enumerated")
def _enumerated(logp, reward, k, delta, n):
  where = "klrl.memoryless.bon_vs_kl_enumerated"
  logp, reward = _inputs(where, logp, reward)
  delta = _row(where, "delta", delta, logp.shape[:-1], logp.dtype, _checks.nonnegative)
  v = logp.shape[-1]
  seqs = np.indices((v,) * n).reshape(n, -1)                     # (n, V^n): every sequence
  log_seq = sum(logp[..., seqs[i]] for i in range(n))
  total = sum(jnp.broadcast_to(k, logp.shape)[..., seqs[i]] for i in range(n)).astype(logp.dtype)
  lv = bon.levels(log_seq, total)
  log_law = bon.level_law(lv.log_mass, log_n=n * delta)
  idx = lv.index
  log_pi = log_seq + jnp.take_along_axis(log_law - lv.log_mass, idx, axis=-1)
  log_pi = jnp.where(log_seq > -jnp.inf, log_pi, -jnp.inf)
  phi = tilted.kl_constrained(logp, reward, delta)
  log_phi = sum(phi.log_policy[..., seqs[i]] for i in range(n))
  rew = jnp.broadcast_to(reward, logp.shape)
  seq_reward = sum(rew[..., seqs[i]] for i in range(n))
  return BonVsKL(
      mean_reward=expectation(log_pi, seq_reward) / n,
      kl=divergences.kl(log_pi, log_seq) / n,
      kl_to_tilted=jnp.where(phi.saturated & (phi.kl > 0), jnp.inf, divergences.kl(log_pi, log_phi) / n),
      win_rate=bon.level_stats(lv.log_mass, lv.reward, log_law).win_rate,
      target_reward=phi.mean_reward,
      lam=phi.lam,
      predicted_gap=jnp.where(n == 1, 0.0, math.log(n) / (2 * phi.lam * n)))


def bon_vs_kl_enumerated(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."],
                         n: int, scale: float = 1.0) -> BonVsKL:
  """:func:`bon_vs_kl` by brute force: every one of the ``V^n`` sequences, for checking.

  Sequences are grouped by their exact (integer) reward, the best-of-N law of each group is
  :func:`klrl.bon.level_law`, and the KLs are sums over sequences, not over reward levels:
  ``KL(pi_N || p^n) = sum_y pi_N(y) log(pi_N(y) / p^n(y))`` with ``pi_N(y) = p^n(y) P_N(S(y)) /
  P_n(S(y))``, and likewise against ``phi_delta^{(x) n}``. Cost ``O(V^n)``: tiny problems only.
  """
  where = "klrl.memoryless.bon_vs_kl_enumerated"
  n = _count(where, "n", n, 1)
  if np.shape(logp)[-1] ** n > 2 ** 22:
    raise _checks.InputError(f"{where}: argument 'n' gives V^n = {np.shape(logp)[-1] ** n} sequences (more than 2^22)")
  k = _integer_rewards(where, reward, scale, False)
  return _enumerated(logp, reward, jnp.asarray(k), delta, n)


# ---------------------------------------------------------------------------------------------
# A real instance: English unigrams with VADER valence.

class Unigram(NamedTuple):
  """A memoryless (unigram) language model with a per-token reward.

  From :func:`english_unigram` or :func:`load_problem`.

  Attributes:
    logp: log-probabilities of the tokens, normalised over the last axis, ``(..., k)``.
    reward: the per-token reward, same shape.
    words: the vocabulary, most frequent first (:func:`english_unigram`); ``()`` when unknown.
  """
  logp: Array
  reward: Array
  words: tuple


@functools.lru_cache(maxsize=4)
def _english(k):
  try:
    import wordfreq
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
  except ImportError as e:
    raise ImportError("klrl.memoryless.english_unigram needs the optional packages wordfreq and vaderSentiment: "
                      "pip install 'klrl[real]'") from e
  freq = wordfreq.get_frequency_dict("en", wordlist="best")
  words = sorted(freq, key=lambda w: -freq[w])          # stable: ties keep wordfreq's order
  if k is not None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(words):
      raise _checks.InputError(f"klrl.memoryless.english_unigram: argument 'k' must be an int in [1, {len(words)}] "
                               f"or None (all words), got {k!r}")
    words = words[:k]
  f = np.array([freq[w] for w in words], dtype=np.float64)
  lexicon = SentimentIntensityAnalyzer().lexicon
  valence = np.array([lexicon.get(w, 0.0) for w in words], dtype=np.float64)
  return np.log(f) - np.log(f.sum()), valence, tuple(words)


def english_unigram(k: int | None = None, *, dtype=None) -> Unigram:
  """English word frequencies as a memoryless language model, with VADER valence as the reward.

  ``p`` is the frequency of each of the ``k`` most frequent English words in the ``wordfreq``
  package (all ~3.2e5 words when ``k`` is None), renormalised over those words; the reward is
  the word's valence in the VADER sentiment lexicon (``vaderSentiment``; from -3.9 to 3.4) and
  0 for the ~97% of words it does not list: a linear, per-token reward exactly as SPEC section 3
  assumes, with a massive tie at 0. Valences are multiples of 0.1, so ``scale=10`` puts them
  on the integer lattice (:func:`lattice`). Both packages work offline (optional extra ``real``).

  Args:
    k: vocabulary size (the top ``k`` words), or None for the full list.
    dtype: floating dtype of the arrays (default: JAX's default float).

  Returns:
    :class:`Unigram` ``(logp, reward, words)``.
  """
  logp, valence, words = _english(None if k is None else k)
  dtype = dtype or jnp.result_type(float)
  return Unigram(jnp.asarray(logp, dtype), jnp.asarray(valence, dtype), words)


def load_problem(path, *, reward_path=None, logp_key: str = "logp", reward_key: str = "reward",
                 scale: float = 1.0, rounding: bool = False, probabilities: bool = False) -> Unigram:
  """Reads per-token reference log-probabilities and rewards from users' files (:mod:`klrl.data`).

  One row per prompt: ``logp[..., v]`` is the reference law of a token and ``reward[..., v]``
  its reward, of the same shape. Files are ``.npz`` or ``.safetensors`` with both arrays, or
  two ``.npy`` files (``path`` for ``logp``, ``reward_path`` for the rewards). Everything
  :mod:`klrl.data` validates (missing arrays, dtypes, shapes, NaN, infinite rewards,
  log-probabilities that do not normalise) is refused with an error naming the file, the
  array and the row; here the rewards must in addition lie on the lattice ``(1/scale) Z``
  that the exact sequence law needs (:func:`lattice`), or are rounded to it when ``rounding``.

  Args:
    path: file with the log-probabilities (and the rewards, unless ``reward_path`` is given).
    reward_path: file with the rewards, if not ``path``.
    logp_key: name of the log-probabilities (ignored for ``.npy``).
    reward_key: name of the rewards (ignored for ``.npy``).
    scale: rewards times ``scale`` must be integers (e.g. 10 for multiples of 0.1).
    rounding: round the rewards to the nearest multiple of ``1/scale`` instead of refusing them.
    probabilities: the file holds probabilities rather than log-probabilities.

  Returns:
    :class:`Unigram` ``(logp, reward, ())``, ready for :func:`lattice` with the same ``scale``.

  Raises:
    InputError: a bad file or array, or rewards off the lattice (the first one is named).
  """
  where = "klrl.memoryless.load_problem"
  logp = data.log_probs(path, logp_key, probabilities=probabilities)
  source = path if reward_path is None else reward_path
  reward = data.reward(source, reward_key, shape=logp.shape)
  name = f"the array in '{source}'" if Path(source).suffix == ".npy" else f"array '{reward_key}' of '{source}'"
  k = _integer_rewards(where, reward, scale, rounding, name)
  if rounding:
    reward = jnp.asarray(k / float(scale), reward.dtype)
  return Unigram(logp, reward, ())
