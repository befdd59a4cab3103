"""klrl: a JAX-accelerated, differentiable simulator of the theory of KL-regularised RL for
language models. See README.md and SPEC section numbers cited in each module."""
from klrl import bon, chains, data, divergences, memoryless, problems, rlvr, sweep, tilted, train
from klrl._checks import InputError

__version__ = "0.1.0"
__all__ = ["InputError", "bon", "chains", "data", "divergences", "memoryless", "problems", "rlvr", "sweep", "tilted",
           "train"]
