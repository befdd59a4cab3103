"""Test configuration: float64 for theory tests, silent rank promotion is an error.

The test processes (xdist workers, and the ``klrl`` subprocesses some tests start) share one
persistent compilation cache, so a function compiled by one of them is loaded by the others:
``$JAX_COMPILATION_CACHE_DIR`` if set, else a folder in the system's temporary directory.
Results do not depend on it (the cache holds XLA's executables, keyed by the program).
"""
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")  # one thread per xdist worker
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "klrl-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

from hypothesis import settings  # noqa: E402

settings.register_profile("klrl", max_examples=40, deadline=None, derandomize=True)
settings.load_profile("klrl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from klrl._src import rows as _rows  # noqa: E402


@pytest.fixture
def row_blocks(monkeypatch):
  """``check(fn, *args, rows_per_block)``: ``fn`` on the CPU's row blocks equals ``fn`` whole.

  Evaluates ``fn`` once on the whole batch, then again with blocks of ``rows_per_block`` rows
  (``klrl._src.rows``), checks that the trace really takes the blocked branch, and compares every
  output leaf.
  """
  def check(fn, *args, rows_per_block, rtol=1e-13, atol=1e-15):
    whole = jax.jit(fn)(*args)
    choices = str(jax.make_jaxpr(fn)(*args)).count("platform_index")
    monkeypatch.setattr(_rows, "rows_per_block", lambda row_bytes: rows_per_block)
    jax.clear_caches()
    try:
      assert str(jax.make_jaxpr(fn)(*args)).count("platform_index") > choices   # the CPU branch of klrl._src.rows
      blocked = jax.jit(fn)(*args)
    finally:
      monkeypatch.undo()
      jax.clear_caches()
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(blocked), strict=True):
      np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
  return check
