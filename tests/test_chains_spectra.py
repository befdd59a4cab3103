"""klrl.chains (docs: theory/chains): spectra, derivatives, large sparse chains, float32 and bad input."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from klrl import InputError, chains as C
from klrl.chains import spectra

M = 6


def instance(seed, beta=0.7):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  logp = C.reference_from_joint(C.random_joint(k1, M))
  reward = C.random_reward(k2, M).reward
  return logp, reward, C.kernel(logp, reward, beta)


def log(x):
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.log(np.asarray(x, float))


# ---------------------------------------------------------------------------------------------
# Spectra.

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_spectrum_is_the_spectrum_of_the_kernel(seed):
  _, _, logk = instance(seed, beta=0.3 + seed)
  k = np.exp(np.asarray(logk))
  w = np.asarray(C.spectrum(logk))
  np.testing.assert_allclose(w, np.sort(np.linalg.eigvals(k).real)[::-1], atol=1e-13)
  assert np.all(np.diff(w) <= 0) and w[0] == pytest.approx(1.0, abs=1e-14)
  # The same as eigh of D^{1/2} K D^{-1/2} built from the stationary law.
  d = np.sqrt(np.asarray(C.stationary(logk)))
  s = d[:, None] * k / d[None, :]
  np.testing.assert_allclose(w, np.linalg.eigvalsh((s + s.T) / 2)[::-1], atol=1e-13)
  assert float(C.spectral_gap(logk)) == pytest.approx(1 - w[1], abs=1e-15)
  assert float(C.absolute_spectral_gap(logk)) == pytest.approx(1 - max(abs(w[1]), abs(w[-1])), abs=1e-15)
  np.testing.assert_allclose(np.abs(C.eigenvalues(logk)), np.sort(np.abs(w))[::-1], atol=1e-13)


# ---------------------------------------------------------------------------------------------
# Derivatives.

def test_gradients_match_finite_differences():
  logp, reward, _ = instance(4)
  target = np.arange(M) < 2
  fns = [
      lambda b, r: C.absolute_spectral_gap(C.kernel(logp, r, b)),
      lambda b, r: C.spectral_gap(C.kernel(logp, r, b)),
      lambda b, r: C.stationary(C.kernel(logp, r, b)),
      lambda b, r: C.hitting_times(C.kernel(logp, r, b), target),
  ]
  for f in fns:
    check_grads(f, (0.7, reward), order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)


def test_derivative_at_degenerate_eigenvalues_is_the_cluster_mean():
  # Lazy walk on the complete graph: eigenvalues 1 and 1/2 - 1/(2(M-1)) (M-1 times). A symmetric
  # reward keeps the chain reversible and splits the cluster; the derivative reported for each
  # eigenvalue of the cluster is the derivative of the cluster's mean, (d tr S - d l_1)/(M-1).
  logp = log(0.5 * np.eye(M) + 0.5 * (np.ones((M, M)) - np.eye(M)) / (M - 1))
  g = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (M, M)))
  r = g + g.T
  spec = lambda t: C.spectrum(C.kernel(logp, t * r, 1.0))
  np.testing.assert_allclose(spec(0.0)[1:], 0.5 - 0.5 / (M - 1), atol=1e-14)
  d = np.asarray(jax.jacfwd(spec)(0.0))
  assert np.all(np.isfinite(d))
  h = 1e-5
  mean = lambda t: float(jnp.mean(spec(t)[1:]))
  np.testing.assert_allclose(d[1:], (mean(h) - mean(-h)) / (2 * h), rtol=1e-7)
  assert abs(d[1]) > 1e-2 and abs(d[0]) < 1e-12
  grad = lambda f: np.asarray(jax.grad(lambda t: f(C.kernel(logp, t * r, 1.0)))(0.0))
  assert float(grad(C.absolute_spectral_gap)) == pytest.approx(-d[1], rel=1e-12)
  assert float(grad(C.spectral_gap)) == pytest.approx(-d[1], rel=1e-12)


def test_jit_vmap_grad_compose():
  logp, reward, _ = instance(5)
  betas = jnp.linspace(0.2, 3.0, 8)
  batched = C.absolute_spectral_gap(C.kernel(logp, reward, betas))
  mapped = jax.vmap(lambda b: C.absolute_spectral_gap(C.kernel(logp, reward, b)))(betas)
  np.testing.assert_allclose(batched, mapped, rtol=1e-13)
  grad = jax.jit(jax.vmap(jax.grad(lambda b: C.absolute_spectral_gap(C.kernel(logp, reward, b)))))(betas)
  h = 1e-6
  fd = (C.absolute_spectral_gap(C.kernel(logp, reward, betas + h)) - C.absolute_spectral_gap(C.kernel(logp, reward, betas - h))) / (2 * h)
  np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
  # vmap over chains, and a batch of kernels in one call.
  kernels = jnp.stack([instance(s)[2] for s in range(3)])
  np.testing.assert_allclose(jax.vmap(C.stationary)(kernels), C.stationary(kernels), rtol=1e-14)
  np.testing.assert_allclose(jax.vmap(lambda k: C.hitting_times(k, np.arange(M) < 2))(kernels),
                             C.hitting_times(kernels, np.arange(M) < 2), rtol=1e-14)
  np.testing.assert_allclose(jax.jit(C.spectrum)(kernels), C.spectrum(kernels), rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# Large sparse chains.

def sparse(m, beta, seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  sj = C.random_sparse_joint(k1, m)
  phi = jax.random.normal(k2, (m,))
  return sj, phi, C.sparse_chain(sj.neighbors, sj.log_joint, phi, beta)


@pytest.mark.slow
def test_lanczos_agrees_with_dense():
  m = 128
  sj, phi, ch = sparse(m, 1.0)
  dense = C.to_dense(sj.neighbors, ch.log_kernel)
  w_joint = np.exp(np.asarray(C.to_dense(sj.neighbors, sj.log_joint)))
  np.testing.assert_allclose(w_joint, w_joint.T, rtol=1e-14)                 # the joint is symmetric
  ref = C.reference_from_joint(log(w_joint))
  np.testing.assert_allclose(dense, C.kernel(ref, phi, 1.0), atol=1e-13)     # same chain as dense
  k, p = np.exp(np.asarray(dense)), np.exp(np.asarray(ch.log_pi))            # pi ∝ e^V in closed form:
  np.testing.assert_allclose(p @ k, p, rtol=1e-12)                            # stationary
  np.testing.assert_allclose(p[:, None] * k, (p[:, None] * k).T, rtol=1e-12, atol=1e-300)   # and reversing
  w = np.asarray(C.spectrum(dense))
  lg = C.lanczos_gap(sj.neighbors, ch.log_kernel, ch.log_pi, steps=80)
  assert float(lg.second) == pytest.approx(w[1], abs=1e-12)
  assert float(lg.smallest) == pytest.approx(w[-1], abs=1e-12)
  assert float(lg.residual) < 1e-8
  assert float(lg.absolute_gap) == pytest.approx(1 - max(abs(w[1]), abs(w[-1])), abs=1e-12)
  # d gap / d beta through the Ritz vectors, against the dense derivative.
  g_sparse = jax.grad(lambda b: C.lanczos_gap(sj.neighbors, *C.sparse_chain(sj.neighbors, sj.log_joint, phi, b),
                                              steps=80).absolute_gap)(1.0)
  g_dense = jax.grad(lambda b: C.absolute_spectral_gap(C.kernel(ref, phi, b)))(1.0)
  assert float(g_sparse) == pytest.approx(float(g_dense), rel=1e-8)


@pytest.mark.slow
def test_lanczos_large_chain_against_scipy():
  sp = pytest.importorskip("scipy.sparse")
  eigsh = pytest.importorskip("scipy.sparse.linalg").eigsh
  m = 10_000
  sj, _, ch = sparse(m, 2.0, seed=1)
  lg = C.lanczos_gap(sj.neighbors, ch.log_kernel, ch.log_pi, steps=120)
  nbr, lk, lp = (np.asarray(x) for x in (sj.neighbors, ch.log_kernel, ch.log_pi))
  s = np.exp(0.5 * lp[:, None] + lk - 0.5 * lp[nbr])
  mat = sp.csr_matrix((s.ravel(), (np.repeat(np.arange(m), nbr.shape[1]), nbr.ravel())), shape=(m, m))
  mat = (mat + mat.T) / 2
  top = eigsh(mat, k=2, which="LA", tol=1e-13)[0]
  bottom = eigsh(mat, k=1, which="SA", tol=1e-13)[0]
  assert top.max() == pytest.approx(1.0, abs=1e-12)
  assert float(lg.second) == pytest.approx(top.min(), abs=1e-10)
  assert float(lg.smallest) == pytest.approx(bottom[0], abs=1e-10)
  # The residual certifies the Ritz values: each is within it of an eigenvalue.
  assert max(abs(float(lg.second) - top.min()), abs(float(lg.smallest) - bottom[0])) <= float(lg.residual)


# ---------------------------------------------------------------------------------------------
# float32.

@pytest.mark.slow
def test_float32_agrees_with_float64():
  logp, reward, logk = instance(6)
  lk32 = logk.astype(jnp.float32)
  target = np.arange(M) < 2
  assert C.stationary(lk32).dtype == jnp.float32
  np.testing.assert_allclose(C.stationary(lk32), C.stationary(logk), rtol=2e-5)
  np.testing.assert_allclose(C.spectrum(lk32), C.spectrum(logk), atol=2e-6)
  np.testing.assert_allclose(C.hitting_times(lk32, target), C.hitting_times(logk, target), rtol=2e-5)
  k32 = C.kernel(logp.astype(jnp.float32), reward.astype(jnp.float32), jnp.float32(0.7))
  assert k32.dtype == jnp.float32
  assert float(C.detailed_balance(k32).max_residual) < 1e-5


# ---------------------------------------------------------------------------------------------
# Bad input.

GOOD = np.log(np.full((3, 3), 1 / 3))
PHI = np.array([0.0, 1.0, 2.0])
T3 = np.array([True, False, False])


@pytest.mark.parametrize("call, match", [
    (lambda: C.stationary(GOOD + 0.1), "'log_kernel' is not a log kernel"),
    (lambda: C.stationary(np.log(np.full((3, 3), 1 / 3)) * 0.5), "'log_kernel' is not a log kernel"),
    (lambda: C.spectrum(np.full((3, 3), 1 / 3)), "'log_kernel' is not a log kernel.*jnp.log"),   # probabilities passed
    (lambda: C.hitting_times(log([[1.2, -0.2, 0.0], [0.3, 0.3, 0.4], [0.1, 0.1, 0.8]]), T3), "'log_kernel' contains NaN"),
    (lambda: C.stationary(np.where(np.eye(3) > 0, np.nan, GOOD)), "'log_kernel' contains NaN"),
    (lambda: C.stationary(np.zeros((3, 4))), "'log_kernel' must be a square kernel"),
    (lambda: C.stationary(np.zeros(3)), "'log_kernel' must have at least 2 axis"),
    (lambda: C.kernel(GOOD, np.zeros((2, 3)), 1.0), "'reward' must be r"),
    (lambda: C.kernel(GOOD, np.zeros(4), 1.0), "'reward' must be r"),
    (lambda: C.kernel(GOOD, np.array([0.0, np.inf, 1.0]), 1.0), "'reward' must be finite"),
    (lambda: C.kernel(GOOD, PHI, 0.0), "'beta' must be > 0"),
    (lambda: C.kernel(np.stack([GOOD] * 2), PHI, np.ones(3)), "'beta'.*do not broadcast"),
    (lambda: C.hitting_times(GOOD, np.array([1, 0, 0])), "'target_mask' must be a boolean"),
    (lambda: C.hitting_times(GOOD, np.array([True, False])), "'target_mask' must have 3 states"),
    (lambda: C.stationary(GOOD, "lu"), "'method' must be"),
    (lambda: C.evolve(GOOD, np.log(np.full(4, 0.25)), 3), "'log_p0' has 4 states"),
    (lambda: C.evolve(GOOD, np.zeros(3), 3), "'log_p0' is not a log-probability"),
    (lambda: C.detailed_balance(GOOD, np.array([0.0, np.nan, 0.0])), "'potential' must be finite"),
    (lambda: C.birth_death(np.array([0.6, 0.6]), np.array([0.5, 0.5])), "'down'.*probability > 1"),
    (lambda: C.birth_death(np.array([-0.1, 0.5]), np.array([0.5, 0.5])), "'up' must lie in"),
    (lambda: C.reward_potential(np.zeros((3, 2))), "'reward' must be a square"),
    (lambda: C.kolmogorov_cycles(GOOD, np.array([[0, 1, 3]])), "'cycles' has indices outside"),
    (lambda: C.stationary(log([[1.0, 0, 0], [0, 1.0, 0], [0.2, 0.3, 0.5]])), "no unique stationary law"),
    (lambda: C.spectral_gap(np.zeros((1, 1))), "at least 2 states"),
    (lambda: C.lanczos_gap(np.array([[0, 3], [1, 0], [2, 1]]), np.log(np.full((3, 2), 0.5)), np.log(np.full(3, 1 / 3))),
     "'neighbors' has indices outside"),
    (lambda: C.sparse_chain(np.array([[0, 1], [1, 0]]), np.zeros((3, 2)), np.zeros(3), 1.0), "'neighbors' must have the shape"),
])
def test_bad_input_raises_named_error(call, match):
  with pytest.raises(InputError, match=match):
    call()


def test_bad_kernel_under_jit_still_names_the_argument():
  f = jax.jit(lambda k: C.absolute_spectral_gap(k))
  with pytest.raises(Exception, match="argument 'log_kernel' is not a log kernel"):
    f(GOOD + 0.1).block_until_ready()


def test_general_eigensolver_missing_backend_gives_a_clear_message(monkeypatch):
  monkeypatch.setattr(spectra, "_platform", lambda: "tpu")
  with pytest.raises(NotImplementedError, match="no general .* eigensolver on the 'tpu' backend.*CPU"):
    C.eigenvalues.__wrapped__(GOOD)
