"""Hitting and return times of a target set, and the bounds of the theory against them
(docs: theory/chains).

``hitting_times`` solves ``(I - K_FF) h = 1`` only on the states ``F`` from which the target is
hit almost surely (found by graph reachability); states that can avoid the target forever get
``+inf``, so there is never a singular solve. The default solve is the GTH idea applied to the
M-matrix ``I - K_FF``: elimination that never subtracts, so every time has a small relative
error, even when the chain is nearly absorbing and the times are huge. ``hitting_bounds``
compares the exact times with the drift bound, the spectral bound and Kac's identity
``E_{pi_A} tau_A^+ = 1 / pi(A)``.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from klrl._src import checks as _checks
from klrl.chains import _args, _elimination
from klrl.chains.dynamics import _drift
from klrl.chains.equilibrium import _pi_checked
from klrl.chains.spectra import _eigvalsh, _sym
from klrl.divergences import expectation


class HittingBounds(NamedTuple):
  """Exact hitting and return times of a target set ``A`` and the bounds on them (docs: theory/chains).

  Attributes:
    times: ``E_s tau_A`` for each state (0 on ``A``, ``+inf`` where ``A`` can be avoided forever).
    mean_time: ``E_pi tau_A``.
    spectral: ``(1 - pi(A)) / (gamma pi(A))``, an upper bound on ``mean_time`` (reversible chains).
    drift: ``(V_max - V(s)) / delta`` with ``delta = min_{s not in A}`` drift of ``V``: an upper
      bound on ``times``; ``+inf`` where ``delta <= 0`` (the bound says nothing).
    return_time: ``E_{pi_A} tau_A^+``, the mean return time to ``A`` started from ``pi(.|A)``.
    kac: ``1 / pi(A)``, equal to ``return_time`` (Kac's identity).
  """
  times: Array
  mean_time: Array
  spectral: Array
  drift: Array
  return_time: Array
  kac: Array


def _restricted(k, free):
  """``I - K`` on the free states (identity elsewhere), dense, diagonal formed without cancellation."""
  m = k.shape[-1]
  eye = jnp.eye(m, dtype=bool)
  leave = jnp.where(free, jnp.sum(jnp.where(eye, 0.0, k), axis=-1), 1.0)
  return jnp.where(eye, jnp.broadcast_to(leave[:, None], (m, m)), jnp.where(free[:, None] & free[None, :], -k, 0.0))


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _hitting_core(logk, free, method):
  """``(I - K_FF) h = 1`` on the free states ``F`` (from which the target is hit surely)."""
  k = jnp.exp(logk)
  if method == "solve":
    h = jnp.linalg.solve(_restricted(k, free), free.astype(k.dtype))
  else:
    eye = jnp.eye(k.shape[-1], dtype=bool)
    off = jnp.where(free[:, None] & free[None, :] & ~eye, k, 0.0)
    leak = jnp.where(free, jnp.sum(jnp.where(free[None, :], 0.0, k), axis=-1), 1.0)   # into the target
    h = _elimination.mmatrix_solve(off, leak, free.astype(k.dtype))
  return jnp.where(free, h, 0.0)


@_hitting_core.defjvp
def _hitting_jvp(method, primals, tangents):
  logk, free = primals
  h = _hitting_core(logk, free, method)
  k = jnp.exp(logk)
  dk = jnp.where(k > 0, k * tangents[0], 0.0)
  dk = dk - k * jnp.sum(dk, axis=-1, keepdims=True)   # tangent of the row-normalised kernel
  rhs = jnp.where(free, jnp.where(free[:, None] & free[None, :], dk, 0.0) @ h, 0.0)
  return h, jnp.linalg.solve(_restricted(k, free), rhs)      # d h = (I - K_FF)^-1 dK_FF h


def _hitting1(logk, target, method):
  m = logk.shape[-1]
  support = (logk > -jnp.inf).astype(logk.dtype)
  reaches = _elimination.reach(support, target, jnp.ones(m, bool))
  doomed = _elimination.reach(support, ~reaches, ~target)      # can avoid the target forever
  h = _hitting_core(logk, ~target & ~doomed, method)
  return jnp.where(doomed, jnp.inf, h)


_hitting = jnp.vectorize(_hitting1, excluded={2}, signature="(m,m),(m)->(m)")


@_args.public(static=("method",))
def hitting_times(log_kernel: Float[Array, "... m m"], target_mask: Bool[Array, "... m"],
                  method: str = "gth") -> Float[Array, "... m"]:
  """Expected hitting times ``E_s tau_A`` of a target set ``A`` (docs: theory/chains).

  Solves ``(I - K_{A^c A^c}) h = 1`` on the states from which ``A`` is hit almost surely. States
  from which the chain can avoid ``A`` forever (``A`` unreachable, or an absorbing state or
  closed class outside ``A`` reachable) get ``+inf``; an empty target gives ``+inf`` everywhere.
  Never a singular solve. Derivatives are implicit: ``dh = (I - K_FF)^{-1} dK_FF h``.

  Args:
    log_kernel: log kernel ``(..., M, M)``.
    target_mask: boolean ``(..., M)``, ``True`` on ``A``.
    method: ``"gth"`` (default: subtraction-free elimination of the M-matrix ``I - K_FF``,
      small relative error in every time, also for nearly absorbing chains whose times reach
      ``1e12``; ``O(M^3)`` in ``M`` sequential rank-one updates) or ``"solve"`` (one LU solve:
      faster, relative error up to ``eps`` times the condition number, about the largest time).

  Returns:
    ``E_s tau_A`` per state, ``0`` on ``A``.
  """
  where = "klrl.chains.hitting_times"
  logk = _args.log_kernel(where, "log_kernel", log_kernel)
  target = _args.target(where, "target_mask", target_mask, logk.shape[-1])
  batch = _args.batch(where, "target_mask", target.shape, target.shape[:-1], logk.shape[:-2])
  if method not in ("gth", "solve"):
    _checks._fail(where, "method", f"must be 'gth' or 'solve', got {method!r}")
  m = logk.shape[-1]
  return _hitting(jnp.broadcast_to(logk, batch + (m, m)), jnp.broadcast_to(target, batch + (m,)), method)


@_args.public
def hitting_bounds(log_kernel: Float[Array, "... m m"], target_mask: Bool[Array, "... m"],
                   potential: Float[Array, "... m"] | None = None) -> HittingBounds:
  """Exact hitting and return times of ``A`` against the drift bound, the spectral bound and Kac.

  The bounds (docs: theory/chains): ``E_s tau_A <= (V_max - V(s)) / delta`` when the drift of
  ``V`` is ``>= delta > 0`` off ``A``; ``E_pi tau_A <= (1 - pi(A)) / (gamma pi(A))`` for a
  reversible chain with spectral gap ``gamma``; ``E_{pi_A} tau_A^+ = 1 / pi(A)`` (Kac) for every
  irreducible chain.

  Args:
    log_kernel: log kernel with a unique stationary law.
    target_mask: boolean ``(..., M)``, ``True`` on ``A``.
    potential: ``V`` of the drift bound; defaults to ``log pi``.

  Returns:
    A :class:`HittingBounds`.
  """
  where = "klrl.chains.hitting_bounds"
  logk = _args.log_kernel(where, "log_kernel", log_kernel)
  m = logk.shape[-1]
  if m < 2:
    _checks._fail(where, "log_kernel", "needs at least 2 states for a spectral gap")
  target = _args.target(where, "target_mask", target_mask, m)
  batch = _args.batch(where, "target_mask", target.shape, target.shape[:-1], logk.shape[:-2])
  logk = jnp.broadcast_to(logk, batch + (m, m))
  target = jnp.broadcast_to(target, batch + (m,))
  h = _hitting(logk, target, "gth")
  pi = _pi_checked(where, logk)
  log_pi = jnp.log(pi)
  pa = jnp.sum(jnp.where(target, pi, 0.0), axis=-1)
  gap = 1 - _eigvalsh(_sym(logk))[..., 1]
  spectral = jnp.where(pa >= 1, 0.0, (1 - pa) / (gap * pa))
  ret = 1 + expectation(logk, jnp.broadcast_to(h[..., None, :], logk.shape))
  return_time = jnp.sum(jnp.where(target, pi * ret, 0.0), axis=-1) / pa
  v = log_pi if potential is None else jnp.broadcast_to(_args.potential(where, "potential", potential, logk), batch + (m,))
  delta = jnp.min(jnp.where(target, jnp.inf, _drift(logk, v)), axis=-1)
  vmax = jnp.max(v, axis=-1, keepdims=True)
  bound = jnp.where(delta[..., None] > 0, (vmax - v) / delta[..., None], jnp.inf)
  return HittingBounds(h, expectation(log_pi, h), spectral, jnp.where(target, 0.0, bound), return_time, 1 / pa)
