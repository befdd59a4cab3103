"""Sampled training with the same configurations: draw sequences token by token, build the
surrogate loss, ``jax.grad`` (docs: theory/autoregressive).

:func:`sampled_gradient` is one estimate of what
:func:`~klrl.autoregressive.expected_gradient` computes exactly: the mean of many estimates
agrees with it within its standard error (``tests/test_autoregressive.py``).
:func:`sampled_training` trains with such estimates and optax, recording exact metrics.
"""
from __future__ import annotations

import math

import jax
import optax
from jaxtyping import Array, Float, Int

from klrl._src import checks as _checks
from klrl.autoregressive import _estimators as _est
from klrl.autoregressive import configs as _configs
from klrl.autoregressive.configs import Config
from klrl.autoregressive.dynamics import FixedPoint, loop_args, run
from klrl.autoregressive.gradients import args
from klrl.autoregressive.problems import Problem, batch_of, force, policy, public, table_arg, unpack, vmapped

__all__ = ["sample", "sampled_gradient", "sampled_training"]


def _keys(key, batch):
  """One key per problem of the batch (the key itself for a single problem)."""
  if not batch:
    return key
  return jax.random.split(key, math.prod(batch)).reshape(batch + key.shape)


@public(static=("problem", "num"))
def sample(key: Array, log_table: Float[Array, "... prefixes vocab"], problem: Problem,
           num: int) -> Int[Array, "... num"]:
  """``num`` sequences drawn autoregressively (token by token) from a policy's table.

  Args:
    key: PRNG key.
    log_table: ``(..., P, V)`` log-probabilities (e.g. :func:`~klrl.autoregressive.log_policy`).
    problem: the :class:`~klrl.autoregressive.Problem` whose tree it lives on.
    num: draws per problem (static).

  Returns:
    ``(..., num)`` sequence numbers ``n`` (tokens: ``sequences(V, T)[n]``).
  """
  where = "klrl.autoregressive.sample"
  num = _checks.integer(where, "num", num, 1)
  logp, _, end, lay = unpack(where, problem)
  table = table_arg(where, "log_table", log_table, lay, logits=False)
  table = _checks.log_probs(where, "log_table", force(table, end, lay))
  batch = batch_of(where, problem=logp.shape[:-2], log_table=table.shape[:-2], end_token=end.shape)
  return vmapped(lambda k, t: _est.draw(k, t, num, lay), batch, (_keys(key, batch), key.ndim), (table, 2))


@public(static=("problem", "config"))
def sampled_gradient(key: Array, theta: Float[Array, "... prefixes vocab"], problem: Problem, beta: Float[Array, "..."],
                     config: Config, *, behaviour: Float[Array, "... prefixes vocab"] | None = None
                     ) -> Float[Array, "... prefixes vocab"]:
  """One sampled estimate of the gradient of ``-J`` by ``config``, from ``config.group`` sequences.

  The sequences are drawn token by token from the sampler (the policy, or ``behaviour``); the
  returns, advantages and KL terms of ``config`` are formed from them (a ``"baseline"`` advantage
  uses the exact value of the prefix, a perfect critic) and the surrogate loss is differentiated
  with the samples fixed. Its mean is :func:`~klrl.autoregressive.expected_gradient`.

  Args:
    key: PRNG key (split over a batch of problems).
    theta: ``(..., P, V)`` logits of the policy.
    problem: a :class:`~klrl.autoregressive.Problem`.
    beta: KL coefficient ``> 0``.
    config: a :class:`~klrl.autoregressive.Config` (static).
    behaviour: ``(..., P, V)`` logits of the sampler; ``None``: on-policy.

  Returns:
    ``(..., P, V)`` one estimate.
  """
  where = "klrl.autoregressive.sampled_gradient"
  cfg = _configs.check(where, config)
  batch, theta, logp, reward, end, beta, mu, lay = args(where, theta, problem, beta, behaviour)

  def one(k, th, lp, r, e, b, m):
    return _est.sampled(cfg, k, th, policy(th if m is None else m, lp, e, lay), lp, r, e, b, lay)

  return vmapped(one, batch, (_keys(key, batch), key.ndim), (theta, 2), (logp, 2), (reward, 2), (end, 0), (beta, 0),
                 (mu, 2))


@public(static=("problem", "config", "optimizer", "steps", "sampler", "refresh"))
def sampled_training(key: Array, problem: Problem, beta: Float[Array, "..."], config: Config,
                     optimizer: optax.GradientTransformation, steps: int, *, sampler: str = "policy", refresh: int = 1,
                     init: Float[Array, "... prefixes vocab"] | None = None) -> FixedPoint:
  """Trains with :func:`sampled_gradient` and optax in one ``lax.scan``; metrics are exact.

  Step ``k`` draws with ``jax.random.fold_in(key, k)``. Arguments as in
  :func:`~klrl.autoregressive.fixed_point`, whose exact dynamics this samples (with a decaying
  step size it ends near the same fixed point). Returns a
  :class:`~klrl.autoregressive.FixedPoint` (its ``residual`` is the norm of one more estimate).
  """
  where = "klrl.autoregressive.sampled_training"
  cfg, batch, theta, logp, reward, end, beta, lay = loop_args(where, problem, beta, config, optimizer, steps, sampler,
                                                              refresh, init)

  def one(k, th, lp, r, e, b):
    gradient = lambda i, t, m: _est.sampled(cfg, jax.random.fold_in(k, i), t, policy(m, lp, e, lay), lp, r, e, b, lay)
    return run(gradient, th, lp, r, e, b, optimizer, steps, sampler, refresh, lay)

  return vmapped(one, batch, (_keys(key, batch), key.ndim), (theta, 2), (logp, 2), (reward, 2), (end, 0), (beta, 0))
