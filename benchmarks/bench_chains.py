"""Benchmarks of klrl.chains against deeptime and NumPy/SciPy, measured in the same run.

- ``spectra``: the tilted kernels of one chain at 32 values of beta and their spectra, in one
  batched call (``spectrum(kernel(logp, reward, betas))``), against deeptime's
  ``MarkovStateModel(K).eigenvalues()`` looped over beta (kernel built in NumPy); SciPy's
  ``eigvalsh`` of the symmetrised kernels, looped, is reported in the notes (it is the baseline
  where deeptime is not installed).
- ``lanczos_gap``: lambda_2 and lambda_M of a sparse reversible chain (neighbour lists, 7 per
  state) by 100 Lanczos steps, against ``scipy.sparse.linalg.eigsh`` (two calls: the two
  largest and the smallest eigenvalue) on the same symmetrised CSR matrix.
- ``stationary`` and ``hitting_times``: one chain, GTH / subtraction-free elimination (default)
  and the LU variant, against ``numpy.linalg.solve``; the notes give the largest relative error
  of each against the closed form ``pi ∝ e^V`` (stationary) or against each other (hitting).

All four are compute-bound (dense eigensolvers, O(M^3) eliminations, Krylov steps), so no
bytes-moved figure is given. ``max_abs_diff`` of the spectra is dominated by deeptime: it
symmetrises with its stationary law, whose tiny masses carry relative errors, while klrl's
``sqrt(K(s'|s) K(s|s'))`` needs none (both checked against 40-digit mpmath eigenvalues of the
symmetric form: klrl 8e-16, deeptime 1e-8 at M = 64, beta = e^-2).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
from scipy.special import logsumexp

from benchmarks.harness import Row, compile_time, median_time
from klrl import chains

BETAS = 32


def _chain(m, seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  log_joint = chains.random_joint(k1, m)
  rw = chains.random_reward(k2, m)
  return log_joint, chains.reference_from_joint(log_joint), rw.reward


def np_kernel(logp, reward, beta):
  lw = logp + reward / beta
  return np.exp(lw - logsumexp(lw, axis=-1, keepdims=True))


def has_deeptime() -> bool:
  try:
    import deeptime  # noqa: F401
  except ImportError:
    return False
  return True


def deeptime_spectra(logp, reward, betas):
  from deeptime.markov.msm import MarkovStateModel
  out = []
  for b in betas:
    k = np_kernel(logp, reward, b)
    out.append(np.sort(np.real(MarkovStateModel(k / k.sum(1, keepdims=True)).eigenvalues()))[::-1])
  return np.stack(out)


def scipy_spectra(logp, reward, betas):
  out = []
  for b in betas:
    lk = np.log(np_kernel(logp, reward, b))
    out.append(scipy.linalg.eigvalsh(np.exp(0.5 * (lk + lk.T)))[::-1])
  return np.stack(out)


def spectra_rows(sizes, reps):
  for m in sizes:
    _, logp, reward = _chain(m)
    betas = jnp.exp(jnp.linspace(-2.0, 2.0, BETAS))
    f = lambda lp, r, b: chains.spectrum(chains.kernel(lp, r, b))
    jf = jax.jit(f)
    c = compile_time(jf, logp, reward, betas)
    t = median_time(jf, logp, reward, betas, repeats=reps)
    lp_np, r_np, b_np = np.asarray(logp), np.asarray(reward), np.asarray(betas)
    ts = median_time(lambda: scipy_spectra(lp_np, r_np, b_np), repeats=reps)
    if has_deeptime():
      tb = median_time(lambda: deeptime_spectra(lp_np, r_np, b_np), repeats=reps)
      err = float(np.max(np.abs(np.asarray(jf(logp, reward, betas)) - deeptime_spectra(lp_np, r_np, b_np))))
      yield Row("chains", f"spectra x{BETAS} betas", f"M={m}", c, t, "deeptime MSM loop", tb,
                None, {"scipy_eigvalsh_loop_ms": 1e3 * ts, "max_abs_diff": err})
    else:
      err = float(np.max(np.abs(np.asarray(jf(logp, reward, betas)) - scipy_spectra(lp_np, r_np, b_np))))
      yield Row("chains", f"spectra x{BETAS} betas", f"M={m}", c, t, "scipy eigvalsh loop", ts,
                None, {"deeptime": "not installed", "max_abs_diff": err})


def lanczos_rows(sizes, reps, steps=100):
  for m in sizes:
    k1, k2 = jax.random.split(jax.random.PRNGKey(m))
    sj = chains.random_sparse_joint(k1, m)
    sc = chains.sparse_chain(sj.neighbors, sj.log_joint, jax.random.normal(k2, (m,)), 2.0)
    args = (sj.neighbors, sc.log_kernel, sc.log_pi)
    jf = jax.jit(lambda n, lk, lp: chains.lanczos_gap(n, lk, lp, steps=steps))
    c = compile_time(jf, *args)
    t = median_time(jf, *args, repeats=reps)
    lg = jf(*args)
    nbr, lk, lp = (np.asarray(x) for x in args)
    s = np.exp(0.5 * lp[:, None] + lk - 0.5 * lp[nbr])
    mat = scipy.sparse.csr_matrix((s.ravel(), (np.repeat(np.arange(m), nbr.shape[1]), nbr.ravel())), shape=(m, m))
    mat = ((mat + mat.T) / 2).tocsr()

    def eigsh():
      top = scipy.sparse.linalg.eigsh(mat, k=2, which="LA", tol=1e-12)[0]
      return np.min(top), scipy.sparse.linalg.eigsh(mat, k=1, which="SA", tol=1e-12)[0][0]

    tb = median_time(eigsh, repeats=reps)
    l2, lm = eigsh()
    err = max(abs(float(lg.second) - l2), abs(float(lg.smallest) - lm))
    yield Row("chains", f"lanczos_gap ({steps} steps)", f"M={m}", c, t, "scipy eigsh x2", tb, None,
              {"gap": 1 - float(lg.second), "max_abs_diff": err, "residual": float(lg.residual)})


def solve_rows(sizes, reps):
  for m in sizes:
    log_joint, logp, reward = _chain(m, seed=1)
    beta = 0.3
    logk = chains.kernel(logp, reward, beta)
    k = np.exp(np.asarray(logk))
    # closed form (docs: theory/chains): mu = row sums of the symmetric joint, Phi = reward potential.
    lw = np.asarray(log_joint)
    phi = np.asarray(chains.reward_potential(reward).potential)
    v = logsumexp(lw, axis=1) + phi / beta + logsumexp(np.asarray(logp) + np.asarray(reward) / beta, axis=1)
    pi_ref = np.exp(v - logsumexp(v))
    np_pi = lambda: np.linalg.solve((np.eye(m) - k + 1.0).T, np.ones(m))
    tb = median_time(np_pi, repeats=reps)
    err_np = float(np.max(np.abs(np_pi() / pi_ref - 1)))
    for method in ("gth", "solve"):
      jf = jax.jit(lambda lk: chains.stationary(lk, method))
      c = compile_time(jf, logk)
      t = median_time(jf, logk, repeats=reps)
      err = float(np.max(np.abs(np.asarray(jf(logk)) / pi_ref - 1)))
      yield Row("chains", f"stationary ({method})", f"M={m}", c, t, "numpy solve", tb, None,
                {"rel_err": err, "numpy_rel_err": err_np, "min_pi": float(pi_ref.min())})

    target = np.arange(m) < 3
    free = ~target

    def np_hit():
      h = np.zeros(m)
      h[free] = np.linalg.solve(np.eye(free.sum()) - k[np.ix_(free, free)], np.ones(free.sum()))
      return h

    tb = median_time(np_hit, repeats=reps)
    ref = np.asarray(chains.hitting_times(logk, target))
    for method in ("gth", "solve"):
      jf = jax.jit(lambda lk, tg: chains.hitting_times(lk, tg, method))
      c = compile_time(jf, logk, target)
      t = median_time(jf, logk, target, repeats=reps)
      diff = float(np.max(np.abs(np.asarray(jf(logk, target))[free] / ref[free] - 1)))
      yield Row("chains", f"hitting_times ({method})", f"M={m}", c, t, "numpy solve", tb, None,
                {"max_time": float(ref.max()), "rel_diff_to_gth": diff,
                 "numpy_rel_diff_to_gth": float(np.max(np.abs(np_hit()[free] / ref[free] - 1)))})


def run(args):
  quick = args.quick
  reps = args.rounds or (3 if quick else 5)
  dense = (64, 128) if quick else (500, 1000, 2000, 4000)
  if getattr(args, "max_states", None):
    dense = tuple(m for m in dense if m <= args.max_states) or dense[:1]
  yield from spectra_rows(dense, reps)
  yield from lanczos_rows((2000,) if quick else (20_000, 50_000, 100_000), reps)
  yield from solve_rows(dense, reps)
