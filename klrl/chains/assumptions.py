"""The two assumptions behind detailed balance, their residuals, and the canonical potential
(docs: theory/chains).

If the reward is a potential (``r(s,s') - r(s',s) = Phi(s') - Phi(s)``) and the reference is
reversible (``mu(s) p(s'|s) = mu(s') p(s|s')``), the tilted kernel ``K`` satisfies detailed
balance with the canonical potential ``V = log mu + Phi / beta + log Z`` and its stationary law
is ``pi ∝ e^V``. Each assumption is tested here by a residual that is zero exactly when it
holds: the cyclic (non-gradient) part of the reward's antisymmetric part, Kolmogorov's cycle
criterion for the reference, and the detailed-balance residual of ``K`` against ``V``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax.scipy.special import logsumexp
from jaxtyping import Array, Float, Int

from klrl._src import checks as _checks
from klrl.chains import _args
from klrl.chains.equilibrium import _stationary
from klrl.divergences import log_normalize


class PotentialFit(NamedTuple):
  """Least-squares potential of a transition reward (see :func:`reward_potential`).

  Attributes:
    potential: ``Phi`` with mean zero, minimising ``sum (r(s,s') - r(s',s) - Phi(s') + Phi(s))^2``.
    residual: ``max |r(s,s') - r(s',s) - Phi(s') + Phi(s)|``: zero exactly when ``r`` is a
      potential reward.
  """
  potential: Array
  residual: Array


class Balance(NamedTuple):
  """Detailed balance of a kernel against a potential (see :func:`detailed_balance`).

  Attributes:
    residual: ``(..., M, M)``: ``V(s) + log K(s'|s) - V(s') - log K(s|s')``; 0 where both moves
      are impossible, ``+-inf`` where only one is.
    max_residual: ``max |residual|``.
    flux: ``(1/2) sum |pi(s) K(s'|s) - pi(s') K(s|s')|`` with ``pi`` the stationary law: the
      total variation between a stationary step and its time reversal, in ``[0, 1]``.
  """
  residual: Array
  max_residual: Array
  flux: Array


def _cyclic(a):
  """The part of an antisymmetric ``a (..., M, M)`` orthogonal to gradients ``g(s') - g(s)``."""
  g = jnp.mean(a, axis=-2)
  return a - (g[..., None, :] - g[..., :, None]), g


def _fit(reward):
  d = reward - jnp.swapaxes(reward, -1, -2)
  cyc, phi = _cyclic(d)
  return phi, jnp.max(jnp.abs(cyc), axis=(-2, -1))


@_args.public
def reward_potential(reward: Float[Array, "... m m"]) -> PotentialFit:
  """Tests the reward-potential assumption ``r(s,s') - r(s',s) = Phi(s') - Phi(s)``.

  The assumption is stated on the theory page (docs: theory/chains).

  The least-squares potential over all pairs is ``Phi(u) = mean_s (r(s,u) - r(u,s))``; what it
  leaves of the antisymmetric part is the cyclic (non-gradient) part of the reward.

  Args:
    reward: finite ``r(s, s')`` of shape ``(..., M, M)``.

  Returns:
    A :class:`PotentialFit`: the fitted ``potential`` (mean zero) and the ``residual``
    ``max |r(s,s') - r(s',s) - Phi(s') + Phi(s)|``.
  """
  where = "klrl.chains.reward_potential"
  reward = _checks.floating(where, "reward", reward, 2)
  _checks.square(where, "reward", reward)
  return PotentialFit(*_fit(_checks.finite(where, "reward", reward)))


@_args.public
def potential(log_ref_kernel: Float[Array, "... m m"], reward: Float[Array, "... m m"],
              beta: Float[Array, "..."]) -> Float[Array, "... m"]:
  """The canonical potential ``V(s) = log mu(s) + Phi(s)/beta + log Z(s)`` (docs: theory/chains).

  ``mu`` is the stationary law of the reference (its reversing measure when it is reversible),
  ``Phi`` the potential of the reward (the reward itself when given as ``Phi(s')``, else the
  least-squares fit of :func:`reward_potential`) and ``Z(s)`` the normaliser of the tilted row.
  Under both assumptions ``pi = exp(V)`` and ``K`` is in detailed balance with ``e^V``; when they
  fail, :func:`detailed_balance` against this ``V`` measures by how much.

  Args:
    log_ref_kernel: log reference kernel (irreducible).
    reward: ``r(s, s')`` or ``Phi(s')``, as in :func:`kernel`.
    beta: KL coefficient ``> 0``.

  Returns:
    ``V`` with the additive constant fixed by ``logsumexp(V) = 0``.
  """
  where = "klrl.chains.potential"
  logp = _args.log_kernel(where, "log_ref_kernel", log_ref_kernel)
  m = logp.shape[-1]
  phi_given = jnp.ndim(reward) == 1
  reward = _checks.finite(where, "reward", _args.pairwise(where, reward, m))
  beta = _checks.positive(where, "beta", _checks.floating(where, "beta", beta))
  batch = _args.batch(where, "beta", beta.shape, logp.shape[:-2], reward.shape[:-2], beta.shape)
  dtype = jnp.result_type(logp, reward, beta)
  shape = batch + (m, m)
  logp = jnp.broadcast_to(logp, shape).astype(dtype)
  reward = jnp.broadcast_to(reward, shape).astype(dtype)
  beta = jnp.broadcast_to(beta, batch).astype(dtype)
  phi = reward[..., 0, :] if phi_given else _fit(reward)[0]
  log_mu = jnp.log(_stationary(logp, "gth"))
  log_z = logsumexp(logp + reward / beta[..., None, None], axis=-1)
  v = log_mu + phi / beta[..., None] + log_z
  return log_normalize(v)


@_args.public
def detailed_balance(log_kernel: Float[Array, "... m m"], potential: Float[Array, "... m"] | None = None) -> Balance:
  """Detailed-balance residual ``V(s) + log K(s'|s) - V(s') - log K(s|s')`` (docs: theory/chains).

  Zero for every pair exactly when ``e^V`` is a reversing measure of ``K``. With the canonical
  potential of :func:`potential` it is zero under the two assumptions (reversible reference, reward
  potential) and equals
  the reference's own residual plus ``(cyclic part of r) / beta`` otherwise.

  Args:
    log_kernel: log kernel.
    potential: ``V``; defaults to ``log pi`` with ``pi`` the stationary law (then the residual
      tests reversibility itself).

  Returns:
    A :class:`Balance` with the residual matrix, its largest magnitude and the stationary flux
    imbalance ``(1/2) sum |pi(s) K(s'|s) - pi(s') K(s|s')|``.
  """
  where = "klrl.chains.detailed_balance"
  logk = _args.log_kernel(where, "log_kernel", log_kernel)
  pi = _stationary(logk, "gth")
  v = jnp.log(pi) if potential is None else _args.potential(where, "potential", potential, logk)
  batch = jnp.broadcast_shapes(logk.shape[:-2], v.shape[:-1])
  shape = batch + logk.shape[-2:]
  a = jnp.broadcast_to(v[..., :, None], shape) + jnp.broadcast_to(logk, shape)
  at = jnp.swapaxes(a, -1, -2)
  res = jnp.where((a == -jnp.inf) & (at == -jnp.inf), 0.0, a - at)
  f = pi[..., :, None] * jnp.exp(logk)
  flux = 0.5 * jnp.sum(jnp.abs(f - jnp.swapaxes(f, -1, -2)), axis=(-2, -1))
  return Balance(res, jnp.max(jnp.abs(res), axis=(-2, -1)), flux)


@_args.public
def kolmogorov_cycles(log_kernel: Float[Array, "... m m"], cycles: Int[Array, "c l"]) -> Float[Array, "... c"]:
  """Kolmogorov's cycle criterion: ``log`` of forward over backward probability around cycles.

  A kernel is reversible exactly when every cycle ``s_0 -> s_1 -> ... -> s_{L-1} -> s_0`` is as
  likely forwards as backwards (Kolmogorov's criterion, docs: theory/chains). For a kernel with all
  moves possible, the triangles ``(0, i, j)`` suffice.

  Args:
    log_kernel: log kernel ``(..., M, M)``.
    cycles: integer array ``(C, L)``: ``C`` cycles of ``L`` states (closed implicitly).

  Returns:
    ``sum_i log K(s_{i+1}|s_i) - sum_i log K(s_i|s_{i+1})`` per cycle, ``(..., C)``; 0 where the
    cycle is impossible both ways, ``+-inf`` where only one way.
  """
  where = "klrl.chains.kolmogorov_cycles"
  logk = _args.log_kernel(where, "log_kernel", log_kernel)
  cycles = jnp.asarray(cycles)
  if cycles.ndim != 2:
    _checks._fail(where, "cycles", f"must have shape (C, L), got {cycles.shape}")
  cycles = _checks.integers(where, "cycles", cycles, logk.shape[-1])
  nxt = jnp.roll(cycles, -1, axis=-1)
  fwd = jnp.sum(logk[..., cycles, nxt], axis=-1)
  bwd = jnp.sum(logk[..., nxt, cycles], axis=-1)
  return jnp.where((fwd == -jnp.inf) & (bwd == -jnp.inf), 0.0, fwd - bwd)
