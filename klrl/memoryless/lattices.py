"""Rewards on a lattice and the exact law of the sequence reward ``S_n`` (docs: theory/memoryless).

:func:`lattice` puts the per-token reward law on its lattice (tokens of equal reward merged,
gaps divided out); :func:`sequence_law` gives the law of ``S_n = sum_i r(y_i)`` for ``n``
i.i.d. tokens on that lattice, accurately in its tails.

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
not ``n (L-1)``.
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

from klrl._src import checks as _checks
from klrl.memoryless import _args, _fft

__all__ = ["Lattice", "SequenceLaw", "lattice", "sequence_law"]


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


@_args.public(static=("size",), name="lattice")
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

  The exact sequence law (docs: theory/memoryless) needs rewards on a lattice: ``reward * scale`` must be
  integers (to ``1e-6`` relative); otherwise this raises :class:`klrl.InputError`, unless
  ``rounding=True`` asks to round them to the nearest multiple of ``1/scale``. The lattice runs
  from the smallest to the largest reward of positive mass (all rewards when ``logp`` is traced)
  in steps of the greatest common divisor of their gaps, so the law is aperiodic. Masses are
  summed in log space per lattice point (differentiable in ``logp``) and renormalised.

  This is a preparation step: its output size depends on the values of ``reward`` (and of
  ``scale``), so ``reward`` must be concrete (not traced by ``jit``/``vmap``). Everything
  downstream (:func:`sequence_law`, :func:`klrl.memoryless.bon_vs_kl_lattice`) takes the :class:`Lattice` and
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
  k = np.broadcast_to(_checks.lattice_integers(where, given_reward, scale, rounding), shape)
  mass = np.broadcast_to(np.asarray(given_logp) > -np.inf, shape) if _args.concrete(given_logp) else np.ones(shape, bool)
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

  @property
  def reward(self) -> Array:
    """The sequence reward of each level, ``(start + span i) / scale``, shape ``(..., L)``."""
    i = jnp.arange(self.log_prob.shape[-1], dtype=self.log_prob.dtype)
    return (self.start[..., None] + self.span[..., None] * i) / self.scale[..., None]


@_args.public(static=("n", "tilts", "window"), name="sequence_law")
def _sequence_law(log_mass, offset, span, scale, n, tilts, log_floor, window):
  where = "klrl.memoryless.sequence_law"
  log_mass, offset, span, scale = _args.check_lattice(where, log_mass, offset, span, scale)
  log_floor = _checks.finite(where, "log_floor", _checks.floating(where, "log_floor", log_floor)).astype(log_mass.dtype)
  length = log_mass.shape[-1]
  size = n * (length - 1) + 1
  nf = jnp.asarray(float(n), log_mass.dtype)
  j = jnp.arange(length, dtype=log_mass.dtype)

  def row(lm):
    sup = _fft.support(lm)
    grid = _fft.grid(lm, j)
    lo, hi = _fft.caps(sup, nf, lm.dtype)
    x_lo = jnp.clip(_fft.x_at_kl(grid, -log_floor / nf, False), lo, hi)
    x_hi = jnp.clip(_fft.x_at_kl(grid, -log_floor / nf, True), x_lo, hi)
    law = _fft.tilted_law(lm, nf, _fft.arc(grid, x_lo, x_hi, tilts), sup, 0, size, window)
    # The computed law sums to 1 within ~n 1e-16 (rounding in the Fourier powers); renormalising
    # removes that from cumulative sums at no cost to the relative accuracy.
    return law - lax.stop_gradient(logsumexp(law))

  batch = log_mass.shape[:-1]
  out = jax.vmap(row)(log_mass.reshape((-1, length))).reshape(batch + (size,))
  return SequenceLaw(out, n * offset, span, scale)


def sequence_law(lat: Lattice, n: int, *, tilts: int = 16, log_floor: float = -700.0) -> SequenceLaw:
  """Exact law of the sequence reward ``S_n = sum_i r(y_i)`` of ``n`` i.i.d. tokens.

  The law is described on the theory page (docs: theory/memoryless).

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
  fields = _args.unpack(where, lat, Lattice)
  n = _args.count(where, "n", n, 1)
  window = _fft.static_window(where, lat.log_mass, n, n * (int(np.shape(lat.log_mass)[-1]) - 1) + 1)
  return _sequence_law(*fields, n, _args.count(where, "tilts", tilts, 2), log_floor, window)
