"""Best-of-N over whole sequences against the KL-RL solution (docs: theory/memoryless).

A sequence of ``n`` i.i.d. tokens has reward ``S_n``; best-of-N with ``N = e^{n delta}`` and
the KL-RL solution ``phi_delta^{(x) n}`` at budget ``n delta`` depend on a sequence only
through ``S_n``, so both are computed on the exact law of ``S_n`` on its lattice
(:mod:`klrl.memoryless.lattices`). Best-of-N only needs that law where ``N`` draws can land
(beyond ``e^{-40}``): a window around ``n x_delta`` whose width is set by Chernoff bounds, plus
the total mass below it. :func:`bon_vs_kl_enumerated` checks it by brute force.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import logsumexp
from jaxtyping import Array, Float

from klrl import bon, divergences, tilted
from klrl._src import checks as _checks
from klrl.divergences import expectation
from klrl.memoryless import _args, _fft
from klrl.memoryless.lattices import Lattice, lattice

__all__ = ["BonVsKL", "bon_vs_kl", "bon_vs_kl_lattice", "bon_vs_kl_enumerated"]


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
  tilts: _fft.Grid              # (batch, tilts) tilts of the law of S_n
  first: Array              # range of S_n where best-of-N has mass (beyond e^-40)
  last: Array


def _plan_row(log_mass, n, delta, sol, x_up, x_hi, x_down, tilts: int):
  dtype = log_mass.dtype
  j = jnp.arange(log_mass.shape[-1], dtype=dtype)
  sup = _fft.support(log_mass)
  grid = _fft.grid(log_mass, j)
  lo, hi = _fft.caps(sup, n, dtype)
  x_a = jnp.clip(jnp.where(delta - (8 + jnp.log1p(n)) / n > 0, x_up, x_down), lo, hi)
  x_b = jnp.clip(x_hi, x_a, hi)
  arc = _fft.arc(grid, x_a, x_b, tilts - 4)
  # The bulk: tilts at 0 and at +-5 standard deviations of S_n (so that the mass below the range
  # is right to ~1e-16, for the win rate), sigma from the grid points next to 0.
  half = grid.theta.shape[0] // 2
  var = (grid.x[half + 1] - grid.x[half - 1]) / (grid.theta[half + 1] - grid.theta[half - 1])
  reach = 5 * jnp.sqrt(jnp.maximum(var, 0.0) / n)
  near = lambda x: jnp.argmin(jnp.abs(grid.x - x))
  bulk = jnp.stack([half, near(grid.x[half] - reach), near(grid.x[half] + reach)])
  sat = sol.saturated
  at_lam = _fft.Grid(jnp.where(sat, arc.theta[-1], sol.lam), jnp.where(sat, arc.x[-1], sol.mean_reward),
                 jnp.where(sat, arc.rate[-1], sol.kl))
  chosen = jax.tree.map(lambda g, a, b: jnp.concatenate([g[bulk], a[None], b]), grid, at_lam, arc)
  ni = jnp.round(n).astype(jnp.int32)
  first = jnp.clip(jnp.floor(n * x_a).astype(jnp.int32) - 2, ni * sup.lo, ni * sup.hi)
  last = jnp.clip(jnp.ceil(n * x_b).astype(jnp.int32) + 2, first, ni * sup.hi)
  return lax.stop_gradient(chosen), first, last


@_args.public(static=("tilts", "size"), name="bon_vs_kl_lattice")
def _bon_plan(log_mass, offset, span, scale, delta, n, tilts, size) -> _Plan:
  where = "klrl.memoryless.bon_vs_kl_lattice"
  log_mass, offset, span, scale = _args.check_lattice(where, log_mass, offset, span, scale)
  dtype = log_mass.dtype
  length = log_mass.shape[-1]
  delta = _checks.nonnegative(where, "delta", _checks.floating(where, "delta", delta)).astype(dtype)
  n = _checks.floating(where, "n", n).astype(dtype)
  n = _checks.holds(where, "n", n, (n >= 1) & (n == jnp.round(n)), "must be an integer >= 1")
  if size is not None:
    n = _checks.holds(where, "n", n, n * (length - 1) + 1 <= size,
                      f"is too large for argument 'size' = {size} (n (L-1) + 1 <= size, L = {length} lattice points)")
  batch = _checks.batch_shape(where, {"lat": log_mass}, {"delta": delta, "n": n})
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
    sup = _fft.support(log_mass)
    ni = jnp.round(n).astype(jnp.int32)
    base = jnp.maximum(jnp.minimum(first, ni * sup.hi + 1 - width), ni * sup.lo)
    law = _fft.tilted_law(log_mass, n, chosen, sup, base, width, window)
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


@_checks.compiled
def _bon_stats(plan: _Plan, width: int, window: int) -> BonVsKL:
  """Best-of-N level law and statistics on the law of ``S_n`` (one compilation)."""
  win = _bon_window(plan, width, window)
  log_law = bon.level_law(win.log_pn, log_n=plan.n * plan.delta)
  st = bon.level_stats(win.log_pn, win.level, log_law)
  # KL to the tilted law is +inf where best-of-N has mass (even far below the smallest double,
  # which the log-space level law still resolves) where the tilted law has none.
  singular = jnp.any((log_law > -jnp.inf) & (win.log_tilted == -jnp.inf), axis=-1)
  return _per_token(plan, st, divergences.kl(log_law, win.log_tilted), singular)


def bon_vs_kl_lattice(lat: Lattice, delta: Float[Array, "..."], n, *, size: int | None = None,
                      tilts: int = 10) -> BonVsKL:
  """:func:`bon_vs_kl` on a per-token law already on its lattice (jittable in ``delta`` and ``n``).

  Args:
    lat: the per-token law (:func:`klrl.memoryless.lattice`).
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
  fields = _args.unpack(where, lat, Lattice)
  _checks.batch_shape(where, {"lat": lat.log_mass}, {"delta": delta, "n": n})
  if size is not None:
    size = _args.count(where, "size", size, 1)
  window = _fft.static_window(where, lat.log_mass, n, size)
  length = int(np.shape(lat.log_mass)[-1])
  if size is None and _args.concrete(n) and not (_args.concrete(lat.log_mass) and _args.concrete(delta)):
    size = _fft.fft_size(int(_fft.integers(where, n).max()) * (length - 1) + 1)   # the plan is traced
  if size is not None and _args.concrete(n) and np.max(np.asarray(n)) * (length - 1) + 1 > size:   # else checked in the jit
    raise _checks.InputError(f"{where}: argument 'n' is too large for argument 'size' = {size} (n (L-1) + 1 <= size, "
                             f"L = {length} lattice points)")
  plan = _bon_plan(*fields, delta, n, _args.count(where, "tilts", tilts, 5), size)
  if _args.concrete(plan.first):
    width = _fft.fft_size(int(np.max(np.asarray(plan.last) - np.asarray(plan.first))) + 1)
  else:
    width = size
  return _bon_stats(plan, width, window)


def bon_vs_kl(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."], n,
              scale: float = 1.0, *, rounding: bool = False, tilts: int = 10) -> BonVsKL:
  """Best-of-N over whole sequences with ``N = e^{n delta}`` against the KL-RL solution.

  The asymptotic equivalence it measures is on the theory page (docs: theory/memoryless).

  A sequence of ``n`` i.i.d. tokens from ``p`` has reward ``S_n = sum_i r(y_i)``. Best-of-N
  with ``N = e^{n delta}`` draws ``N`` sequences and keeps one of largest ``S_n``; the KL-RL
  solution at budget ``n delta`` is ``phi_delta^{(x) n}``. Both depend on a sequence only through
  ``S_n``, so every quantity reduces to the law of ``S_n`` on its lattice (:func:`klrl.memoryless.sequence_law`):
  the best-of-N level law (docs: theory/best-of-n) with ``log N = n delta`` (:func:`klrl.bon.level_law`,
  never forming ``N``), ``KL(pi_N || p^n) = sum_s P_N(s) log(P_N(s) / P_n(s))`` and
  ``KL(pi_N || phi^n) = sum_s P_N(s) log(P_N(s) / P_{n,lam}(s))`` with the tilted law
  ``P_{n,lam}(s) = P_n(s) e^{lam s - n A(lam)}``. As ``n -> inf`` the per-token reward, KL and KL
  to ``phi`` tend to ``(x_delta, delta, 0)``, the reward gap being about ``log n / (2 lam n)``.
  For ``delta >= delta_max`` the rewards still tend to ``r_max`` but ``KL(pi_N || phi^n) = +inf``.

  The sequence law is computed only where it matters: accurately (relative) where best-of-N has
  mass, and to absolute accuracy in the bulk (for the win rate). Rewards must lie on a lattice
  (``reward * scale`` integers; see :func:`klrl.memoryless.lattice`). It composes with ``jit``,
  ``vmap`` and ``grad`` over ``logp`` and ``delta``; ``reward`` and ``n`` set the lattice and the
  buffer sizes, so they must be concrete (NumPy values or Python numbers; with a traced ``n``,
  use :func:`bon_vs_kl_lattice` with a static ``size``). Differentiable in ``delta`` and ``logp``.

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
  where = "klrl.memoryless.bon_vs_kl"
  _checks.same_support(where, "logp", _checks.floating(where, "logp", logp, 1), "reward",
                       _checks.floating(where, "reward", reward, 1))
  _checks.batch_shape(where, {"logp": logp, "reward": reward}, {"delta": delta, "n": n})
  lat = lattice(logp, reward, scale, rounding=rounding)
  return bon_vs_kl_lattice(lat, delta, n, tilts=tilts)


@_args.public(static=("n",), name="bon_vs_kl_enumerated")
def _enumerated(logp, reward, k, delta, n):
  where = "klrl.memoryless.bon_vs_kl_enumerated"
  logp, reward, delta = _args.inputs(where, logp, reward, delta=(delta, _checks.nonnegative))
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
  n = _args.count(where, "n", n, 1)
  if np.shape(logp)[-1] ** n > 2 ** 22:
    raise _checks.InputError(f"{where}: argument 'n' gives V^n = {np.shape(logp)[-1] ** n} sequences (more than 2^22)")
  k = _checks.lattice_integers(where, reward, scale, False)
  return _enumerated(logp, reward, jnp.asarray(k), delta, n)
