"""The exact law of the sequence reward ``S_n`` of a Markov-token reference, best-of-N over
sequences against KL-RL, and when one step of best-of-N is a tilt (docs: theory/markov).

Rewards on a lattice (``r * scale`` integers) make ``S_n`` an integer level ``s`` (in units of
the lattice step), and its generating function is a matrix power:
``E[z^{S_n}] = mu_z^T M(z)^{n-1} 1`` with ``M(z)(i, j) = P(i, j) z^{k(i, j)}``.

Numerics of the law. On the unit circle ``z = e^{theta - 2 pi i f / W}`` the power gives the
discrete Fourier transform of the tilted law ``P(s) e^{theta s - A_n(theta)}``, and an inverse
real FFT gives that law on ``W`` points. As for i.i.d. tokens (:mod:`klrl.memoryless`), a plain
FFT has an absolute error of about ``eps`` times the peak, so the law is computed under several
tilts ``theta`` and every level takes its value from the tilt under which it is largest
relative to that tilt's peak. Three things are particular to chains:

- the tilted matrix is rewritten with a max-plus potential ``v`` (``k(i,j) = c + rt(i,j) - v(j) +
  v(i)``, ``rt <= 0`` for ``theta >= 0`` and ``>= 0`` for ``theta < 0``), so that its entries
  ``P e^{theta rt}`` are at most ``P`` and every state keeps an edge of weight ``P``: nothing
  overflows, and nothing that carries mass underflows, for any ``theta``;
- the powers are taken by binary powering for all frequencies at once (complex ``V x V``
  products), rescaled by the zero frequency, whose entries bound all others in modulus;
- each tilt's window of ``W`` points is sized by Chernoff bounds computed from the exact
  ``A_n`` on a grid of tilts (its tails beyond the window are below ``e^{-75}`` of its mass),
  so ``W`` grows like ``sqrt(n)`` rather than ``n``.

Cost: ``tilts x (W/2 + 1) x 2 log2(n) V^3`` complex multiply-adds, plus ``O(V^3 log n)`` per
grid tilt for the planning.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxtyping import Array, Float

from klrl import bon, tilted
from klrl.memoryless import SequenceLaw
from klrl._src import checks as _checks
from klrl.markov import _core
from klrl.markov.kl_rl import _kl_constrained, _kl_constrained_rate
from klrl.markov.references import Reference, unpack

__all__ = ["SequenceLaw", "BonVsKL", "SingleStep", "sequence_law", "bon_vs_kl", "single_step"]


# ---------------------------------------------------------------------------------------------
# Host-side lattice.

class _Lattice(NamedTuple):
  kappa0: np.ndarray   # (..., V) first-token levels, in lattice steps from the lowest
  kappa: np.ndarray    # (..., V, V) transition levels
  start: np.ndarray    # (...) lattice integer of level 0 of S_n
  span: np.ndarray
  size: int            # levels of S_n (the largest over the batch)


def _lattice(where, ref: Reference, n: int, scale, rounding) -> _Lattice:
  for name, x in (("ref", ref.reward), ("ref", ref.first_reward), ("ref", ref.log_trans), ("ref", ref.log_init)):
    if isinstance(x, jax.core.Tracer):
      raise _checks.InputError(f"{where}: argument '{name}' must be concrete (the lattice size depends on its "
                               f"values): call it outside jit/vmap")
  k = _checks.lattice_integers(where, ref.reward, scale, rounding, "argument 'ref' (its reward)")
  k0 = _checks.lattice_integers(where, ref.first_reward, scale, rounding, "argument 'ref' (its first_reward)")
  edge = np.asarray(ref.log_trans) > -np.inf
  init = np.asarray(ref.log_init) > -np.inf
  big = np.iinfo(np.int64).max
  kmin = np.where(edge, k, big).min(axis=(-2, -1))
  k0min = np.where(init, k0, big).min(axis=-1)
  g = np.gcd(np.gcd.reduce(np.where(edge, k - kmin[..., None, None], 0).reshape(k.shape[:-2] + (-1,)), axis=-1),
             np.gcd.reduce(np.where(init, k0 - k0min[..., None], 0), axis=-1))
  g = np.maximum(g, 1)
  kappa = np.where(edge, (k - kmin[..., None, None]) // g[..., None, None], 0)
  kappa0 = np.where(init, (k0 - k0min[..., None]) // g[..., None], 0)
  size = int(((n - 1) * kappa.max(axis=(-2, -1)) + kappa0.max(axis=-1)).max(initial=0)) + 1
  if size > 2 ** 24:
    raise _checks.InputError(f"{where}: argument 'n' gives {size} reward levels of S_n (more than 2^24); use a coarser scale")
  return _Lattice(kappa0, kappa, (n - 1) * kmin + k0min, g, size)


def _fft_size(t: int) -> int:
  m = 1
  while m < t:
    m *= 2
  return 3 * m // 4 if m >= 4 and 3 * m // 4 >= t else m


# ---------------------------------------------------------------------------------------------
# The tilted powers.

class _Sides(NamedTuple):
  c: Array      # (2,) max and min cycle means of kappa (lattice steps)
  v: Array      # (2, V) max-plus potentials
  rt: Array     # (2, V, V) shifted levels: <= 0 (max side), >= 0 (min side)


def _sides(log_trans, kappa) -> _Sides:
  has = log_trans > -jnp.inf
  out = []
  for sign in (1.0, -1.0):
    w = jnp.where(has, sign * kappa, -jnp.inf)
    c = _core.max_cycle_mean(w)
    v, rt = _core.potential(w, c, jnp.zeros_like(c))
    out.append((sign * c, sign * v, jnp.where(has, sign * rt, 0.0)))
  return _Sides(*(jnp.stack(x) for x in zip(*out)))


def _tilted(log_init, log_trans, kappa0, kappa, sides: _Sides, theta, n: int, phases=None):
  """``(G, log scale)``: ``G[f] exp(log scale) = sum_s P(s) e^{theta s} e^{-2 pi i f s / W}`` for the
  frequencies whose phases ``(e^{-2 pi i f kappa0 / W}, e^{-2 pi i f kappa / W})`` are given
  (real, zero frequency only, when ``phases`` is None)."""
  side = jnp.where(theta >= 0, 0, 1)
  c, v, rt = sides.c[side], sides.v[side], sides.rt[side]
  a = log_init + theta * (kappa0 + v)
  b = -theta * v
  logm = jnp.where(log_trans > -jnp.inf, log_trans + theta * rt, -jnp.inf)
  ta, tb = _core._top(a, -1), _core._top(b, -1)
  alpha, beta, m = jnp.exp(a - ta), jnp.exp(b - tb), jnp.exp(logm)
  log_scale = ta + tb + theta * (n - 1) * c
  if phases is not None:
    alpha, m = alpha[None] * phases[0], m[None] * phases[1]
  else:
    alpha, m = alpha[None], m[None]
  u, s, ls, bits = alpha, m, jnp.zeros((), m.real.dtype), n - 1
  while bits:
    if bits & 1:
      u = jnp.einsum("fi,fij->fj", u, s)
      cu = lax.stop_gradient(jnp.max(jnp.abs(u[0])))
      u, log_scale = u / cu, log_scale + jnp.log(cu) + ls
    bits >>= 1
    if bits:
      s = jnp.matmul(s, s)
      cs = lax.stop_gradient(jnp.max(jnp.abs(s[0])))
      s, ls = s / cs, 2 * ls + jnp.log(cs)
  return jnp.einsum("fi,i->f", u, beta.astype(u.dtype)), log_scale


_GRID = 120         # grid tilts per side, 10^-3 .. 10^4 per lattice step of the largest level (14% apart)
_TAIL = 75.0        # a tilt's window holds all but e^-75 of its mass


@_core.public(name="sequence_law", static=("n",))
def _plan(log_init, log_trans, kappa0, kappa, n):
  """A grid of tilts with ``A_n`` and the tilted mean (lattice steps), and the two extreme levels
  with their exact log-probabilities."""
  where = "klrl.markov.sequence_law"
  a, = _core.check(where, log_init, log_trans, kappa, kappa0)
  m = jnp.full(a.log_init.shape[:-1], n - 1, jnp.int32)
  hi, lp_hi = _core.top(a.log_init, a.first_reward, a.log_trans, a.reward, m)
  lo, lp_lo = _core.top(a.log_init, -a.first_reward, a.log_trans, -a.reward, m)
  flat = lambda x, k: x.reshape((-1,) + x.shape[x.ndim - k:])

  def row(li, lt, k0, k):
    sides = _sides(lt, k)
    spread = jnp.maximum(jnp.maximum(jnp.max(k), jnp.max(k0)), 1.0)
    pos = jnp.logspace(-3.0, 4.0, _GRID, dtype=li.dtype) / spread
    theta = jnp.concatenate([-pos[::-1], jnp.zeros(1, li.dtype), pos])

    def at(t):
      def log_mgf(t):
        g, sc = _tilted(li, lt, k0, k, sides, t, n)
        return jnp.log(g[0].real) + sc
      return jax.jvp(log_mgf, (t,), (jnp.ones_like(t),))

    return (theta,) + lax.map(at, theta)

  out = jax.vmap(row)(flat(a.log_init, 1), flat(a.log_trans, 2), flat(a.first_reward, 1), flat(a.reward, 2))
  batch = a.log_init.shape[:-1]
  theta, log_mgf, mean = (x.reshape(batch + x.shape[1:]) for x in out)
  return theta, log_mgf, mean, -lo, hi, lp_lo, lp_hi


def _choose(theta, a, mean, s_lo, s_hi, tilts, log_floor):
  """Host: tilts evenly spaced in Fisher-Rao length over the grid points with KL <= -log_floor
  (and the next one on each side), and each one's window ``[mean - a_lo, mean + a_up]`` from Chernoff bounds on the grid."""
  valid = np.isfinite(a) & np.isfinite(mean)            # extreme grid tilts may underflow: not used
  kl = np.where(valid, theta * mean - a, np.inf)
  keep = kl <= -log_floor
  keep[len(theta) // 2] = True
  idx = np.flatnonzero(keep)
  idx = np.arange(max(idx.min() - 1, 0), min(idx.max() + 2, len(theta)))   # one grid tilt beyond the range
  idx = idx[valid[idx]]
  seg = np.sqrt(np.maximum(np.diff(theta[idx]) * np.diff(mean[idx]), 0.0))
  arc = np.concatenate([[0.0], np.cumsum(seg)])
  targets = np.linspace(0.0, arc[-1], tilts)
  chosen = np.unique(idx[np.abs(arc[None, :] - targets[:, None]).argmin(axis=1)])
  lows, ups = [], []
  for g in chosen:
    d = np.where(valid, theta - theta[g], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
      width = (_TAIL + a - a[g] - d * mean[g]) / np.abs(d)
    up = width[valid & (d > 0)]
    low = width[valid & (d < 0)]
    ups.append(min(up.min(initial=np.inf), s_hi - mean[g] + 1))
    lows.append(min(low.min(initial=np.inf), mean[g] - s_lo + 1))
  return theta[chosen], mean[chosen], np.maximum(np.array(lows), 0.0), np.maximum(np.array(ups), 0.0)


@_core.public(name="sequence_law", static=("n", "size", "window"))
def _law(log_init, log_trans, kappa0, kappa, theta, w0, lo, hi, lp_lo, lp_hi, n, size, window):
  where = "klrl.markov.sequence_law"
  a, = _core.check(where, log_init, log_trans, kappa, kappa0)
  dtype = a.log_init.dtype
  v = a.log_trans.shape[-1]
  buf = max(size, window)
  freqs = window // 2 + 1
  chunk = max(1, min(freqs, (1 << 20) // (v * v)))
  blocks = -(-freqs // chunk)
  f = jnp.arange(blocks * chunk, dtype=dtype).reshape(blocks, chunk)
  f = jnp.concatenate([jnp.zeros((blocks, 1), dtype), f], axis=1)      # frequency 0 first in every block
  resolved = math.log(64 * n * v * float(jnp.finfo(dtype).eps))
  flat = lambda x, k: x.reshape((-1,) + x.shape[x.ndim - k:])

  def row(li, lt, k0, k, thetas, starts, lo, hi, lp_lo, lp_hi):
    sides = _sides(lt, k)

    def one(best, tilt):
      t, start = tilt

      def block(fb):
        ang = -2 * jnp.pi / window * fb
        phases = (jnp.exp(1j * ang[:, None] * k0[None, :]), jnp.exp(1j * ang[:, None, None] * k[None]))
        return _tilted(li, lt, k0, k, sides, t, n, phases)

      g, sc = lax.map(block, f)
      g0 = g[0, 0].real
      x = (g[:, 1:].reshape(-1) / g0)[:freqs]
      q = jnp.fft.irfft(x, window)
      s = start + jnp.arange(window, dtype=jnp.int32)
      vals = q[jnp.mod(s, window)]
      ok = vals > 0
      log_v = jnp.log(jnp.where(ok, vals, 1.0))
      score = jnp.where(ok, log_v - jnp.log(jnp.max(q)), -jnp.inf)
      cand = log_v + jnp.log(g0) + sc[0] - t * s.astype(dtype)
      bs, bv = (lax.dynamic_slice(b, (start,), (window,)) for b in best)
      better = score > bs
      best = tuple(lax.dynamic_update_slice(b, jnp.where(better, new, old), (start,))
                   for b, new, old in zip(best, (score, cand), (bs, bv)))
      return best, None

    init = (jnp.full(buf, -jnp.inf, dtype), jnp.full(buf, -jnp.inf, dtype))
    (score, value), _ = lax.scan(one, _checks.vary_alike(init, (li, lt)), (thetas, starts))
    s = jnp.arange(size, dtype=dtype)
    score, value = score[:size], value[:size]
    out = jnp.where((s >= lo) & (s <= hi) & (score > resolved), value, -jnp.inf)
    out = jnp.where(s == hi, lp_hi, jnp.where(s == lo, lp_lo, out))
    return out - lax.stop_gradient(_core.lse(out, -1))

  batch = a.log_init.shape[:-1]
  rows = [flat(a.log_init, 1), flat(a.log_trans, 2), flat(a.first_reward, 1), flat(a.reward, 2), flat(theta, 1),
          flat(w0, 1)] + [x.reshape(-1) for x in (lo, hi, lp_lo, lp_hi)]
  return jax.vmap(row)(*rows).reshape(batch + (size,))


def sequence_law(ref: Reference, n: int, scale: float = 1.0, *, rounding: bool = False, tilts: int = 16,
                 log_floor: float = -700.0) -> SequenceLaw:
  """Exact law of the sequence reward ``S_n = r_0(y_1) + sum_{t=2..n} r(y_{t-1}, y_t)``.

  The law is described on the theory page (docs: theory/markov). Rewards must lie on a lattice
  (``reward * scale`` and ``first_reward * scale`` integers to ``1e-6``; ``rounding=True`` rounds
  them); levels are in steps of the greatest common divisor of the gaps. Computed by tilted
  FFTs of matrix powers (see the module docstring) with ``tilts`` tilts placed over the range
  where ``log P(S_n = s) >= log_floor``: there every log-probability is accurate to about
  ``n V 1e-15`` relative in float64 (measured against an exact log-space recursion: below
  ``1e-9`` for ``n V <= 1e4``); the two extreme levels are exact (best-sequence semiring).
  Levels below the resolution of every tilt (and levels of zero probability) are ``-inf``.
  Needs concrete arrays (the lattice size depends on the rewards): call it outside ``jit``.

  Args:
    ref: the reference.
    n: sequence length, a Python int ``>= 1`` (static).
    scale: rewards times ``scale`` are integers.
    rounding: round rewards to the lattice instead of refusing others.
    tilts: number of tilts (static, ``>= 2``).
    log_floor: smallest log-probability that must be accurate (default ``-700``).

  Returns:
    :class:`SequenceLaw` with ``log_prob`` of shape ``batch + (L,)``,
    ``L = (n-1) max k + max k_0 + 1`` (levels of the largest row).
  """
  where = "klrl.markov.sequence_law"
  arrays = unpack(where, ref)
  n = _core.static_count(where, "n", n, 1)
  tilts = _core.static_count(where, "tilts", tilts, 2)
  lat = _lattice(where, ref, n, scale, rounding)
  dtype = jnp.result_type(*arrays)
  kappa0, kappa = jnp.asarray(lat.kappa0, dtype), jnp.asarray(lat.kappa, dtype)
  theta, log_mgf, mean, lo, hi, lp_lo, lp_hi = _plan(arrays[0], arrays[1], kappa0, kappa, n)
  batch = tuple(np.shape(lo))
  theta_np, a_np, mean_np = (np.asarray(x).reshape((-1,) + x.shape[len(batch):]) for x in (theta, log_mgf, mean))
  lo_np, hi_np = np.asarray(lo).reshape(-1), np.asarray(hi).reshape(-1)
  plans = [_choose(theta_np[i], a_np[i], mean_np[i], lo_np[i], hi_np[i], tilts, float(log_floor))
           for i in range(theta_np.shape[0])]
  size = lat.size
  width = max(math.ceil(np.max(p[2] + p[3])) + 4 for p in plans)
  window = _fft_size(width)
  if window >= size:
    window = _fft_size(size)
  count = max(len(p[0]) for p in plans)
  thetas, starts = [], []
  for t, mu, low, _ in plans:
    w0 = np.clip(np.floor(mu - low).astype(np.int64) - 1, 0, max(size - window, 0))
    pad = count - len(t)
    thetas.append(np.concatenate([t, np.repeat(t[-1:], pad)]))
    starts.append(np.concatenate([w0, np.repeat(w0[-1:], pad)]))
  thetas = np.array(thetas).reshape(batch + (count,))
  starts = np.array(starts, dtype=np.int32).reshape(batch + (count,))
  log_prob = _law(arrays[0], arrays[1], kappa0, kappa, jnp.asarray(thetas, dtype), jnp.asarray(starts), lo, hi,
                  lp_lo, lp_hi, n, size, window)
  span = np.broadcast_to(lat.span, batch)
  start = np.broadcast_to(lat.start, batch)
  return SequenceLaw(log_prob, jnp.asarray(start, dtype), jnp.asarray(span, dtype), jnp.full(batch, float(scale), dtype))


# ---------------------------------------------------------------------------------------------
# Best-of-N over sequences against KL-RL.

class BonVsKL(NamedTuple):
  """Best-of-N over sequences of ``n`` tokens, ``N = e^{n delta}``, against KL-RL (see :func:`bon_vs_kl`).

  The fields of :class:`klrl.memoryless.BonVsKL`, and the per-token limits. Per token (divided
  by ``n``) except the win rate:

  Attributes:
    mean_reward: ``E_{pi_N}[S_n] / n``; tends to ``x_Delta`` as ``n -> inf``.
    kl: ``KL(pi_N || p) / n``; tends to ``delta``.
    kl_to_tilted: ``KL(pi_N || phi_n) / n`` with ``phi_n`` the KL-RL solution at budget
      ``n delta`` (:func:`klrl.markov.kl_constrained`); tends to 0 (``+inf`` when ``phi_n`` is
      saturated and best-of-N is not).
    win_rate: ``P(S_n > S_n') + P(S_n = S_n') / 2``, ``S_n ~ pi_N`` against ``S_n' ~ p``.
    target_reward: ``E_{phi_n}[S_n] / n``, the per-token reward of the KL-RL solution.
    lam: the tilt of ``phi_n`` (``inf`` when saturated).
    predicted_gap: ``log n / (2 lam n)``, the gap ``target_reward - mean_reward`` that the i.i.d.
      theory predicts.
    limit_reward: ``x_Delta = Lambda'(lam_Delta)``, the per-token limit (:func:`klrl.markov.kl_constrained_rate`).
    limit_lam: ``lam_Delta``.
  """
  mean_reward: Array
  kl: Array
  kl_to_tilted: Array
  win_rate: Array
  target_reward: Array
  lam: Array
  predicted_gap: Array
  limit_reward: Array
  limit_lam: Array


@_core.public(name="bon_vs_kl")
def _bon(log_init, log_trans, reward, first_reward, log_prob, start, span, scale, delta, n):
  dtype = log_prob.dtype
  sol = _kl_constrained(log_init, log_trans, reward, first_reward, delta, n)
  lim = _kl_constrained_rate(log_init, log_trans, reward, first_reward, delta)
  batch = sol.lam.shape
  lp = jnp.broadcast_to(log_prob, batch + log_prob.shape[-1:])
  start, span, scale, n = (jnp.broadcast_to(x, batch).astype(dtype) for x in (start, span, scale, n))
  i = jnp.broadcast_to(jnp.arange(lp.shape[-1], dtype=dtype), lp.shape)
  log_law = bon.level_law(lp, log_n=n * jnp.broadcast_to(delta, batch))
  st = bon.level_stats(lp, i, log_law)
  lam_i = jnp.where(sol.saturated, 0.0, sol.lam) * span / scale          # tilt per lattice step
  tilt = lp + lam_i[..., None] * i
  tilt = tilt - _core.lse(tilt, -1)[..., None]
  top = jnp.max(jnp.where(lp > -jnp.inf, i, -1.0), axis=-1)
  tilt = jnp.where(sol.saturated[..., None], jnp.where(i == top[..., None], 0.0, -jnp.inf), tilt)
  has = log_law > -jnp.inf
  singular = jnp.any(has & (tilt == -jnp.inf), axis=-1)
  kl_t = jnp.sum(jnp.where(has, jnp.exp(log_law) * (log_law - jnp.where(has, tilt, 0.0)), 0.0), axis=-1)
  gap = jnp.where(n == 1, 0.0, jnp.log(n) / (2 * jnp.where((n == 1) | (sol.lam == 0), 1.0, sol.lam) * n))
  return BonVsKL(
      mean_reward=(start + span * st.mean_reward) / (scale * n),
      kl=st.kl / n,
      kl_to_tilted=jnp.where(singular, jnp.inf, jnp.maximum(kl_t, 0.0) / n),
      win_rate=jnp.clip(st.win_rate, 0.0, 1.0),
      target_reward=sol.mean_reward,
      lam=sol.lam,
      predicted_gap=jnp.where(sol.lam > 0, gap, jnp.inf),
      limit_reward=lim.mean_reward,
      limit_lam=lim.lam)


def bon_vs_kl(ref: Reference, delta, n: int, scale: float = 1.0, *, rounding: bool = False,
              tilts: int = 16) -> BonVsKL:
  """Best-of-N over whole Markov-token sequences with ``N = e^{n delta}`` against KL-RL.

  Best-of-N draws ``N`` sequences of ``n`` tokens from the reference and keeps one of largest
  ``S_n``; the KL-RL solution at budget ``n delta`` is the tilt ``phi_n ∝ p e^{lam S_n}``
  (:func:`klrl.markov.kl_constrained`). Both depend on a sequence only through ``S_n``, so the
  best-of-N level law (:func:`klrl.bon.level_law` with ``log N = n delta``) on the exact law of
  ``S_n`` (:func:`sequence_law`, resolved down to ``e^{-(n delta + 80)}``) gives the
  per-token reward and KLs, as :func:`klrl.memoryless.bon_vs_kl` does for i.i.d. tokens (and
  equal to it for identical rows of ``P``). As ``n -> inf`` (docs: theory/markov) the
  per-token reward tends to ``x_Delta``, ``KL(pi_N || p) / n`` to ``delta`` and
  ``KL(pi_N || phi_n) / n`` to 0. Needs concrete arrays and ``delta`` (the law's resolution
  depends on it): call it outside ``jit``.

  Args:
    ref: the reference, rewards on the lattice ``(1/scale) Z``.
    delta: per-token KL budget ``>= 0``; broadcasts with the batch axes of ``ref``.
    n: sequence length, a Python int ``>= 1``.
    scale: rewards times ``scale`` are integers.
    rounding: round rewards to the lattice instead of refusing others.
    tilts: number of tilts of the sequence law.

  Returns:
    :class:`BonVsKL`.
  """
  where = "klrl.markov.bon_vs_kl"
  arrays = unpack(where, ref)
  n = _core.static_count(where, "n", n, 1)
  d = np.asarray(delta, dtype=np.float64)
  if isinstance(delta, jax.core.Tracer) or not np.all(np.isfinite(d)) or (d < 0).any():
    raise _checks.InputError(f"{where}: argument 'delta' must be concrete, finite and >= 0, got {delta!r}")
  law = sequence_law(ref, n, scale, rounding=rounding, tilts=tilts, log_floor=-max(700.0, n * float(d.max()) + 80.0))
  return _bon(*arrays, *law, delta, n)


# ---------------------------------------------------------------------------------------------
# One step: when is best-of-N a tilt?

class SingleStep(NamedTuple):
  """Best-of-N on one token against the tilt with the same KL (see :func:`single_step`).

  Attributes:
    is_tilt: whether ``pi_N`` is a tilt of ``p`` (``residual`` below ``1e-8`` relative in
      float64, ``1e-3`` in float32).
    kl: ``KL(pi_N || p)``.
    kl_to_tilted: ``KL(pi_N || phi)`` with ``phi`` the KL-RL tilt at budget ``kl`` (the tilt with
      the same KL).
    residual: the largest distance of ``log(P_N(k) / P_k)`` from its least-squares line in the
      level rewards ``s_k``, over the levels where ``pi_N`` has mass, relative to
      ``1 + max |log(P_N(k) / P_k)|``: zero exactly when ``pi_N`` is a tilt.
    lam: the tilt's ``lam`` (``inf`` when saturated).
  """
  is_tilt: Array
  kl: Array
  kl_to_tilted: Array
  residual: Array
  lam: Array


@_core.public(name="single_step")
def _single_step(log_init, log_trans, reward, first_reward, log_n):
  where = "klrl.markov.single_step"
  a, log_n = _core.check(where, log_init, log_trans, reward, first_reward, log_n=(log_n, _checks.nonnegative))
  lv = bon.levels(a.log_init, a.first_reward)
  log_law = bon.level_law(lv.log_mass, log_n=log_n)
  kl = bon.level_stats(lv.log_mass, lv.reward, log_law).kl
  sol = tilted.kl_constrained(a.log_init, a.first_reward, kl)
  has = lv.log_mass > -jnp.inf
  s = jnp.where(has, lv.reward, 0.0)
  lam = jnp.where(sol.saturated, 0.0, sol.lam)
  tilt = jnp.where(has, lv.log_mass + lam[..., None] * s, -jnp.inf)
  tilt = tilt - _core.lse(tilt, -1)[..., None]
  top = jnp.max(jnp.where(has, s, -jnp.inf), axis=-1)
  tilt = jnp.where(sol.saturated[..., None], jnp.where(has & (s == top[..., None]), lv.log_mass - _core.lse(
      jnp.where(has & (s == top[..., None]), lv.log_mass, -jnp.inf), -1)[..., None], -jnp.inf), tilt)
  on = log_law > -jnp.inf
  kl_t = jnp.sum(jnp.where(on, jnp.exp(log_law) * (log_law - jnp.where(on, tilt, 0.0)), 0.0), axis=-1)
  # Affine in the level rewards where pi_N has mass: the least-squares line and its largest residual.
  g = jnp.where(on, log_law - lv.log_mass, 0.0)
  count = jnp.maximum(jnp.sum(on, axis=-1), 1)
  mean = lambda x: (jnp.sum(jnp.where(on, x, 0.0), axis=-1) / count)[..., None]
  ds, dg = jnp.where(on, s - mean(s), 0.0), jnp.where(on, g - mean(g), 0.0)
  var = jnp.sum(ds * ds, axis=-1)
  slope = jnp.where(var > 0, jnp.sum(ds * dg, axis=-1) / jnp.where(var > 0, var, 1.0), 0.0)
  residual = jnp.max(jnp.abs(dg - slope[..., None] * ds), axis=-1) / (1 + jnp.max(jnp.abs(g), axis=-1))
  tol = 1e-8 if jnp.finfo(a.log_init.dtype).bits > 32 else 1e-3
  return SingleStep(residual <= tol, kl, jnp.maximum(kl_t, 0.0), residual, sol.lam)


def single_step(ref: Reference, log_n: Float[Array, "..."]) -> SingleStep:
  """Whether best-of-N on the first token is exactly a tilt of the reference.

  On one step (``n = 1``, the first token's reward ``r_0`` under ``mu``) best-of-N moves mass
  between reward levels by ``P_N(k) / P_k``, so ``pi_N`` is a tilt ``p e^{lam r - A(lam)}`` exactly
  when ``k -> log(P_N(k) / P_k)`` is affine in the level rewards ``s_k`` on the support (docs:
  theory/markov). With two levels it always is; with three or more, generically not. This
  tests the affinity on the levels where ``pi_N`` has mass (``residual``, ``is_tilt``) and reports
  ``kl_to_tilted = KL(pi_N || phi)`` against the KL-RL tilt with the same KL to ``p`` (the only
  candidate: a tilt is fixed by its KL), zero exactly when ``pi_N`` is a tilt. When ``N`` is so
  large that ``KL(pi_N || p)`` rounds to ``Delta_max``, that tilt is saturated and
  ``kl_to_tilted`` is ``+inf`` although the residual may be 0.

  Args:
    ref: the reference (only ``log_init`` and ``first_reward`` are used; ``P`` is checked).
    log_n: ``log N >= 0``, a scalar or one per row.

  Returns:
    :class:`SingleStep`.
  """
  return _single_step(*unpack("klrl.markov.single_step", ref), log_n)
