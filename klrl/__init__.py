"""klrl: a JAX-accelerated, differentiable simulator of the theory of KL-regularised RL for
language models."""
from importlib import metadata as _metadata

try:
  __version__ = _metadata.version("klrl")
except _metadata.PackageNotFoundError:   # a checkout on sys.path, not installed
  __version__ = "0+unknown"

from klrl import (bon, chains, data, divergences, instances, memoryless, problems, rlvr, sweep, tilted,  # noqa: E402
                  train)
from klrl._info import info  # noqa: E402
from klrl._src.checks import InputError  # noqa: E402

__all__ = ["InputError", "bon", "chains", "data", "divergences", "info", "instances", "memoryless", "problems", "rlvr",
           "sweep", "tilted", "train"]
