"""Row reductions evaluated in blocks of rows on the CPU.

XLA:CPU computes a reduction over the last axis fastest when the elementwise work feeding it
is fused into it. When several reductions share one elementwise intermediate (the weights
``p e^{lam r}`` feeding four moments, say), that intermediate is written out whole, and a
fresh ``B x V`` buffer costs more than the arithmetic (page faults on every call). Evaluating
the same function on blocks of rows keeps each intermediate a few MiB, in cache and in reused
memory: at ``B = 64, V = 2^17`` the moments of the tilt take a third of the time. On other
platforms the function runs on the whole batch at once.
"""
from __future__ import annotations

import math

import jax
from jax import lax

from klrl._src import checks

BLOCK_BYTES = 1 << 20   # per-block intermediates of about 1 MiB


def rows_per_block(row_bytes: int) -> int:
  """About ``BLOCK_BYTES`` per row-sized array, and two rows where one row is at most twice that
  (on a single row of ``2^18`` float64 entries XLA:CPU's float32 reductions ran 4-5x slower per
  entry); one row at a time beyond, where two rows no longer share the cache well.

  Smaller blocks also wait less for their slowest row: ``kl_constrained`` iterates until every
  row of a block has converged (at ``64 x 2^16`` two rows per block took 50 ms, four 58 ms)."""
  if row_bytes > 2 * BLOCK_BYTES:
    return 1
  return max(2, BLOCK_BYTES // max(1, row_bytes))


def by_rows(fn, batch: tuple[int, ...], width: int, itemsize: int, *args):
  """``fn(*args)``, evaluated on blocks of rows on the CPU.

  Args:
    fn: a function of arrays whose leading axes are ``batch``, returning such arrays; it must
      treat rows independently.
    batch: the batch shape shared by every leaf of ``args``.
    width: length of the longest row (the last axis of the largest argument).
    itemsize: bytes per element.
    *args: pytrees of arrays with leading axes ``batch``.

  The blocks' outputs are stacked into a buffer that XLA fills with zeros first: return per-row
  values, and compute outputs as large as the inputs afterwards, in one pass over the whole batch.
  """
  n = math.prod(batch)
  target = rows_per_block(width * itemsize)
  if n <= target:
    return fn(*args)
  block = max(d for d in range(1, target + 1) if n % d == 0)   # blocks of equal size
  if block == 1:   # one row at a time (a block axis of size 1 would make XLA copy the inputs)
    run = lambda a: jax.tree.map(lambda y: y[0], fn(*jax.tree.map(lambda x: x[None], a)))
    split = lambda x: x.reshape((n,) + x.shape[len(batch):])
  else:
    run = lambda a: fn(*a)
    split = lambda x: x.reshape((n // block, block) + x.shape[len(batch):])

  def blocked(*args):
    out = lax.map(run, jax.tree.map(split, args))
    return jax.tree.map(lambda x: x.reshape(batch + x.shape[1 + (block > 1):]), out)

  return lax.platform_dependent(*args, cpu=blocked, default=fn)


def checked(where: str, fn, probabilities: tuple[str, ...], finite: tuple[str, ...], *args):
  """``fn(*args)`` by :func:`by_rows`, with the inputs' value checks folded into the same pass.

  ``args[0]`` is a ``(..., V)`` array whose batch axes every argument shares. ``fn`` returns
  ``(out, totals, probes)``: per row, ``totals[i] = sum(exp(x))`` of the
  log-probability argument named ``probabilities[i]`` and ``probes[j] = sum(0 * x)`` of the
  argument named ``finite[j]`` (NaN exactly when a value is not finite); a single name may come
  with a single array. The checks hold the per-row values only (a check on a whole ``B x V``
  array makes XLA copy it): return per-row results and form outputs as large as the inputs
  afterwards.

  Returns:
    ``out``, tied to the checks (:mod:`klrl._src.checks`).
  """
  first = args[0]
  out, totals, probes = by_rows(fn, first.shape[:-1], first.shape[-1], first.dtype.itemsize, *args)
  as_tuple = lambda x: x if isinstance(x, (tuple, list)) else (x,)
  for name, total in zip(probabilities, as_tuple(totals), strict=True):
    out = checks.normalised(where, name, out, total)
  for name, probe in zip(finite, as_tuple(probes), strict=True):
    out = checks.finite_probe(where, name, out, probe)
  return out
