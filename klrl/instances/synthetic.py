"""Synthetic instances: reference/reward pairs and RLVR prompts, drawn or built in JAX.

The reference/reward generators return ``(logp, reward)`` with the support on the last axis;
:func:`random_rlvr_problem` returns a :class:`~klrl.instances.Problem`. All are plain JAX
functions of a PRNG key (or of a few numbers), so a batch of instances is one call.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from klrl import divergences
from klrl._src import checks as _checks, roots as _roots
from klrl.divergences import log_normalize
from klrl.instances.types import Problem

__all__ = ["random_problem", "zipf_linear", "bernoulli", "random_rlvr_problem"]


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


@_checks.named("klrl.instances.random_rlvr_problem")
def random_rlvr_problem(where: str, key: Array, prompts: int, responses: int, *, num_correct: int,
                        accuracy: float | Array | None = None, entropy_correct: float | Array = 0.9,
                        entropy_wrong: float | Array = 0.9, dtype=None) -> Problem:
  """Random RLVR prompts with a set reference accuracy and entropy split.

  Each prompt has ``responses`` responses of which ``num_correct`` (at random positions) are
  correct. Within the correct (wrong) responses the reference is a softmax of Gaussian scores
  at the inverse temperature that makes its entropy ``entropy_correct * log(num_correct)``
  (``entropy_wrong * log(responses - num_correct)``); ``p(correct) = accuracy``.

  Args:
    key: PRNG key.
    prompts: number of prompts (rows).
    responses: responses per prompt (the support).
    num_correct: correct responses per prompt, ``1 <= num_correct < responses``.
    accuracy: reference accuracy per prompt in ``(0, 1)`` (scalar or ``(prompts,)``); default:
      uniform on ``[0.05, 0.6]``.
    entropy_correct: entropy of ``p(. | correct)`` as a fraction of its maximum, in ``[0, 1]``.
    entropy_wrong: entropy of ``p(. | wrong)`` as a fraction of its maximum, in ``[0, 1]``.
    dtype: floating dtype (default: JAX's default float).

  Returns:
    A :class:`~klrl.instances.Problem`.
  """
  if not 1 <= num_correct < responses:
    _checks._fail(where, "num_correct", f"must satisfy 1 <= num_correct < responses = {responses}, got {num_correct}")
  dtype = dtype or jnp.result_type(float)
  if accuracy is None:
    accuracy = jax.random.uniform(jax.random.fold_in(key, 1), (prompts,), dtype, 0.05, 0.6)
  level = {"accuracy": accuracy, "entropy_correct": entropy_correct, "entropy_wrong": entropy_wrong}
  level = {k: jnp.broadcast_to(jnp.asarray(v, dtype), (prompts,)) for k, v in level.items()}
  ranges = {"accuracy": ((level["accuracy"] > 0) & (level["accuracy"] < 1), "must lie in (0, 1)")}
  for k in ("entropy_correct", "entropy_wrong"):
    ranges[k] = ((level[k] >= 0) & (level[k] <= 1), "must lie in [0, 1] (a fraction of the largest entropy)")
  for k, (ok, what) in ranges.items():
    if isinstance(ok, jax.core.Tracer):      # traced (inside a sweep's jit/vmap): checked at run time
      level[k] = _checks.holds(where, k, level[k], ok, what)
    elif not bool(jnp.all(ok)):
      _checks._fail(where, k, what)
  return _rlvr_problem(key, level, responses, num_correct)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _rlvr_problem(key, level, responses, num_correct):
  prompts = level["accuracy"].shape[0]
  dtype = level["accuracy"].dtype
  k_pos, k_score = jax.random.split(key)
  rank = jnp.argsort(jnp.argsort(jax.random.uniform(k_pos, (prompts, responses)), axis=-1), axis=-1)
  correct = rank < num_correct
  score = jax.random.normal(k_score, (prompts, responses), dtype)
  log_c = _with_entropy(correct, score, level["entropy_correct"] * jnp.log(jnp.asarray(num_correct, dtype)))
  log_w = _with_entropy(~correct, score, level["entropy_wrong"] * jnp.log(jnp.asarray(responses - num_correct, dtype)))
  a = level["accuracy"][:, None]
  return Problem(jnp.where(correct, jnp.log(a) + log_c, jnp.log1p(-a) + log_w), correct)


def _with_entropy(mask, score, target):
  """``softmax(s score)`` on ``mask`` with entropy ``target``, ``s`` in ``[e^-30, e^30]``.

  The entropy falls from ``log n`` at ``s = 0`` to 0 as ``s -> inf`` (distinct scores); the
  ends (uniform, a point mass at the top score) are set exactly. ``s`` is the root of
  ``target - H(s)``, solved by Newton steps in ``log s`` inside the bracket
  (:mod:`klrl._src.roots`), the derivative of the entropy by forward differentiation.
  """
  law = lambda s: log_normalize(jnp.where(mask, s[..., None] * score, -jnp.inf))
  entropy = lambda s: -divergences.expectation(law(s), law(s))
  n = jnp.sum(mask, axis=-1)
  middle = (target > 0) & (target < jnp.log(n)) & (n > 1)

  def evaluate(s):
    h, dh = jax.jvp(entropy, (s,), (jnp.ones_like(s),))
    return target - h, -dh

  ones = jnp.ones_like(target)
  root = _roots.solve(evaluate, ones, ones * math.exp(-30.0), ones * math.exp(30.0), middle,
                      done=lambda s, v: ~(jnp.abs(v[0]) > 1e-12 * jnp.maximum(target, 1.0)), max_steps=100,
                      closed_rtol=1e-15, log_newton=lambda s: jnp.ones(s.shape, bool))
  top = score == jnp.max(jnp.where(mask, score, -jnp.inf), axis=-1, keepdims=True)
  ends = jnp.where(((target >= jnp.log(n)) | (n == 1))[..., None],
                   jnp.where(mask, -jnp.log(n)[..., None], -jnp.inf), jnp.where(mask & top, 0.0, -jnp.inf))
  return jnp.where(middle[..., None], law(root.x), ends)
