"""Building chains: the tilted kernel, reversible references, random rewards, birth-death chains.

The RL-tuned model is the tilted kernel of a reference ``p(s'|s)`` and a transition reward
``r(s, s')`` (docs: theory/chains)::

    K(s'|s) = p(s'|s) exp(r(s, s') / beta) / Z(s),    Z(s) = sum_u p(u|s) exp(r(s, u) / beta).

A symmetric joint weight ``W`` gives the reversible reference ``p(s'|s) = W(s, s') / mu(s)``.
The random generators build chains on which the assumptions of detailed balance
(docs: theory/chains) hold, or fail by an exactly known amount: a pure cycle (an antisymmetric
matrix with zero row sums) added to the log joint or to the reward.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp
from jaxtyping import Array, Float

from klrl._src import checks as _checks
from klrl.chains import _args
from klrl.chains.assumptions import _cyclic
from klrl.divergences import log_normalize


class Reward(NamedTuple):
  """A transition reward and the potential it was built from (see :func:`random_reward`)."""
  reward: Array
  potential: Array


@_args.public
def kernel(log_ref_kernel: Float[Array, "... m m"], reward: Float[Array, "... m m"],
           beta: Float[Array, "..."]) -> Float[Array, "... m m"]:
  """The tilted (RL-tuned) kernel ``K(s'|s) = p(s'|s) exp(r(s,s')/beta) / Z(s)`` (docs: theory/chains).

  Args:
    log_ref_kernel: log reference kernel ``log p(s'|s)``, rows over the last axis.
    reward: finite transition reward ``r(s, s')`` of shape ``(..., M, M)``; a vector ``(M,)``
      means ``r(s, s') = Phi(s')`` (pass a batch of potentials as ``(..., 1, M)``).
    beta: KL coefficient ``> 0``; its shape broadcasts with the batch axes of the other two.

  Returns:
    ``log K`` with the broadcast batch shape; impossible moves of ``p`` stay ``-inf``.
  """
  where = "klrl.chains.kernel"
  logp = _args.log_kernel(where, "log_ref_kernel", log_ref_kernel)
  m = logp.shape[-1]
  reward = _checks.finite(where, "reward", _args.pairwise(where, reward, m))
  beta = _checks.positive(where, "beta", _checks.floating(where, "beta", beta))
  batch = _args.batch(where, "beta", beta.shape, logp.shape[:-2], reward.shape[:-2], beta.shape)
  dtype = jnp.result_type(logp, reward, beta)
  shape = batch + (m, m)
  beta = jnp.broadcast_to(beta.astype(dtype)[..., None, None], batch + (1, 1))
  reward = jnp.broadcast_to(reward, shape).astype(dtype)
  # Centred per row (which the normalisation undoes): r / beta would round the rewards'
  # differences away for rewards offset far from zero and a small beta.
  reward = reward - jnp.max(reward, axis=-1, keepdims=True)
  return log_normalize(jnp.broadcast_to(logp, shape).astype(dtype) + reward / beta)


@_args.public
def reference_from_joint(log_joint: Float[Array, "... m m"]) -> Float[Array, "... m m"]:
  """Reference kernel ``p(s'|s) = W(s, s') / mu(s)`` from joint weights, ``mu(s) = sum_s' W(s, s')``.

  A symmetric ``W`` gives a kernel that is reversible with respect to ``mu`` (the reversible
  pretraining assumption, docs: theory/chains).

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


@_args.public(static=("num_states",))
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


@_args.public(static=("num_states",))
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


@_args.public
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
  batch = _args.batch(where, "down", down.shape, up.shape[:-1], down.shape[:-1])
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
