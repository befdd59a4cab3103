"""Subtraction-free elimination for Markov chains, and reachability.

The Grassmann-Taksar-Heyman (GTH) elimination (Grassmann, Taksar and Heyman, *Regenerative
analysis and steady state distributions for Markov chains*, Oper. Res. 33, 1985) computes a
stationary law without subtracting: each pivot is rebuilt as the sum of the off-diagonal
entries of its row. Its errors are then those of perturbing every transition probability by a
small relative amount, and the stationary law is well conditioned under such perturbations
(O'Cinneide, *Entrywise perturbation theory and error analysis for Markov chains*, Numer. Math.
65, 1993): every mass has a small relative error, however tiny it is (bounded by a polynomial in
``M`` times ``eps``; a few ``eps`` as measured). The same idea solves the M-matrix systems of
hitting times (:func:`mmatrix_solve`). :func:`reach` is reachability in the transition graph,
which decides whether a stationary law is unique and which states can avoid a target forever.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from klrl._src import checks as _checks


def staged(step, state, last):
  """Runs ``step(state, k)`` for ``k = M-1`` down to ``last`` on leading blocks of ``state``.

  ``state`` is a tuple: an ``(M, M)`` matrix and ``(M,)`` vectors. Step ``k`` only touches
  indices below ``k``, so the elimination runs in stages on blocks of static size ``M``,
  ``M/2``, ``M/4``, ... (down to 128): about ``0.6 M^3`` updated entries instead of ``M^3``.
  Returns the final state and what ``step`` emits, for ``k`` in increasing order.
  """
  size, out = state[0].shape[-1], []
  while size > last:
    lo = max(size // 2 if size > 128 else last, last)
    block = tuple(x[:size, :size] if x.ndim == 2 else x[:size] for x in state)
    block, emitted = lax.scan(step, block, jnp.arange(size - 1, lo - 1, -1))
    state = tuple(x.at[:size, :size].set(b) if x.ndim == 2 else x.at[:size].set(b) for x, b in zip(state, block))
    out.append(emitted)
    size = lo
  dtype = state[0].dtype
  return state, (jnp.concatenate(out)[::-1] if out else jnp.zeros((0,), dtype))


def gth(k):
  """Grassmann-Taksar-Heyman elimination for one kernel ``(M, M)``: ``(pi, pi is unique)``.

  Eliminating state ``n`` leaves the chain censored on ``0..n-1``; its pivot ``1 - a[n, n]``
  is formed as the sum of the other entries of the row, so nothing is ever subtracted. A zero
  pivot at ``n`` means ``n`` is absorbing for the chain censored on ``0..n``: then, if the
  stationary law is unique, it puts no mass below ``n`` and the back-substitution starts from
  ``n`` instead of ``0``. Uniqueness is then checked by reachability of ``n`` from every state
  (always true when no pivot vanishes).
  """
  m = k.shape[-1]
  idx = jnp.arange(m)

  def step(state, n):
    (a,) = state
    lower = idx[: a.shape[-1]] < n
    row = jnp.where(lower, a[n], 0.0)
    s = jnp.sum(row)
    col = jnp.where(lower, a[:, n], 0.0) / jnp.where(s > 0, s, 1.0)
    a = a + col[:, None] * row[None, :]
    return (a.at[:, n].set(jnp.where(lower, col, a[:, n])),), s

  (a,), pivots = staged(step, (k,), 1)
  start = jnp.max(jnp.where(pivots > 0, 0, jnp.arange(1, m)), initial=0)   # last zero pivot, or 0
  # x_n = sum_{i<n} x_i a[i, n] for n > start: x (I - U) = e_start with U the stored scaled
  # columns; a triangular solve that only adds nonnegative terms.
  u = jnp.where((idx[:, None] < idx[None, :]) & (idx[None, :] > start), a, 0.0)
  x = jax.scipy.linalg.solve_triangular(jnp.eye(m, dtype=k.dtype) - u.T, (idx == start).astype(k.dtype), lower=True)
  # Unique when no pivot vanished, else when every state reaches the last one that did (no
  # search when start = 0; a lax.cond here fails under vmap inside shard_map, jax 0.10).
  unique = (start == 0) | jnp.all(reach((k > 0).astype(k.dtype), idx == start, jnp.ones(m, bool), start > 0))
  return x / jnp.sum(x), unique


def mmatrix_solve(off, leak, b):
  """Solves ``(diag(leak + off 1) - off) h = b`` for ``off, leak, b >= 0`` without subtractions.

  The matrix is a row-diagonally-dominant M-matrix given by its off-diagonal part and its row
  sums ``leak`` (the GTH idea applied to a linear system): Gaussian elimination keeps the
  off-diagonal entries, row sums and right-hand side nonnegative and rebuilds each pivot as
  ``leak + sum of off-diagonals``, so ``h`` has a small relative error in every entry.
  """
  m = b.shape[-1]
  idx = jnp.arange(m)

  def step(state, k):
    off, leak, b = state
    lower = idx[: b.shape[-1]] < k
    row = jnp.where(lower, off[k], 0.0)
    piv = leak[k] + jnp.sum(row)
    f = jnp.where(lower, off[:, k], 0.0) / jnp.where(piv > 0, piv, 1.0)
    return (off + f[:, None] * row[None, :], leak + f * leak[k], b + f * b[k]), piv

  (off, _, b), piv = staged(step, (off, leak, b), 0)
  # h_k = (b_k + sum_{j<k} off[k, j] h_j) / piv_k: a triangular solve adding nonnegative terms.
  lower = jnp.where(idx[:, None] > idx[None, :], off, 0.0)
  return jax.scipy.linalg.solve_triangular(jnp.diag(piv) - lower, b, lower=True)


def reach(support, start, allowed, search=True):
  """States of ``allowed`` (plus ``start``) that reach ``start`` through ``allowed`` states
  (``start`` alone where ``search`` is False)."""
  def body(carry):
    r, _ = carry
    new = r | (allowed & ((support @ r.astype(support.dtype)) > 0))
    return new, jnp.any(new != r)

  return lax.while_loop(lambda c: c[1], body, _checks.vary_alike((start, jnp.asarray(search)), support))[0]
