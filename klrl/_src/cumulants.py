"""One-pass cumulants of a reward under a reference distribution, at any tilt ``lam >= 0``.

``A(lam) = log E_p exp(lam r)`` and its derivatives (the tilted mean and variance), the KL of
the tilt ``K(lam) = lam A'(lam) - A(lam)``, the distance to saturation ``delta_max - K(lam)``
and the cross entropy, all from one pass over each row. Two centrings, chosen per row:

- ``lam (r_max - r_min) <= 1``: the reward centred at its mean under ``p``, the sums written
  with ``expm1`` so that ``K = O(lam^2)`` keeps its relative accuracy;
- larger ``lam``: the reward centred at ``r_max`` and the weights scaled by ``max p``, so that
  ``delta_max - K`` is computed without cancellation near saturation.

Used by :mod:`klrl.tilted` (the KL-constrained solve) and :mod:`klrl.memoryless` (the rate
functions). Inputs are checked by the callers; nothing here raises.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax
from jax.scipy.special import logsumexp
from jaxtyping import Array

from klrl._src import rows as _rows


class Cumulants(NamedTuple):
  """Cumulant generating function of the reward under ``p`` and its tilt, at ``lam``.

  Attributes:
    log_z: ``A(lam) = log E_p exp(lam r)``.
    mean: ``A'(lam) = E_pi[r]``.
    var: ``A''(lam) = Var_pi[r]``.
    kl: ``K(lam) = KL(pi || p) = lam A'(lam) - A(lam)``.
    kl_gap: ``delta_max - K(lam)``, computed without cancellation near saturation.
    cross_entropy: ``-E_pi[log p]``.
  """
  log_z: Array
  mean: Array
  var: Array
  kl: Array
  kl_gap: Array
  cross_entropy: Array


class Prep(NamedTuple):
  mu: Array        # E_p r
  var: Array       # Var_p r (one-pass moment formula; used for starting points only)
  r_max: Array     # max reward over the support of p
  r_min: Array
  l_max: Array     # max log p
  log_ps: Array    # log p(S*), or None when not asked for


def constants(logp, reward, top=True):
  return _rows.by_rows(lambda lp, r: constants_block(lp, r, top), logp.shape[:-1], logp.shape[-1],
                       logp.dtype.itemsize, logp, reward)


def _extremes(logp, reward):
  """``r_max``, ``r_min`` over the support of ``p``, ``max log p`` and the shift for ``p``."""
  # Reductions are written without selects where possible: XLA:CPU vectorises those.
  def masked(_):
    mass = logp > -jnp.inf
    return (jnp.max(jnp.where(mass, reward, -jnp.inf), axis=-1),
            jnp.min(jnp.where(mass, reward, jnp.inf), axis=-1))

  def full(_):
    return jnp.max(reward, axis=-1), jnp.min(reward, axis=-1)

  r_max, r_min = lax.cond(jnp.min(logp) > -jnp.inf, full, masked, None)
  l_max = jnp.max(logp, axis=-1)
  shift = jnp.where(jnp.isfinite(l_max), l_max, 0.0)   # NaN and +-inf reach the checks through p
  return r_max, r_min, l_max, shift


def _log_top_mass(logp, is_top):
  """``log p(S*)`` exactly, for the maximisers ``is_top``."""
  return logsumexp(jnp.where(is_top & (logp > -jnp.inf), logp, -jnp.inf), axis=-1)


def constants_block(logp, reward, top):
  r_max, r_min, l_max, shift = _extremes(logp, reward)
  p = jnp.exp(logp - shift[..., None])                 # probabilities relative to the largest
  s = jnp.sum(p, axis=-1)
  mu, var = _moments(p, reward, s, r_max, r_min, logp.dtype)
  log_ps = None
  if top:
    is_top = reward == r_max[..., None]
    top_s = jnp.sum(jnp.where(is_top, p, 0.0), axis=-1)
    # Exact where the maximisers' mass underflows next to the largest probability.
    log_ps = lax.cond(jnp.all(top_s > 0), lambda _: shift + jnp.log(top_s), lambda _: _log_top_mass(logp, is_top), None)
  probe = jnp.sum(0.0 * reward, axis=-1)
  return Prep(mu, var, r_max, r_min, l_max, log_ps), jnp.exp(shift) * s, probe


def constants_block32(logp, reward):
  """:func:`constants_block` with ``top``, its sums in float32: ``E_p r``, ``Var_p r`` and the
  normalisation total to about 1e-7, ``log p(S*)`` exact. For solves that stay where
  ``lam (r_max - r_min) > 1``, in which the moments of ``p`` only give the starting point (see
  :func:`_solve_constants`)."""
  r_max, r_min, l_max, shift = _extremes(logp, reward)
  acc = _accumulator32(logp)
  p = jnp.exp((logp - shift[..., None]).astype(jnp.float32))
  s = jnp.sum(p, axis=-1, dtype=acc).astype(logp.dtype)
  mu, var = _moments(p, reward, s, r_max, r_min, acc)
  # A single maximiser (the usual case) gives log p(S*) without a sum.
  is_top = reward == r_max[..., None]
  count = jnp.sum(is_top, axis=-1, dtype=jnp.float32)   # exact to 2^24; a larger count is not 1 either
  l_top = jnp.max(jnp.where(is_top, logp, -jnp.inf), axis=-1)
  log_ps = lax.cond(jnp.all(count == 1), lambda _: l_top, lambda _: _log_top_mass(logp, is_top), None)
  probe = jnp.sum(0.0 * reward, axis=-1)
  return Prep(mu, var, r_max, r_min, l_max, log_ps), jnp.exp(shift) * s, probe


def _moments(p, reward, total, r_max, r_min, acc):
  """``E_p r`` and ``Var_p r`` from the weights ``p`` (summing to ``total``), in the precision of ``p``.

  The rewards are centred at the middle ``c`` of their range, so that the one-pass variance
  cancels ``(E_p r - c)^2 <= (r_max - r_min)^2 / 4``, not ``E_p[r]^2``: rewards offset by
  ``10^4`` keep their variance (uncentred, float32 gave 0). ``E_p r = c + E_p[r - c]`` stays
  as accurate as ``E_p[r]`` summed directly: ``|c| <= max |r|``.
  """
  mid = 0.5 * r_max + 0.5 * r_min
  gap = (reward - mid[..., None]).astype(p.dtype)
  pg = p * gap                         # zero-mass entries give 0 (rewards are checked finite)
  m1, m2 = (jnp.sum(x, axis=-1, dtype=acc).astype(total.dtype) / total for x in (pg, pg * gap))
  return mid + m1, jnp.maximum(m2 - m1 * m1, 0.0)


def _accumulator32(logp):
  # XLA:CPU reduces a single long row in float32 4-5x slower than two rows (klrl._src.rows);
  # accumulating in float64 avoids that.
  return jnp.float64 if math.prod(logp.shape[:-1]) == 1 else jnp.float32


_INV_FACT = [1.0]


for _k in range(1, 20):
  _INV_FACT.append(_INV_FACT[-1] / _k)


def _e2(x):
  """``expm1(x) - x`` for ``|x| <= 1`` by its Taylor polynomial (relative error < 1e-18)."""
  poly = _INV_FACT[19]
  for k in range(18, 1, -1):
    poly = poly * x + _INV_FACT[k]
  return x * x * poly


def _finite_logp(logp):
  return jnp.maximum(logp, jnp.finfo(logp.dtype).min)   # -inf -> most negative float: 0 * it = 0


def _sums_small(logp, reward, lam, prep, gap, entropy, third):
  """Sums for ``lam (r_max - r_min) <= 1``: reward centred at its mean, ``expm1`` forms.

  With ``x = lam (r - E_p r)``: ``Z = 1 + sum p (e^x - 1 - x)`` (the linear term vanishes) and
  ``Z E_pi[r - E_p r] = sum p (r - E_p r)(e^x - 1)``, sums of non-negative terms, so the KL
  ``O(lam^2)`` keeps its relative accuracy. No transcendental function besides ``p``.
  """
  s = reward - prep.mu[..., None]
  x = jnp.clip(lam[..., None] * s, -1.0, 1.0)    # |x| <= 1 on the support; clip zero-mass entries
  p = jnp.exp(logp)
  e2 = _e2(x)
  em1 = x + e2
  s0 = jnp.sum(p * e2, axis=-1)
  s1 = jnp.sum(p * s * em1, axis=-1)
  t = p + p * em1
  ts2 = t * s * s
  s2 = jnp.sum(ts2, axis=-1)
  z = 1.0 + s0
  e_lp = jnp.sum(t * _finite_logp(logp), axis=-1) / z if entropy else None
  e_s3 = jnp.sum(ts2 * s, axis=-1) / z if third else None
  return jnp.log1p(s0), s1 / z, s2 / z, e_lp, (jnp.zeros_like(lam) if gap else None), e_s3


def power_sums(logp, reward, l_max, r_max, lam, single=False):
  """``sum t s^k`` for ``k = 0..3``, ``sum_{s < 0} t`` and ``sum t log p`` over each row, with
  ``s = r - r_max`` and weights ``t = exp(log p - l_max + lam s) <= 1``. With ``single`` the
  weights and products are float32 (summed in float32 but for a single row, see
  :func:`_accumulator32`) and the last two sums are 0."""
  s = reward - r_max[..., None]
  x = logp - l_max[..., None] + lam[..., None] * s
  acc = _accumulator32(logp) if single else logp.dtype
  if single:
    x, s = x.astype(jnp.float32), s.astype(jnp.float32)
  t = jnp.exp(x)
  t1 = t * s
  t2 = t1 * s
  sums = [jnp.sum(y, axis=-1, dtype=acc).astype(logp.dtype) for y in (t, t1, t2, t2 * s)]
  if single:
    return (*sums, jnp.zeros_like(lam), jnp.zeros_like(lam))
  return (*sums, jnp.sum(jnp.where(s < 0, t, 0.0), axis=-1), jnp.sum(t * _finite_logp(logp), axis=-1))


def _sums_large(logp, reward, lam, prep, gap, entropy, third):
  """Sums for larger ``lam``: reward centred at ``r_max``, weights scaled by ``max p``."""
  s0, s1, s2, s3, s_neg, s_lp = power_sums(logp, reward, prep.l_max, prep.r_max, lam)
  e_lp = s_lp / s0 if entropy else None
  e_s3 = s3 / s0 if third else None
  mean_c, logz_c = s1 / s0, prep.l_max + jnp.log(s0)
  rest = None
  if gap:
    # delta_max - K: by difference while that is at least a tenth of delta_max (a few ulps of
    # error); closer to saturation as log(1 + rest / p(S*)) - lam E_pi[s], both terms >= 0.
    direct = -prep.log_ps - (lam * mean_c - logz_c)
    rest = jnp.where(direct >= -0.1 * prep.log_ps, direct,
                     jnp.log1p(s_neg / jnp.exp(prep.log_ps - prep.l_max)) - lam * mean_c)
  return logz_c, mean_c, s2 / s0, e_lp, rest, e_s3


def cumulants(logp, reward, lam, prep: Prep, gap: bool = False, entropy: bool = True) -> Cumulants:
  """Cumulants at ``lam`` from one pass, choosing per row the accurate centring.

  ``gap`` adds ``delta_max - K`` (needs ``prep.log_ps``); ``entropy=False`` skips the cross
  entropy (``None`` then).
  """
  return _rows.by_rows(lambda *a: cumulants_block(*a, gap, entropy), logp.shape[:-1], logp.shape[-1],
                       logp.dtype.itemsize, logp, reward, lam, prep)


def cumulants_block(logp, reward, lam, prep: Prep, gap: bool, entropy: bool = True, third: bool = False):
  """:class:`Cumulants` at ``lam``; with ``third`` (for the solver), also the third cumulant
  ``A'''(lam)`` and ``A'(lam) - r_max`` (unrounded where the sums are centred at ``r_max``)."""
  small = lam * (prep.r_max - prep.r_min) <= 1.0
  ones = jnp.ones_like(lam)
  safe_small = jnp.where(small, lam, 0.0)      # each branch sees only values it handles well
  safe_large = jnp.where(small, ones, lam)
  pick = lambda x, y: None if x is None else jnp.where(small, x, y)

  def both(args):
    a = _sums_small(logp, reward, safe_small, prep, gap, entropy, third)
    b = _sums_large(logp, reward, safe_large, prep, gap, entropy, third)
    return tuple(pick(x, y) for x, y in zip(a[:4], b[:4])) + (b[4], pick(a[5], b[5]))

  def only_small(args):
    return _sums_small(logp, reward, lam, prep, gap, entropy, third)

  def only_large(args):
    return _sums_large(logp, reward, lam, prep, gap, entropy, third)

  branch = jnp.where(jnp.all(small), 0, jnp.where(jnp.any(small), 2, 1))
  logz_c, mean_c, e_s2, e_lp, rest, e_s3 = lax.switch(branch, [only_small, only_large, both], None)
  center = jnp.where(small, prep.mu, prep.r_max)
  var = jnp.maximum(e_s2 - mean_c * mean_c, 0.0)
  kl = jnp.maximum(lam * mean_c - logz_c, 0.0)
  kl_gap = None
  if gap:
    kl_gap = jnp.maximum(jnp.where(small, -prep.log_ps - kl, rest), 0.0)
  c = Cumulants(log_z=logz_c + lam * center, mean=mean_c + center, var=var, kl=kl,
                kl_gap=kl_gap, cross_entropy=None if e_lp is None else -e_lp)
  if not third:
    return c
  # A'(lam) - r_max unrounded where the sums are centred at r_max (see _log_policy).
  mean_gap = jnp.where(small, c.mean - prep.r_max, mean_c)
  return c, e_s3 - mean_c * (3 * var + mean_c * mean_c), mean_gap
