"""Laws over rounds: evolution ``p_{t+1} = p_t K``, relaxation to equilibrium, drift (docs: theory/chains).

``KL(p_t || pi)`` is non-increasing for every kernel with stationary law ``pi``, and the free
energy ``-E_p[V] - H(p)`` decreases with it when ``pi ∝ e^V``. Each step is a sum of
nonnegative terms formed in log space, so small probabilities keep their relative accuracy.
The drift of a potential has stationary mean zero for every ``V``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from klrl import divergences
from klrl._src import checks as _checks
from klrl.chains import _args
from klrl.chains.equilibrium import _pi_checked
from klrl.divergences import expectation, log_normalize


class Relaxation(NamedTuple):
  """Laws over rounds and their distance to equilibrium (see :func:`relaxation`).

  Every field but ``log_p`` has shape ``(..., rounds + 1)``.
  """
  log_p: Array
  kl: Array
  free_energy: Array
  tv: Array
  chi2: Array


class Drift(NamedTuple):
  """Drift ``sum_s' K(s'|s) (V(s') - V(s))`` per state and its stationary average."""
  drift: Array
  mean: Array


def _evolve(logk, logp0, rounds):
  m = logk.shape[-1]
  batch = jnp.broadcast_shapes(logk.shape[:-2], logp0.shape[:-1])
  lp0 = jnp.broadcast_to(logp0, batch + (m,)).astype(logk.dtype)
  k = jnp.exp(logk)
  if k.ndim > 2:
    k = jnp.broadcast_to(k, batch + (m, m))
    apply = lambda p: (p[..., None, :] @ k)[..., 0, :]
  else:
    apply = lambda p: p @ k

  def step(lp, _):
    top = jnp.max(lp, axis=-1, keepdims=True)      # sums of nonnegative terms: relative accuracy
    new = log_normalize(jnp.log(apply(jnp.exp(lp - top))) + top)
    return new, new

  _, traj = lax.scan(step, lp0, None, length=rounds)
  return jnp.moveaxis(jnp.concatenate([lp0[None], traj], axis=0), 0, -2)


@_args.public(static=("rounds",))
def evolve(log_kernel: Float[Array, "... m m"], log_p0: Float[Array, "... m"], rounds: int) -> Float[Array, "... t m"]:
  """Laws over rounds, ``p_{t+1} = p_t K`` (docs: theory/chains), batched over kernels and initial laws.

  Args:
    log_kernel: log kernel ``(..., M, M)``.
    log_p0: initial log-laws ``(..., M)``; batch axes broadcast with the kernel's.
    rounds: number of rounds ``T`` (static).

  Returns:
    ``log p_t`` for ``t = 0..T``, shape ``(..., T + 1, M)``.
  """
  where = "klrl.chains.evolve"
  logk = _args.log_kernel(where, "log_kernel", log_kernel)
  logp0 = _args.law(where, "log_p0", log_p0, logk.shape[-1])
  _args.batch(where, "log_p0", logp0.shape, logp0.shape[:-1], logk.shape[:-2])
  return _evolve(logk, _checks.log_probs(where, "log_p0", logp0), rounds)


@_args.public(static=("rounds",))
def relaxation(log_kernel: Float[Array, "... m m"], log_p0: Float[Array, "... m"], rounds: int,
               potential: Float[Array, "... m"] | None = None) -> Relaxation:
  """Distance to equilibrium along ``p_{t+1} = p_t K`` (docs: theory/chains).

  ``KL(p_t || pi)`` is non-increasing for every kernel with stationary law ``pi``; the free
  energy ``-E_p[V] - H(p)`` equals ``KL(p || e^V) - log sum e^V``, so it decreases too when
  ``pi ∝ e^V``.

  Args:
    log_kernel: log kernel with a unique stationary law.
    log_p0: initial log-laws ``(..., M)``.
    rounds: number of rounds ``T`` (static).
    potential: ``V`` for the free energy; defaults to ``log pi``.

  Returns:
    A :class:`Relaxation`: ``log_p (..., T+1, M)`` and, per round, ``kl``, ``free_energy``,
    ``tv`` and ``chi2`` (each against ``pi``).
  """
  where = "klrl.chains.relaxation"
  logk = _args.log_kernel(where, "log_kernel", log_kernel)
  logp0 = _checks.log_probs(where, "log_p0", _args.law(where, "log_p0", log_p0, logk.shape[-1]))
  _args.batch(where, "log_p0", logp0.shape, logp0.shape[:-1], logk.shape[:-2])
  lp = _evolve(logk, logp0, rounds)
  log_pi = jnp.broadcast_to(jnp.log(_pi_checked(where, logk))[..., None, :], lp.shape)
  v = log_pi if potential is None else jnp.broadcast_to(
      _args.potential(where, "potential", potential, logk)[..., None, :], lp.shape)
  free = -expectation(lp, v) - divergences.entropy(lp)
  return Relaxation(lp, divergences.kl(lp, log_pi), free, divergences.tv(lp, log_pi), divergences.chi2(lp, log_pi))


def _drift(logk, v):
  shape = jnp.broadcast_shapes(logk.shape, v.shape[:-1] + (1, v.shape[-1]))
  diff = jnp.broadcast_to(v[..., None, :] - v[..., :, None], shape)
  return expectation(jnp.broadcast_to(logk, shape), diff)


@_args.public
def drift(log_kernel: Float[Array, "... m m"], potential: Float[Array, "... m"] | None = None) -> Drift:
  """Drift of a potential, ``sum_s' K(s'|s) (V(s') - V(s))``, and its stationary mean (docs: theory/chains).

  The mean ``sum_s pi(s) drift(s)`` is zero for every ``V`` (zero global mean drift).

  Args:
    log_kernel: log kernel.
    potential: finite ``V``; defaults to ``log pi`` (the canonical potential of a reversible
      chain, up to a constant).

  Returns:
    A :class:`Drift` with the ``drift`` per state and its ``mean`` under ``pi``.
  """
  where = "klrl.chains.drift"
  logk = _args.log_kernel(where, "log_kernel", log_kernel)
  pi = _pi_checked(where, logk)
  v = jnp.log(pi) if potential is None else _args.potential(where, "potential", potential, logk)
  d = _drift(logk, v)
  return Drift(d, jnp.sum(jnp.broadcast_to(pi, d.shape) * d, axis=-1))
