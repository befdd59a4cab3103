"""Public functions run unchanged inside ``jax.shard_map`` (rows split over a device mesh).

``shard_map`` types every value by the mesh axes it varies over, and conditionals and loops
must agree on those types: a run-time input check or a loop flag built from a constant breaks
that at trace time, on a mesh of any size, so a one-device mesh is enough to test it.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from klrl import bon, chains, divergences, memoryless, problems, rlvr, tilted
from klrl._src import rows as _rows

MESH = Mesh(np.array(jax.devices()[:1]), ("rows",))
B, V = 4, tilted._PRESOLVE_MIN_V   # kl_constrained with its float32 presolve


def sharded(fn, in_specs=P("rows")):
  return jax.jit(jax.shard_map(fn, mesh=MESH, in_specs=in_specs, out_specs=P("rows")))


def kernels(reducible):
  logk = jax.nn.log_softmax(jax.random.normal(jax.random.PRNGKey(2), (B, 6, 6)), -1)
  if reducible:   # the last kernel: states {0, 1} closed, and state 5 absorbing
    k = np.exp(np.asarray(logk))
    k[-1, :2, 2:] = 0.0
    k[-1, 5] = np.eye(6)[5]
    logk = jnp.log(k / k.sum(-1, keepdims=True))
  return logk


@pytest.fixture
def blocked(monkeypatch):
  """Two rows per block, so that the CPU's row blocks (:mod:`klrl._src.rows`) are traced too."""
  monkeypatch.setattr(_rows, "rows_per_block", lambda row_bytes: 2)
  jax.clear_caches()
  yield
  monkeypatch.undo()
  jax.clear_caches()


@pytest.mark.slow
def test_row_functions_under_shard_map(blocked):
  logp, r = problems.random_problem(jax.random.PRNGKey(0), B, V)
  logq = jax.nn.log_softmax(jax.random.normal(jax.random.PRNGKey(1), (B, V)))
  delta, n = jnp.array([0.0, 0.05, 0.3, 50.0]), jnp.full(B, 4.0)
  correct = r > 0
  cases = [
      (lambda a, b, c: tilted.kl_constrained(a, b, c)._replace(iterations=None), (logp, r, delta)),
      (tilted.stats, (logp, r, n)),
      (bon.stats, (logp, r, n)),
      (lambda a, b, c: memoryless.scgf(a, b, c, c), (logp, r, delta + 0.1)),
      (divergences.kl, (logp, logq)),
      (rlvr.target_accuracy, (logp, correct, n)),
      (chains.stationary, (kernels(False),)),
      (lambda k: chains.stationary(k, "solve"), (kernels(False),)),
  ]
  for fn, args in cases:
    want, got = fn(*args), sharded(fn)(*args)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
      np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_replicated_arguments_under_shard_map():
  """Loops started from a replicated argument and stepped with a sharded one."""
  logk, target = kernels(False), jnp.arange(6) == 0
  log_p0 = jnp.log(jnp.array([0.5, 0.5, 0, 0, 0, 0]))
  for fn, args in [(chains.hitting_times, (logk, target)), (lambda k, p0: chains.evolve(k, p0, 3), (logk, log_p0))]:
    np.testing.assert_array_equal(fn(*args), sharded(fn, (P("rows"), P()))(*args))


@pytest.mark.slow
def test_input_errors_under_shard_map(blocked):
  """Inside the caller's own ``jit`` the message arrives in JAX's runtime error (klrl._checks)."""
  logp, r = problems.random_problem(jax.random.PRNGKey(0), B, V)
  with pytest.raises(jax.errors.JaxRuntimeError, match="kl_constrained: argument 'logp' is not a log-probability"):
    sharded(lambda a, b: tilted.kl_constrained(a, b, 0.1).log_policy)(logp + 1.0, r)
  with pytest.raises(jax.errors.JaxRuntimeError, match="stationary: argument 'log_kernel'.*no unique stationary law"):
    sharded(chains.stationary)(kernels(True))
  with pytest.raises(jax.errors.JaxRuntimeError, match="stationary: argument 'log_kernel'.*no unique stationary law"):
    sharded(lambda k: chains.stationary(k, "solve"))(kernels(True))
