"""Benchmarks of klrl.tilted: ``stats`` and ``kl_constrained`` over B x V, against NumPy/SciPy.

Baselines, measured in the same run: ``stats`` against ``scipy.special.logsumexp`` and NumPy
moments; ``kl_constrained`` against one ``scipy.optimize.brentq`` per row on
``lam A'(lam) - A(lam) = delta`` (tolerance 1e-12), followed by the tilted policy. Above
V = 2^22 (``--max-baseline-log2v``) klrl alone is timed.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import brentq
from scipy.special import logsumexp

from benchmarks.harness import Row, compile_time, median_time, paired_times
from klrl import divergences, problems, tilted

B = 64


def np_stats(logp, r, beta):
  lw = logp + r / beta
  log_z = logsumexp(lw, axis=-1, keepdims=True)
  pi = np.exp(lw - log_z)
  mean = np.sum(pi * r, -1)
  var = np.sum(pi * (r - mean[:, None]) ** 2, -1)
  kl = mean / beta - log_z[:, 0]
  ent = -np.sum(pi * (lw - log_z), -1)
  return log_z[:, 0], kl, mean, var, ent


def np_kl_constrained(logp, r, delta):
  out = np.empty_like(logp)
  lams = np.empty(len(logp))
  for i in range(len(logp)):
    lp, rr = logp[i], r[i]

    def k(lam):
      lw = lp + lam * rr
      a = logsumexp(lw)
      pi = np.exp(lw - a)
      return lam * np.dot(pi, rr) - a - delta[i]

    hi = 1.0
    while k(hi) < 0:
      hi *= 4
    lam = brentq(k, 0.0, hi, xtol=1e-14, rtol=1e-12)
    lw = lp + lam * rr
    out[i] = lw - logsumexp(lw)
    lams[i] = lam
  return lams, out


def run(args):
  top = 12 if args.quick else args.max_log2v
  top_baseline = getattr(args, "max_baseline_log2v", None) or 22   # larger sizes: no SciPy baseline
  for log2v in range(args.min_log2v, top + 1, 1 if args.quick else 2 if top > 20 else 1):
    v = 2 ** log2v
    logp, r = problems.random_problem(jax.random.PRNGKey(log2v), B, v)
    beta = jnp.full((B,), 0.7)
    nbytes = 2 * logp.size * logp.dtype.itemsize
    lp_np, r_np = (np.asarray(logp), np.asarray(r)) if log2v <= top_baseline else (None, None)

    # stats
    c = compile_time(jax.jit(tilted.stats.__wrapped__), logp, r, beta)
    rounds = args.rounds or (3 if args.quick or v >= 2 ** 18 else 7)
    if log2v <= top_baseline:
      t, tb, ratios = paired_times(tilted.stats, (logp, r, beta), lambda: np_stats(lp_np, r_np, 0.7), rounds)
    else:
      t, tb, ratios = median_time(tilted.stats, logp, r, beta, repeats=rounds), None, None
    yield Row("tilted", "stats", f"{B}x2^{log2v}", c, t, "scipy logsumexp", tb, nbytes, ratios=ratios)

    # kl_constrained at half the saturation budget
    delta = 0.5 * tilted.max_kl(logp, r)
    c = compile_time(jax.jit(tilted.kl_constrained.__wrapped__), logp, r, delta)
    sub = B if v <= 2 ** 16 else 8     # baseline rows timed; the time is scaled to B rows
    if log2v <= top_baseline:
      d_np = np.asarray(delta)
      t, tb, ratios = paired_times(tilted.kl_constrained, (logp, r, delta),
                                   lambda: np_kl_constrained(lp_np[:sub], r_np[:sub], d_np[:sub]), rounds, scale=B / sub)
    else:
      t, tb, ratios = median_time(tilted.kl_constrained, logp, r, delta, repeats=rounds), None, None
    sol = tilted.kl_constrained(logp, r, delta)
    err = float(jnp.max(jnp.abs(divergences.kl(sol.log_policy, logp) - delta) / jnp.maximum(1.0, delta)))
    extra = {"passes": int(sol.iterations) + 3, "kl_err": err}   # solve + maxima, constants, policy
    if sub < B:
      extra["baseline_rows"] = sub
    yield Row("tilted", "kl_constrained", f"{B}x2^{log2v}", c, t, "scipy brentq/row", tb, 1.5 * nbytes, extra,
              ratios)

