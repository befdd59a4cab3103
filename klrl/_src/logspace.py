"""Log-space kernels shared by every module: normalisation, expectations, divergences.

Distributions are arrays whose last axis is the support; zero-mass entries are ``-inf`` with
``0 log 0 = 0`` and ``p log(p/0) = +inf`` for ``p > 0``. Nothing here checks its inputs: the
public wrappers in :mod:`klrl.divergences` do, and the training loops call these on iterates
that are normalised by construction.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
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


def one_plus_log_one_plus(u):
  """``(1 + u) log(1 + u) - u >= 0`` for ``u >= -1``, to full relative accuracy (also ``u -> 0``).

  With ``s = u / (2 + u)``, ``log(1 + u) = 2 atanh(s)`` and the value is
  ``2 [(atanh(s) - s) + s atanh(s)] / (1 - s)``: two non-negative terms, the first summed as its
  series ``s^3/3 + s^5/5 + ...`` where ``-1/2 <= u <= 1`` (``|s| <= 1/3``); beyond, the plain formula loses nothing.
  """
  small = (u >= -0.5) & (u <= 1.0)
  s = jnp.where(small, u, 0.0) / (2 + jnp.where(small, u, 0.0))
  s2 = s * s
  tail = sum(s2 ** k / (2 * k + 1) for k in range(1, 17))      # (atanh(s) - s)/s, |s| <= 1/3
  near = 2 * s * (tail + s * (1 + tail)) / (1 - s)
  far = jnp.where(u > -1, (1 + u) * jnp.log1p(jnp.where(u > -1, u, 0.0)), 0.0) - u
  return jnp.where(small, near, far)


def bernoulli_kl(a, b):
  """``kl(a || b)`` of Bernoulli laws, unchecked, with ``0 log 0 = 0``; never negative.

  For ``0 < b < 1`` it is ``b f((a - b)/b) + (1 - b) f((b - a)/(1 - b))`` with
  ``f(u) = (1 + u) log(1 + u) - u >= 0``: the first-order terms cancel exactly, so close
  arguments keep their relative accuracy (``kl(0.3 || 0.3 + 1e-9)`` is ``2.4e-18``, not the
  rounding noise of the four-logarithm form).
  """
  inner = (b > 0) & (b < 1)
  bb = jnp.where(inner, b, 0.5)
  d = a - bb
  close = bb * one_plus_log_one_plus(d / bb) + (1 - bb) * one_plus_log_one_plus(-d / (1 - bb))
  edge = xlogy(a, a) - xlogy(a, b) + xlogy(1 - a, 1 - a) - xlogy(1 - a, 1 - b)
  return jnp.where(inner, close, edge)


def bernoulli_kl_logits(x, y, d=None):
  """``kl(sigmoid(x) || sigmoid(y))``, unchecked; never negative. ``d``, if given, is ``y - x``
  known more accurately than the difference of ``y`` and ``x`` as rounded."""
  # Far apart (|y - x| >= 1): softplus(y) - softplus(x) - sigmoid(x) (y - x), the Bregman
  # divergence of softplus, on the side where sigmoid(x) <= 1/2 (kl(a||b) = kl(1-a||1-b)).
  flip = x > 0
  fx, fy = jnp.where(flip, -x, x), jnp.where(flip, -y, y)
  a = jax.nn.sigmoid(fx)
  far = jax.nn.softplus(fy) - jax.nn.softplus(fx) - jnp.where(a > 0, a * (fy - fx), 0.0)
  # b = 0 or 1 (y = -+inf): kl(a || b) is 0 where a = b and +inf otherwise (a <= 1/2 after the flip).
  far = jnp.where(jnp.isinf(fy), jnp.where((fy < 0) & (fx == -jnp.inf), 0.0, jnp.inf), far)
  # Close (|y - x| < 1, both finite): the form of :func:`bernoulli_kl` with
  # a - b = -sigmoid(x) sigmoid(-y) expm1(y - x), every factor to full relative accuracy.
  d = y - x if d is None else d
  safe = -0.9 * float(np.log(jnp.finfo(jnp.result_type(x, y)).tiny))          # sigmoid(+-y) > 0 there
  close = jnp.isfinite(x) & jnp.isfinite(y) & (jnp.abs(d) < 1) & (jnp.abs(y) < safe)
  d = jnp.where(close, d, 0.0)
  sx, sy, sny = jax.nn.sigmoid(jnp.where(close, x, 0.0)), jax.nn.sigmoid(jnp.where(close, y, 0.0)), jax.nn.sigmoid(-jnp.where(close, y, 0.0))
  gap = sx * jnp.expm1(d)                                      # (b - a) / (1 - b)
  near = sy * one_plus_log_one_plus(-gap * sny / sy) + sny * one_plus_log_one_plus(gap)
  return jnp.where(close, near, far)


def log_masses(logp, correct):
  """``(log a, log(1 - a))``: log-masses of the correct and wrong responses, per row."""
  return (logsumexp(jnp.where(correct, logp, -jnp.inf), axis=-1),
          logsumexp(jnp.where(correct, -jnp.inf, logp), axis=-1))


def kl_estimate(kind: str, d):
  """The per-sample KL estimators at ``d = log q(y) - log p(y)``, ``y ~ q``: ``"k1"`` (``d``),
  ``"k2"`` (``d^2 / 2``), ``"k3"`` (``p/q - 1 - log(p/q) = expm1(-d) + d``) or ``"none"`` (0)."""
  return {"k1": lambda: d, "k2": lambda: 0.5 * d * d, "k3": lambda: jnp.expm1(-d) + d,
          "none": lambda: jnp.zeros_like(d)}[kind]()
