"""Argument checks shared by the modules of :mod:`klrl.memoryless`.

Every public function of the package names itself ``klrl.memoryless.<name>`` in its messages,
whichever module defines it.
"""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from klrl._src import checks as _checks

PACKAGE = "klrl.memoryless"


def public(fn=None, *, static: tuple[str, ...] = (), name: str | None = None):
  """:func:`klrl._src.checks.public` under the package's public name ``klrl.memoryless.<name>``.

  ``name`` defaults to the function's own; a private core passes the name of the public
  function it serves.
  """
  return _checks.public(fn, static=static, module=PACKAGE, name=name)


def inputs(where, logp, reward, **params):
  """``logp``, ``reward`` and per-row parameters (``name=(value, check)``), checked and broadcast
  to one batch shape as by the tilted policies (:func:`klrl._src.checks.logp_reward`)."""
  return tuple(_checks.logp_reward(where, logp, reward, **params))


def points(where, name, x, logp, reward, **known):
  """Per-row points ``x`` (finite) and the rows they are taken on, broadcast to one batch shape.

  ``logp`` and ``reward`` may come from an earlier stage (the KL-RL solution at ``delta``):
  ``known`` gives the per-row arguments already broadcast into them, by name, so that a shape
  error names every argument the batch shape came from. Returns ``logp, reward, x``.
  """
  x = _checks.finite(where, name, _checks.floating(where, name, x)).astype(logp.dtype)
  logp, reward, *rest = _checks.broadcast(where, {"logp": logp, "reward": reward}, {**known, name: x})
  return logp, reward, rest[-1]


def concrete(x) -> bool:
  """Whether ``x`` has values now (it is not traced by ``jit``/``vmap``)."""
  return not isinstance(x, jax.core.Tracer)


def count(where, name, x, low):
  """A static count: a Python int ``>= low``."""
  if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < low:
    raise _checks.InputError(f"{where}: argument '{name}' must be a Python int >= {low}, got {x!r}")
  return int(x)


def unpack(where, lat, lattice_type):
  """The fields of a lattice law (a tuple, which the public wrapper would turn into one array).

  ``lattice_type`` is :class:`klrl.memoryless.Lattice`; anything else is refused.
  """
  if not isinstance(lat, lattice_type):
    raise _checks.InputError(f"{where}: argument 'lat' must be a klrl.memoryless.Lattice (see lattice()), got "
                             f"{type(lat).__name__}")
  return tuple(lat)


def check_lattice(where, log_mass, *rest):
  """The fields of a lattice law: log-probabilities over the last axis, the rest per row."""
  log_mass = _checks.log_probs(where, "lat", _checks.floating(where, "lat", log_mass, 1))
  batch = log_mass.shape[:-1]
  return (log_mass,) + tuple(jnp.broadcast_to(_checks.floating(where, "lat", a), batch).astype(log_mass.dtype)
                             for a in rest)
