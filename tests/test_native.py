"""The native CPU kernels (klrl._native) against brute-force sums and against the XLA path."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from klrl import _native, problems
from klrl import tilted as T

NATIVE = _native.available()
needs_native = pytest.mark.skipif(not NATIVE, reason=f"native kernels: {_native.status()}")


def test_kernels_build_where_a_compiler_exists():
  if os.environ.get("KLRL_NATIVE") == "0" or _native._compiler() is None:
    pytest.skip("no C++ compiler, or KLRL_NATIVE=0")
  assert NATIVE, _native.status()


def test_disabled_by_environment():
  code = "from klrl import _native; print(_native.available(), _native.status())"
  out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "KLRL_NATIVE": "0"},
                       capture_output=True, text=True, check=True).stdout
  assert out.strip() == "False disabled by KLRL_NATIVE=0"


@pytest.fixture
def xla_only():
  """Runs klrl with the XLA expressions in place of the native kernels (fresh traces)."""
  jax.clear_caches()
  with _native.disabled():
    yield
  jax.clear_caches()


_sums = jax.jit(T._power_sums, static_argnames="single")


def _brute(logp, reward, lam, single):
  """The sums in float64 NumPy; with ``single`` the weights and their products are float32 (as
  in the kernel) and only their sums are exact."""
  lp, r = np.asarray(logp), np.asarray(reward)
  l_max, r_max = lp.max(-1, keepdims=True), r.max(-1, keepdims=True)
  s = r - r_max
  x = (lp - l_max) + np.asarray(lam)[..., None] * s
  if single:
    t, s32 = np.exp(x.astype(np.float32)), s.astype(np.float32)
    prods = [t, t * s32]
    prods += [prods[-1] * s32, prods[-1] * s32 * s32]
    return [p.astype(np.float64).sum(-1) for p in prods]
  t = np.exp(x)
  lp_f = np.maximum(lp, np.finfo(np.float64).min)
  return [t.sum(-1), (t * s).sum(-1), (t * s * s).sum(-1), (t * s ** 3).sum(-1),
          np.where(s < 0, t, 0).sum(-1), (t * lp_f).sum(-1)]


@needs_native
@pytest.mark.parametrize("batch, width", [((), 1), ((3,), 7), ((2, 3), 8192), ((2,), 8193), ((1,), 20000)])
@pytest.mark.parametrize("single", [False, True])
def test_power_sums_against_brute_force(batch, width, single):
  """Chunk boundaries (8192 entries), one row, many axes; zero-mass entries, ties at the top, and
  ``lam`` from 0 to weights that underflow."""
  n = int(np.prod(batch))
  logp, reward = problems.random_problem(jax.random.PRNGKey(width), n, width, ties=min(width, 2),
                                         zero_mass=width // 3)
  logp, reward = logp.reshape(batch + (width,)), reward.reshape(batch + (width,))
  lam = jnp.asarray(np.geomspace(1e-3, 1e3, n).reshape(batch)) if n > 1 else jnp.full(batch, 0.0)
  got = _sums(logp, reward, jnp.max(logp, -1), jnp.max(reward, -1), lam, single=single)
  want = _brute(logp, reward, lam, single)
  for k, (g, w) in enumerate(zip(got[: 4 if single else 6], want)):
    np.testing.assert_allclose(g, w, rtol=2e-6 if single else 1e-13, atol=0, err_msg=f"sum {k}")
  if single:
    assert np.all(np.asarray(got[4]) == 0) and np.all(np.asarray(got[5]) == 0)


@needs_native
@pytest.mark.parametrize("single", [False, True])
def test_exponential_to_a_few_ulps(single):
  """One-entry rows give ``exp(x)`` itself: relative error within 2 (float64) or 3 (float32) units
  of the last place against NumPy's correctly rounded ``exp``; 0 below the smallest normal number
  and for ``-inf``."""
  low = -87.0 if single else -708.0
  x = np.concatenate([np.linspace(low, 0.0, 200_001), np.random.default_rng(0).uniform(low, 0, 100_000)])
  lp = jnp.asarray(x)[:, None]
  zeros = jnp.zeros(len(x))
  got = np.asarray(_sums(lp, jnp.zeros_like(lp), zeros, zeros, zeros, single=single)[0])
  dtype = np.float32 if single else np.float64
  want = np.exp(x.astype(dtype)).astype(np.float64)
  ulp = np.spacing(want.astype(dtype)).astype(np.float64)
  assert np.max(np.abs(got - want) / ulp) <= (3 if single else 2)
  tail = jnp.asarray([-jnp.inf, low - 0.5, low - 50.0])[:, None]
  under = _sums(tail, jnp.zeros_like(tail), jnp.zeros(3), jnp.zeros(3), jnp.zeros(3), single=single)[0]
  assert np.all(np.asarray(under) == 0)


@needs_native
def test_derivatives_come_from_the_xla_expression():
  logp, reward = problems.random_problem(jax.random.PRNGKey(5), 2, 50)
  l_max, r_max = jnp.max(logp, -1), jnp.max(reward, -1)
  f = lambda lp, r, lam: jnp.stack(T._power_sums(lp, r, l_max, r_max, lam)[:4])
  check_grads(f, (logp, reward, jnp.array([0.5, 3.0])), order=1, modes=("fwd", "rev"))


def _solution(logp, reward, delta):
  c = jax.jit(T.kl_constrained.__wrapped__)(logp, reward, delta)
  grad = jax.jit(jax.grad(lambda lp, d: jnp.sum(T.kl_constrained(lp, reward, d).mean_reward), (0, 1)))(logp, delta)
  batched = jax.jit(jax.vmap(lambda lp, d: T.kl_constrained(lp, reward, d).lam))(logp[None], delta[None])[0]
  return (c.log_policy, c.lam, c.kl, c.mean_reward), grad, batched


@needs_native
def test_kl_constrained_native_equals_xla(request):
  """The whole solve (float32 and float64 passes, ``V >= 4096``), its gradient and its vmap."""
  logp, reward = problems.random_problem(jax.random.PRNGKey(2), 4, 5000, ties=3, zero_mass=50)
  delta = jnp.array([1e-6, 0.3, 0.7, 0.999]) * T.max_kl(logp, reward)
  native = _solution(logp, reward, delta)
  np.testing.assert_allclose(native[0][2], delta, rtol=1e-10)
  request.getfixturevalue("xla_only")
  xla = _solution(logp, reward, delta)
  for a, b in zip(jax.tree.leaves(native), jax.tree.leaves(xla), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
