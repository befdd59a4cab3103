"""Log-space kernels shared by every module: normalisation, expectations, divergences.

Distributions are arrays whose last axis is the support; zero-mass entries are ``-inf`` with
``0 log 0 = 0`` and ``p log(p/0) = +inf`` for ``p > 0``. Nothing here checks its inputs: the
public wrappers in :mod:`klrl.divergences` do, and the training loops call these on iterates
that are normalised by construction.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp, xlogy


def log_normalize(logw: Float[Array, "... v"]) -> Float[Array, "... v"]:
  """Normalises log-weights over the last axis (``-inf`` entries stay ``-inf``)."""
  return logw - logsumexp(logw, axis=-1, keepdims=True)


def expectation(logp: Float[Array, "... v"], f: Float[Array, "... v"]) -> Float[Array, "..."]:
  """``E_p[f]``; entries of zero mass contribute 0 whatever ``f`` is there (even inf/NaN)."""
  p = jnp.exp(logp)
  return jnp.sum(jnp.where(p > 0, p * f, 0.0), axis=-1)


def kl(logp, logq):
  """``KL(p || q)`` over the last axis, unchecked; ``+inf`` where ``p > 0 = q``."""
  p = jnp.exp(logp)
  diff = jnp.where(p > 0, logp - logq, 0.0)  # p > 0 and q == 0 gives +inf, as it should
  return jnp.sum(p * diff, axis=-1)


def bernoulli_kl(a, b):
  """``kl(a || b)`` of Bernoulli laws, unchecked, with ``0 log 0 = 0``."""
  return xlogy(a, a) - xlogy(a, b) + xlogy(1 - a, 1 - a) - xlogy(1 - a, 1 - b)


def bernoulli_kl_logits(x, y):
  """``kl(sigmoid(x) || sigmoid(y))``, unchecked."""
  # kl(sigmoid(x) || sigmoid(y)) = softplus(y) - softplus(x) - sigmoid(x) (y - x), the Bregman
  # divergence of softplus; evaluated on the side where sigmoid(x) <= 1/2 (kl(a||b) = kl(1-a||1-b)).
  flip = x > 0
  x, y = jnp.where(flip, -x, x), jnp.where(flip, -y, y)
  a = jax.nn.sigmoid(x)
  return jax.nn.softplus(y) - jax.nn.softplus(x) - jnp.where(a > 0, a * (y - x), 0.0)


def log_masses(logp, correct):
  """``(log a, log(1 - a))``: log-masses of the correct and wrong responses, per row."""
  return (logsumexp(jnp.where(correct, logp, -jnp.inf), axis=-1),
          logsumexp(jnp.where(correct, -jnp.inf, logp), axis=-1))
