"""klrl: a JAX-accelerated, differentiable simulator of the theory of KL-regularised RL for
language models."""
from importlib import metadata as _metadata

try:
  __version__ = _metadata.version("klrl")
except _metadata.PackageNotFoundError:   # a checkout on sys.path, not installed
  __version__ = "0+unknown"

from klrl import (autoregressive, bon, chains, data, divergences, instances, markov, memoryless, problems,  # noqa: E402
                  rlvr, sweep, tilted, train)
from klrl._info import info  # noqa: E402
from klrl._src.checks import InputError  # noqa: E402

__all__ = ["InputError", "autoregressive", "bon", "chains", "data", "divergences", "info", "instances", "markov",
           "memoryless", "problems", "rlvr", "sweep", "tilted", "train"]
