"""Energy-based (tilted) policies: the closed form of KL-regularised and KL-constrained RL.

For a reference ``p`` and a reward ``r`` on the same support (SPEC section 1)::

    J_beta(q) = E_q[r] - beta KL(q || p),     pi_beta = p exp(r / beta) / Z_beta.

The maximiser of ``J_beta`` is ``pi_beta`` (Gibbs variational principle) and the optimal value
is ``beta log Z_beta``. The KL-constrained problem ``max E_q[r] s.t. KL(q || p) <= delta`` is
solved by the tilt ``pi_{1/lam}`` whose ``lam`` solves ``K(lam) = lam A'(lam) - A(lam) = delta``,
where ``A(lam) = log E_p exp(lam r)`` is the cumulant generating function of ``r`` under ``p``
(Yang et al., *Asymptotics of Language Model Alignment*, 2024). Past the largest feasible
budget ``delta_max = -log p(S*)`` (``S*`` the reward maximisers in the support of ``p``) the
answer is ``p`` conditioned on ``S*``.

Numerics. All functions work in log space. The cumulants at a given ``lam`` come from one
pass over the data (:func:`cumulants`): for small ``lam (r_max - r_min) <= 1`` the reward is
centred at its mean under ``p`` and the sums use ``expm1`` so that ``KL = O(lam^2)`` keeps its
relative accuracy; for larger ``lam`` the reward is centred at ``r_max`` so that the distance
to saturation ``delta_max - KL`` is computed without cancellation. The constrained root is
found by safeguarded Newton on ``G(lam) = log K - log(delta_max - K)``, a function that is
linear in ``log lam`` for small budgets and linear in ``lam`` near saturation. In float64 and
for ``V >= 4096`` the first steps are Halley steps on sums taken in float32 (cheaper passes)
until ``|G| <= 0.02``, and one more Halley step, which lands near float32's rounding level, is
taken without a pass to confirm it; float64 passes follow, and the last step is taken on the
quadratic Taylor model of ``K`` when a bound on its remainder is below the tolerance, which
saves the pass that would only confirm convergence. A solve takes 2 to 6 passes on typical
problems. Where every budget exceeds 1/8 no iterate is in the small-``lam`` regime, and the
pass before the solve (extremes of ``r``, moments of ``p`` for the starting point, ``p(S*)``)
also sums in float32. On the CPU the sums centred at ``r_max`` come from one fused native loop
(:func:`_power_sums`, :mod:`klrl._native`). Derivatives through the root are implicit (not unrolled).

Accuracy (measured by ``tests/test_tilted.py`` and ``benchmarks/bench_tilted.py``): the KL of
``kl_constrained``'s policy matches ``delta`` to ``1e-10 max(1, delta)`` in float64 and to
``1e-5`` relative in float32 (as computed by klrl in that precision), for ``delta`` from
``1e-8`` to ``delta_max (1 - 1e-9)`` and vocabularies up to ``10^6``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.scipy.special import logsumexp
from jaxtyping import Array, Float

from klrl import _checks, _native, _rows
from klrl.divergences import _kl, expectation

__all__ = [
    "Cumulants", "TiltStats", "Constrained", "tilt", "log_partition", "cumulants", "stats",
    "objective", "kl_constrained", "frontier", "max_kl", "dual_frontier",
]


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


class TiltStats(NamedTuple):
  """Statistics of the tilted policy ``pi_beta`` (see :func:`stats`)."""
  log_z: Array
  kl: Array
  mean_reward: Array
  var_reward: Array
  entropy: Array


class Constrained(NamedTuple):
  """Solution of the KL-constrained problem (see :func:`kl_constrained`).

  Attributes:
    beta: KL coefficient ``1/lam`` of the solution; ``inf`` at ``delta = 0``, ``0`` when the
      constraint is saturated (``delta >= delta_max``, which includes constant rewards).
    log_policy: log-probabilities of the solution ``phi_delta``.
    kl: ``KL(phi_delta || p)`` of the returned policy.
    mean_reward: ``E_phi[r] = R(delta)``.
    lam: ``1/beta``.
    saturated: whether ``delta >= delta_max``.
    iterations: passes over the data the root solve took, float32 ones included (the largest
      over the batch). The whole call makes three more: the maxima, the constants, the policy.
  """
  beta: Array
  log_policy: Array
  kl: Array
  mean_reward: Array
  lam: Array
  saturated: Array
  iterations: Array


# ---------------------------------------------------------------------------------------------
# Validation.

def _inputs(where, logp, reward, values=True, **params):
  """Checks and broadcasts ``logp``, ``reward`` and per-row parameters to one batch shape.

  ``params`` maps a name to ``(value, check)``; each value is a scalar or an array over batch
  axes. Value checks of ``logp``/``reward`` are skipped when ``values=False`` (the caller folds
  them into :func:`_prepare`'s pass). Returns ``logp, reward, *params``.
  """
  logp = _checks.floating(where, "logp", logp, 1)
  reward = _checks.floating(where, "reward", reward, 1)
  _checks.same_support(where, "logp", logp, "reward", reward)
  batch = np.broadcast_shapes(logp.shape[:-1], reward.shape[:-1])
  xs = []
  for name, (value, check) in params.items():
    x = _checks.floating(where, name, value)
    try:
      batch = np.broadcast_shapes(batch, x.shape)
    except ValueError:
      raise _checks.InputError(f"{where}: argument '{name}' has shape {x.shape}, which does not broadcast "
                               f"with the batch axes {batch} of 'logp'/'reward'") from None
    xs.append((name, x, check))
  dtype = jnp.result_type(logp, reward)
  if values:
    logp, reward = _checks.log_probs(where, "logp", logp), _checks.finite(where, "reward", reward)
  shape = batch + logp.shape[-1:]
  out = [jnp.broadcast_to(logp, shape).astype(dtype), jnp.broadcast_to(reward, shape).astype(dtype)]
  out += [check(where, name, jnp.broadcast_to(x, batch).astype(dtype)) for name, x, check in xs]
  return out


# ---------------------------------------------------------------------------------------------
# One-pass cumulants.

class _Prep(NamedTuple):
  mu: Array        # E_p r
  var: Array       # Var_p r (one-pass moment formula; used for starting points only)
  r_max: Array     # max reward over the support of p
  r_min: Array
  l_max: Array     # max log p
  log_ps: Array    # log p(S*), or None when not asked for


def _prepare(where, logp, reward) -> _Prep:
  """Per-row constants from one pass, with the input value checks folded into that pass."""
  prep, total, probe = _constants(logp, reward, True)
  return _checks.finite_probe(where, "reward", _checks.normalised(where, "logp", prep, total), probe)


def _log_z(where, logp, reward, beta):
  """Checked ``c`` and ``log Z_beta - c / beta`` of each row, with ``c = max r``, from one pass that
  also checks the inputs. Centred, ``(r - c) / beta`` keeps the rewards' differences where
  ``r / beta`` would round them away (rewards offset far from zero, small ``beta``).

  The checks hold per-row values only: a check on a whole ``B x V`` array makes XLA copy it.
  """
  def rows(logp, reward, beta):
    c = jnp.max(reward, axis=-1)
    return ((c, logsumexp(logp + (reward - c[..., None]) / beta[..., None], axis=-1)),
            jnp.exp(logsumexp(logp, axis=-1)), jnp.sum(0.0 * reward, axis=-1))

  out, total, probe = _rows.by_rows(rows, logp.shape[:-1], logp.shape[-1], logp.dtype.itemsize, logp, reward, beta)
  return _checks.finite_probe(where, "reward", _checks.normalised(where, "logp", out, total), probe)


def _one_pass(where, logp, reward, lam) -> Cumulants:
  """Checked cumulants at ``lam``: the constants and the sums of each block of rows in turn,
  while the block is in cache (see :mod:`klrl._rows`)."""
  def rows(logp, reward, lam):
    prep, total, probe = _constants_block(logp, reward, False)
    return _cumulants_block(logp, reward, lam, prep, False), total, probe

  c, total, probe = _rows.by_rows(rows, logp.shape[:-1], logp.shape[-1], logp.dtype.itemsize, logp, reward, lam)
  return _checks.finite_probe(where, "reward", _checks.normalised(where, "logp", c, total), probe)


def _constants(logp, reward, top=True):
  return _rows.by_rows(lambda lp, r: _constants_block(lp, r, top), logp.shape[:-1], logp.shape[-1],
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


def _constants_block(logp, reward, top):
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
  return _Prep(mu, var, r_max, r_min, l_max, log_ps), jnp.exp(shift) * s, probe


def _constants_block32(logp, reward):
  """:func:`_constants_block` with ``top``, its sums in float32: ``E_p r``, ``Var_p r`` and the
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
  return _Prep(mu, var, r_max, r_min, l_max, log_ps), jnp.exp(shift) * s, probe


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
  # XLA:CPU reduces a single long row in float32 4-5x slower than two rows (klrl._rows);
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


def _power_sums(logp, reward, l_max, r_max, lam, single=False):
  """``sum t s^k`` for ``k = 0..3``, ``sum_{s < 0} t`` and ``sum t log p`` over each row, with
  ``s = r - r_max`` and weights ``t = exp(log p - l_max + lam s) <= 1``. With ``single`` the
  weights and products are float32 (summed in float32 but for a single row, see
  :func:`_accumulator32`) and the last two sums are 0. One fused pass on the CPU
  (:mod:`klrl._native`)."""
  def xla(logp, reward, l_max, r_max, lam):
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

  return _native.tilt_sums(xla, logp, reward, l_max, r_max, lam, single)


def _sums_large(logp, reward, lam, prep, gap, entropy, third):
  """Sums for larger ``lam``: reward centred at ``r_max``, weights scaled by ``max p``."""
  s0, s1, s2, s3, s_neg, s_lp = _power_sums(logp, reward, prep.l_max, prep.r_max, lam)
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


def _cumulants(logp, reward, lam, prep: _Prep, gap: bool = False, entropy: bool = True) -> Cumulants:
  """Cumulants at ``lam`` from one pass, choosing per row the accurate centring.

  ``gap`` adds ``delta_max - K`` (needs ``prep.log_ps``); ``entropy=False`` skips the cross
  entropy (``None`` then).
  """
  return _rows.by_rows(lambda *a: _cumulants_block(*a, gap, entropy), logp.shape[:-1], logp.shape[-1],
                       logp.dtype.itemsize, logp, reward, lam, prep)


def _cumulants_block(logp, reward, lam, prep: _Prep, gap: bool, entropy: bool = True, third: bool = False):
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


def _log_policy(logp, reward, lam, mean, kl, mean_gap, r_max):
  """``log p + lam r - A(lam) = log p + lam (r - A'(lam)) + K(lam)``: large ``lam`` does not cancel.

  ``A'(lam)`` is rounded to the spacing of the rewards' floats: for rewards offset far from
  zero (``10^4`` with a spread of ``10^-2``, say) ``lam`` times that rounding would shift every
  log-probability alike. The shift is put back from ``mean_gap = A'(lam) - r_max``, which the
  solver knows unrounded; it is zero in exact arithmetic, so it carries no derivative.
  """
  fix = lax.stop_gradient(lam * ((mean - r_max) - mean_gap))
  return logp + lam[..., None] * (reward - mean[..., None]) + (kl + fix)[..., None]


# ---------------------------------------------------------------------------------------------
# Regularised problem.

@_checks.public
def tilt(logp: Float[Array, "... v"], reward: Float[Array, "... v"], beta: Float[Array, "..."]) -> Float[Array, "... v"]:
  """Log-probabilities of the tilted policy ``pi_beta = p exp(r / beta) / Z_beta``.

  The maximiser of ``E_q[r] - beta KL(q || p)`` (SPEC section 1).

  Args:
    logp: reference log-probabilities, ``-inf`` for zero mass.
    reward: finite rewards on the same support.
    beta: KL coefficient ``> 0``, a scalar or one per row.

  Returns:
    ``log pi_beta``; zero-mass entries of ``p`` stay ``-inf``.
  """
  where = "klrl.tilted.tilt"
  logp, reward, beta = _inputs(where, logp, reward, False, beta=(beta, _checks.positive))
  c, log_zc = _log_z(where, logp, reward, beta)
  return logp + (reward - c[..., None]) / beta[..., None] - log_zc[..., None]


@_checks.public
def log_partition(logp: Float[Array, "... v"], reward: Float[Array, "... v"], beta: Float[Array, "..."]) -> Float[Array, "..."]:
  """``log Z_beta = log E_p exp(r / beta)``; ``beta log Z_beta`` is the optimal value of ``J_beta``."""
  where = "klrl.tilted.log_partition"
  logp, reward, beta = _inputs(where, logp, reward, False, beta=(beta, _checks.positive))
  c, log_zc = _log_z(where, logp, reward, beta)
  return c / beta + log_zc


@_checks.public
def cumulants(logp: Float[Array, "... v"], reward: Float[Array, "... v"], lam: Float[Array, "..."]) -> Cumulants:
  """The cumulant generating function ``A(lam)`` of the reward under ``p`` and what it gives.

  ``A'`` is the tilted mean, ``A''`` the tilted variance and ``lam A' - A`` the KL of the
  tilt; higher cumulants follow by differentiating ``.mean`` in ``lam``. One pass over the
  data, accurate for small and large ``lam`` (see the module docstring).

  Args:
    logp: reference log-probabilities.
    reward: finite rewards.
    lam: inverse temperature ``lam = 1/beta >= 0`` (``lam = 0`` gives ``p`` itself).
  """
  where = "klrl.tilted.cumulants"
  logp, reward, lam = _inputs(where, logp, reward, False, lam=(lam, _checks.nonnegative))
  return _one_pass(where, logp, reward, lam)


@_checks.public
def stats(logp: Float[Array, "... v"], reward: Float[Array, "... v"], beta: Float[Array, "..."]) -> TiltStats:
  """Statistics of ``pi_beta``: ``log Z``, ``KL(pi || p)``, mean and variance of ``r``, entropy.

  ``E_pi[r] = A'(1/beta)``, ``Var_pi[r] = A''(1/beta)`` and ``KL(pi || p) = lam A' - A``
  (SPEC section 1), from one pass over the data.
  """
  where = "klrl.tilted.stats"
  logp, reward, beta = _inputs(where, logp, reward, False, beta=(beta, _checks.positive))
  c = _one_pass(where, logp, reward, 1.0 / beta)
  return TiltStats(log_z=c.log_z, kl=c.kl, mean_reward=c.mean, var_reward=c.var,
                   entropy=c.cross_entropy - c.kl)


@_checks.public
def objective(logq: Float[Array, "... v"], logp: Float[Array, "... v"], reward: Float[Array, "... v"],
              beta: Float[Array, "..."]) -> Float[Array, "..."]:
  """The KL-regularised objective ``J_beta(q) = E_q[r] - beta KL(q || p)``.

  By the Gibbs variational identity ``J_beta(q) = beta log Z_beta - beta KL(q || pi_beta)``.
  """
  where = "klrl.tilted.objective"
  logq = _checks.floating(where, "logq", logq, 1)
  logp, reward, beta = _inputs(where, logp, reward, beta=(beta, _checks.positive))
  _checks.same_support(where, "logp", logp, "logq", logq)
  shape = jnp.broadcast_shapes(logp.shape, logq.shape)
  logq = jnp.broadcast_to(_checks.log_probs(where, "logq", logq), shape).astype(logp.dtype)
  logp, reward = jnp.broadcast_to(logp, shape), jnp.broadcast_to(reward, shape)
  return expectation(logq, reward) - jnp.broadcast_to(beta, shape[:-1]) * _kl(logq, logp)


# ---------------------------------------------------------------------------------------------
# Constrained problem.

@_checks.public
def max_kl(logp: Float[Array, "... v"], reward: Float[Array, "... v"]) -> Float[Array, "..."]:
  """``delta_max = -log p(S*)``: the KL of ``p`` conditioned on its reward maximisers.

  Budgets at or above it saturate the constraint. Zero for a constant reward.
  """
  where = "klrl.tilted.max_kl"
  logp, reward = _inputs(where, logp, reward, False)
  return -_prepare(where, logp, reward).log_ps


def _residual(kl, gap, var, lam, target, tiny):
  """``G = log K - log(delta_max - K) - target`` and ``dG/dlam``."""
  kl, gap = jnp.maximum(kl, tiny), jnp.maximum(gap, tiny)
  return jnp.log(kl) - jnp.log(gap) - target, lam * var * (1 / kl + 1 / gap)


def _newton(lam, lo, hi, g, dg, spread, moving, tiny, d2g=None):
  """One safeguarded Newton step on ``G`` (Halley's when ``d2g = G''`` is given), and the
  updated bracket ``lo < root < hi``."""
  lo = jnp.where(g < 0, lam, lo)
  hi = jnp.where(g > 0, lam, hi)
  # Newton in log(lam) where G is ~linear in log(lam), in lam where it is ~linear in lam.
  new = jnp.where(lam * spread <= 1.0, lam * jnp.exp(-g / jnp.maximum(lam * dg, tiny)), lam - g / dg)
  if d2g is not None:
    den = 2 * dg * dg - g * d2g
    new = jnp.where(den > dg * dg, lam - 2 * g * dg / den, new)
  bisect = jnp.where(jnp.isfinite(hi), jnp.sqrt(lo * hi), 4 * lam)
  ok = jnp.isfinite(new) & (new > lo) & (new < hi)
  return jnp.where(moving, jnp.where(ok, new, bisect), lam), lo, hi


_PRESOLVE_MIN_V = 4096   # below this a pass costs less than the loop around it
_LAST_STEP_G = 0.02


def _presolve32(logp, reward, lam, lo, hi, prep: _Prep, target, spread, active):
  """Halley steps with the sums in float32 for rows with ``lam (r_max - r_min) > 1`` (where
  ``K`` has no cancellation), cheaper than float64 passes, to about float32's rounding level of
  ``G`` (``1e-6`` to ``1e-5``). From there one float64 pass usually finishes."""
  tiny = jnp.finfo(logp.dtype).tiny

  def evaluate(lam):
    s0, s1, s2, s3 = _power_sums(logp, reward, prep.l_max, prep.r_max, lam, single=True)[:4]
    m = s1 / s0
    var = jnp.maximum(s2 / s0 - m * m, 0.0)
    k3 = s3 / s0 - 3 * m * var - m * m * m
    kl = lam * m - prep.l_max - jnp.log(s0)
    gap = -prep.log_ps - kl
    g, dg = _residual(kl, gap, var, lam, target, tiny)
    dk, d2k = lam * var, var + lam * k3               # K', K''
    d2g = d2k * dg / jnp.maximum(dk, tiny) + dk * dk * (1 / gap ** 2 - 1 / kl ** 2)
    # Rounding level of G: the sums are good to ~2e-7 relative, K is a difference of two terms.
    floor = jnp.maximum(3e-6, 1e-6 * (jnp.abs(lam * m) + jnp.abs(kl - lam * m)) * (1 / kl + 1 / gap))
    return jnp.where(s0 > 0, g, jnp.nan), dg, d2g, floor   # NaN: every weight underflowed

  def going(lam, g, floor, near):
    return active & (lam * spread > 1.0) & (jnp.abs(g) > jnp.maximum(floor, near))

  def cond(state):
    lam, lo, hi, g, dg, d2g, floor, it = state
    return (it < 8) & jnp.any(going(lam, g, floor, _LAST_STEP_G))

  def body(state):
    lam, lo, hi, g, dg, d2g, floor, it = state
    lam, lo, hi = _newton(lam, lo, hi, g, dg, spread, going(lam, g, floor, _LAST_STEP_G), tiny, d2g)
    return (lam, lo, hi) + evaluate(lam) + (it + 1,)

  fresh = active & (lam * spread > 1.0)
  lam32, lo, hi, g, dg, d2g, floor, it = lax.while_loop(cond, body, (lam, lo, hi) + evaluate(lam) + (jnp.array(0),))
  # Halley's error is cubic: from |G| <= _LAST_STEP_G one more step lands near float32's rounding
  # level, so it is taken without a float32 pass to confirm it (the float64 pass does).
  lam32 = _newton(lam32, lo, hi, g, dg, spread, going(lam32, g, floor, 0.0), tiny, d2g)[0]
  # A row whose float32 sums failed (NaN) or left it outside the large regime starts afresh.
  keep = fresh & jnp.isfinite(lam32) & (lam32 * spread > 1.0)
  return jnp.where(keep, lam32, lam), jnp.where(jnp.any(fresh), it + 1, 0)


def _solve(logp, reward, delta, prep: _Prep, active):
  """Safeguarded Newton for ``K(lam) = delta`` on rows where ``active``; no derivatives.

  Returns ``lam``, the number of passes over the data (float64 and float32) and
  ``(A'(lam), K(lam), A'(lam) - r_max)`` from the last pass.
  """
  dtype = logp.dtype
  tol = 1e-13 if jnp.finfo(dtype).bits > 32 else 2e-6
  tiny = jnp.finfo(dtype).tiny
  dmax = -prep.log_ps
  spread = jnp.where(active, prep.r_max - prep.r_min, 1.0)
  d = jnp.where(active, delta, 0.5 * jnp.where(dmax > 0, dmax, 1.0))
  target = jnp.log(d) - jnp.log(jnp.maximum(dmax - d, tiny))
  lo = jnp.sqrt(8 * d) / spread                        # K(lam) <= lam^2 spread^2 / 8
  # A variance below rounding level of the spread is noise; the floor keeps lam0 finite.
  var0 = jnp.maximum(prep.var, jnp.maximum((jnp.finfo(dtype).eps * spread) ** 2, tiny))
  lam0 = jnp.maximum(jnp.sqrt(2 * d / var0), lo)
  hi = jnp.full_like(lo, jnp.inf)
  it32 = jnp.array(0)
  if dtype == jnp.float64 and logp.shape[-1] >= _PRESOLVE_MIN_V:
    lam0, it32 = _presolve32(logp, reward, lam0, lo, hi, prep, target, spread, active)

  def evaluate(lam):
    c, k3, mean_gap = _cumulants_block(logp, reward, lam, prep, gap=True, entropy=False, third=True)
    return _residual(c.kl, c.kl_gap, c.var, lam, target, tiny) + (c.mean, c.kl, c.var, k3, mean_gap)

  def finish(lam, ev):
    """The root of the quadratic Taylor model of ``K`` at ``lam``, and a bound on its error."""
    g, dg, mean, kl, var, k3, mean_gap = ev
    dk, d2k = lam * var, var + lam * k3                 # K', K''
    h = (d - kl) / dk
    for _ in range(2):
      h_last, h = h, (d - kl - 0.5 * d2k * h * h) / dk
    # Remainder: |K'''| <= 2 |k3| + lam |k4| with |k4| <= var spread^2; and the model's own residual.
    err = (2 * jnp.abs(k3) + jnp.maximum(lam, 1.0) * var * spread ** 2) * jnp.abs(h) ** 3 / 6
    err = err + 0.5 * jnp.abs(d2k * (h_last * h_last - h * h))
    ok = jnp.isfinite(h) & (err <= 0.1 * tol * jnp.minimum(d, dmax - d))
    dmean = var * h + 0.5 * k3 * h * h
    return h, ok, (mean + dmean, kl + dk * h + 0.5 * d2k * h * h, mean_gap + dmean)

  def going(lam, ev):
    return active & (jnp.abs(ev[0]) > tol) & ~finish(lam, ev)[1]

  def cond(state):
    lam, lo, hi, ev, it = state
    return (it < 60) & jnp.any(going(lam, ev) & (~jnp.isfinite(hi) | (hi - lo > 1e-15 * hi)))

  def body(state):
    lam, lo, hi, ev, it = state
    lam, lo, hi = _newton(lam, lo, hi, ev[0], ev[1], spread, going(lam, ev), tiny)
    return lam, lo, hi, evaluate(lam), it + 1

  lam, _, _, ev, it = lax.while_loop(cond, body, (lam0, lo, hi, evaluate(lam0), jnp.array(0)))
  # The last step without a pass where the Taylor model is exact to the tolerance.
  h, ok, (mean, kl, mean_gap) = finish(lam, ev)
  step = active & (jnp.abs(ev[0]) > tol) & ok
  return (jnp.where(step, lam + h, lam), it + 1 + it32, jnp.where(step, mean, ev[2]), jnp.where(step, kl, ev[3]),
          jnp.where(step, mean_gap, ev[6]))


@jax.custom_jvp
def _root(logp, reward, delta, saturated, prep):
  """``lam`` with ``K(lam) = delta`` (0 where ``delta = 0`` or the row is saturated), the solve's
  passes, and ``A'(lam)``, ``K(lam)`` and ``A'(lam) - r_max`` from the solver's last pass. The
  last is for a rounding correction only (:func:`_log_policy`) and carries no derivative."""
  active = (~saturated) & (delta > 0)
  lam, it, mean, kl, mean_gap = _solve(logp, reward, delta, prep, active)
  return (jnp.where(active, lam, 0.0), it, jnp.where(active, mean, prep.mu), jnp.where(active, kl, 0.0),
          jnp.where(active, mean_gap, prep.mu - prep.r_max))


def _root_jvp(primals, tangents):
  logp, reward, delta, saturated, prep = primals
  dlogp, dreward, ddelta, _, dprep = tangents
  lam, it, mean, kl, mean_gap = _root(*primals)
  # Implicit function theorem: K(lam) = delta gives K'(lam) dlam = ddelta - dK|_lam.
  cum_of = lambda lp, r, pr: _cumulants(lp, r, lam, pr, entropy=False)
  zero = lambda t: isinstance(t, SymbolicZero)
  data_tangents = (dlogp, dreward, dprep)
  if all(zero(t) for t in jax.tree.leaves(data_tangents, is_leaf=zero)):   # only delta moves
    c, dk, dmean = cum_of(logp, reward, prep), 0.0, 0.0
  else:
    dense = jax.tree.map(lambda t, x: jnp.zeros_like(x) if zero(t) else t, data_tangents,
                         (logp, reward, prep), is_leaf=zero)
    c, dc = jax.jvp(cum_of, (logp, reward, prep), dense)
    dk, dmean = dc.kl, dc.mean
  slope = lam * c.var                                   # K'(lam) = lam A''(lam)
  inv = jnp.where(slope > 0, 1 / jnp.where(slope > 0, slope, 1.0), 0.0)
  dlam = inv * ((0.0 if zero(ddelta) else ddelta) - dk)
  return (lam, it, mean, kl, mean_gap), (dlam, jnp.zeros(it.shape, jax.dtypes.float0), dmean + c.var * dlam,
                                         dk + slope * dlam, jnp.zeros_like(mean_gap))


_root.defjvp(_root_jvp, symbolic_zeros=True)


@jax.custom_jvp
def _top_mean(logp, reward, r_max, log_ps):
  """``E[r | S*] = r_max``, with the derivatives of ``sum_{S*} p r / p(S*)``: ``p( . | S*)`` in ``reward``."""
  return r_max


def _top_mean_jvp(primals, tangents):
  logp, reward, r_max, log_ps = primals
  dreward = tangents[1]
  top = (logp > -jnp.inf) & (reward == r_max[..., None])
  p_top = jnp.where(top, jnp.exp(logp - log_ps[..., None]), 0.0)
  return r_max, jnp.sum(p_top * dreward, axis=-1)   # the log p terms vanish: r is constant on S*


_top_mean.defjvp(_top_mean_jvp)


@jax.custom_jvp
def _infinite_slope(delta, at_zero):
  """Zero, with derivative ``+inf`` in ``delta`` where ``at_zero``: ``R'(0) = +inf``."""
  return jnp.zeros_like(delta)


def _infinite_slope_jvp(primals, tangents):
  delta, at_zero = primals
  ddelta, _ = tangents
  out = jnp.zeros_like(delta)
  if isinstance(ddelta, SymbolicZero):
    return out, jnp.zeros_like(delta)
  return out, jnp.where(at_zero, jnp.inf, 0.0) * ddelta


_infinite_slope.defjvp(_infinite_slope_jvp, symbolic_zeros=True)


@_checks.public
def kl_constrained(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."]) -> Constrained:
  """Solves ``max_q E_q[r]`` subject to ``KL(q || p) <= delta`` in closed form.

  Cases (SPEC section 1): for ``0 <= delta < delta_max`` the answer is the tilt whose ``lam``
  solves ``lam A'(lam) - A(lam) = delta`` (the constraint is active); for
  ``delta >= delta_max = -log p(S*)`` it is ``p( . | S*)``, ties at the maximum weighted in
  proportion to ``p``, with ``beta = 0``; a constant reward is always saturated and returns
  ``p``.

  Derivatives are exact and implicit: ``d lam / d delta = 1 / (lam A''(lam))``, and those in
  ``logp`` and ``reward`` follow from the implicit function theorem, so ``dR/d delta = beta``.
  At ``delta = 0`` the solution is ``p`` and ``beta = inf``: ``d mean_reward / d delta`` is
  ``+inf`` (the true one-sided limit, ``R'(delta) = beta``), ``d kl / d delta = 1``, the
  derivatives in ``delta`` of ``log_policy``, ``lam`` and ``beta`` are reported as 0 (their true
  values are infinite), and derivatives in ``logp`` and ``reward`` are those of ``p``. Saturated rows have ``d kl / d delta = 0`` and
  the derivatives of ``p( . | S*)`` in ``logp`` and ``reward``.

  Args:
    logp: reference log-probabilities (``-inf`` for zero mass), shape ``(..., V)``.
    reward: finite rewards, broadcasting with ``logp``.
    delta: KL budget ``>= 0``, a scalar or one per row.

  Returns:
    A :class:`Constrained` with ``beta``, ``log_policy``, ``kl``, ``mean_reward``, ``lam``,
    ``saturated`` and ``iterations``.
  """
  where = "klrl.tilted.kl_constrained"
  logp, reward, delta = _inputs(where, logp, reward, False, delta=(delta, _checks.nonnegative))
  return _kl_constrained(where, logp, reward, delta)


def _kl_constrained(where, logp, reward, delta) -> Constrained:
  """Checked solution. Each block of rows is solved while it is in cache (:mod:`klrl._rows`);
  the policy is then written in one pass from the checked per-row results, so the large output
  is neither stacked block by block nor passed through the checks."""
  def rows(logp, reward, delta):
    prep, total, probe = _solve_constants(logp, reward, delta)
    saturated = delta >= -prep.log_ps
    lam, it, mean, kl, mean_gap = _root(logp, reward, delta, saturated, prep)
    return (lam, jnp.broadcast_to(it, delta.shape), mean, kl, mean_gap, prep), total, probe

  row, total, probe = _rows.by_rows(rows, logp.shape[:-1], logp.shape[-1], logp.dtype.itemsize, logp, reward, delta)
  lam, it, mean, kl, mean_gap, prep = _checks.finite_probe(where, "reward", _checks.normalised(where, "logp", row, total),
                                                           probe)
  return _constrained(logp, reward, delta, prep, lam, jnp.max(it, initial=0), mean, kl, mean_gap)


def _solve_constants(logp, reward, delta):
  """The constants of :func:`_kl_constrained`'s rows, in float32 where no row needs ``E_p r``
  exactly. It is needed where ``delta = 0`` (the answer's mean reward) and where an iterate has
  ``lam (r_max - r_min) <= 1`` (the sums centred at ``E_p r``). Since ``K(lam) <= lam^2
  (r_max - r_min)^2 / 8``, every iterate (``lam >= sqrt(8 delta) / (r_max - r_min)``) has
  ``lam (r_max - r_min) > 1`` once ``delta > 1/8``."""
  if logp.dtype != jnp.float64 or logp.shape[-1] < _PRESOLVE_MIN_V:
    return _constants_block(logp, reward, True)
  return lax.cond(jnp.all(delta > 0.125), _constants_block32, lambda lp, r: _constants_block(lp, r, True),
                  logp, reward)


def _constrained(logp, reward, delta, prep: _Prep, lam, it, mean, kl, mean_gap) -> Constrained:
  """The solution from the root ``lam`` and ``A'(lam)``, ``K(lam)``, ``A'(lam) - r_max`` of each row."""
  dmax = -prep.log_ps
  saturated = delta >= dmax
  log_tilt = _log_policy(logp, reward, lam, mean, kl, mean_gap, prep.r_max)
  # KL of the returned policy as computed, with the derivative of the identity K(lam(delta)) = delta.
  kl_tilt = delta + lax.stop_gradient(kl - delta)

  top = (logp > -jnp.inf) & (reward == prep.r_max[..., None])
  log_sat = jnp.where(top, logp - prep.log_ps[..., None], -jnp.inf)
  mean_sat = _top_mean(logp, reward, prep.r_max, prep.log_ps)

  sat = saturated[..., None]
  safe_lam = jnp.where(lam > 0, lam, 1.0)
  beta = jnp.where(saturated, 0.0, jnp.where(lam > 0, 1 / safe_lam, jnp.inf))
  return Constrained(
      beta=beta,
      log_policy=jnp.where(sat, log_sat, log_tilt),
      kl=jnp.where(saturated, dmax, kl_tilt),
      mean_reward=jnp.where(saturated, mean_sat, mean + _infinite_slope(delta, (delta == 0) & ~saturated)),
      lam=jnp.where(saturated, jnp.inf, lam),
      saturated=saturated,
      iterations=it,
  )


@_checks.public
def frontier(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."]) -> Float[Array, "..."]:
  """The reward-KL frontier ``R(delta) = E_{phi_delta}[r]``: concave, increasing, ``R' = beta``."""
  where = "klrl.tilted.frontier"
  logp, reward, delta = _inputs(where, logp, reward, False, delta=(delta, _checks.nonnegative))
  return _kl_constrained(where, logp, reward, delta).mean_reward


@_checks.public
def dual_frontier(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."],
                  lam: Float[Array, "... k"]) -> Float[Array, "... k"]:
  """The dual objective ``(delta + A(lam)) / lam`` on a grid of ``lam > 0`` (last axis).

  Its minimum over ``lam`` is ``R(delta)``; every value is an upper bound on ``R(delta)``.
  """
  where = "klrl.tilted.dual_frontier"
  logp, reward, delta = _inputs(where, logp, reward, delta=(delta, _checks.nonnegative))
  lam = _checks.positive(where, "lam", _checks.floating(where, "lam", lam, 1)).astype(logp.dtype)
  try:
    lam = jnp.broadcast_to(lam, logp.shape[:-1] + lam.shape[-1:])
  except ValueError:
    raise _checks.InputError(f"{where}: argument 'lam' has shape {lam.shape}, which does not broadcast "
                             f"with the batch shape {logp.shape[:-1]}") from None
  a = logsumexp(logp[..., None, :] + lam[..., None] * reward[..., None, :], axis=-1)
  return (delta[..., None] + a) / lam
