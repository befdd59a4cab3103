"""klrl.divergences against direct NumPy/mpmath evaluation, including zero-mass entries."""
import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest

from klrl import InputError, divergences as D

RNG = np.random.default_rng(0)


def _logp(shape, zeros=0):
  x = RNG.normal(size=shape) * 2
  if zeros:
    x[..., :zeros] = -np.inf
  return np.asarray(jax.nn.log_softmax(jnp.asarray(x), axis=-1))


def _ref_kl(p, q):
  return sum(mp.mpf(a) * mp.log(mp.mpf(a) / mp.mpf(b)) for a, b in zip(p, q) if a > 0)


def test_kl_entropy_cross_entropy_against_mpmath():
  lp, lq = _logp((5, 7), zeros=2), _logp((5, 7))
  p, q = np.exp(lp), np.exp(lq)
  for i in range(5):
    assert float(D.kl(lp[i], lq[i])) == pytest.approx(float(_ref_kl(p[i], q[i])), rel=1e-12, abs=1e-15)
    h = -sum(mp.mpf(a) * mp.log(mp.mpf(a)) for a in p[i] if a > 0)
    assert float(D.entropy(lp[i])) == pytest.approx(float(h), rel=1e-12)
    ce = -sum(mp.mpf(a) * mp.log(mp.mpf(b)) for a, b in zip(p[i], q[i]) if a > 0)
    assert float(D.cross_entropy(lp[i], lq[i])) == pytest.approx(float(ce), rel=1e-12)
  # Batched call agrees with the rows, and KL(p||p) = 0.
  np.testing.assert_allclose(D.kl(lp, lq), [float(_ref_kl(p[i], q[i])) for i in range(5)], rtol=1e-12)
  np.testing.assert_allclose(D.kl(lp, lp), 0.0, atol=1e-15)


def test_kl_is_infinite_without_absolute_continuity():
  lp, lq = np.log([0.5, 0.5]), np.array([0.0, -np.inf])
  assert float(D.kl(lp, lq)) == np.inf
  assert float(D.kl(lq, lp)) == pytest.approx(np.log(2))


def test_chi2_tv_renyi():
  lp, lq = _logp((4, 6), zeros=1), _logp((4, 6))
  p, q = np.exp(lp), np.exp(lq)
  np.testing.assert_allclose(D.chi2(lp, lq), np.sum(p * p / q, -1) - 1, rtol=1e-12)
  np.testing.assert_allclose(D.tv(lp, lq), 0.5 * np.abs(p - q).sum(-1), rtol=1e-12)
  for a in [0.5, 2.0, 3.0]:
    with np.errstate(divide="ignore"):
      ref = np.log(np.sum(np.where(p > 0, p ** a * q ** (1 - a), 0), -1)) / (a - 1)
    np.testing.assert_allclose(D.renyi_divergence(lp, lq, a), ref, rtol=1e-12)
  np.testing.assert_allclose(D.renyi_divergence(lp, lq, 1.0), D.kl(lp, lq), rtol=1e-14)
  np.testing.assert_allclose(D.renyi_divergence(lp, lq, 2.0), np.log1p(D.chi2(lp, lq)), rtol=1e-12)
  # Renyi cross entropy: definition and the Shannon limit at alpha = 1.
  for a in [0.3, 2.5]:
    ref = np.log(np.sum(np.where(p > 0, p * q ** (a - 1), 0), -1)) / (1 - a)
    np.testing.assert_allclose(D.renyi_cross_entropy(lp, lq, a), ref, rtol=1e-12)
  np.testing.assert_allclose(D.renyi_cross_entropy(lp, lq, 1 + 1e-7), D.cross_entropy(lp, lq), rtol=1e-6)
  np.testing.assert_allclose(D.renyi_cross_entropy(lp, lq, 1.0), D.cross_entropy(lp, lq), rtol=1e-14)


def test_bernoulli_kl_and_binary_entropy():
  for a, b in [(0.3, 0.7), (0.0, 0.4), (1.0, 0.9), (0.5, 0.5)]:
    ref = sum(x * mp.log(x / y) for x, y in [(mp.mpf(a), mp.mpf(b)), (1 - mp.mpf(a), 1 - mp.mpf(b))] if x > 0)
    assert float(D.bernoulli_kl(a, b)) == pytest.approx(float(ref), abs=1e-15, rel=1e-12)
  assert float(D.bernoulli_kl(0.5, 0.0)) == np.inf
  assert float(D.binary_entropy(0.5)) == pytest.approx(np.log(2))
  assert float(D.binary_entropy(0.0)) == 0.0


def test_gradients_are_finite_at_zero_mass():
  lp, lq = jnp.array([0.0, -jnp.inf]), jnp.log(jnp.array([0.6, 0.4]))
  g = jax.grad(lambda x: D.kl(x, lq))(lp)
  assert np.isfinite(g[0])
  g = jax.grad(lambda x: D.kl(lp, jax.nn.log_softmax(x)))(jnp.zeros(2))
  assert np.all(np.isfinite(g))


@pytest.mark.parametrize("call, arg", [
    (lambda: D.kl(np.log([0.5, 0.6]), np.log([0.5, 0.5])), "logp"),
    (lambda: D.kl(np.log([0.5, 0.5]), np.array([np.nan, 0.0])), "logq"),
    (lambda: D.kl(np.log([0.5, 0.5]), np.log([0.2, 0.3, 0.5])), "logq"),
    (lambda: D.bernoulli_kl(1.5, 0.5), "'a'"),
    (lambda: D.renyi_divergence(np.log([0.5, 0.5]), np.log([0.5, 0.5]), -1.0), "alpha"),
    (lambda: D.entropy(np.array(["a"])), "logp"),
])
def test_bad_input_names_the_argument(call, arg):
  with pytest.raises(InputError, match=arg):
    call()


PAIRS = [D.kl, D.cross_entropy, D.chi2, D.tv,
         lambda p, q: D.renyi_divergence(p, q, jnp.array([0.5, 1.0, 2.0, 3.0, 0.7, 1.5])),
         lambda p, q: D.renyi_cross_entropy(p, q, jnp.array([0.5, 1.0, 2.0, 3.0, 0.7, 1.5]))]


@pytest.mark.slow
@pytest.mark.parametrize("rows_per_block", [1, 4])
def test_row_blocks_give_the_whole_batch_results(row_blocks, rows_per_block):
  lp, lq = jnp.asarray(_logp((6, 40), zeros=3)), jnp.asarray(_logp((6, 40)))
  for fn in PAIRS:
    row_blocks(fn, lp, lq, rows_per_block=rows_per_block)
  row_blocks(D.entropy, lp, rows_per_block=rows_per_block)
  row_blocks(D.kl, lq[0], lp, rows_per_block=rows_per_block)   # one distribution against a batch


def test_broadcast_reference_against_a_batch():
  lp, lq = _logp((40,)), _logp((6, 40))
  np.testing.assert_allclose(D.kl(lp, lq), [float(D.kl(lp, lq[i])) for i in range(6)], rtol=1e-13)
  np.testing.assert_allclose(D.tv(lq, lp), [float(D.tv(lq[i], lp)) for i in range(6)], rtol=1e-13)


def test_gradients_through_row_blocks(monkeypatch):
  from jax.test_util import check_grads
  from klrl._src import rows as _rows
  monkeypatch.setattr(_rows, "rows_per_block", lambda row_bytes: 1)
  jax.clear_caches()
  x, y = jnp.asarray(RNG.normal(size=(3, 5))), jnp.asarray(RNG.normal(size=(3, 5)))
  alpha = jnp.array([0.5, 2.0, 3.0])
  for f in [D.kl, D.chi2, D.cross_entropy, lambda p, q: D.renyi_divergence(p, q, alpha)]:
    check_grads(lambda a, b: f(jax.nn.log_softmax(a), jax.nn.log_softmax(b)), (x, y), order=1, modes=("fwd", "rev"))
  jax.clear_caches()


@pytest.mark.parametrize("fn", [D.kl, D.tv, D.chi2, D.cross_entropy])
def test_a_bad_row_names_its_argument(fn):
  lp, lq = _logp((4, 6)), _logp((4, 6))
  bad = lq.copy()
  bad[2, 1] += 0.1                      # row 2 no longer sums to 1
  with pytest.raises(InputError, match="argument 'logq' is not a log-probability vector"):
    fn(lp, bad)
  bad = lp.copy()
  bad[3, 0] = np.nan
  with pytest.raises(InputError, match="argument 'logp' contains NaN"):
    fn(bad, lq)
  with pytest.raises(InputError, match="argument 'logp' contains NaN"):
    D.entropy(bad)
