"""Sweeps at scale: configuration files, sharded and multi-host execution, resumable results.

``klrl sweep CONFIG`` is :func:`klrl.sweep.engine.sweep` on :func:`klrl.sweep.config.load`;
``klrl merge`` is :func:`klrl.sweep.store.merge`; ``klrl plot`` is :func:`klrl.sweep.plot.plot`.
Experiments (what is computed at a grid point) are registered in
:mod:`klrl.sweep.experiments`. See the README section "Sweeps" for the configuration format.
"""
from klrl.sweep import config, engine, experiments, grid, store
from klrl.sweep.config import Config, ConfigError, load
from klrl.sweep.engine import Summary, sweep
from klrl.sweep.experiments import EXPERIMENTS, Param, experiment
from klrl.sweep.store import SweepError, merge

__all__ = ["config", "engine", "experiments", "grid", "store", "Config", "ConfigError", "load", "Summary", "sweep",
           "EXPERIMENTS", "Param", "experiment", "SweepError", "merge"]
