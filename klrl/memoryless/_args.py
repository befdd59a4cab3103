"""Argument checks shared by the modules of :mod:`klrl.memoryless`.

Every public function of the package names itself ``klrl.memoryless.<name>`` in its messages,
whichever module defines it.
"""
from __future__ import annotations

import functools

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
  if fn is None:
    return functools.partial(public, static=static, name=name)
  fn.__module__ = PACKAGE
  if name is not None:
    fn.__name__ = fn.__qualname__ = name
  return _checks.public(fn, static=static)


def inputs(where, logp, reward):
  """``logp`` and ``reward``, checked and broadcast as by the tilted policies."""
  return tuple(_checks.logp_reward(where, logp, reward))


def points(where, name, logp, reward, x):
  """Broadcasts per-row points ``x`` against the batch axes; returns the broadcast triple."""
  x = _checks.finite(where, name, _checks.floating(where, name, x)).astype(logp.dtype)
  try:
    shape = jnp.broadcast_shapes(logp.shape[:-1], x.shape)
  except ValueError:
    raise _checks.InputError(f"{where}: argument '{name}' has shape {x.shape}, which does not broadcast "
                             f"with the batch shape {logp.shape[:-1]}") from None
  v = logp.shape[-1]
  return (jnp.broadcast_to(logp, shape + (v,)), jnp.broadcast_to(reward, shape + (v,)),
          jnp.broadcast_to(x, shape))


def row(where, name, x, batch, dtype, check):
  """A per-row parameter broadcast to ``batch``, cast to ``dtype`` and passed through ``check``."""
  return check(where, name, _checks.batch_param(where, name, x, batch, dtype))


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
