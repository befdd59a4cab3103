"""The tilted-FFT machinery of the exact law of ``S_n`` (see :mod:`klrl.memoryless.lattices`).

All positions are in lattice index units: the per-token law has ``L`` points ``j = 0..L-1``
and the law of ``S_n`` the points ``s = 0..n (L-1)``. A tilt ``theta`` of the per-token law has
mean ``x = A'(theta)`` and KL to it ``I(x) = theta x - A(theta)``.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import logsumexp
from jaxtyping import Array

from klrl._src import checks as _checks
from klrl.memoryless import _args


def fft_size(t: int) -> int:
  """The smallest ``2^a`` or ``3 * 2^a`` that is at least ``t``."""
  m = 1
  while m < t:
    m *= 2
  return 3 * m // 4 if m >= 4 and 3 * m // 4 >= t else m


def tilt_window(levels: int, n_max: int, total: int) -> int:
  """FFT size per tilt: ``~9 (L-1) sqrt(n)`` points, or the whole support when that is smaller."""
  w = fft_size(int(math.ceil(9 * (levels - 1) * math.sqrt(n_max))) + 16)
  return fft_size(total) if w >= total else w


def gcd(d, mask):
  """Greatest common divisor of the integers ``d`` where ``mask`` holds (1 if none)."""
  g0 = _checks.vary_alike(jnp.zeros((), d.dtype), (d, mask))
  g = lax.fori_loop(0, d.shape[-1], lambda i, g: jnp.where(mask[i], jnp.gcd(g, d[i]), g), g0)
  return jnp.maximum(g, 1)


class Support(NamedTuple):
  lo: Array     # lowest and highest index of positive mass (ints)
  hi: Array
  span: Array   # gcd of the gaps (int)


def support(log_mass) -> Support:
  size = log_mass.shape[-1]
  j = jnp.arange(size, dtype=jnp.int32)
  has = log_mass > -jnp.inf
  lo = jnp.min(jnp.where(has, j, size - 1))
  hi = jnp.max(jnp.where(has, j, 0))
  return Support(lo, hi, gcd(j - lo, has))


class Grid(NamedTuple):
  theta: Array   # tilts, increasing, symmetric and log-spaced around 0
  x: Array       # their means A'(theta) (lattice index units)
  rate: Array    # I(x) = theta x - A(theta), the KL of the tilt to p


def grid(log_mass, j, points: int = 400) -> Grid:
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
  return lax.stop_gradient(Grid(theta, x, jnp.maximum(theta * x - a, 0.0)))


def arc(grid: Grid, x_lo, x_hi, count: int) -> Grid:
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


def x_at_kl(grid: Grid, kl, upper: bool):
  """Mean of the tilt with the given KL on one side of ``theta = 0`` (clamped to the grid)."""
  half = grid.theta.shape[0] // 2
  if upper:
    return jnp.interp(kl, grid.rate[half:], grid.x[half:])
  return jnp.interp(kl, grid.rate[: half + 1][::-1], grid.x[: half + 1][::-1])


def caps(sup: Support, n, dtype):
  """Half a lattice step of ``S_n / n`` inside the two end points (the ends themselves are exact)."""
  half = 0.5 * sup.span.astype(dtype) / n
  return sup.lo.astype(dtype) + half, sup.hi.astype(dtype) - half


def tilted_law(log_mass, n, tilts: Grid, sup: Support, base, buf: int, window: int):
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




def static_window(where, log_mass, n, size):
  """Static FFT size per tilt (``~9 (L-1) sqrt(n)``): from the data when concrete, else from ``size``."""
  length = int(np.shape(log_mass)[-1])
  if _args.concrete(n):
    n_arr = integers(where, n)
    if _args.concrete(log_mass):     # the support's own spread, else the lattice's length
      has = np.asarray(log_mass) > -np.inf
      j = np.arange(length)
      spread = np.maximum(np.where(has, j, 0).max(axis=-1) - np.where(has, j, length).min(axis=-1), 0)
    else:
      spread = np.array(length - 1)
    spread, n_arr = np.broadcast_arrays(spread, n_arr)
    total = int((n_arr * spread).max()) + 1
    return min(fft_size(int(math.ceil(9 * (spread * np.sqrt(n_arr)).max())) + 16), fft_size(total))
  if size is None:
    raise _checks.InputError(f"{where}: argument 'n' is traced, so the buffer size cannot be derived from it: pass "
                             f"n as a Python int or NumPy array (static), or call klrl.memoryless.bon_vs_kl_lattice with a static "
                             f"size >= max(n) (L-1) + 1")
  return tilt_window(length, max((size - 1) // max(length - 1, 1), 1), size)


def integers(where, n) -> np.ndarray:
  """Concrete sequence lengths ``n`` as a float64 NumPy array, checked to be integers ``>= 1``."""
  n_arr = np.asarray(n, dtype=np.float64)
  if n_arr.size == 0 or not np.all(np.isfinite(n_arr)) or n_arr.min() < 1 or np.any(n_arr != np.round(n_arr)):
    raise _checks.InputError(f"{where}: argument 'n' must be an integer >= 1, got {n!r}")
  return n_arr
