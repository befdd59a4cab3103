"""The one scalar root solver of klrl: safeguarded Newton (or Halley) inside a bracket.

Every scalar root that klrl computes goes through :func:`solve`: the KL-constrained ``lam``
(:mod:`klrl.tilted`), the slopes of the rate functions (:mod:`klrl.memoryless`), the
temperature of a generated distribution with a given entropy (:mod:`klrl.instances`). Each
call solves ``G(x) = 0`` elementwise over a batch, for an increasing ``G`` with
``G(lo) < 0 < G(hi)`` (``hi`` may be ``+inf``):

- a Newton step in ``x``, or in ``log x`` where the caller says ``G`` is close to linear in
  ``log x`` (``log_newton``), or a Halley step when ``G''`` is given;
- the step is kept only inside the bracket (and, with ``halving``, only if it at least
  halves the previous step); else the bracket is bisected (geometrically or arithmetically),
  or, while ``hi = +inf``, ``x`` is pushed up;
- the loop ends when every row is ``done`` (the caller's test, usually ``|G| <= tol``), when
  the bracket has closed to ``closed_rtol`` relative width, or after ``max_steps`` passes.

The result says which rows converged: a row that stopped at the step limit has
``converged = False`` and its last iterate, which callers report or refuse, never return as
if it were the root. Derivatives are not taken through the loop: callers differentiate the
root implicitly (``dx = -dG / G'(x)``) in a ``custom_jvp`` of their own, where the residual's
dependence on the data is known.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float

from klrl._src import checks


class Root(NamedTuple):
  """A batched root solve.

  Attributes:
    x: the roots (the last iterate where a row did not converge).
    lo: lower end of the final bracket.
    hi: upper end of the final bracket.
    value: what ``evaluate`` returned at ``x`` (its first entry is ``G(x)``).
    iterations: passes of the loop (evaluations after the first), the same for all rows.
    converged: per row, whether it is inactive, ``done`` with a finite ``G``, or its bracket closed.
  """
  x: Array
  lo: Array
  hi: Array
  value: tuple
  iterations: Array
  converged: Array


def step(x, lo, hi, g, dg, moving, *, d2g=None, log_newton=None, geometric: bool = True, last=None):
  """One safeguarded step on ``G`` from ``x`` where ``moving``; returns ``(x, lo, hi)``.

  Args:
    x, lo, hi: the iterate and its bracket (``lo`` and ``hi`` are updated from the sign of ``g``).
    g, dg: ``G(x)`` and ``G'(x)``.
    moving: rows that take the step (the others keep ``x``).
    d2g: ``G''(x)`` for a Halley step (used where it does not overshoot Newton's direction).
    log_newton: rows where the Newton step is taken in ``log x`` (``G`` near-linear in ``log x``).
    geometric: bisect at ``sqrt(lo hi)`` (``x > 0``) rather than ``(lo + hi) / 2``.
    last: the previous step's length: a step must at least halve it (for S-shaped ``G``).
  """
  tiny = jnp.finfo(x.dtype).tiny
  lo = jnp.where(g < 0, x, lo)
  hi = jnp.where(g > 0, x, hi)
  new = x - g / dg
  if log_newton is not None:
    new = jnp.where(log_newton, x * jnp.exp(-g / jnp.maximum(x * dg, tiny)), new)
  if d2g is not None:
    den = 2 * dg * dg - g * d2g
    new = jnp.where(den > dg * dg, x - 2 * g * dg / den, new)
  ok = jnp.isfinite(new) & (new > lo) & (new < hi)
  if last is not None:
    ok = ok & (jnp.abs(new - x) <= 0.5 * last)
  if geometric:
    bisect = jnp.where(jnp.isfinite(hi), jnp.sqrt(lo * hi), 4 * x)
  else:
    bisect = jnp.where(jnp.isfinite(hi), 0.5 * (lo + hi), 4 * jnp.maximum(x, tiny) + 1e-3)
  return jnp.where(moving, jnp.where(ok, new, bisect), x), lo, hi


def solve(evaluate: Callable[[Array], tuple], x0: Float[Array, "*b"], lo: Float[Array, "*b"], hi: Float[Array, "*b"],
          active: Bool[Array, "*b"], *, done: Callable[[Array, tuple], Array], max_steps: int,
          closed_rtol: float | None = None, halley: bool = False, log_newton: Callable[[Array], Array] | None = None,
          geometric: bool = True, halving: bool = False) -> Root:
  """Solves ``G(x) = 0`` on the rows where ``active`` by safeguarded steps (see the module doc).

  Args:
    evaluate: ``x -> (G, G', ...)`` (with ``halley``, ``G''`` third), one pass over the data.
    x0: starting point, inside ``(lo, hi)``.
    lo, hi: a bracket of the root (``hi`` may be ``+inf``).
    active: rows to solve; the others keep ``x0`` and count as converged.
    done: ``(x, value) -> bool`` per row: the row stops (e.g. ``~(|G| > tol)``, which also stops
      a row whose ``G`` is NaN; such a row does not count as converged).
    max_steps: the most passes; rows still moving then have ``converged = False``.
    closed_rtol: stop a row when ``hi - lo <= closed_rtol hi`` (its root pinned to rounding).
    halley: take Halley steps (``evaluate`` returns ``G''`` third).
    log_newton: ``x -> bool`` per row: take the Newton step in ``log x``.
    geometric: bisect geometrically (positive ``x``) or arithmetically.
    halving: a step must at least halve the previous one, else bisect.

  Returns:
    A :class:`Root`.
  """
  def closed(lo, hi):
    if closed_rtol is None:
      return jnp.zeros(lo.shape, bool)
    return jnp.isfinite(hi) & (hi - lo <= closed_rtol * hi)

  def moving(x, value):
    return active & ~done(x, value)

  def cond(state):
    x, lo, hi, value, last, it = state
    return (it < max_steps) & jnp.any(moving(x, value) & ~closed(lo, hi))

  def body(state):
    x, lo, hi, value, last, it = state
    new, lo, hi = step(x, lo, hi, value[0], value[1], moving(x, value), d2g=value[2] if halley else None,
                       log_newton=None if log_newton is None else log_newton(x), geometric=geometric,
                       last=last if halving else None)
    return new, lo, hi, evaluate(new), jnp.abs(new - x), it + 1

  start = (x0, lo, hi, evaluate(x0), jnp.full_like(x0, jnp.inf), jnp.array(0))
  x, lo, hi, value, _, it = lax.while_loop(cond, body, checks.vary_alike(start, (lo, hi, active)))
  converged = ~active | (done(x, value) & jnp.isfinite(value[0])) | closed(lo, hi)
  return Root(x, lo, hi, value, it, converged)
