"""Reference/reward pairs for examples, checks and benchmarks.

Each generator returns ``(logp, reward)`` with the support on the last axis. They are plain
JAX functions of a PRNG key, so a batch of instances is one call.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["random_problem", "zipf_linear", "bernoulli"]


def random_problem(key: Array, batch: int, vocab: int, *, temperature: float = 2.0, ties: int = 0,
                   zero_mass: int = 0, dtype=None) -> tuple[Float[Array, "b v"], Float[Array, "b v"]]:
  """Random logits and Gaussian rewards.

  Args:
    key: PRNG key.
    batch: number of rows (prompts).
    vocab: support size.
    temperature: scale of the logits (larger means a more peaked reference).
    ties: if > 0, rewards are rounded to ``ties`` levels per unit, creating exact ties
      (including ties at the maximum).
    zero_mass: number of entries per row given zero reference mass.
    dtype: floating dtype (default: JAX's default float).
  """
  k1, k2, k3 = jax.random.split(key, 3)
  dtype = dtype or jnp.result_type(float)
  logits = temperature * jax.random.normal(k1, (batch, vocab), dtype)
  reward = jax.random.normal(k2, (batch, vocab), dtype)
  if ties:
    reward = jnp.round(reward * ties) / ties
  if zero_mass:
    idx = jax.vmap(lambda k: jax.random.choice(k, vocab, (zero_mass,), replace=False))(jax.random.split(k3, batch))
    logits = jax.vmap(lambda l, i: l.at[i].set(-jnp.inf))(logits, idx)
  return jax.nn.log_softmax(logits, axis=-1), reward


def zipf_linear(vocab: int, exponent: float = 1.1, dtype=None) -> tuple[Float[Array, "v"], Float[Array, "v"]]:
  """A Zipf reference ``p(k) ∝ k^-exponent`` with reward ``k / vocab`` (rare tokens pay more)."""
  dtype = dtype or jnp.result_type(float)
  k = jnp.arange(1, vocab + 1, dtype=dtype)
  return jax.nn.log_softmax(-exponent * jnp.log(k)), k / vocab


def bernoulli(p_good: float, dtype=None) -> tuple[Float[Array, "2"], Float[Array, "2"]]:
  """Two outcomes: reward 1 with reference probability ``p_good``, else 0."""
  dtype = dtype or jnp.result_type(float)
  return jnp.log(jnp.array([1 - p_good, p_good], dtype)), jnp.array([0.0, 1.0], dtype)
