"""The stationary law ``pi = pi K`` of a kernel (docs: theory/chains).

``method="gth"`` is the Grassmann-Taksar-Heyman elimination (:mod:`klrl.chains._elimination`):
subtraction-free, so every mass has a small relative error, also masses of ``1e-12`` and below
(O'Cinneide, *Entrywise perturbation theory and error analysis for Markov chains*, Numer. Math.
65, 1993).

``method="solve"`` is one LU solve with an a-posteriori bound on its error in every mass.
With ``o(s) = sum_{s' != s} K(s'|s)`` (summed, so without the cancellation of ``1 - K(s|s)``)
and an anchor state ``a`` given mass one, the balance equations of the other states ``F`` are
``x B = c`` with ``B = diag(o_F) - K_FF`` (``K_FF`` without its diagonal) and ``c = K(a, F)``.
When every state reaches ``a``, ``B`` is a nonsingular M-matrix, so ``B^{-1} >= 0``; the error
of a computed ``x`` is ``-r B^{-1}`` with ``r = c - x B``, so ``|x - x*| <= |r| B^{-1}``. One more
solve with the same LU factors, applied to ``|r|`` plus a bound on the rounding in forming
``r``, bounds the error of every entry (to first order: the factors stand in for ``B``). Where
that bound exceeds ``sqrt(eps)`` times some entry (``1.5e-8`` in float64), the kernel is solved
by GTH instead; otherwise every mass of ``pi = x / sum x`` is within ``2 sqrt(eps)``. The bound
fails when the balance across some cut rests on probabilities far below the rest (nearly
decomposable chains), or when the anchor is transient. So ``"solve"`` never returns a law it
has not vouched for.

Several closed classes raise :class:`klrl.InputError`, for both methods decided by GTH, whose
test is a search of the transition graph: an irreducible chain is not refused. Derivatives are
implicit: one linear solve with ``I - K + 1 pi^T`` per tangent.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from klrl._src import checks as _checks
from klrl.chains import _args, _elimination


def _solve_pi(k):
  """``pi`` of one kernel by an LU solve, and whether its error estimate certifies every mass.

  See the module docstring: ``x B = c`` on the states ``F`` other than the anchor ``a``,
  written as an ``M x M`` system with the identity in ``a``'s row and column. The anchor is
  the likeliest state after two steps from the uniform law, a cheap guess at a state of large
  mass (which keeps ``B`` well conditioned).
  """
  m = k.shape[-1]
  eps = jnp.finfo(k.dtype).eps
  eye = jnp.eye(m, dtype=bool)
  off = jnp.where(eye, 0.0, k)
  leave = jnp.sum(off, axis=-1)                                   # o(s) = 1 - K(s|s), no cancellation
  anchor = jnp.arange(m) == jnp.argmax(jnp.mean(k, axis=0) @ k)
  free = ~anchor
  inner = free[:, None] & free[None, :]
  bt = jnp.where(eye, jnp.where(free, leave, 1.0)[:, None], jnp.where(inner, -off, 0.0).T)   # B^T
  c = jnp.where(free, anchor.astype(k.dtype) @ off, 0.0)            # K(a, F)
  lu = jax.scipy.linalg.lu_factor(bt)
  x = jnp.where(free, jax.scipy.linalg.lu_solve(lu, c), 0.0)
  inflow, outflow = c + x @ off, x * leave                        # sums of nonnegative terms
  r = jnp.where(free, inflow - outflow, 0.0)
  rounding = m * eps * (inflow + outflow)                         # of r, as formed here
  bound = jax.scipy.linalg.lu_solve(lu, jnp.where(free, jnp.abs(r) + rounding, 0.0))
  # x > 0 and bound >= 0: the factors kept the signs of an M-matrix and its inverse.
  certified = jnp.all(~free | ((x > 0) & (bound >= 0) & (bound <= jnp.sqrt(eps) * x)))
  pi = jnp.where(anchor, 1.0, x)
  return pi / jnp.sum(pi), certified


def _gth(k):
  """``pi`` of one kernel by GTH, NaN where the stationary law is not unique."""
  pi, unique = _elimination.gth(k)
  return jnp.where(unique, pi, jnp.nan)


def _solved(k):
  """``pi`` of a batch ``(B, M, M)`` by LU solves, and by GTH for the kernels not certified."""
  pi, certified = jax.vmap(_solve_pi)(k)

  def one(args):
    k1, pi1, ok = args
    return lax.cond(ok, lambda: pi1, lambda: _gth(k1))

  # A conditional on the whole batch, then on each kernel: GTH runs only where it is needed.
  return lax.cond(jnp.all(certified), lambda: pi, lambda: lax.map(one, (k, pi, certified)))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _stationary(logk, method):
  """``pi`` of every kernel of ``logk (..., M, M)``, or NaN where the stationary law is not unique."""
  k = jnp.exp(logk)
  if method == "gth":
    return jnp.vectorize(_gth, signature="(m,m)->(m)")(k)
  m = k.shape[-1]
  return _solved(k.reshape((-1, m, m))).reshape(k.shape[:-1])


@_stationary.defjvp
def _stationary_jvp(method, primals, tangents):
  (logk,), (dlogk,) = primals, tangents
  pi = _stationary(logk, method)
  k = jnp.exp(logk)
  dk = jnp.where(k > 0, k * dlogk, 0.0)
  dk = dk - k * jnp.sum(dk, axis=-1, keepdims=True)   # tangent of the row-normalised kernel
  m = k.shape[-1]
  a = jnp.eye(m, dtype=k.dtype) - k + pi[..., None, :]     # dpi (I - K + 1 pi) = pi dK, dpi 1 = 0
  rhs = jnp.einsum("...i,...ij->...j", pi, dk)
  return pi, jnp.linalg.solve(jnp.swapaxes(a, -1, -2), rhs[..., None])[..., 0]


@_args.public(static=("method",))
def stationary(log_kernel: Float[Array, "... m m"], method: str = "gth") -> Float[Array, "... m"]:
  """The stationary law ``pi = pi K`` of any kernel with a unique one (docs: theory/chains).

  Args:
    log_kernel: log kernel ``(..., M, M)``; reversible or not.
    method: ``"gth"`` (default: Grassmann-Taksar-Heyman elimination, subtraction-free, small
      relative error in every mass however tiny; ``O(M^3)`` in ``M`` sequential rank-one
      updates) or ``"solve"`` (one LU solve of the balance equations, faster, with a
      first-order bound on the error of every mass from one more solve with its factors;
      kernels whose bound exceeds ``sqrt(eps)`` relative error in some mass are solved by GTH
      instead, so every mass is within ``2 sqrt(eps)`` relative error to first order, ``3e-8``
      in float64).

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
