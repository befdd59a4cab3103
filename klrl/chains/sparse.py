"""Large sparse reversible chains in neighbour-list form, and their spectral gap by Lanczos.

A chain on ``M`` states with ``k`` neighbours each is held as ``(M, k)`` arrays. Under both
assumptions of detailed balance (docs: theory/chains) its stationary law is known in closed
form (``sparse_chain``, ``O(M k)`` and no solve). ``lanczos_gap`` handles chains with 10^4-10^5
states matrix-free: Lanczos with full reorthogonalisation on the symmetrised kernel, deflated by the known top eigenvector
``sqrt(pi)``; each Ritz value comes with the residual that bounds its error, and eigenvalue
derivatives come from the Rayleigh quotient of the Ritz vectors.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import logsumexp
from jaxtyping import Array, Float, Int

from klrl._src import checks as _checks
from klrl.chains import _args
from klrl.divergences import log_normalize


class SparseJoint(NamedTuple):
  """A symmetric joint weight ``W`` in neighbour-list form: ``W(s, neighbors[s, j])`` is
  ``exp(log_joint[s, j])``, and every undirected edge appears once in each endpoint's list."""
  neighbors: Array
  log_joint: Array


class SparseChain(NamedTuple):
  """A tilted kernel in neighbour-list form and its stationary law (see :func:`sparse_chain`)."""
  log_kernel: Array
  log_pi: Array


class LanczosGap(NamedTuple):
  """Top of the spectrum of a large reversible chain (see :func:`lanczos_gap`).

  Attributes:
    second: ``lambda_2``, the largest eigenvalue below the top one (``1``).
    smallest: ``lambda_M``, the smallest eigenvalue.
    spectral_gap: ``1 - lambda_2``.
    absolute_gap: ``1 - max(|lambda_2|, |lambda_M|)``.
    residual: the larger of the two Ritz residuals ``||S u - theta u||``; each Ritz value is
      within this distance of an eigenvalue of the symmetrised kernel.
  """
  second: Array
  smallest: Array
  spectral_gap: Array
  absolute_gap: Array
  residual: Array


@_args.public(static=("num_states", "num_links"))
def random_sparse_joint(key: Array, num_states: int, num_links: int = 2,
                        concentration: Float[Array, ""] = 1.0) -> SparseJoint:
  """A symmetric sparse joint weight: each response linked to itself, its two ring neighbours
  and ``2 num_links`` random partners (a random-regular, well-connected graph).

  Edges ``(i, i+1)`` and ``(i, sigma_l(i))`` for random permutations ``sigma_l`` get log-normal
  weights (scale ``concentration``); each appears once in both endpoints' lists, so
  :func:`reference_from_joint` of :func:`to_dense` of it is reversible.

  Args:
    key: PRNG key.
    num_states: number of states ``M``.
    num_links: random partners per state come in ``num_links`` pairs ``sigma_l(i), sigma_l^-1(i)``.
    concentration: scale of the log-weights.

  Returns:
    A :class:`SparseJoint`: ``neighbors (M, 3 + 2 num_links)`` (int32) and ``log_joint`` of the
    same shape, normalised to total mass one.
  """
  m = num_states
  k1, k2 = jax.random.split(key)
  z = concentration * jax.random.normal(k1, (2 + num_links, m), jnp.result_type(float))
  sigmas = jnp.argsort(jax.random.uniform(k2, (num_links, m)), axis=-1)   # random permutations
  i = jnp.arange(m)
  prev = (i - 1) % m
  nbrs, logw = [i, (i + 1) % m, prev], [z[0], z[1], z[1, prev]]           # self, edge (i, i+1), edge (i-1, i)
  for l in range(num_links):
    sigma = sigmas[l]
    inv = jnp.argsort(sigma)
    nbrs += [sigma, inv]
    logw += [z[2 + l], z[2 + l, inv]]                                      # edge (i, sigma(i)) and its reverse
  lw = jnp.stack(logw, axis=-1)
  return SparseJoint(jnp.stack(nbrs, axis=-1).astype(jnp.int32), lw - logsumexp(lw))


def _sparse_args(where, neighbors, values, name):
  values = _checks.floating(where, name, values, 2)
  neighbors = jnp.asarray(neighbors)
  if neighbors.shape != values.shape[-2:]:
    _checks._fail(where, "neighbors", f"must have the shape (M, k) of '{name}' {values.shape[-2:]}, got {neighbors.shape}")
  return _checks.integers(where, "neighbors", neighbors, values.shape[-2]), values


@_args.public
def sparse_chain(neighbors: Int[Array, "m k"], log_joint: Float[Array, "... m k"], potential: Float[Array, "... m"],
                 beta: Float[Array, "..."]) -> SparseChain:
  """The tilted kernel of a sparse reversible reference and a potential reward, and its ``pi``.

  The reference is ``p(s'|s) = W(s, s') / mu(s)`` for a symmetric joint ``W`` given by
  neighbour lists, the reward is ``r(s, s') = Phi(s')``. Both assumptions of detailed balance hold, so
  ``pi ∝ e^V`` with ``V(s) = Phi(s)/beta + log sum_s' W(s, s') exp(Phi(s')/beta)``, in
  ``O(M k)`` without any solve.

  Args:
    neighbors: ``(M, k)`` integer neighbour lists.
    log_joint: ``log W`` on those lists, ``(..., M, k)``; must be symmetric (see
      :class:`SparseJoint`).
    potential: ``Phi`` ``(..., M)``, finite.
    beta: KL coefficient ``> 0``, broadcasting with the batch axes.

  Returns:
    A :class:`SparseChain`: ``log_kernel (..., M, k)`` on the lists and ``log_pi (..., M)``.
  """
  where = "klrl.chains.sparse_chain"
  neighbors, lw = _sparse_args(where, neighbors, log_joint, "log_joint")
  lw = _checks.holds(where, "log_joint", lw, ~jnp.isnan(lw) & (lw < jnp.inf), "must not contain NaN or +inf")
  m = lw.shape[-2]
  phi = _checks.finite(where, "potential", _args.law(where, "potential", potential, m))
  beta = _checks.positive(where, "beta", _checks.floating(where, "beta", beta))
  batch = _args.batch(where, "beta", beta.shape, lw.shape[:-2], phi.shape[:-1], beta.shape)
  dtype = jnp.result_type(lw, phi, beta)
  beta = jnp.broadcast_to(beta, batch).astype(dtype)
  phi = jnp.broadcast_to(phi, batch + (m,)).astype(dtype)
  phi = (phi - jnp.max(phi, axis=-1, keepdims=True)) / beta[..., None]   # centred, as in kernel
  tilted = jnp.broadcast_to(lw, batch + lw.shape[-2:]).astype(dtype) + phi[..., neighbors]
  v = logsumexp(tilted, axis=-1) + phi
  return SparseChain(log_normalize(tilted), log_normalize(v))


@_args.public
def to_dense(neighbors: Int[Array, "m k"], log_values: Float[Array, "... m k"]) -> Float[Array, "... m m"]:
  """Dense ``(..., M, M)`` log matrix from neighbour lists; repeated neighbours add up.

  For checks on chains small enough to hold densely.

  Args:
    neighbors: ``(M, k)`` integer neighbour lists.
    log_values: log values on the lists, ``(..., M, k)``.

  Returns:
    The dense log matrix ``(..., M, M)``, ``-inf`` off the lists.
  """
  where = "klrl.chains.to_dense"
  neighbors, lv = _sparse_args(where, neighbors, log_values, "log_values")
  m = lv.shape[-2]
  rows = jnp.broadcast_to(jnp.arange(m)[:, None], neighbors.shape)
  dense = jnp.zeros(lv.shape[:-2] + (m, m), lv.dtype).at[..., rows, neighbors].add(jnp.exp(lv))
  return jnp.log(dense)


def _pseudo_random(m, j, dtype):
  """A fixed, well-spread vector without a PRNG: the fractional part of a scrambled ``sin``."""
  x = jnp.sin(12.9898 * jnp.arange(1, m + 1, dtype=dtype) + 78.233 * (j + 1)) * 43758.5453
  return x - jnp.floor(x) - 0.5


def _lanczos(matvec, u1, v0, steps):
  """``steps`` Lanczos steps on ``u1``'s orthogonal complement, full reorthogonalisation."""
  m = v0.shape[-1]
  tiny = 1e3 * jnp.finfo(v0.dtype).eps

  def orth(w, q):
    for _ in range(2):                             # twice is enough (Kahan-Parlett)
      w = w - (q @ w) @ q
      w = w - (u1 @ w) * u1
    return w

  q = jnp.zeros((steps + 1, m), v0.dtype)
  v = orth(v0, q)
  q = q.at[0].set(v / jnp.linalg.norm(v))

  def body(carry, j):
    q, b_prev = carry
    w = matvec(q[j]) - b_prev * q[j - 1]
    a = q[j] @ w
    w = orth(w - a * q[j], q)
    b = jnp.linalg.norm(w)
    broke = b <= tiny

    def restart():                                  # an invariant subspace was found: new direction
      fresh = orth(_pseudo_random(m, j + 1, v0.dtype), q)
      return fresh / jnp.linalg.norm(fresh)

    nxt = lax.cond(broke, restart, lambda: w / b)
    b = jnp.where(broke, 0.0, b)
    return (q.at[j + 1].set(nxt), b), (a, b)

  (q, _), (alpha, beta) = lax.scan(body, (q, jnp.zeros((), v0.dtype)), jnp.arange(steps))
  t = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
  theta, y = jnp.linalg.eigh(t)
  return theta, y.T @ q[:steps]


@_args.public(static=("steps",))
def lanczos_gap(neighbors: Int[Array, "m k"], log_kernel: Float[Array, "m k"], log_pi: Float[Array, "m"],
                steps: int = 100, key: Array | None = None) -> LanczosGap:
  """Top of the spectrum of a large reversible chain in neighbour-list form, matrix-free.

  The spectral quantities are defined on the theory page (docs: theory/chains).

  Runs ``steps`` Lanczos steps (a ``lax.scan``, full reorthogonalisation, ``O(M steps)``
  memory, no ``M x M`` matrix) on ``S = D^{1/2} K D^{-1/2}`` (``D = diag pi``, symmetrised as
  ``(S + S^T)/2``) restricted to the complement of its top eigenvector ``sqrt(pi)``; the extreme
  Ritz values there are ``lambda_2`` and ``lambda_M``. Each comes with its residual
  ``||S u - theta u||``, a bound on its distance to an eigenvalue. The derivative of each is
  ``u^T dS u`` (Hellmann-Feynman) with the Ritz vector ``u``; Lanczos itself is not
  differentiated.

  Args:
    neighbors: ``(M, k)`` integer neighbour lists.
    log_kernel: ``log K`` on the lists, rows normalised over ``k`` (e.g. from :func:`sparse_chain`).
    log_pi: the stationary log-law ``(M,)`` of this (reversible) kernel.
    steps: Lanczos steps (static); capped at ``M - 1``.
    key: PRNG key of a random start vector; by default a fixed spread-out vector.

  Returns:
    A :class:`LanczosGap`.
  """
  where = "klrl.chains.lanczos_gap"
  neighbors, logk = _sparse_args(where, neighbors, log_kernel, "log_kernel")
  if logk.ndim != 2:
    _checks._fail(where, "log_kernel", f"must have shape (M, k) (use jax.vmap for batches), got {logk.shape}")
  m = logk.shape[0]
  if m < 2:
    _checks._fail(where, "log_kernel", "needs at least 2 states for a spectral gap")
  logk = _checks.log_probs(where, "log_kernel", logk)
  log_pi = _checks.log_probs(where, "log_pi", _args.law(where, "log_pi", log_pi, m)).astype(logk.dtype)
  if log_pi.ndim != 1:
    _checks._fail(where, "log_pi", f"must have shape (M,), got {log_pi.shape}")
  steps = min(steps, m - 1)

  def matvec(lk, lp, x):
    s = jnp.exp(0.5 * lp[:, None] + lk - 0.5 * lp[neighbors])
    return 0.5 * (jnp.sum(s * x[neighbors], axis=-1) + jax.ops.segment_sum((s * x[:, None]).ravel(), neighbors.ravel(), m))

  lk0, lp0 = lax.stop_gradient(logk), lax.stop_gradient(log_pi)
  v0 = _pseudo_random(m, 0, logk.dtype) if key is None else jax.random.normal(key, (m,), logk.dtype)
  theta, u = _lanczos(functools.partial(matvec, lk0, lp0), jnp.exp(0.5 * lp0), v0, steps)
  u = lax.stop_gradient(u[jnp.array([steps - 1, 0])])           # Ritz vectors of lambda_2, lambda_M
  su = jax.vmap(lambda x: matvec(logk, log_pi, x))(u)
  rq = jnp.sum(u * su, axis=-1)                                 # Rayleigh quotients = Ritz values
  res = jnp.linalg.norm(lax.stop_gradient(su) - lax.stop_gradient(rq)[:, None] * u, axis=-1)
  second, smallest = rq[0], rq[1]
  return LanczosGap(second, smallest, 1 - second, 1 - jnp.maximum(jnp.abs(second), jnp.abs(smallest)), jnp.max(res))
