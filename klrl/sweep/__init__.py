"""Sweeps at scale: configuration files, sharded and multi-host execution, resumable results.

``klrl sweep CONFIG`` is :func:`klrl.sweep.engine.sweep` on :func:`klrl.sweep.config.load`;
``klrl merge`` is :func:`klrl.sweep.store.merge`; ``klrl plot`` is :func:`klrl.sweep.plot.plot`.
Experiments (what is computed at a grid point) are registered in
:mod:`klrl.sweep.experiments`. The configuration format and multi-host runs: docs/how-to/sweeps.md.

:func:`load_results` reads a finished sweep as a :class:`pandas.DataFrame` with typed columns
(``int64``, ``float64``, ``bool``, strings), from the ``results.parquet`` the merge writes beside
``results.csv`` or from the CSV itself (:mod:`klrl.sweep.frames`; ``pip install 'klrl[frames]'``)::

    df = klrl.sweep.load_results("runs/sweeps/frontier")
"""
from klrl.sweep import config, engine, experiments, frames, grid, store
from klrl.sweep.config import Config, ConfigError, load
from klrl.sweep.engine import Summary, sweep
from klrl.sweep.experiments import EXPERIMENTS, Limit, Param, experiment
from klrl.sweep.frames import load_results
from klrl.sweep.store import SweepError, merge

__all__ = ["config", "engine", "experiments", "frames", "grid", "store", "Config", "ConfigError", "load", "Summary",
           "sweep", "EXPERIMENTS", "Limit", "Param", "experiment", "load_results", "SweepError", "merge"]
