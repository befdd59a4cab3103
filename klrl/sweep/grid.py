"""Grid expansion and the chunk plan of a sweep.

The grid is the cross product of the configuration's factors (single axes and zip groups) in
file order, the first factor varying slowest; point ``i`` is the ``i``-th element of that
product. The plan groups points by the values of their swept *static* parameters (each group
is one compiled kernel) and cuts every group into chunks of at most ``chunk_size`` points.
Chunk ids are consecutive and depend only on the configuration, so every process of a
multi-host sweep and every restart of an interrupted one agree on them.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from klrl.sweep.config import Config, _factors
from klrl.sweep.experiments import EXPERIMENTS

__all__ = ["Grid", "Chunk", "expand", "plan"]


class Grid(NamedTuple):
  """The expanded grid.

  Attributes:
    size: number of points.
    columns: for each swept parameter, its value at every point.
    index: for each swept parameter, the position of that value on its axis.
  """
  size: int
  columns: dict[str, np.ndarray]
  index: dict[str, np.ndarray]


class Chunk(NamedTuple):
  """Points computed by one call of a compiled kernel.

  Attributes:
    id: position in the plan.
    static: values of the swept static parameters shared by the chunk's points.
    points: grid indices, increasing.
  """
  id: int
  static: dict[str, Any]
  points: np.ndarray


def expand(cfg: Config) -> Grid:
  """Every grid point of a configuration, as one column per swept parameter."""
  factors = _factors(cfg)
  shape = tuple(len(cfg.axes[f[0]]) for f in factors)
  size = int(np.prod(shape, dtype=np.int64))
  positions = np.unravel_index(np.arange(size), shape) if factors else ()
  columns, index = {}, {}
  for group, pos in zip(factors, positions):
    for name in group:
      columns[name] = np.asarray(cfg.axes[name])[pos]
      index[name] = pos
  return Grid(size, columns, index)


def plan(cfg: Config, grid: Grid) -> list[Chunk]:
  """The chunks of a sweep: points grouped by static parameters, in grid order within a group."""
  params = EXPERIMENTS[cfg.experiment].params
  static = [a for a in cfg.axes if params[a].static]
  if static:
    keys = np.stack([grid.index[a] for a in static], axis=1)
    _, group = np.unique(keys, axis=0, return_inverse=True)
    group = group.reshape(-1)
  else:
    group = np.zeros(grid.size, np.int64)
  order = np.argsort(group, kind="stable")
  chunks: list[Chunk] = []
  for points in np.split(order, np.cumsum(np.bincount(group))[:-1]):
    values = {a: cfg.axes[a][grid.index[a][points[0]]] for a in static}
    for start in range(0, len(points), cfg.chunk_size):
      chunks.append(Chunk(len(chunks), values, points[start:start + cfg.chunk_size]))
  return chunks
