"""Best-of-N: exact laws with ties, bounds, estimators, sampling and soft best-of-N.

The mathematics is on the theory page "Best-of-N" (docs: theory/best-of-n).

Best-of-N draws N responses from the reference ``p`` and keeps one of maximal reward, ties
broken at random. Group the support into reward levels ``s_1 < ... < s_K`` with masses
``P_k``, ``F_k = P(r <= s_k)`` and ``F-_k = P(r < s_k)``. The chosen level has the law::

    P_N(k) = F_k^N - (F-_k)^N,            pi_N(y) = p(y) P_N(k(y)) / P_k(y),

and inside a level the choice is proportional to ``p``. The formula is a valid law for every
real ``N >= 1`` (``N = e^{n delta}`` for sequences, derivatives in ``N``), and ``N = inf``
gives ``p( . | S*)``.

Numerics. ``F^N`` is never formed. With the upper tail ``T_k = P(r > s_k)`` (a reverse
cumulative log-sum-exp), ``log F_k = log1p(-T_k)`` where ``T_k < 1/2`` and the forward
cumulative sum otherwise; ``N log F_k`` is their product, or ``-N T_k`` for ``T_k < e^-40``
(and ``exp(log N + log(-log F_k))`` when only ``log N`` is given), so it keeps its relative
accuracy down to tails far below ``1e-300``. Then::

    log P_N(k) = N log F_k + log(1 - exp(-d_k)),     d_k = N log1p(P_k / F-_k),

where ``log(1 - exp(-d)) = log(-expm1(-d))`` is evaluated from ``log d``. Every factor keeps
its relative precision, so the log-probabilities are exact to a few ulps times ``1 + log N``
(the condition number of ``N log F``) for ``N`` up to ``1e308``, and beyond through ``log_n``;
``tests/test_bon.py`` checks this against mpmath for ``N`` from 1 to ``1e300`` and
``log N`` up to 720, with level masses down to ``e^-720``. The cumulative sums are scaled
linear sums (exact for partial sums within ``e^600`` of the largest level) with a log-space
prefix scan taken only for rows whose levels span more than that.

Bounds (Beirami et al., *Theoretical guarantees on the best-of-n alignment policy*, 2024).
``KL(pi_N || p) <= log N - (N - 1)/N`` is an **upper bound**, attained only when the reward
has no atoms (a continuous reward law). With atoms it can be far off: for binary outputs with
``p(good) = q`` the KL is at most ``-log q`` whatever ``N``. At ``q = 1/2``:

    ====  ==================  ===================================
    N     log N - (N-1)/N     exact KL(pi_N || p)
    ====  ==================  ===================================
    2     0.193               0.131
    10    1.403               0.685
    1000  5.909               0.693 (log 2 to within 1e-298)
    ====  ==================  ===================================

The gap of the bound is at most ``2N(N-1) sum_k P_k^2`` and the win rate (ties count one
half) satisfies ``N/(N+1) - (N-1)/2 sum_k P_k^2 <= W <= N/(N+1)``. The sums run over reward
*levels* (tied outputs merged into one atom): with ties, ``sum_y p(y)^2`` over outputs is
smaller and the bound stated with it is false (all outputs tied, ``V`` large). As ``N -> inf``
the KL tends to ``-log p(S*)``. :func:`kl_estimator` is Beirami et al.'s estimator from the
reference probability of the chosen output.

BoN as a tilt: ``pi_N = p exp(r~_N)`` with ``r~_N = log(P_N(k)/P_k)``; for a continuous reward
``r~_N = log N + (N-1) log F``, the KL-regularised optimum for the reward ``log F`` at
``beta = 1/(N-1)`` (Gui, Garbacea, Veitch, *BoNBoN alignment*, 2024). Win rate is linear in
the policy, so the win-rate-optimal policy at a KL budget is the tilt by the mid-rank
``F-(y) + P(y)/2`` (:func:`mid_rank`); in the continuous case ``pi_c ∝ p exp(c F)`` with the
closed forms of :func:`bonbon`.

Soft best-of-N (Verdun et al., *Soft best-of-n sampling*, 2025) picks among the N draws with
probability ``∝ exp(r/tau)``; :func:`soft_log_policy` evaluates the exact one-dimensional
integral that defines it by the trapezoidal rule in ``log t``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import logsumexp
from jaxtyping import Array, Float, Int

from klrl import tilted
from klrl._src import checks as _checks, rows as _rows
from klrl.divergences import expectation, kl as _kl_div, log_normalize

__all__ = [
    "Levels", "Stats", "AgainstFrontier", "WinRateTilt",
    "levels", "level_law", "level_stats", "log_policy", "stats", "transformed_reward",
    "kl_bound", "win_rate_bound", "kl_gap_bound", "win_rate_gap_bound", "kl_limit", "kl_estimator",
    "sample", "soft_log_policy", "mid_rank", "against_frontier", "bonbon",
]


class Levels(NamedTuple):
  """The reward levels of a support in slot form (see :func:`levels`).

  The ``V`` slots hold the rewards in increasing order; each level's mass sits on the first
  slot of its run of equal rewards and the other slots of the run are empty (``-inf``), so
  the arrays have a static shape and feed :func:`level_law` and :func:`level_stats` directly.

  Attributes:
    reward: the rewards sorted in increasing order, ``(..., V)``.
    log_mass: ``log P_k`` on the first slot of each level, ``-inf`` on the other slots (and on
      levels made only of zero-mass outputs).
    index: the slot of each output's level, ``(..., V)`` integers.
    count: number of distinct rewards, ``(...)``.
  """
  reward: Array
  log_mass: Array
  index: Array
  count: Array


class Stats(NamedTuple):
  """Statistics of a law on reward levels against the reference (see :func:`stats`).

  Attributes:
    kl: ``KL(pi || p)``.
    mean_reward: ``E_pi[r]``.
    win_rate: ``P(r(Y) > r(Y')) + P(r(Y) = r(Y'))/2`` for ``Y ~ pi`` and ``Y' ~ p``.
    var_reward: ``Var_pi[r]``.
  """
  kl: Array
  mean_reward: Array
  win_rate: Array
  var_reward: Array


class AgainstFrontier(NamedTuple):
  """Best-of-N against the KL-RL solution at BoN's own KL (see :func:`against_frontier`).

  Attributes:
    kl: ``KL(pi_N || p)``, the budget ``delta`` of the comparison.
    mean_reward: ``E_{pi_N}[r]``.
    win_rate: best-of-N's win rate against ``p`` (ties one half).
    frontier: ``R(delta)``, the best reward at that KL.
    gap: ``R(delta) - E_{pi_N}[r] >= 0``.
    lam: ``lam_delta``, the inverse temperature of the KL-RL solution (``inf`` if saturated).
    kl_to_tilted: ``KL(pi_N || phi_delta)``; equals ``lam * gap`` (docs: theory/best-of-n, best-of-N
      against the frontier).
  """
  kl: Array
  mean_reward: Array
  win_rate: Array
  frontier: Array
  gap: Array
  lam: Array
  kl_to_tilted: Array


class WinRateTilt(NamedTuple):
  """Win rate and KL of the continuous win-rate-optimal tilt ``pi_c ∝ p exp(c F)``."""
  win_rate: Array
  kl: Array


# ---------------------------------------------------------------------------------------------
# Log-space helpers (each exact to a few ulps over its whole range, with safe gradients).

_TINY_LOG = -40.0   # below this log x, x**2 is under the double-precision epsilon of x


def _log_neg_log_cdf(log_tail, log_cdf):
  """``log(-log F)`` from ``log T = log(1 - F)`` and ``log F``, each where it is accurate."""
  tiny = log_tail < _TINY_LOG                  # -log F = T (1 + T/2 + ...) = T to within T^2
  upper = log_tail < -math.log(2.0)            # T < 1/2: log F = log1p(-T)
  t = jnp.where(upper & ~tiny, log_tail, -1.0)
  via_tail = jnp.log(-jnp.log1p(-jnp.exp(t)))
  via_cdf = jnp.log(-jnp.where(upper, -1.0, log_cdf))
  return jnp.where(tiny, log_tail, jnp.where(upper, via_tail, via_cdf))


def _log_log1p_exp(x):
  """``log(log1p(exp(x)))``."""
  tiny = x < _TINY_LOG
  return jnp.where(tiny, x, jnp.log(jax.nn.softplus(jnp.where(tiny, 0.0, x))))


def _log1m_exp_neg_exp(log_d):
  """``log(1 - exp(-d))`` from ``log d``: ``-expm1(-d)`` is exact for every ``d >= 0``."""
  tiny = log_d < _TINY_LOG
  return jnp.where(tiny, log_d, jnp.log(-jnp.expm1(-jnp.exp(jnp.where(tiny, 0.0, log_d)))))


@jax.custom_jvp
def _logaddexp(a, b):
  return jnp.logaddexp(a, b)


@_logaddexp.defjvp
def _logaddexp_jvp(primals, tangents):
  # jnp.logaddexp's own rule gives NaN when both arguments are -inf; here the tangent is 0.
  a, b = primals
  da, db = tangents
  out = _logaddexp(a, b)
  finite = out > -jnp.inf
  safe = jnp.where(finite, out, 0.0)
  wa = jnp.where(finite, jnp.exp(jnp.where(finite, a, 0.0) - safe), 0.0)
  wb = jnp.where(finite, jnp.exp(jnp.where(finite, b, 0.0) - safe), 0.0)
  return out, wa * da + wb * db


def _prefix_logsumexp(x):
  """Inclusive prefix log-sum-exp in log space (Hillis-Steele: ``ceil(log2 V)`` passes)."""
  v = x.shape[-1]
  pos = lax.iota(jnp.int32, v)

  def step(i, y):
    k = jnp.left_shift(1, i)
    return _logaddexp(y, jnp.where(pos >= k, jnp.roll(y, k, axis=-1), -jnp.inf))

  return lax.fori_loop(0, max(1, math.ceil(math.log2(v))), step, x)


def _cumsum(x, reverse=False, exclusive=False, block=64):
  """Cumulative sum over the last axis (forward or reverse, inclusive or exclusive).

  Within blocks of 64 by a product with a triangular 0/1 matrix, then across blocks: several
  times faster than ``jnp.cumsum`` on CPU, and every output is a sum of the input terms only
  (no differences), so sums of nonnegative terms keep their relative accuracy.
  """
  v = x.shape[-1]
  y = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, -v % block)]).reshape(x.shape[:-1] + (-1, block))
  i = jnp.arange(block)
  cmp = jnp.greater if reverse else jnp.less
  keep = cmp(i[:, None], i[None, :]) | ((i[:, None] == i[None, :]) & (not exclusive))
  inner = y @ keep.astype(x.dtype)
  tot = jnp.sum(y, axis=-1)
  zero = jnp.zeros_like(tot[..., :1])
  if reverse:
    carry = jnp.concatenate([jnp.flip(jnp.cumsum(jnp.flip(tot, -1), axis=-1), -1)[..., 1:], zero], axis=-1)
  else:
    carry = jnp.concatenate([zero, jnp.cumsum(tot, axis=-1)[..., :-1]], axis=-1)
  return (inner + carry[..., None]).reshape(x.shape[:-1] + (-1,))[..., :v]


def _log(s, c):
  pos = s > 0
  return jnp.where(pos, jnp.log(jnp.where(pos, s, 1.0)) + c, -jnp.inf)


def _cumulative(log_masses):
  """``log F_k = log P(r <= s_k)``, ``log F-_k = log P(r < s_k)``, ``log T_k = log P(r > s_k)``.

  Exact over the whole floating range. Sums of ``exp(x - max x)`` are exact wherever the
  partial sums are within ``e^600`` of the row's largest term (lost terms are then below
  ``V e^-145`` relative), which holds when each row's first and last nonempty terms are (every
  partial sum contains one of them). Otherwise, when levels span more than 600 nats, a
  log-space prefix scan is taken, under ``lax.cond``. Tangents on empty prefixes are 0.
  """
  x = log_masses
  v = x.shape[-1]
  top = lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
  nonempty = x > -jnp.inf
  pos = lax.iota(jnp.int32, v)
  first = jnp.take_along_axis(x, jnp.argmax(nonempty, axis=-1, keepdims=True), axis=-1)
  last = jnp.take_along_axis(x, jnp.max(jnp.where(nonempty, pos, 0), axis=-1, keepdims=True), axis=-1)
  scaled_ok = jnp.all((jnp.minimum(first, last) >= top - 600.0) | (top == -jnp.inf))

  def scaled(x):
    c = jnp.where(top > -jnp.inf, top, 0.0)
    e = jnp.exp(x - c)
    return (_log(_cumsum(e), c), _log(_cumsum(e, exclusive=True), c),
            _log(_cumsum(e, reverse=True, exclusive=True), c))

  def log_space(x):
    neg = jnp.full_like(x[..., :1], -jnp.inf)
    cdf = _prefix_logsumexp(x)
    upper = jnp.flip(_prefix_logsumexp(jnp.flip(x, -1)), -1)
    return cdf, jnp.concatenate([neg, cdf[..., :-1]], -1), jnp.concatenate([upper[..., 1:], neg], -1)

  return lax.cond(scaled_ok, scaled, log_space, x)


class _Parts(NamedTuple):
  log_law: Array          # log P_N(k)
  log_cdf: Array          # log F_k (accurate near 1)
  log_below: Array        # log F-_k


def _level_parts(log_masses, n=None, log_n=None) -> _Parts:
  """The best-of-N level law on the last axis; exactly one of ``n``, ``log_n`` is given."""
  log_cdf, log_below, log_tail = _cumulative(log_masses)
  if log_n is None:                                              # N log F_k, F_k from its tail near 1
    log_nn = jnp.log(n[..., None])
    upper = log_tail < -math.log(2.0)
    log_f = jnp.where(upper, jnp.log1p(-jnp.exp(jnp.where(upper, log_tail, -1.0))), log_cdf)
    tiny = log_tail < _TINY_LOG                                  # -log F = T to within T^2
    a = jnp.where(tiny, -jnp.exp(log_nn + jnp.where(tiny, log_tail, 0.0)), n[..., None] * log_f)
    a = jnp.where(log_tail == -jnp.inf, 0.0, a)                  # F_k = 1
  else:
    log_nn = log_n[..., None]
    lnl = _log_neg_log_cdf(log_tail, log_cdf)                    # log(-log F_k), -inf at F_k = 1
    top = lnl == -jnp.inf
    safe = jnp.where(top, 0.0, lnl)
    a = jnp.where(top, 0.0, -jnp.exp(log_nn + safe))
    log_f = -jnp.exp(lnl)
  has = log_masses > -jnp.inf
  first = log_below == -jnp.inf                                 # F-_k = 0: the factor is 1
  ratio = jnp.where(has & ~first, log_masses - log_below, 0.0)  # log(P_k / F-_k)
  factor = _log1m_exp_neg_exp(log_nn + _log_log1p_exp(ratio))   # log(1 - (F-_k/F_k)^N)
  log_law = jnp.where(has, a + jnp.where(first, 0.0, factor), -jnp.inf)
  return _Parts(log_law, log_f, log_below)


def _order_key(reward):
  """Integers in the order of ``reward`` (the IEEE bit pattern, negatives flipped).

  XLA sorts one integer array several times faster than a float array or a payload-carrying
  sort, so the levels are found by sorting these keys alone.
  """
  itype = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[reward.dtype.itemsize]
  bits = lax.bitcast_convert_type(jnp.where(reward == 0, jnp.zeros_like(reward), reward), itype)  # -0.0 == 0.0
  return jnp.where(bits < 0, bits ^ jnp.iinfo(itype).max, bits)


def _from_key(key, dtype):
  return lax.bitcast_convert_type(jnp.where(key < 0, key ^ jnp.iinfo(key.dtype).max, key), dtype)


def _segment(fn, data, index):
  v = data.shape[-1]
  return jnp.vectorize(lambda x, i: fn(x, i, v), signature="(v),(v)->(v)")(data, index)


def _levels(logp, reward) -> Levels:
  """Levels in slot form: the rewards sorted; a level's mass sits on its first slot."""
  key = _order_key(reward)
  ordered = jnp.sort(key, axis=-1)
  index = jnp.vectorize(lambda a, x: jnp.searchsorted(a, x, side="left"), signature="(v),(v)->(v)")(ordered, key)
  top = lax.stop_gradient(_segment(jax.ops.segment_max, logp, index))
  shift = jnp.where(top > -jnp.inf, top, 0.0)                      # per-level shift: no underflow
  total = _segment(jax.ops.segment_sum, jnp.exp(logp - jnp.take_along_axis(shift, index, axis=-1)), index)
  pos = total > 0
  log_mass = jnp.where(pos, jnp.log(jnp.where(pos, total, 1.0)) + shift, -jnp.inf)
  count = 1 + jnp.sum(ordered[..., 1:] != ordered[..., :-1], axis=-1)
  return Levels(_from_key(ordered, reward.dtype), log_mass, index.astype(jnp.int32), count)


def _level_stats(log_masses, level_reward, log_law, log_below) -> Stats:
  mean = expectation(log_law, level_reward)
  dev = level_reward - mean[..., None]
  return Stats(
      kl=jnp.maximum(_kl_div(log_law, log_masses), 0.0),
      mean_reward=mean,
      win_rate=expectation(log_law, jnp.exp(log_below) + 0.5 * jnp.exp(log_masses)),
      var_reward=expectation(log_law, dev * dev),
  )


# ---------------------------------------------------------------------------------------------
# Validation.

def _inputs(where, logp, reward, **params):
  """``logp``, ``reward`` and per-row parameters (``name=(value, check)``) checked and broadcast
  to one batch shape, as by the tilted policies."""
  return _checks.logp_reward(where, logp, reward, **params)


def _at_least(low):
  """The check ``x >= low`` of a per-row parameter."""
  return lambda where, name, x: _checks.at_least(where, name, x, low)


def _scalar(where, name, x, low):
  return _checks.at_least(where, name, _checks.floating(where, name, x), low)


# ---------------------------------------------------------------------------------------------
# Exact laws.

@_checks.public
def levels(logp: Float[Array, "... v"], reward: Float[Array, "... v"]) -> Levels:
  """The reward levels of ``(p, r)``: distinct rewards in increasing order and their masses.

  Ties are merged into one level whose mass is the sum of its outputs' masses (computed with a
  per-level shift, so tiny levels keep their relative precision). This is the input of
  :func:`level_law` and :func:`level_stats`.

  Args:
    logp: reference log-probabilities over the last axis (``-inf`` for zero mass).
    reward: finite rewards, broadcasting with ``logp``.

  Returns:
    :class:`Levels` with ``reward``, ``log_mass`` (padded to ``V`` slots), ``index`` (the level
    of each output) and ``count``.
  """
  return _levels(*_inputs("klrl.bon.levels", logp, reward))


@_checks.public
def level_law(log_masses: Float[Array, "... k"], n: Float[Array, "..."] | None = None, *,
              log_n: Float[Array, "..."] | None = None) -> Float[Array, "... k"]:
  """Best-of-N law of the chosen reward level, ``log P_N(k) = log(F_k^N - F-_k^N)`` (docs: theory/best-of-n).

  Works on already aggregated levels, so it applies equally to the reward levels of one
  response (:func:`levels`) and to the levels of a sum of token rewards (docs: theory/memoryless).
  Evaluated in log space from the upper tails, never forming ``F^N``; exact for real ``N >= 1`` up to
  ``N = 1e308`` (``n = inf`` gives the limit, all mass on the top level) and beyond through
  ``log_n``. Differentiable in ``log_masses`` and in ``n`` / ``log_n``.

  Args:
    log_masses: log-probabilities of the levels over the last axis, **in increasing order of
      reward** (distinct rewards; ``-inf`` for empty levels).
    n: number of draws ``N >= 1`` (real), a scalar or one per row.
    log_n: ``log N >= 0`` instead of ``n``, for ``N`` beyond floating range (``N = e^{n delta}``).

  Returns:
    ``log P_N(k)``, ``-inf`` on empty levels.
  """
  where = "klrl.bon.level_law"
  if (n is None) == (log_n is None):
    raise _checks.InputError(f"{where}: give exactly one of the arguments 'n' and 'log_n'")
  log_masses = _checks.log_probs(where, "log_masses", _checks.floating(where, "log_masses", log_masses, 1))
  name, x, low = ("n", n, 1.0) if log_n is None else ("log_n", log_n, 0.0)
  x = _checks.floating(where, name, x)
  log_masses, x = _checks.broadcast(where, {"log_masses": log_masses}, {name: x}, log_masses.dtype)
  x = _checks.at_least(where, name, x, low)
  return _level_parts(log_masses, **{name: x}).log_law


@_checks.public
def level_stats(log_masses: Float[Array, "... k"], level_reward: Float[Array, "... k"],
                log_law: Float[Array, "... k"]) -> Stats:
  """KL, mean reward, win rate and reward variance of a law on reward levels (docs: theory/best-of-n).

  ``KL = sum_k pi_k log(pi_k / P_k)``, ``E r = sum_k s_k pi_k`` and
  ``W = sum_k pi_k (F-_k + P_k / 2)`` (ties count one half). The law need not be a best-of-N
  law: any law on the same levels (for example the level law of a tilted sequence policy).

  Args:
    log_masses: reference log-masses ``log P_k`` of the levels (last axis).
    level_reward: the level rewards ``s_k``, strictly increasing over the levels of positive
      mass (zero-mass levels may hold any finite value).
    log_law: log-probabilities of the law on the same levels.

  Returns:
    :class:`Stats`.
  """
  where = "klrl.bon.level_stats"
  log_masses = _checks.floating(where, "log_masses", log_masses, 1)
  level_reward = _checks.floating(where, "level_reward", level_reward, 1)
  log_law = _checks.floating(where, "log_law", log_law, 1)
  _checks.same_support(where, "log_masses", log_masses, "level_reward", level_reward)
  _checks.same_support(where, "log_masses", log_masses, "log_law", log_law)
  shape = jnp.broadcast_shapes(log_masses.shape, level_reward.shape, log_law.shape)
  dtype = jnp.result_type(log_masses, level_reward, log_law)
  log_masses = jnp.broadcast_to(_checks.log_probs(where, "log_masses", log_masses), shape).astype(dtype)
  log_law = jnp.broadcast_to(_checks.log_probs(where, "log_law", log_law), shape).astype(dtype)
  level_reward = jnp.broadcast_to(_checks.finite(where, "level_reward", level_reward), shape).astype(dtype)
  has = log_masses > -jnp.inf
  level_reward = _checks.increasing(where, "level_reward", level_reward, has)
  return _level_stats(log_masses, level_reward, log_law, _cumulative(log_masses)[1])


def _bon(where, logp, reward, n):
  logp, reward, n = _inputs(where, logp, reward, n=(n, _at_least(1.0)))
  lv = _levels(logp, reward)
  return logp, reward, n, lv, _level_parts(lv.log_mass, n=n)


def _bon_log_policy(logp, lv, parts):
  gain = jnp.take_along_axis(parts.log_law - lv.log_mass, lv.index, axis=-1)
  return jnp.where(logp > -jnp.inf, logp + gain, -jnp.inf)


def _bon_stats(logp, reward, lv, parts) -> Stats:
  """KL and win rate on the levels; mean and variance on the outputs (differentiable in r)."""
  log_pi = _bon_log_policy(logp, lv, parts)
  mean = expectation(log_pi, reward)
  dev = reward - mean[..., None]
  return _level_stats(lv.log_mass, lv.reward, parts.log_law, parts.log_below)._replace(
      mean_reward=mean, var_reward=expectation(log_pi, dev * dev))


@_checks.public
def log_policy(logp: Float[Array, "... v"], reward: Float[Array, "... v"], n: Float[Array, "..."]) -> Float[Array, "... v"]:
  """Log-probabilities of the best-of-N policy ``pi_N(y) = p(y) P_N(k(y)) / P_k(y)`` (docs: theory/best-of-n).

  Ties in the reward are broken in proportion to ``p``; zero-mass outputs keep zero mass;
  a constant reward gives ``p``. ``O(V log V)`` per row (one sort).

  Args:
    logp: reference log-probabilities over the last axis (``-inf`` for zero mass).
    reward: finite rewards, broadcasting with ``logp``.
    n: number of draws ``N >= 1``, real (a scalar or one per row); ``inf`` gives ``p( . | S*)``.

  Returns:
    ``log pi_N``; differentiable in ``logp`` and ``n``.
  """
  logp, _, _, lv, parts = _bon("klrl.bon.log_policy", logp, reward, n)
  return _bon_log_policy(logp, lv, parts)


@_checks.public
def transformed_reward(logp: Float[Array, "... v"], reward: Float[Array, "... v"], n: Float[Array, "..."]) -> Float[Array, "... v"]:
  """BoN as a tilt: ``r~_N(y) = log(P_N(k)/P_k)``, so that ``pi_N = p exp(r~_N)`` (docs: theory/best-of-n).

  ``klrl.tilted.tilt(logp, r~_N, 1)`` is ``log_policy(logp, reward, n)``. On levels of zero
  mass the value is the limit ``log N + (N-1) log F_k`` (the continuous-reward form).
  """
  _, _, n, lv, parts = _bon("klrl.bon.transformed_reward", logp, reward, n)
  has = lv.log_mass > -jnp.inf
  m = n[..., None] - 1
  cont = jnp.log(n)[..., None] + jnp.where(m > 0, m * parts.log_cdf, 0.0)
  per_level = jnp.where(has, parts.log_law - jnp.where(has, lv.log_mass, 0.0), cont)
  return jnp.take_along_axis(per_level, lv.index, axis=-1)


@_checks.public
def stats(logp: Float[Array, "... v"], reward: Float[Array, "... v"], n: Float[Array, "..."]) -> Stats:
  """``KL(pi_N || p)``, ``E_{pi_N}[r]``, the win rate against ``p`` and ``Var_{pi_N}[r]``.

  The statements are on the theory page (docs: theory/best-of-n).

  Computed on the reward levels (one sort per row). Ties count one half in the win rate.

  Args:
    logp: reference log-probabilities over the last axis.
    reward: finite rewards.
    n: number of draws ``N >= 1`` (real), a scalar or one per row.

  Returns:
    :class:`Stats`.
  """
  where = "klrl.bon.stats"
  logp, reward, n = _inputs(where, logp, reward, n=(n, _at_least(1.0)))

  def rows(logp, reward, n):
    lv = _levels(logp, reward)
    return _bon_stats(logp, reward, lv, _level_parts(lv.log_mass, n=n))

  return _rows.by_rows(rows, logp.shape[:-1], logp.shape[-1], logp.dtype.itemsize, logp, reward, n)


# ---------------------------------------------------------------------------------------------
# Bounds and estimators.

def _neg_log1m_minus(x):
  """``-log(1 - x) - x = sum_{k >= 2} x^k / k`` for ``0 <= x < 1``, without cancellation."""
  poly = jnp.zeros_like(x)
  for k in range(24, 1, -1):
    poly = poly * x + 1.0 / k
  small = x < 0.1
  return jnp.where(small, x * x * poly, -jnp.log1p(-jnp.where(small, 0.5, x)) - x)


def _kl_bound(n):
  small = n < 1.1
  return jnp.where(small, _neg_log1m_minus((n - 1) / n), jnp.log(n) - (1 - 1 / n))


@_checks.public
def kl_bound(n: Float[Array, "..."]) -> Float[Array, "..."]:
  """``log N - (N - 1)/N``: an **upper bound** on ``KL(pi_N || p)``, not the KL (docs: theory/best-of-n).

  Equality holds only for a reward without atoms; with atoms the KL can be far smaller (binary
  outputs: below ``log 2`` for every ``N``, while the bound grows like ``log N``). Evaluated
  without cancellation near ``N = 1`` (where it is ``(N-1)^2/2 + O((N-1)^3)``).
  """
  return _kl_bound(_scalar("klrl.bon.kl_bound", "n", n, 1.0))


@_checks.public
def win_rate_bound(n: Float[Array, "..."]) -> Float[Array, "..."]:
  """``N / (N + 1)``: the win rate of best-of-N for a continuous reward, an upper bound with atoms."""
  n = _scalar("klrl.bon.win_rate_bound", "n", n, 1.0)
  return n / (n + 1)


def _collision(where, logp, reward, n):
  logp, reward, n = _inputs(where, logp, reward, n=(n, _at_least(1.0)))
  return n, jnp.exp(logsumexp(2 * _levels(logp, reward).log_mass, axis=-1))


@_checks.public
def kl_gap_bound(logp: Float[Array, "... v"], reward: Float[Array, "... v"], n: Float[Array, "..."]) -> Float[Array, "..."]:
  """``2 N (N - 1) sum_k P_k^2``, a bound on ``log N - (N-1)/N - KL(pi_N || p)`` (docs: theory/best-of-n).

  The sum runs over reward levels (tied outputs form one atom).
  """
  n, c = _collision("klrl.bon.kl_gap_bound", logp, reward, n)
  return 2 * n * (n - 1) * c


@_checks.public
def win_rate_gap_bound(logp: Float[Array, "... v"], reward: Float[Array, "... v"], n: Float[Array, "..."]) -> Float[Array, "..."]:
  """``((N - 1)/2) sum_k P_k^2``, a bound on ``N/(N+1) - W``, summed over reward levels.

  The bound is on the theory page (docs: theory/best-of-n).
  """
  n, c = _collision("klrl.bon.win_rate_gap_bound", logp, reward, n)
  return 0.5 * (n - 1) * c


@_checks.public
def kl_limit(logp: Float[Array, "... v"], reward: Float[Array, "... v"]) -> Float[Array, "..."]:
  """``lim_{N -> inf} KL(pi_N || p) = -log p(S*)``, the saturation budget ``delta_max``.

  The budget is defined on the theory page (docs: theory/tilted).
  """
  return tilted.max_kl(*_inputs("klrl.bon.kl_limit", logp, reward))


@_checks.public
def kl_estimator(eps: Float[Array, "..."], n: Float[Array, "..."]) -> Float[Array, "..."]:
  """Beirami et al.'s estimator of the BoN KL from the reference probability ``eps`` of the output.

  ``D(eps, N) = (1-eps)^N [log N + (N-1) log(1-eps) - (N-1)/N]
  + (1 - (1-eps)^N) log((1 - (1-eps)^N)/eps)``, in ``[0, log N - (N-1)/N]``; it is the exact
  BoN KL of a reference made of a continuum plus one top atom of mass ``eps`` (docs: theory/best-of-n).
  Evaluated with ``log1p``/``expm1`` for every ``N``, ``N = inf`` included (its limit is
  ``-log eps``); ``eps = 0`` gives ``log N - (N-1)/N`` and ``eps = 1`` gives 0.

  Args:
    eps: reference probability in ``[0, 1]``.
    n: number of draws ``N >= 1``; broadcasts with ``eps``.
  """
  where = "klrl.bon.kl_estimator"
  eps = _checks.in_unit_interval(where, "eps", _checks.floating(where, "eps", eps))
  n = _scalar(where, "n", n, 1.0)
  eps, n = _checks.broadcast(where, params={"eps": eps, "n": n}, dtype=jnp.result_type(eps, n))
  inner = (eps > 0) & (eps < 1)
  e = jnp.where(inner, eps, 0.5)
  l1 = jnp.log1p(-e)
  a = n * l1                                     # log (1 - eps)^N, -inf at N = inf
  hit = -jnp.expm1(a)                            # 1 - (1 - eps)^N
  stay = jnp.exp(a) > 0                          # else the first term is 0 (its limit as N -> inf)
  m = jnp.where(stay, n, 1.0)
  first = jnp.where(stay, jnp.exp(a) * (jnp.log(m) + (m - 1) * l1 - (m - 1) / m), 0.0)
  value = first + hit * (jnp.log(hit) - jnp.log(e))
  return jnp.where(inner, value, jnp.where(eps == 0, _kl_bound(n), 0.0))


# ---------------------------------------------------------------------------------------------
# Sampling.

def _sample_row(key, logp, reward, n, num):
  v = logp.shape[-1]
  iota = lax.iota(jnp.int32, v)
  r_s, lp_s, perm = lax.sort((reward, logp, iota), num_keys=1)
  cdf = jnp.cumsum(jnp.exp(lp_s))
  below = jnp.concatenate([jnp.zeros(1, cdf.dtype), cdf[:-1]])
  new = jnp.concatenate([jnp.ones(1, bool), r_s[1:] != r_s[:-1]])
  level_below = below[lax.cummax(jnp.where(new, iota, 0))]      # F- of each sorted output's level
  last = jnp.max(jnp.where(lp_s > -jnp.inf, iota, 0))          # last output of positive mass
  u = jax.random.uniform(key, (num, n), cdf.dtype) * cdf[-1]   # the N draws, as CDF positions
  best = jnp.minimum(jnp.searchsorted(cdf, u.max(-1), side="right"), last)
  pick = jnp.argmax(u >= level_below[best][:, None], axis=-1)  # first draw on the top level
  chosen = jnp.take_along_axis(u, pick[:, None], axis=-1)[:, 0]
  return perm[jnp.minimum(jnp.searchsorted(cdf, chosen, side="right"), last)]


@_checks.public(static=("n", "num"))
def sample(key: Array, logp: Float[Array, "... v"], reward: Float[Array, "... v"], n: int, num: int) -> Int[Array, "... num"]:
  """Explicit best-of-N draws: ``num`` times, draw ``n`` outputs from ``p`` and keep a best one.

  Each candidate is an inverse-CDF draw ``u ~ U(0, 1)`` on the support sorted by reward, so
  the candidate of highest reward is the one of largest ``u``: the top reward level among the
  ``n`` candidates is found from ``max u``, and the tie is broken by taking the first candidate
  (in draw order) that lands on that level, which, the draws being exchangeable, is a uniformly
  random one among the tied candidates. Only two binary searches per sample are needed, whatever
  ``n``; the cost is dominated by generating the ``num * n`` uniforms.

  Args:
    key: a JAX PRNG key.
    logp: reference log-probabilities over the last axis.
    reward: finite rewards, broadcasting with ``logp``.
    n: number of candidates per sample, a Python int ``>= 1`` (static).
    num: number of samples per row, a Python int ``>= 1`` (static).

  Returns:
    Indices into the support, shape ``batch + (num,)``.
  """
  where = "klrl.bon.sample"
  n, num = _checks.integer(where, "n", n, 1), _checks.integer(where, "num", num, 1)
  logp, reward = _inputs(where, logp, reward)
  batch, v = logp.shape[:-1], logp.shape[-1]
  rows = math.prod(batch)
  keys = jax.random.split(key, rows)
  out = jax.vmap(lambda k, lp, r: _sample_row(k, lp, r, n, num))(keys, logp.reshape(rows, v), reward.reshape(rows, v))
  return out.reshape(batch + (num,))


# ---------------------------------------------------------------------------------------------
# Soft best-of-N.

def _soft_row(logp, reward, n, temperature, nodes):
  """``(log pi_{N,tau}, L)``: the law and the quadrature's integration length in ``log t``."""
  tilt = n == jnp.inf                                           # the limit N -> inf: the tilt
  n = jnp.where(tilt, 1.0, n)
  mass = logp > -jnp.inf
  r_max = jnp.max(jnp.where(mass, reward, -jnp.inf))
  lw = jnp.where(mass, (reward - r_max) / temperature, 0.0)    # log w, <= 0, max 0
  lw_min = jnp.min(jnp.where(mass, lw, 0.0))
  log_ew = logsumexp(jnp.where(mass, logp + lw, -jnp.inf))     # log E_p w
  # t = e^x. Left end: the integrand is <= w t, relative tail <= (1 + N E w) e^{x_lo};
  # right end: exp(-w_y t) <= e^{-40} for every y.
  x_lo = -jnp.logaddexp(0.0, jnp.log(n) + log_ew) - 38.0
  x_hi = -lw_min + math.log(40.0)
  x_lo, x_hi = lax.stop_gradient(x_lo), lax.stop_gradient(x_hi)
  x = jnp.linspace(x_lo, x_hi, nodes)
  h = (x_hi - x_lo) / (nodes - 1)
  s = lw[None, :] + x[:, None]                                  # log(w t)
  wt = jnp.exp(s)
  lp = jnp.where(mass, logp, -jnp.inf)[None, :]
  m1 = jnp.sum(jnp.where(mass, jnp.exp(lp) * jnp.expm1(-wt), 0.0), axis=-1)   # M - 1
  near = m1 > -0.5
  log_m = jnp.where(near, jnp.log1p(jnp.where(near, m1, 0.0)), logsumexp(lp - wt, axis=-1))
  integrand = s - wt + (n - 1) * log_m[:, None]                  # log(w t e^{-w t} M^{N-1})
  log_int = logsumexp(integrand, axis=0) + jnp.log(h)
  law = jnp.where(tilt, jnp.where(mass, logp + lw, -jnp.inf), jnp.where(mass, jnp.log(n) + logp + log_int, -jnp.inf))
  return log_normalize(law), jnp.where(tilt, 0.0, x_hi - x_lo)


def _soft_tolerance(dtype) -> float:
  """The quadrature error ``soft_log_policy`` accepts: far below the dtype's own rounding."""
  return 1e-10 if jnp.finfo(dtype).bits > 32 else 1e-5


@_checks.public(static=("nodes",))
def soft_log_policy(logp: Float[Array, "... v"], reward: Float[Array, "... v"], n: Float[Array, "..."],
                    temperature: Float[Array, "..."], nodes: int = 1024) -> Float[Array, "... v"]:
  """Exact law of soft best-of-N: among ``N`` draws, pick one with probability ``∝ exp(r/tau)``.

  With ``w = exp(r/tau)`` and ``M(t) = E_p exp(-w t)`` (docs: theory/best-of-n)::

      pi_{N,tau}(y) = N p(y) w(y) ∫_0^∞ exp(-w(y) t) M(t)^{N-1} dt,

  valid for real ``N >= 1``. The integral is taken in ``x = log t`` over
  ``[-log(1 + N E_p w) - 38, log(40 / w_min)]`` (``w`` scaled so that ``max w = 1``; the
  neglected tails are below ``e^{-38}`` relative for every output) by the trapezoidal rule,
  which converges geometrically for this smooth, doubly decaying integrand; ``log M`` uses
  ``log1p(E_p expm1(-w t))`` near ``t = 0`` so that ``(N-1) log M`` stays exact for huge ``N``.
  The result is normalised (the raw sum is 1 to the quadrature's accuracy). The error is about
  ``exp(-pi^2 (nodes - 1) / L)`` for the integration length
  ``L = (r_max - r_min)/tau + log(1 + N E_p w) + 41.7``: with the default 1024 nodes, about
  1e-15 for ``L <= 250`` and 3e-13 at ``(r_max - r_min)/tau = 300`` (measured against
  brute-force enumeration); give more ``nodes`` for wider ranges. Where this estimate exceeds
  1e-10 (1e-5 in float32), that is for ``L > pi^2 (nodes - 1) / log(1/1e-10)`` (438 with the
  default nodes), the call raises :class:`klrl.InputError` naming ``temperature`` rather than
  return an inaccurate law. As ``N -> inf`` the law tends to the tilt ``p exp(r/tau)/Z`` (reward
  gap ``Θ(1/N)``, KL ``Θ(1/N^2)``), which ``n = inf`` returns; as ``tau -> 0`` it tends to hard
  best-of-N (:func:`log_policy`).

  Args:
    logp: reference log-probabilities over the last axis.
    reward: finite rewards.
    n: number of draws ``N >= 1`` (real), a scalar or one per row.
    temperature: ``tau > 0``, a scalar or one per row.
    nodes: quadrature nodes (static).

  Returns:
    ``log pi_{N,tau}``; differentiable in ``logp``, ``reward``, ``n`` and ``temperature``.
  """
  where = "klrl.bon.soft_log_policy"
  _checks.integer(where, "nodes", nodes, 16)
  logp, reward, n, temperature = _inputs(where, logp, reward, n=(n, _at_least(1.0)),
                                        temperature=(temperature, _checks.positive))
  law, length = jnp.vectorize(lambda lp, r, nn, t: _soft_row(lp, r, nn, t, nodes), signature="(v),(v),(),()->(v),()")(
      logp, reward, n, temperature)
  tol = _soft_tolerance(law.dtype)
  longest = math.pi ** 2 * (nodes - 1) / math.log(1 / tol)
  return _checks.holds(where, "temperature", law, length <= longest, (
      f"is too small for {nodes} quadrature nodes: the integration length (r_max - r_min)/temperature "
      f"+ log(1 + N E_p exp((r - r_max)/temperature)) + 41.7 must stay below {longest:.0f} for an error below "
      f"{tol:g}, and nodes = 1 + length * {math.log(1 / tol) / math.pi ** 2:.2f} resolve a longer one. Pass more "
      f"nodes, or use klrl.bon.log_policy (hard best-of-N, the limit temperature -> 0); for huge N the law is "
      f"the tilt klrl.tilted.tilt(logp, reward, temperature) up to O(1/N)"))


# ---------------------------------------------------------------------------------------------
# BoN against the KL-RL frontier; win-rate-optimal tilts.

@_checks.public
def mid_rank(logp: Float[Array, "... v"], reward: Float[Array, "... v"]) -> Float[Array, "... v"]:
  """``F-(y) + P(y)/2``: the win probability of ``y`` against a reference draw, ties one half.

  The win rate of any policy ``q`` is ``E_q[mid_rank]``, so the win-rate-optimal policy at a
  KL budget is ``klrl.tilted.kl_constrained(logp, mid_rank(logp, reward), delta)``.
  """
  logp, reward = _inputs("klrl.bon.mid_rank", logp, reward)
  lv = _levels(logp, reward)
  mass = jnp.exp(lv.log_mass)
  return jnp.take_along_axis(_cumsum(mass, exclusive=True) + 0.5 * mass, lv.index, axis=-1)


@_checks.public
def against_frontier(logp: Float[Array, "... v"], reward: Float[Array, "... v"], n: Float[Array, "..."]) -> AgainstFrontier:
  """Best-of-N against the KL-RL optimum ``phi_delta`` at BoN's own KL ``delta = KL(pi_N || p)``.

  No policy beats the frontier, so ``gap = R(delta) - E_{pi_N}[r] >= 0``, and the identity of
  the frontier (docs: theory/tilted) gives ``KL(pi_N || phi_delta) = lam_delta * gap`` (both are
  returned so the identity can be checked). Uses :func:`klrl.tilted.kl_constrained`.
  """
  logp, reward, _, lv, parts = _bon("klrl.bon.against_frontier", logp, reward, n)
  st = _bon_stats(logp, reward, lv, parts)
  log_pi = _bon_log_policy(logp, lv, parts)
  sol = tilted.kl_constrained(logp, reward, st.kl)
  return AgainstFrontier(kl=st.kl, mean_reward=st.mean_reward, win_rate=st.win_rate, frontier=sol.mean_reward,
                         gap=sol.mean_reward - st.mean_reward, lam=sol.lam,
                         kl_to_tilted=_kl_div(log_pi, sol.log_policy))


def _bonbon_small(c):
  c2 = c * c
  w = 0.5 + c * (1 / 12 + c2 * (-1 / 720 + c2 * (1 / 30240 + c2 * (-1 / 1209600 + c2 / 47900160))))
  k = c2 * (1 / 24 + c2 * (-1 / 960 + c2 * (1 / 36288 + c2 * (-1 / 1382400 + c2 / 53222400))))
  return w, k


@_checks.public
def bonbon(c: Float[Array, "..."]) -> WinRateTilt:
  """Continuous-reward closed forms for the win-rate-optimal tilt ``pi_c ∝ p exp(c F)`` (BoNBoN).

  ``W(c) = 1/(1 - e^{-c}) - 1/c`` and ``KL(c) = c W(c) - log((e^c - 1)/c)`` (docs: theory/best-of-n;
  Gui et al., 2024), with a series near ``c = 0`` and ``W(-c) = 1 - W(c)``. Compare with
  best-of-N's continuous curve ``(log N - (N-1)/N, N/(N+1))`` (:func:`kl_bound`,
  :func:`win_rate_bound`): at equal KL the tilt wins more often.
  """
  c = _checks.finite("klrl.bon.bonbon", "c", _checks.floating("klrl.bon.bonbon", "c", c))
  a = jnp.abs(c)
  small = a < 0.25
  big = jnp.where(small, 1.0, a)
  w_big = -1 / jnp.expm1(-big) - 1 / big
  k_big = big * w_big - (big + jnp.log(-jnp.expm1(-big)) - jnp.log(big))
  w_small, k_small = _bonbon_small(jnp.where(small, a, 0.0))
  w = jnp.where(small, w_small, w_big)
  return WinRateTilt(win_rate=jnp.where(c < 0, 1 - w, w), kl=jnp.where(small, k_small, k_big))
