"""Sweeps at scale: configuration files and the experiments a sweep runs.

Experiments (what is computed at a grid point) are registered in :mod:`klrl.sweep.experiments`;
configuration files are read and checked by :mod:`klrl.sweep.config`.
"""
from klrl.sweep import config, experiments, grid
from klrl.sweep.config import Config, ConfigError, load
from klrl.sweep.experiments import EXPERIMENTS, Param, experiment

__all__ = ["config", "experiments", "grid", "Config", "ConfigError", "load", "EXPERIMENTS", "Param", "experiment"]
