"""Self-correcting models as Markov chains: potential, detailed balance, convergence, hitting
times and spectra (SPEC section 4).

A state is a whole response and one round of refinement maps ``s`` to ``s'``. The reference
model is a kernel ``p(s'|s)``, the transition reward is ``r(s, s')`` and the RL-tuned model is
the tilted kernel (Tan and Hong, *A Theoretical Lens for RL-Tuned Language Models via
Energy-Based Models*, 2025)::

    K(s'|s) = p(s'|s) exp(r(s, s') / beta) / Z(s),    Z(s) = sum_u p(u|s) exp(r(s, u) / beta).

If the reward is a potential (``r(s,s') - r(s',s) = Phi(s') - Phi(s)``) and the reference is
reversible (``mu(s) p(s'|s) = mu(s') p(s|s')``), ``K`` satisfies detailed balance with the
canonical potential ``V = log mu + Phi / beta + log Z`` and its stationary law is ``pi ∝ e^V``.

Conventions. Kernels are passed as LOG kernels: an array ``(..., M, M)`` whose rows (last
axis) are log-probabilities, ``-inf`` for impossible moves; leading axes are batch axes and
broadcast. Laws over states are log-probabilities over the last axis. Every function is pure
and composes with ``jit``, ``vmap`` and ``grad``.

Numerics.
- ``stationary`` uses the Grassmann-Taksar-Heyman (GTH) elimination: no subtractions, so every
  stationary mass has a small relative error, also masses of ``1e-12`` and below. Kernels
  with a transient part in an unlucky order (a zero GTH pivot) fall back to the linear solve
  ``pi (I - K + 1 1^T) = 1^T``, which is nonsingular exactly when the stationary law is unique;
  several closed classes raise :class:`klrl.InputError`. Derivatives are implicit: one linear
  solve with ``I - K + 1 pi^T`` per tangent.
- ``spectrum`` uses ``D^{1/2} K D^{-1/2}`` (``D = diag pi``), which for a reversible kernel is
  the entrywise geometric mean ``sqrt(K(s'|s) K(s|s'))``: exactly symmetric, free of ``pi`` and
  of its errors, and solved by ``eigh``. Its derivative at a cluster of equal eigenvalues
  (within ``sqrt(eps)``) is the derivative of the cluster's mean eigenvalue: defined, finite,
  independent of the eigenvector basis, and equal to the true derivative at simple ones.
- ``hitting_times`` solves ``(I - K_FF) h = 1`` only on the states ``F`` from which the target
  is hit almost surely (found by graph reachability); states that can avoid the target forever
  get ``+inf``. The solve is the GTH idea applied to the M-matrix ``I - K_FF``: elimination
  that never subtracts, so every time has a small relative error, even when the chain is
  nearly absorbing and the times are huge.
- ``lanczos_gap`` handles chains with 10^4-10^5 states given as neighbour lists, matrix-free:
  Lanczos with full reorthogonalisation on the symmetrised kernel, deflated by the known top
  eigenvector ``sqrt(pi)``; eigenvalue derivatives from the Rayleigh quotient of the Ritz vectors.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import logsumexp
from jaxtyping import Array, Bool, Float, Int

from klrl import divergences
from klrl._src import checks as _checks
from klrl.divergences import expectation, log_normalize

__all__ = [
    "Reward", "PotentialFit", "Balance", "Relaxation", "Drift", "HittingBounds", "MixingBounds",
    "SparseJoint", "SparseChain", "LanczosGap",
    "kernel", "reference_from_joint", "random_joint", "random_reward", "birth_death",
    "reward_potential", "potential", "detailed_balance", "kolmogorov_cycles",
    "stationary", "evolve", "relaxation", "drift",
    "hitting_times", "hitting_bounds",
    "spectrum", "spectral_gap", "absolute_spectral_gap", "relaxation_time", "mixing_bounds", "eigenvalues",
    "random_sparse_joint", "sparse_chain", "to_dense", "lanczos_gap",
]


class Reward(NamedTuple):
  """A transition reward and the potential it was built from (see :func:`random_reward`)."""
  reward: Array
  potential: Array


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


class HittingBounds(NamedTuple):
  """Exact hitting and return times of a target set ``A`` and the bounds of SPEC section 4.

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


class MixingBounds(NamedTuple):
  """Mixing bounds of a reversible chain (see :func:`mixing_bounds`).

  Attributes:
    tv: ``(1/2) lam*^t sqrt(chi2(p_0 || pi))`` over rounds ``t = 0..T``, bounds ``TV(p_t, pi)``.
    kl: ``log(1 + lam*^(2t) chi2(p_0 || pi))``, bounds ``KL(p_t || pi)``.
    worst_tv: ``exp(-gamma* t) / pi_min``, bounds ``max_s TV(K^t(s, .), pi)``.
    mixing_time: ``log(1 / (eps pi_min)) / gamma*``, bounds ``t_mix(eps)``.
  """
  tv: Array
  kl: Array
  worst_tv: Array
  mixing_time: Array


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


# ---------------------------------------------------------------------------------------------
# Validation helpers.

def _log_kernel(where, name, x, values=True):
  x = _checks.floating(where, name, x, 2)
  _checks.square(where, name, x)
  return _checks.log_kernel(where, name, x) if values else x


def _law(where, name, x, m):
  x = _checks.floating(where, name, x, 1)
  if x.shape[-1] != m:
    _checks._fail(where, name, f"has {x.shape[-1]} states on its last axis but the kernel has {m} (shape {x.shape})")
  return x


def _batch(where, name, shape, *shapes):
  try:
    return tuple(jnp.broadcast_shapes(*shapes))
  except ValueError:
    _checks._fail(where, name, f"has shape {shape}, whose batch axes do not broadcast with the kernel's")


def _target(where, name, mask, m):
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    _checks._fail(where, name, f"must be a boolean mask over the states, got dtype {mask.dtype}")
  if mask.ndim < 1 or mask.shape[-1] != m:
    _checks._fail(where, name, f"must have {m} states on its last axis, got shape {mask.shape}")
  return mask


def _potential_arg(where, name, v, logk):
  v = _law(where, name, v, logk.shape[-1])
  _batch(where, name, v.shape, v.shape[:-1], logk.shape[:-2])
  return _checks.finite(where, name, v).astype(logk.dtype)


def _pairwise(where, reward, m):
  """A reward ``(M,)`` means ``Phi(s')``; ``(..., M, M)`` or ``(..., 1, M)`` is ``r(s, s')``."""
  reward = _checks.floating(where, "reward", reward, 1)
  if reward.ndim == 1:
    reward = reward[None, :]
  if reward.shape[-1] != m or reward.shape[-2] not in (1, m):
    _checks._fail(where, "reward", f"must be r(s, s') of shape (..., {m}, {m}), or Phi(s') of shape ({m},) "
                  f"or (..., 1, {m}); got {reward.shape}")
  return reward


# ---------------------------------------------------------------------------------------------
# Building chains.

@_checks.public
def kernel(log_ref_kernel: Float[Array, "... m m"], reward: Float[Array, "... m m"],
           beta: Float[Array, "..."]) -> Float[Array, "... m m"]:
  """The tilted (RL-tuned) kernel ``K(s'|s) = p(s'|s) exp(r(s,s')/beta) / Z(s)`` (SPEC §4).

  Args:
    log_ref_kernel: log reference kernel ``log p(s'|s)``, rows over the last axis.
    reward: finite transition reward ``r(s, s')`` of shape ``(..., M, M)``; a vector ``(M,)``
      means ``r(s, s') = Phi(s')`` (pass a batch of potentials as ``(..., 1, M)``).
    beta: KL coefficient ``> 0``; its shape broadcasts with the batch axes of the other two.

  Returns:
    ``log K`` with the broadcast batch shape; impossible moves of ``p`` stay ``-inf``.
  """
  where = "klrl.chains.kernel"
  logp = _log_kernel(where, "log_ref_kernel", log_ref_kernel)
  m = logp.shape[-1]
  reward = _checks.finite(where, "reward", _pairwise(where, reward, m))
  beta = _checks.positive(where, "beta", _checks.floating(where, "beta", beta))
  batch = _batch(where, "beta", beta.shape, logp.shape[:-2], reward.shape[:-2], beta.shape)
  dtype = jnp.result_type(logp, reward, beta)
  shape = batch + (m, m)
  beta = jnp.broadcast_to(beta.astype(dtype)[..., None, None], batch + (1, 1))
  reward = jnp.broadcast_to(reward, shape).astype(dtype)
  # Centred per row (which the normalisation undoes): r / beta would round the rewards'
  # differences away for rewards offset far from zero and a small beta.
  reward = reward - jnp.max(reward, axis=-1, keepdims=True)
  return log_normalize(jnp.broadcast_to(logp, shape).astype(dtype) + reward / beta)


@_checks.public
def reference_from_joint(log_joint: Float[Array, "... m m"]) -> Float[Array, "... m m"]:
  """Reference kernel ``p(s'|s) = W(s, s') / mu(s)`` from joint weights, ``mu(s) = sum_s' W(s, s')``.

  A symmetric ``W`` gives a kernel that is reversible with respect to ``mu`` (the reversible
  pretraining assumption of SPEC §4).

  Args:
    log_joint: ``log W``, nonnegative weights (``-inf`` for none); every row needs some weight.

  Returns:
    ``log p``, rows normalised over the last axis.
  """
  where = "klrl.chains.reference_from_joint"
  lw = _checks.floating(where, "log_joint", log_joint, 2)
  _checks.square(where, "log_joint", lw)
  lw = _checks.holds(where, "log_joint", lw, ~jnp.isnan(lw) & (lw < jnp.inf), "must not contain NaN or +inf")
  lw = _checks.holds(where, "log_joint", lw, jnp.max(lw, axis=-1) > -jnp.inf, "has a row with no weight")
  return log_normalize(lw)


def _cyclic(a):
  """The part of an antisymmetric ``a (..., M, M)`` orthogonal to gradients ``g(s') - g(s)``."""
  g = jnp.mean(a, axis=-2)
  return a - (g[..., None, :] - g[..., :, None]), g


@_checks.public(static=("num_states",))
def random_joint(key: Array, num_states: int, epsilon: Float[Array, ""] = 0.0,
                 concentration: Float[Array, ""] = 1.0) -> Float[Array, "m m"]:
  """Random log joint weights: symmetric (reversible reference) at ``epsilon = 0``.

  ``log W = S + epsilon C`` with ``S`` symmetric (log-normal weights of scale ``concentration``)
  and ``C`` antisymmetric with zero row sums, i.e. a pure cycle: it has no gradient part, so the
  reference :func:`reference_from_joint` builds from it violates reversibility by exactly
  ``epsilon C``: around every cycle ``sum log p(forward) - sum log p(backward)`` is ``2 epsilon``
  times the sum of ``C`` (Kolmogorov's criterion). ``C`` depends only on ``key``.

  Args:
    key: PRNG key.
    num_states: number of states ``M``.
    epsilon: size of the violation (0: reversible).
    concentration: scale of the log-weights.

  Returns:
    ``log W`` of shape ``(M, M)``, normalised to total mass one.
  """
  g, c = jax.random.normal(key, (2, num_states, num_states), jnp.result_type(float))
  lw = concentration * (g + g.T) / 2 + epsilon * _cyclic((c - c.T) / 2)[0]
  return lw - logsumexp(lw)


@_checks.public(static=("num_states",))
def random_reward(key: Array, num_states: int, epsilon: Float[Array, ""] = 0.0,
                  scale: Float[Array, ""] = 1.0) -> Reward:
  """A random transition reward ``r(s, s') = Phi(s') + S(s, s') + epsilon B(s, s')``.

  ``Phi`` is a Gaussian potential, ``S`` a symmetric part and ``B`` an antisymmetric pure cycle
  (zero row sums), so at ``epsilon = 0`` the reward-potential assumption holds and otherwise
  :func:`reward_potential` recovers ``Phi`` (up to a constant) with residual exactly
  ``2 epsilon max|B|``.

  Args:
    key: PRNG key.
    num_states: number of states ``M``.
    epsilon: size of the violation.
    scale: standard deviation of ``Phi``, ``S`` and ``B``.

  Returns:
    A :class:`Reward` with ``reward (M, M)`` and its ``potential`` ``Phi (M,)``.
  """
  m = num_states
  z = jax.random.normal(key, (2 * m + 1, m), jnp.result_type(float))
  phi, s, b = scale * z[0], z[1:m + 1], z[m + 1:]
  reward = jnp.broadcast_to(phi[None, :], (m, m)) + scale * (s + s.T) / 2
  return Reward(reward + epsilon * scale * _cyclic((b - b.T) / 2)[0], phi)


@_checks.public
def birth_death(up: Float[Array, "... n"], down: Float[Array, "... n"]) -> Float[Array, "... m m"]:
  """A birth-death (nearest-neighbour) chain on ``M = n + 1`` states in a line.

  ``K(i, i+1) = up[i]``, ``K(i+1, i) = down[i]`` and the rest of each row stays put. Every
  birth-death chain is reversible, with ``pi(i+1) / pi(i) = up[i] / down[i]``.

  Args:
    up: probabilities of moving up, in ``[0, 1]``.
    down: probabilities of moving down, same shape (batch axes broadcast).

  Returns:
    The log kernel ``(..., n + 1, n + 1)``.
  """
  where = "klrl.chains.birth_death"
  up = _checks.in_unit_interval(where, "up", _checks.floating(where, "up", up, 1))
  down = _checks.in_unit_interval(where, "down", _checks.floating(where, "down", down, 1))
  _checks.same_support(where, "up", up, "down", down)
  batch = _batch(where, "down", down.shape, up.shape[:-1], down.shape[:-1])
  n = up.shape[-1]
  dtype = jnp.result_type(up, down)
  zero = jnp.zeros(batch + (1,), dtype)
  u = jnp.concatenate([jnp.broadcast_to(up, batch + (n,)).astype(dtype), zero], axis=-1)
  d = jnp.concatenate([zero, jnp.broadcast_to(down, batch + (n,)).astype(dtype)], axis=-1)
  u = _checks.holds(where, "down", u, u + d <= 1 + 1e-12, "makes a row leave with probability > 1 (up[i] + down[i-1] > 1)")
  stay = jnp.maximum(1 - u - d, 0.0)
  i = jnp.arange(n + 1)
  shape = batch + (n + 1, n + 1)
  col = lambda x: jnp.broadcast_to(jnp.log(x)[..., :, None], shape)
  j_minus_i = jnp.broadcast_to(i[None, :] - i[:, None], shape)
  return jnp.where(j_minus_i == 1, col(u), jnp.where(j_minus_i == -1, col(d), jnp.where(j_minus_i == 0, col(stay), -jnp.inf)))


# ---------------------------------------------------------------------------------------------
# The assumptions, their residuals and the canonical potential.

def _fit(reward):
  d = reward - jnp.swapaxes(reward, -1, -2)
  cyc, phi = _cyclic(d)
  return phi, jnp.max(jnp.abs(cyc), axis=(-2, -1))


@_checks.public
def reward_potential(reward: Float[Array, "... m m"]) -> PotentialFit:
  """Tests the reward-potential assumption ``r(s,s') - r(s',s) = Phi(s') - Phi(s)`` (SPEC §4).

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


@_checks.public
def potential(log_ref_kernel: Float[Array, "... m m"], reward: Float[Array, "... m m"],
              beta: Float[Array, "..."]) -> Float[Array, "... m"]:
  """The canonical potential ``V(s) = log mu(s) + Phi(s)/beta + log Z(s)`` (SPEC §4).

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
  logp = _log_kernel(where, "log_ref_kernel", log_ref_kernel)
  m = logp.shape[-1]
  phi_given = jnp.ndim(reward) == 1
  reward = _checks.finite(where, "reward", _pairwise(where, reward, m))
  beta = _checks.positive(where, "beta", _checks.floating(where, "beta", beta))
  batch = _batch(where, "beta", beta.shape, logp.shape[:-2], reward.shape[:-2], beta.shape)
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


@_checks.public
def detailed_balance(log_kernel: Float[Array, "... m m"], potential: Float[Array, "... m"] | None = None) -> Balance:
  """Detailed-balance residual ``V(s) + log K(s'|s) - V(s') - log K(s|s')`` (SPEC §4).

  Zero for every pair exactly when ``e^V`` is a reversing measure of ``K``. With the canonical
  potential of :func:`potential` it is zero under the two assumptions of SPEC §4 and equals
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
  logk = _log_kernel(where, "log_kernel", log_kernel)
  pi = _stationary(logk, "gth")
  v = jnp.log(pi) if potential is None else _potential_arg(where, "potential", potential, logk)
  batch = jnp.broadcast_shapes(logk.shape[:-2], v.shape[:-1])
  shape = batch + logk.shape[-2:]
  a = jnp.broadcast_to(v[..., :, None], shape) + jnp.broadcast_to(logk, shape)
  at = jnp.swapaxes(a, -1, -2)
  res = jnp.where((a == -jnp.inf) & (at == -jnp.inf), 0.0, a - at)
  f = pi[..., :, None] * jnp.exp(logk)
  flux = 0.5 * jnp.sum(jnp.abs(f - jnp.swapaxes(f, -1, -2)), axis=(-2, -1))
  return Balance(res, jnp.max(jnp.abs(res), axis=(-2, -1)), flux)


@_checks.public
def kolmogorov_cycles(log_kernel: Float[Array, "... m m"], cycles: Int[Array, "c l"]) -> Float[Array, "... c"]:
  """Kolmogorov's cycle criterion: ``log`` of forward over backward probability around cycles.

  A kernel is reversible exactly when every cycle ``s_0 -> s_1 -> ... -> s_{L-1} -> s_0`` is as
  likely forwards as backwards (SPEC §4). For a kernel with all moves possible, the triangles
  ``(0, i, j)`` suffice.

  Args:
    log_kernel: log kernel ``(..., M, M)``.
    cycles: integer array ``(C, L)``: ``C`` cycles of ``L`` states (closed implicitly).

  Returns:
    ``sum_i log K(s_{i+1}|s_i) - sum_i log K(s_i|s_{i+1})`` per cycle, ``(..., C)``; 0 where the
    cycle is impossible both ways, ``+-inf`` where only one way.
  """
  where = "klrl.chains.kolmogorov_cycles"
  logk = _log_kernel(where, "log_kernel", log_kernel)
  cycles = jnp.asarray(cycles)
  if cycles.ndim != 2:
    _checks._fail(where, "cycles", f"must have shape (C, L), got {cycles.shape}")
  cycles = _checks.integers(where, "cycles", cycles, logk.shape[-1])
  nxt = jnp.roll(cycles, -1, axis=-1)
  fwd = jnp.sum(logk[..., cycles, nxt], axis=-1)
  bwd = jnp.sum(logk[..., nxt, cycles], axis=-1)
  return jnp.where((fwd == -jnp.inf) & (bwd == -jnp.inf), 0.0, fwd - bwd)


# ---------------------------------------------------------------------------------------------
# Stationary laws.

def _staged(step, state, last):
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


def _gth(k):
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

  (a,), pivots = _staged(step, (k,), 1)
  start = jnp.max(jnp.where(pivots > 0, 0, jnp.arange(1, m)), initial=0)   # last zero pivot, or 0
  # x_n = sum_{i<n} x_i a[i, n] for n > start: x (I - U) = e_start with U the stored scaled
  # columns; a triangular solve that only adds nonnegative terms.
  u = jnp.where((idx[:, None] < idx[None, :]) & (idx[None, :] > start), a, 0.0)
  x = jax.scipy.linalg.solve_triangular(jnp.eye(m, dtype=k.dtype) - u.T, (idx == start).astype(k.dtype), lower=True)
  # Unique when no pivot vanished, else when every state reaches the last one that did (no
  # search when start = 0; a lax.cond here fails under vmap inside shard_map, jax 0.10).
  unique = (start == 0) | jnp.all(_reach((k > 0).astype(k.dtype), idx == start, jnp.ones(m, bool), start > 0))
  return x / jnp.sum(x), unique


def _mmatrix_solve(off, leak, b):
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

  (off, _, b), piv = _staged(step, (off, leak, b), 0)
  # h_k = (b_k + sum_{j<k} off[k, j] h_j) / piv_k: a triangular solve adding nonnegative terms.
  lower = jnp.where(idx[:, None] > idx[None, :], off, 0.0)
  return jax.scipy.linalg.solve_triangular(jnp.diag(piv) - lower, b, lower=True)


def _solve_pi(k):
  """``pi (I - K + 1 1^T) = 1^T``: nonsingular exactly when the stationary law is unique."""
  m = k.shape[-1]
  return jnp.linalg.solve((jnp.eye(m, dtype=k.dtype) - k + 1.0).T, jnp.ones(m, k.dtype))


def _stationary1(logk, method):
  """``pi`` of one kernel, or NaN where the stationary law is not unique."""
  k = jnp.exp(logk)
  if method == "gth":
    pi, unique = _gth(k)
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


@_checks.public(static=("method",))
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
  logk = _log_kernel(where, "log_kernel", log_kernel)
  pi = _stationary(logk, method)
  return _checks.holds(where, "log_kernel", pi, ~jnp.isnan(pi),
                       "has no unique stationary law (several closed classes)")


def _pi_checked(where, logk):
  pi = _stationary(logk, "gth")
  return _checks.holds(where, "log_kernel", pi, ~jnp.isnan(pi), "has no unique stationary law (several closed classes)")


# ---------------------------------------------------------------------------------------------
# Evolution, relaxation and drift.

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


@_checks.public(static=("rounds",))
def evolve(log_kernel: Float[Array, "... m m"], log_p0: Float[Array, "... m"], rounds: int) -> Float[Array, "... t m"]:
  """Laws over rounds, ``p_{t+1} = p_t K`` (SPEC §4), batched over kernels and initial laws.

  Args:
    log_kernel: log kernel ``(..., M, M)``.
    log_p0: initial log-laws ``(..., M)``; batch axes broadcast with the kernel's.
    rounds: number of rounds ``T`` (static).

  Returns:
    ``log p_t`` for ``t = 0..T``, shape ``(..., T + 1, M)``.
  """
  where = "klrl.chains.evolve"
  logk = _log_kernel(where, "log_kernel", log_kernel)
  logp0 = _law(where, "log_p0", log_p0, logk.shape[-1])
  _batch(where, "log_p0", logp0.shape, logp0.shape[:-1], logk.shape[:-2])
  return _evolve(logk, _checks.log_probs(where, "log_p0", logp0), rounds)


@_checks.public(static=("rounds",))
def relaxation(log_kernel: Float[Array, "... m m"], log_p0: Float[Array, "... m"], rounds: int,
               potential: Float[Array, "... m"] | None = None) -> Relaxation:
  """Distance to equilibrium along ``p_{t+1} = p_t K`` (SPEC §4).

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
  logk = _log_kernel(where, "log_kernel", log_kernel)
  logp0 = _checks.log_probs(where, "log_p0", _law(where, "log_p0", log_p0, logk.shape[-1]))
  _batch(where, "log_p0", logp0.shape, logp0.shape[:-1], logk.shape[:-2])
  lp = _evolve(logk, logp0, rounds)
  log_pi = jnp.broadcast_to(jnp.log(_pi_checked(where, logk))[..., None, :], lp.shape)
  v = log_pi if potential is None else jnp.broadcast_to(
      _potential_arg(where, "potential", potential, logk)[..., None, :], lp.shape)
  free = -expectation(lp, v) - divergences.entropy(lp)
  return Relaxation(lp, divergences.kl(lp, log_pi), free, divergences.tv(lp, log_pi), divergences.chi2(lp, log_pi))


def _drift(logk, v):
  shape = jnp.broadcast_shapes(logk.shape, v.shape[:-1] + (1, v.shape[-1]))
  diff = jnp.broadcast_to(v[..., None, :] - v[..., :, None], shape)
  return expectation(jnp.broadcast_to(logk, shape), diff)


@_checks.public
def drift(log_kernel: Float[Array, "... m m"], potential: Float[Array, "... m"] | None = None) -> Drift:
  """Drift of a potential, ``sum_s' K(s'|s) (V(s') - V(s))``, and its stationary mean (SPEC §4).

  The mean ``sum_s pi(s) drift(s)`` is zero for every ``V`` (zero global mean drift).

  Args:
    log_kernel: log kernel.
    potential: finite ``V``; defaults to ``log pi`` (the canonical potential of a reversible
      chain, up to a constant).

  Returns:
    A :class:`Drift` with the ``drift`` per state and its ``mean`` under ``pi``.
  """
  where = "klrl.chains.drift"
  logk = _log_kernel(where, "log_kernel", log_kernel)
  pi = _pi_checked(where, logk)
  v = jnp.log(pi) if potential is None else _potential_arg(where, "potential", potential, logk)
  d = _drift(logk, v)
  return Drift(d, jnp.sum(jnp.broadcast_to(pi, d.shape) * d, axis=-1))


# ---------------------------------------------------------------------------------------------
# Hitting times.

def _reach(support, start, allowed, search=True):
  """States of ``allowed`` (plus ``start``) that reach ``start`` through ``allowed`` states
  (``start`` alone where ``search`` is False)."""
  def body(carry):
    r, _ = carry
    new = r | (allowed & ((support @ r.astype(support.dtype)) > 0))
    return new, jnp.any(new != r)

  return lax.while_loop(lambda c: c[1], body, _checks.vary_alike((start, jnp.asarray(search)), support))[0]


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
    h = _mmatrix_solve(off, leak, free.astype(k.dtype))
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
  reaches = _reach(support, target, jnp.ones(m, bool))
  doomed = _reach(support, ~reaches, ~target)      # can avoid the target forever
  h = _hitting_core(logk, ~target & ~doomed, method)
  return jnp.where(doomed, jnp.inf, h)


_hitting = jnp.vectorize(_hitting1, excluded={2}, signature="(m,m),(m)->(m)")


@_checks.public(static=("method",))
def hitting_times(log_kernel: Float[Array, "... m m"], target_mask: Bool[Array, "... m"],
                  method: str = "gth") -> Float[Array, "... m"]:
  """Expected hitting times ``E_s tau_A`` of a target set ``A`` (SPEC §4).

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
  logk = _log_kernel(where, "log_kernel", log_kernel)
  target = _target(where, "target_mask", target_mask, logk.shape[-1])
  batch = _batch(where, "target_mask", target.shape, target.shape[:-1], logk.shape[:-2])
  if method not in ("gth", "solve"):
    _checks._fail(where, "method", f"must be 'gth' or 'solve', got {method!r}")
  m = logk.shape[-1]
  return _hitting(jnp.broadcast_to(logk, batch + (m, m)), jnp.broadcast_to(target, batch + (m,)), method)


@_checks.public
def hitting_bounds(log_kernel: Float[Array, "... m m"], target_mask: Bool[Array, "... m"],
                   potential: Float[Array, "... m"] | None = None) -> HittingBounds:
  """Exact hitting and return times of ``A`` against the drift bound, the spectral bound and Kac.

  SPEC §4: ``E_s tau_A <= (V_max - V(s)) / delta`` when the drift of ``V`` is ``>= delta > 0``
  off ``A``; ``E_pi tau_A <= (1 - pi(A)) / (gamma pi(A))`` for a reversible chain with spectral
  gap ``gamma``; ``E_{pi_A} tau_A^+ = 1 / pi(A)`` (Kac) for every irreducible chain.

  Args:
    log_kernel: log kernel with a unique stationary law.
    target_mask: boolean ``(..., M)``, ``True`` on ``A``.
    potential: ``V`` of the drift bound; defaults to ``log pi``.

  Returns:
    A :class:`HittingBounds`.
  """
  where = "klrl.chains.hitting_bounds"
  logk = _log_kernel(where, "log_kernel", log_kernel)
  m = logk.shape[-1]
  if m < 2:
    _checks._fail(where, "log_kernel", "needs at least 2 states for a spectral gap")
  target = _target(where, "target_mask", target_mask, m)
  batch = _batch(where, "target_mask", target.shape, target.shape[:-1], logk.shape[:-2])
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
  v = log_pi if potential is None else jnp.broadcast_to(_potential_arg(where, "potential", potential, logk), batch + (m,))
  delta = jnp.min(jnp.where(target, jnp.inf, _drift(logk, v)), axis=-1)
  vmax = jnp.max(v, axis=-1, keepdims=True)
  bound = jnp.where(delta[..., None] > 0, (vmax - v) / delta[..., None], jnp.inf)
  return HittingBounds(h, expectation(log_pi, h), spectral, jnp.where(target, 0.0, bound), return_time, 1 / pa)


# ---------------------------------------------------------------------------------------------
# Spectra.

def _sym(logk):
  """``D^{1/2} K D^{-1/2}`` of a reversible kernel, as ``sqrt(K(s'|s) K(s|s'))``: exactly symmetric."""
  return jnp.exp(0.5 * (logk + jnp.swapaxes(logk, -1, -2)))


def _eigh_desc(s):
  w, v = jnp.linalg.eigh(s)
  return w[..., ::-1], v[..., ::-1]


@jax.custom_jvp
def _eigvalsh(s):
  """Eigenvalues of symmetric ``s``, descending; derivative averaged over degenerate clusters."""
  return _eigh_desc(s)[0]


@_eigvalsh.defjvp
def _eigvalsh_jvp(primals, tangents):
  (s,), (ds,) = primals, tangents
  w, v = _eigh_desc(s)
  d = jnp.einsum("...ij,...ik,...kj->...j", v, ds, v)       # v_j^T ds v_j
  tol = jnp.sqrt(jnp.finfo(w.dtype).eps)
  same = jnp.abs(w[..., :, None] - w[..., None, :]) <= tol
  return w, jnp.sum(jnp.where(same, jnp.broadcast_to(d[..., None, :], same.shape), 0.0), axis=-1) / jnp.sum(same, axis=-1)


def _spectrum_arg(where, log_kernel):
  logk = _log_kernel(where, "log_kernel", log_kernel)
  if logk.shape[-1] < 2:
    _checks._fail(where, "log_kernel", "needs at least 2 states for a spectral gap")
  return logk, _eigvalsh(_sym(logk))


def _lam_star(w):
  return jnp.maximum(jnp.abs(w[..., 1]), jnp.abs(w[..., -1]))


@_checks.public
def spectrum(log_kernel: Float[Array, "... m m"]) -> Float[Array, "... m"]:
  """Eigenvalues of a reversible kernel, real and descending: ``1 = l_1 >= l_2 >= ... >= l_M`` (SPEC §4).

  Computed with a symmetric eigensolver on ``D^{1/2} K D^{-1/2}`` (``D = diag pi``), which for a
  reversible ``K`` equals ``sqrt(K(s'|s) K(s|s'))`` entrywise. For a kernel that is not
  reversible (see :func:`detailed_balance`) this is not its spectrum: use :func:`eigenvalues`.
  At equal eigenvalues the derivative is that of the cluster's mean.

  Args:
    log_kernel: log kernel ``(..., M, M)`` of a reversible chain.

  Returns:
    The ``M`` real eigenvalues, descending, ``(..., M)``.
  """
  where = "klrl.chains.spectrum"
  return _eigvalsh(_sym(_log_kernel(where, "log_kernel", log_kernel)))


@_checks.public
def spectral_gap(log_kernel: Float[Array, "... m m"]) -> Float[Array, "..."]:
  """Spectral gap ``gamma = 1 - l_2`` of a reversible kernel (SPEC §4).

  Args:
    log_kernel: log kernel ``(..., M, M)`` of a reversible chain, ``M >= 2``.

  Returns:
    ``1 - l_2``, ``(...)``; positive for a periodic chain (use :func:`eigenvalues` for ``|l_2|``).
  """
  return 1 - _spectrum_arg("klrl.chains.spectral_gap", log_kernel)[1][..., 1]


@_checks.public
def absolute_spectral_gap(log_kernel: Float[Array, "... m m"]) -> Float[Array, "..."]:
  """Absolute spectral gap ``gamma* = 1 - max(|l_2|, |l_M|)`` of a reversible kernel (SPEC §4).

  Differentiable: the derivative is that of the eigenvalue attaining the maximum (half each
  when ``|l_2| = |l_M|``), with degenerate eigenvalues handled as in :func:`spectrum`.

  Args:
    log_kernel: log kernel ``(..., M, M)`` of a reversible chain, ``M >= 2``.

  Returns:
    ``gamma*``, ``(...)``; 0 for a periodic chain.
  """
  return 1 - _lam_star(_spectrum_arg("klrl.chains.absolute_spectral_gap", log_kernel)[1])


@_checks.public
def relaxation_time(log_kernel: Float[Array, "... m m"]) -> Float[Array, "..."]:
  """Relaxation time ``t_rel = 1 / gamma*`` of a reversible kernel (SPEC §4).

  Args:
    log_kernel: log kernel ``(..., M, M)`` of a reversible chain, ``M >= 2``.

  Returns:
    ``1 / gamma*``, ``(...)``; ``+inf`` for a periodic chain.
  """
  return 1 / (1 - _lam_star(_spectrum_arg("klrl.chains.relaxation_time", log_kernel)[1]))


@_checks.public(static=("rounds",))
def mixing_bounds(log_kernel: Float[Array, "... m m"], log_p0: Float[Array, "... m"], rounds: int,
                  eps: Float[Array, ""] = 0.25) -> MixingBounds:
  """The mixing bounds of SPEC §4 for a reversible chain, over rounds ``t = 0..T``.

  With ``lam* = 1 - gamma*``: ``TV(p_t, pi) <= (1/2) lam*^t sqrt(chi2(p_0 || pi))``,
  ``KL(p_t || pi) <= log(1 + lam*^(2t) chi2(p_0 || pi))``,
  ``max_s TV(K^t(s, .), pi) <= exp(-gamma* t) / pi_min`` and
  ``t_mix(eps) <= log(1 / (eps pi_min)) / gamma*``.

  Args:
    log_kernel: log kernel of a reversible chain.
    log_p0: initial log-laws ``(..., M)``.
    rounds: number of rounds ``T`` (static).
    eps: total-variation level of the mixing time, in ``(0, 1)``.

  Returns:
    A :class:`MixingBounds`.
  """
  where = "klrl.chains.mixing_bounds"
  logk, w = _spectrum_arg(where, log_kernel)
  logp0 = _checks.log_probs(where, "log_p0", _law(where, "log_p0", log_p0, logk.shape[-1]))
  batch = _batch(where, "log_p0", logp0.shape, logp0.shape[:-1], logk.shape[:-2])
  eps = _checks.positive(where, "eps", _checks.floating(where, "eps", eps)).astype(logk.dtype)
  pi = _pi_checked(where, logk)
  shape = batch + (logk.shape[-1],)
  chi = divergences.chi2(jnp.broadcast_to(logp0, shape).astype(logk.dtype), jnp.broadcast_to(jnp.log(pi), shape))
  lam = jnp.broadcast_to(_lam_star(w), batch)[..., None]
  gam = 1 - lam
  pmin = jnp.broadcast_to(jnp.min(pi, axis=-1), batch)
  t = jnp.broadcast_to(jnp.arange(rounds + 1, dtype=logk.dtype), batch + (rounds + 1,))
  decay = lam ** t
  return MixingBounds(0.5 * decay * jnp.sqrt(chi)[..., None], jnp.log1p(decay * decay * chi[..., None]),
                      jnp.exp(-gam * t) / pmin[..., None], jnp.log(1 / (eps * pmin)) / gam[..., 0])


def _platform():
  dev = jax.config.jax_default_device
  if dev is not None:
    return dev if isinstance(dev, str) else dev.platform
  return jax.default_backend()


@_checks.public
def eigenvalues(log_kernel: Float[Array, "... m m"]) -> Array:
  """All eigenvalues of any kernel (complex), ``1`` first, then by decreasing modulus (SPEC §4).

  For chains that are not reversible, where :func:`spectrum` does not apply. Uses the general
  eigensolver ``jnp.linalg.eig``, which JAX provides on CPU (and on CUDA/ROCm GPUs); on other
  backends this raises ``NotImplementedError``. Not differentiable.

  Args:
    log_kernel: log kernel ``(..., M, M)``, reversible or not.

  Returns:
    Complex eigenvalues ``(..., M)``; ``abs`` gives the moduli, ``1 - |l_2|`` the modulus gap.
  """
  where = "klrl.chains.eigenvalues"
  logk = _log_kernel(where, "log_kernel", log_kernel)
  platform = _platform()
  if platform not in ("cpu", "gpu", "cuda", "rocm"):
    raise NotImplementedError(
        f"{where}: JAX has no general (non-symmetric) eigensolver on the '{platform}' backend; run "
        "this call on the CPU (JAX_PLATFORMS=cpu, or inside jax.default_device(jax.devices('cpu')[0])), "
        "or use klrl.chains.spectrum for a reversible chain")
  w = jnp.linalg.eig(lax.stop_gradient(jnp.exp(logk)))[0]
  first = jnp.abs(w - 1) == jnp.min(jnp.abs(w - 1), axis=-1, keepdims=True)
  order = jnp.lexsort((-w.real, -jnp.abs(w), (~first).astype(jnp.int32)), axis=-1)
  return jnp.take_along_axis(w, order, axis=-1)


# ---------------------------------------------------------------------------------------------
# Large sparse chains.

@_checks.public(static=("num_states", "num_links"))
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


@_checks.public
def sparse_chain(neighbors: Int[Array, "m k"], log_joint: Float[Array, "... m k"], potential: Float[Array, "... m"],
                 beta: Float[Array, "..."]) -> SparseChain:
  """The tilted kernel of a sparse reversible reference and a potential reward, and its ``pi``.

  The reference is ``p(s'|s) = W(s, s') / mu(s)`` for a symmetric joint ``W`` given by
  neighbour lists, the reward is ``r(s, s') = Phi(s')``. Both assumptions of SPEC §4 hold, so
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
  phi = _checks.finite(where, "potential", _law(where, "potential", potential, m))
  beta = _checks.positive(where, "beta", _checks.floating(where, "beta", beta))
  batch = _batch(where, "beta", beta.shape, lw.shape[:-2], phi.shape[:-1], beta.shape)
  dtype = jnp.result_type(lw, phi, beta)
  beta = jnp.broadcast_to(beta, batch).astype(dtype)
  phi = jnp.broadcast_to(phi, batch + (m,)).astype(dtype)
  phi = (phi - jnp.max(phi, axis=-1, keepdims=True)) / beta[..., None]   # centred, as in kernel
  tilted = jnp.broadcast_to(lw, batch + lw.shape[-2:]).astype(dtype) + phi[..., neighbors]
  v = logsumexp(tilted, axis=-1) + phi
  return SparseChain(log_normalize(tilted), log_normalize(v))


@_checks.public
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


@_checks.public(static=("steps",))
def lanczos_gap(neighbors: Int[Array, "m k"], log_kernel: Float[Array, "m k"], log_pi: Float[Array, "m"],
                steps: int = 100, key: Array | None = None) -> LanczosGap:
  """Top of the spectrum of a large reversible chain in neighbour-list form, matrix-free (SPEC §4).

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
  log_pi = _checks.log_probs(where, "log_pi", _law(where, "log_pi", log_pi, m)).astype(logk.dtype)
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
