"""The stationary law ``pi = pi K`` of a kernel (SPEC §4).

``method="gth"`` is the Grassmann-Taksar-Heyman elimination (:mod:`klrl.chains._elimination`):
subtraction-free, so every mass has a small relative error, also masses of ``1e-12`` and
below. ``method="solve"`` is one LU solve of ``pi (I - K + 1 1^T) = 1^T``, which is nonsingular
exactly when the stationary law is unique. Several closed classes raise
:class:`klrl.InputError`. Derivatives are implicit: one linear solve with ``I - K + 1 pi^T`` per
tangent.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from klrl._src import checks as _checks
from klrl.chains import _args, _elimination


def _solve_pi(k):
  """``pi (I - K + 1 1^T) = 1^T``: nonsingular exactly when the stationary law is unique."""
  m = k.shape[-1]
  return jnp.linalg.solve((jnp.eye(m, dtype=k.dtype) - k + 1.0).T, jnp.ones(m, k.dtype))


def _stationary1(logk, method):
  """``pi`` of one kernel, or NaN where the stationary law is not unique."""
  k = jnp.exp(logk)
  if method == "gth":
    pi, unique = _elimination.gth(k)
    return jnp.where(unique, pi, jnp.nan)
  pi = _solve_pi(k)
  tol = 1e3 * k.shape[-1] * jnp.finfo(k.dtype).eps
  valid = (jnp.all(jnp.isfinite(pi)) & (jnp.min(pi) >= -tol) & (jnp.sum(jnp.abs(pi @ k - pi)) <= tol))
  pi = jnp.maximum(pi, 0.0)
  return jnp.where(valid, pi / jnp.sum(pi), jnp.nan)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _stationary_core(logk, method):
  return _stationary1(logk, method)


@_stationary_core.defjvp
def _stationary_jvp(method, primals, tangents):
  (logk,), (dlogk,) = primals, tangents
  pi = _stationary_core(logk, method)
  k = jnp.exp(logk)
  dk = jnp.where(k > 0, k * dlogk, 0.0)
  dk = dk - k * jnp.sum(dk, axis=-1, keepdims=True)   # tangent of the row-normalised kernel
  m = k.shape[-1]
  a = jnp.eye(m, dtype=k.dtype) - k + pi[None, :]     # dpi (I - K + 1 pi) = pi dK, dpi 1 = 0
  return pi, jnp.linalg.solve(a.T, pi @ dk)


_stationary = jnp.vectorize(_stationary_core, excluded={1}, signature="(m,m)->(m)")


@_args.public(static=("method",))
def stationary(log_kernel: Float[Array, "... m m"], method: str = "gth") -> Float[Array, "... m"]:
  """The stationary law ``pi = pi K`` of any kernel with a unique one (SPEC §4).

  Args:
    log_kernel: log kernel ``(..., M, M)``; reversible or not.
    method: ``"gth"`` (default: Grassmann-Taksar-Heyman elimination, subtraction-free, small
      relative error in every mass however tiny; ``O(M^3)`` in ``M`` sequential rank-one
      updates) or ``"solve"`` (one LU solve of ``pi (I - K + 1 1^T) = 1^T``: faster, small
      absolute error only).

  Returns:
    ``pi`` (probabilities, not logs), ``(..., M)``. Derivatives are implicit (one solve with
    ``I - K + 1 pi^T``). A kernel with several closed classes raises :class:`klrl.InputError`.
  """
  where = "klrl.chains.stationary"
  if method not in ("gth", "solve"):
    _checks._fail(where, "method", f"must be 'gth' or 'solve', got {method!r}")
  logk = _args.log_kernel(where, "log_kernel", log_kernel)
  pi = _stationary(logk, method)
  return _checks.holds(where, "log_kernel", pi, ~jnp.isnan(pi),
                       "has no unique stationary law (several closed classes)")


def _pi_checked(where, logk):
  pi = _stationary(logk, "gth")
  return _checks.holds(where, "log_kernel", pi, ~jnp.isnan(pi), "has no unique stationary law (several closed classes)")
