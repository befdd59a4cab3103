"""One broadcasting rule for per-row parameters, in every module (see ``klrl/_src/checks.py``).

The batch shape of a call is the broadcast of the batch axes of the arguments over a support
(all axes but the last) and the full shapes of the per-row parameters; every output has it.
For every public function of ``klrl.tilted``, ``klrl.bon``, ``klrl.divergences``,
``klrl.memoryless`` and ``klrl.rlvr`` with a per-row parameter (annotated ``Float[Array, "..."]``):

1. one row with the parameter of shape ``(K,)`` gives batch ``(K,)``, equal to ``K`` calls with
   scalar parameters;
2. ``B`` rows with the parameter of shape ``(K, 1)`` give batch ``(K, B)``, equal to the calls on
   each row and each value;
3. a parameter of shape ``(3,)`` against ``B = 2`` rows raises ``klrl.InputError`` naming it.

``klrl.chains`` is covered by its own tests; the loops and gradients of ``klrl.train`` reduce
over prompts, so extra axes there are refused (checked at the end of this file).
"""
from __future__ import annotations

import inspect
from typing import Callable, NamedTuple

import jax
import numpy as np
import optax
import pytest

import klrl
from klrl import bon, divergences, memoryless, rlvr, tilted, train

K, B, V = 3, 2, 6
f64 = np.float64

_LOGITS = np.array([[0.3, -1.0, 0.8, 0.1, -0.4, 0.6], [-0.2, 0.9, 0.0, -1.1, 0.5, 0.2]])
LOGP = np.asarray(jax.nn.log_softmax(_LOGITS, axis=-1))
LOGQ = np.asarray(jax.nn.log_softmax(0.5 * _LOGITS[::-1] + 0.3, axis=-1))
REWARD = np.array([[0.0, 1.0, 2.0, 1.0, 3.0, 2.0], [2.0, 0.0, 1.0, 3.0, 1.0, 0.0]])   # lattice, with ties
CORRECT = np.array([[True, False, False, True, False, False], [False, True, False, False, False, True]])
LAM_GRID = np.array([0.5, 1.0, 2.5])

ROWS = {"logp": LOGP, "reward": REWARD}
BETA, DELTA, N = (f64(0.5), f64(1.0), f64(2.0)), (f64(0.05), f64(0.2), f64(0.6)), (f64(1.5), f64(3.0), f64(10.0))


class Case(NamedTuple):
  """A public function and one of its per-row parameters.

  ``call(data, value)`` calls ``fn`` with the parameter set to ``value`` (other per-row
  parameters scalars); ``data`` holds its other arguments, whose leading axis (length ``B``)
  is the batch axis, or nothing for a function of scalars only. ``fields`` are the outputs that
  carry the parameter's batch axes (default: all); ``skip`` are outputs that are not per row.
  """
  fn: Callable
  param: str
  values: tuple
  call: Callable
  data: dict
  fields: tuple | None = None
  skip: tuple = ()

  @property
  def id(self):
    return f"{self.fn.__module__}.{self.fn.__name__}:{self.param}"


def _lattice():
  return memoryless.lattice(LOGP, REWARD)


_X, _T = (f64(0.8), f64(1.5), f64(2.2)), (f64(-0.5), f64(0.3), f64(1.0))

CASES = [
    # klrl.tilted
    Case(tilted.tilt, "beta", BETA, lambda d, v: tilted.tilt(d["logp"], d["reward"], v), ROWS),
    Case(tilted.log_partition, "beta", BETA, lambda d, v: tilted.log_partition(d["logp"], d["reward"], v), ROWS),
    Case(tilted.cumulants, "lam", (f64(0.3), f64(1.0), f64(2.0)), lambda d, v: tilted.cumulants(d["logp"], d["reward"], v), ROWS),
    Case(tilted.stats, "beta", BETA, lambda d, v: tilted.stats(d["logp"], d["reward"], v), ROWS),
    Case(tilted.objective, "beta", BETA, lambda d, v: tilted.objective(d["logq"], d["logp"], d["reward"], v),
         {**ROWS, "logq": LOGQ}),
    Case(tilted.kl_constrained, "delta", DELTA, lambda d, v: tilted.kl_constrained(d["logp"], d["reward"], v), ROWS,
         skip=("iterations",)),   # the largest count over the batch
    Case(tilted.frontier, "delta", DELTA, lambda d, v: tilted.frontier(d["logp"], d["reward"], v), ROWS),
    Case(tilted.dual_frontier, "delta", DELTA, lambda d, v: tilted.dual_frontier(d["logp"], d["reward"], v, LAM_GRID), ROWS),
    # klrl.bon
    Case(bon.level_law, "n", N, lambda d, v: bon.level_law(d["logp"], v), ROWS),
    Case(bon.level_law, "log_n", (f64(0.0), f64(1.0), f64(30.0)), lambda d, v: bon.level_law(d["logp"], log_n=v), ROWS),
    Case(bon.log_policy, "n", N, lambda d, v: bon.log_policy(d["logp"], d["reward"], v), ROWS),
    Case(bon.stats, "n", N, lambda d, v: bon.stats(d["logp"], d["reward"], v), ROWS),
    Case(bon.transformed_reward, "n", N, lambda d, v: bon.transformed_reward(d["logp"], d["reward"], v), ROWS),
    Case(bon.kl_bound, "n", N, lambda d, v: bon.kl_bound(v), {}),
    Case(bon.win_rate_bound, "n", N, lambda d, v: bon.win_rate_bound(v), {}),
    Case(bon.kl_gap_bound, "n", N, lambda d, v: bon.kl_gap_bound(d["logp"], d["reward"], v), ROWS),
    Case(bon.win_rate_gap_bound, "n", N, lambda d, v: bon.win_rate_gap_bound(d["logp"], d["reward"], v), ROWS),
    Case(bon.kl_estimator, "eps", (f64(0.0), f64(0.2), f64(0.7)), lambda d, v: bon.kl_estimator(v, d["n"]),
         {"n": np.array([2.0, 7.0])}),
    Case(bon.kl_estimator, "n", N, lambda d, v: bon.kl_estimator(d["eps"], v), {"eps": np.array([0.1, 0.4])}),
    Case(bon.soft_log_policy, "n", N, lambda d, v: bon.soft_log_policy(d["logp"], d["reward"], v, f64(0.7), nodes=192), ROWS),
    Case(bon.soft_log_policy, "temperature", (f64(0.3), f64(0.7), f64(2.0)),
         lambda d, v: bon.soft_log_policy(d["logp"], d["reward"], f64(3.0), v, nodes=192), ROWS),
    Case(bon.against_frontier, "n", N, lambda d, v: bon.against_frontier(d["logp"], d["reward"], v), ROWS),
    Case(bon.bonbon, "c", (f64(-2.0), f64(0.1), f64(3.0)), lambda d, v: bon.bonbon(v), {}),
    # klrl.divergences
    Case(divergences.bernoulli_kl, "a", (f64(0.0), f64(0.3), f64(0.9)), lambda d, v: divergences.bernoulli_kl(v, d["b"]),
         {"b": np.array([0.2, 0.6])}),
    Case(divergences.bernoulli_kl, "b", (f64(0.1), f64(0.5), f64(0.95)), lambda d, v: divergences.bernoulli_kl(d["a"], v),
         {"a": np.array([0.2, 0.6])}),
    Case(divergences.bernoulli_kl_logits, "x", (f64(-3.0), f64(0.2), f64(4.0)),
         lambda d, v: divergences.bernoulli_kl_logits(v, d["y"]), {"y": np.array([-1.0, 2.0])}),
    Case(divergences.bernoulli_kl_logits, "y", (f64(-3.0), f64(0.2), f64(4.0)),
         lambda d, v: divergences.bernoulli_kl_logits(d["x"], v), {"x": np.array([-1.0, 2.0])}),
    Case(divergences.binary_entropy, "a", (f64(0.0), f64(0.3), f64(0.9)), lambda d, v: divergences.binary_entropy(v), {}),
    Case(divergences.renyi_divergence, "alpha", (f64(0.5), f64(1.0), f64(2.0)),
         lambda d, v: divergences.renyi_divergence(d["logp"], d["logq"], v), {"logp": LOGP, "logq": LOGQ}),
    Case(divergences.renyi_cross_entropy, "alpha", (f64(0.5), f64(1.0), f64(2.0)),
         lambda d, v: divergences.renyi_cross_entropy(d["logp"], d["logq"], v), {"logp": LOGP, "logq": LOGQ}),
    # klrl.memoryless
    Case(memoryless.cgf, "t", _T, lambda d, v: memoryless.cgf(d["logp"], d["reward"], v), ROWS),
    Case(memoryless.rate_function, "x", _X, lambda d, v: memoryless.rate_function(d["logp"], d["reward"], v), ROWS),
    Case(memoryless.tilted_rate_function, "delta", DELTA,
         lambda d, v: memoryless.tilted_rate_function(d["logp"], d["reward"], v, _X[1]), ROWS),
    Case(memoryless.tilted_rate_function, "x", _X,
         lambda d, v: memoryless.tilted_rate_function(d["logp"], d["reward"], DELTA[1], v), ROWS),
    Case(memoryless.scgf, "delta", DELTA, lambda d, v: memoryless.scgf(d["logp"], d["reward"], v, _T[1]), ROWS),
    Case(memoryless.scgf, "t", _T, lambda d, v: memoryless.scgf(d["logp"], d["reward"], DELTA[1], v), ROWS),
    Case(memoryless.scgf_renyi, "delta", DELTA, lambda d, v: memoryless.scgf_renyi(d["logp"], d["reward"], v, _T[1]), ROWS),
    Case(memoryless.scgf_renyi, "t", _T, lambda d, v: memoryless.scgf_renyi(d["logp"], d["reward"], DELTA[1], v), ROWS),
    Case(memoryless.scaled_cumulants, "delta", DELTA, lambda d, v: memoryless.scaled_cumulants(d["logp"], d["reward"], v, 3),
         ROWS),
    # large_deviations evaluates at separate points x and t: each output has the batch axes of
    # the arguments it depends on.
    Case(memoryless.large_deviations, "delta", DELTA,
         lambda d, v: memoryless.large_deviations(d["logp"], d["reward"], v, _X[1], _T[1]), ROWS),
    Case(memoryless.large_deviations, "x", _X,
         lambda d, v: memoryless.large_deviations(d["logp"], d["reward"], DELTA[1], v, _T[1]), ROWS,
         fields=("rate", "tilted_rate")),
    Case(memoryless.large_deviations, "t", _T,
         lambda d, v: memoryless.large_deviations(d["logp"], d["reward"], DELTA[1], _X[1], v), ROWS,
         fields=("cgf", "scgf", "scgf_renyi")),
    Case(memoryless.bon_vs_kl, "delta", DELTA, lambda d, v: memoryless.bon_vs_kl(d["logp"], d["reward"], v, 2), ROWS),
    Case(memoryless.bon_vs_kl_lattice, "delta", DELTA, lambda d, v: memoryless.bon_vs_kl_lattice(d["lat"], v, 2),
         {"lat": _lattice()}),
    Case(memoryless.bon_vs_kl_enumerated, "delta", DELTA,
         lambda d, v: memoryless.bon_vs_kl_enumerated(d["logp"], d["reward"], v, 2), ROWS),
    # klrl.rlvr
    Case(rlvr.target_accuracy, "beta", BETA, lambda d, v: rlvr.target_accuracy(d["logp"], d["correct"], v),
         {"logp": LOGP, "correct": CORRECT}),
    Case(rlvr.log_partition, "beta", BETA, lambda d, v: rlvr.log_partition(d["logp"], d["correct"], v),
         {"logp": LOGP, "correct": CORRECT}),
    Case(rlvr.optimal_policy, "beta", BETA, lambda d, v: rlvr.optimal_policy(d["logp"], d["correct"], v),
         {"logp": LOGP, "correct": CORRECT}),
    Case(rlvr.suboptimality_gap, "beta", BETA, lambda d, v: rlvr.suboptimality_gap(d["logq"], d["logp"], d["correct"], v),
         {"logp": LOGP, "logq": LOGQ, "correct": CORRECT}),
    Case(rlvr.natural_gradient_flow, "beta", BETA,
         lambda d, v: rlvr.natural_gradient_flow(d["logp"], d["correct"], v, f64(1.0)), {"logp": LOGP, "correct": CORRECT}),
    Case(rlvr.natural_gradient_flow, "t", (f64(0.1), f64(1.0), f64(3.0)),
         lambda d, v: rlvr.natural_gradient_flow(d["logp"], d["correct"], BETA[1], v), {"logp": LOGP, "correct": CORRECT}),
    Case(rlvr.flow, "beta", BETA, lambda d, v: rlvr.flow(d["logp"], d["correct"], v, f64(1.0)),
         {"logp": LOGP, "correct": CORRECT}),
    Case(rlvr.flow, "t", (f64(0.1), f64(1.0), f64(3.0)), lambda d, v: rlvr.flow(d["logp"], d["correct"], BETA[1], v),
         {"logp": LOGP, "correct": CORRECT}),
]

IDS = [c.id for c in CASES]
WITH_ROWS = [c for c in CASES if c.data]


def _row(data, b):
  return jax.tree.map(lambda a: a[b], data)


def _first(data):
  return _row(data, 0) if data else {}


def _leaves(out) -> dict:
  """The outputs of a call by field name (one unnamed field for a plain array)."""
  fields = out._asdict() if hasattr(out, "_asdict") else {"": out}
  return {name: value for name, value in fields.items() if value is not None}


def _check(case, got, refs, batch):
  """``got``'s fields against ``refs`` (the scalar calls, indexed like ``batch``)."""
  got = _leaves(got)
  ref = {name: np.array([[np.asarray(_leaves(r)[name]) for r in row] for row in refs]) for name in got}
  for name, value in got.items():
    if name in case.skip:
      continue
    value, expected = (np.asarray(x, float) if np.asarray(x).dtype == bool else np.asarray(x) for x in (value, ref[name]))
    expected = expected.reshape(batch + expected.shape[2:])
    if case.fields is not None and name not in case.fields:   # independent of the parameter
      expected = expected[0]
    assert value.shape == expected.shape, (name, value.shape, expected.shape)
    np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-15, err_msg=f"{case.id} field {name!r}")


# The memoryless functions compile large programs: their cases run in the slow tier.
SLOW_CASES = [pytest.param(c, marks=pytest.mark.slow) if c.fn.__module__.startswith("klrl.memoryless") else c
              for c in CASES]


@pytest.mark.parametrize("case", SLOW_CASES, ids=IDS)
def test_one_row_with_a_vector_of_parameters(case):
  data = _first(case.data)
  got = case.call(data, np.array(case.values))
  refs = [[case.call(data, v)] for v in case.values]
  _check(case, got, refs, (K,))


@pytest.mark.parametrize("case", SLOW_CASES, ids=IDS)
def test_rows_with_a_column_of_parameters(case):
  rows = B if case.data else 1
  data = case.data if case.data else {}
  got = case.call(data, np.array(case.values)[:, None])
  refs = [[case.call(_row(data, b) if data else {}, v) for b in range(rows)] for v in case.values]
  _check(case, got, refs, (K, rows))


@pytest.mark.parametrize("case", WITH_ROWS, ids=[c.id for c in WITH_ROWS])
def test_a_parameter_that_does_not_broadcast_is_named(case):
  assert len(case.values) == 3 and B == 2
  with pytest.raises(klrl.InputError, match=rf"\.{case.fn.__name__}: argument '.*broadcast") as info:
    case.call(case.data, np.array(case.values))
  assert f"'{case.param}'" in str(info.value)


SUPPORT_CASES = [(c, k) for c in WITH_ROWS for k, v in c.data.items()
                 if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[-1] == V
                 and c.fn is not bon.level_law]        # its rows are reward levels built from the data


@pytest.mark.parametrize("case,key", SUPPORT_CASES, ids=[f"{c.id}:{k}" for c, k in SUPPORT_CASES])
def test_arrays_over_supports_of_different_lengths_are_named(case, key):
  data = dict(case.data)
  data[key] = np.asarray(data[key])[..., :-1]
  with pytest.raises(klrl.InputError, match=rf"\.{case.fn.__name__}: argument '") as info:
    case.call(data, case.values[0])
  assert f"'{key}'" in str(info.value)


def _per_row_parameters():
  """``(function, parameter)`` for every public function with a parameter annotated ``Float[Array, "..."]``."""
  found = set()
  for module in (tilted, bon, divergences, memoryless, rlvr):
    for name in module.__all__:
      fn = getattr(module, name)
      if isinstance(fn, type) or not callable(fn):
        continue
      for param in inspect.signature(fn).parameters.values():
        if "Float[Array, '...']" in str(param.annotation).replace('"', "'"):
          found.add((fn, param.name))
  return found


def test_the_table_covers_every_per_row_parameter():
  # klrl.chains has its own broadcasting tests; klrl.train reduces over prompts (below).
  table = {(c.fn, c.param) for c in CASES}
  found = _per_row_parameters()
  names = lambda s: sorted(f"{f.__module__}.{f.__name__}:{p}" for f, p in s)
  assert not found - table, f"missing from the table: {names(found - table)}"
  assert not table - found, f"not per-row parameters: {names(table - found)}"


def test_scalar_functions_name_both_arguments_that_do_not_broadcast():
  with pytest.raises(klrl.InputError, match=r"klrl.divergences.bernoulli_kl: argument 'b' has shape \(2,\), which does "
                                            r"not broadcast with the batch axes \(3,\) of 'a'"):
    divergences.bernoulli_kl(np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.5]))


def test_training_loops_refuse_extra_axes_and_point_to_vmap():
  logp, correct = LOGP, CORRECT
  with pytest.raises(klrl.InputError, match=r"klrl.train.policy_gradient: argument 'beta' .*\(3, 2\).*jax.vmap"):
    train.policy_gradient(logp, correct, np.ones((K, B)), optax.sgd(0.1), 2)
  with pytest.raises(klrl.InputError, match=r"klrl.train.kl_constrained_training: argument 'multiplier' .*jax.vmap"):
    train.kl_constrained_training(logp, correct, f64(0.1), optax.sgd(0.1), optax.sgd(0.1), 2,
                                  multiplier=np.ones((K, 1)))
