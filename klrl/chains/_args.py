"""Argument checks shared by the modules of :mod:`klrl.chains`.

Shapes are checked while tracing and values inside the computation, through
:mod:`klrl._src.checks`; every message names the public function and the argument.
"""
from __future__ import annotations


import jax.numpy as jnp

from klrl._src import checks as _checks


def public(fn=None, *, static: tuple[str, ...] = ()):
  """:func:`klrl._src.checks.public` for a function exported as ``klrl.chains.<name>``."""
  return _checks.public(fn, static=static, module="klrl.chains")


def log_kernel(where, name, x, values=True):
  """A log kernel ``(..., M, M)``; its rows are checked to be log-probabilities unless ``values`` is False."""
  x = _checks.floating(where, name, x, 2)
  _checks.square(where, name, x)
  return _checks.log_kernel(where, name, x) if values else x


def law(where, name, x, m):
  """An array over the ``m`` states on its last axis."""
  x = _checks.floating(where, name, x, 1)
  if x.shape[-1] != m:
    _checks._fail(where, name, f"has {x.shape[-1]} states on its last axis but the kernel has {m} (shape {x.shape})")
  return x


def batch(where, name, shape, *shapes):
  """The broadcast of the batch ``shapes``; ``name`` (of ``shape``) is blamed when they do not broadcast."""
  try:
    return tuple(jnp.broadcast_shapes(*shapes))
  except ValueError:
    _checks._fail(where, name, f"has shape {shape}, whose batch axes do not broadcast with the kernel's")


def target(where, name, mask, m):
  """A boolean mask over the ``m`` states."""
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    _checks._fail(where, name, f"must be a boolean mask over the states, got dtype {mask.dtype}")
  if mask.ndim < 1 or mask.shape[-1] != m:
    _checks._fail(where, name, f"must have {m} states on its last axis, got shape {mask.shape}")
  return mask


def potential(where, name, v, logk):
  """A finite potential ``V`` over the states of ``logk``, in its dtype."""
  v = law(where, name, v, logk.shape[-1])
  batch(where, name, v.shape, v.shape[:-1], logk.shape[:-2])
  return _checks.finite(where, name, v).astype(logk.dtype)


def pairwise(where, reward, m):
  """A reward ``(M,)`` means ``Phi(s')``; ``(..., M, M)`` or ``(..., 1, M)`` is ``r(s, s')``."""
  reward = _checks.floating(where, "reward", reward, 1)
  if reward.ndim == 1:
    reward = reward[None, :]
  if reward.shape[-1] != m or reward.shape[-2] not in (1, m):
    _checks._fail(where, "reward", f"must be r(s, s') of shape (..., {m}, {m}), or Phi(s') of shape ({m},) "
                  f"or (..., 1, {m}); got {reward.shape}")
  return reward
