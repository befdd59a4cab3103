"""Test configuration: float64 for theory tests, silent rank promotion is an error."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")  # one thread per xdist worker

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

from hypothesis import settings  # noqa: E402

settings.register_profile("klrl", max_examples=40, deadline=None, derandomize=True)
settings.load_profile("klrl")
