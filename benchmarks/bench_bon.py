"""Benchmarks of klrl.bon: exact ``stats`` over B x V and the explicit sampler, against NumPy.

Baselines, measured in the same run: ``stats`` against the same computation in NumPy (a stable
``np.argsort`` per row, level masses by ``np.bincount``, the log-space level law with
``log1p``/``expm1``, then the KL, mean reward and win rate); the sampler against NumPy's
``Generator.choice`` of all ``num * n`` candidates followed by an arg-max with random
tie-breaking (what one would write), and against the same inverse-CDF algorithm as klrl in
NumPy. The sampler rows report candidate draws per second.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import Row, compile_time, median_time, paired_times
from klrl import bon, problems

B = 64
N = 16.0


def np_stats(logp, r, n):
  """KL, mean reward and win rate of best-of-n, the level formula (docs: theory/best-of-n) in NumPy."""
  b, v = logp.shape
  order = np.argsort(r, axis=-1, kind="stable")
  rs, ps = np.take_along_axis(r, order, -1), np.exp(np.take_along_axis(logp, order, -1))
  level = np.cumsum(np.concatenate([np.ones((b, 1), bool), rs[:, 1:] != rs[:, :-1]], 1), 1) - 1
  flat = (level + v * np.arange(b)[:, None]).ravel()
  mass = np.bincount(flat, weights=ps.ravel(), minlength=b * v).reshape(b, v)
  value = np.zeros(b * v)
  value[flat] = rs.ravel()
  value = value.reshape(b, v)
  below = np.cumsum(mass, 1) - mass                                 # F-_k
  tail = np.cumsum(mass[:, ::-1], 1)[:, ::-1] - mass                # T_k = P(r > s_k)
  with np.errstate(divide="ignore", invalid="ignore"):
    log_f = np.where(tail < 0.5, np.log1p(-tail), np.log(below + mass))
    d = n * np.log1p(mass / below)
    log_law = np.where(mass > 0, n * log_f + np.log(-np.expm1(-d)), -np.inf)
    law = np.exp(log_law)
    kl = np.sum(np.where(mass > 0, law * (log_law - np.log(mass)), 0.0), 1)
  return kl, np.sum(law * value, 1), np.sum(law * (below + mass / 2), 1)


def np_sampler_choice(rng, p, r, n, num):
  cand = rng.choice(len(p), size=(num, n), p=p)
  rc = r[cand]
  score = (rc == rc.max(1, keepdims=True)) * (1.0 + rng.random(rc.shape))   # random tie-break
  return cand[np.arange(num), np.argmax(score, 1)]


def np_sampler_inverse_cdf(rng, p, r, n, num):
  order = np.argsort(r, kind="stable")
  rs, cdf = r[order], np.cumsum(p[order])
  first = np.maximum.accumulate(np.where(np.concatenate([[True], rs[1:] != rs[:-1]]), np.arange(len(r)), 0))
  level_below = np.concatenate([[0.0], cdf[:-1]])[first]
  u = rng.random((num, n)) * cdf[-1]
  best = np.minimum(np.searchsorted(cdf, u.max(1), side="right"), len(r) - 1)
  pick = np.argmax(u >= level_below[best][:, None], 1)
  return order[np.minimum(np.searchsorted(cdf, u[np.arange(num), pick], side="right"), len(r) - 1)]


def run(args):
  top = 12 if args.quick else args.max_log2v
  for log2v in range(args.min_log2v, top + 1, 1 if args.quick else 2):
    v = 2 ** log2v
    logp, r = problems.random_problem(jax.random.PRNGKey(log2v), B, v)
    n = jnp.full((B,), N)
    lp_np, r_np = np.asarray(logp), np.asarray(r)
    reps = args.rounds or (3 if args.quick or v >= 2 ** 18 else 7)
    c = compile_time(jax.jit(bon.stats.__wrapped__), logp, r, n)
    t, tb, ratios = paired_times(bon.stats, (logp, r, n), lambda: np_stats(lp_np, r_np, N), reps)
    s = bon.stats(logp, r, n)
    kl, mean, win = np_stats(lp_np, r_np, N)
    err = max(float(np.max(np.abs(s.kl - kl))), float(np.max(np.abs(s.win_rate - win))))
    yield Row("bon", "stats (N = 16)", f"{B}x2^{log2v}", c, t, "NumPy argsort + level law", tb,
              2 * logp.size * logp.dtype.itemsize, {"max_abs_diff": err}, ratios)

  # Sampler: one reference of 10^4 outputs, draws of n = 16 candidates.
  v, n, num = 10_000, 16, (20_000 if args.quick else 250_000)
  logp, r = problems.random_problem(jax.random.PRNGKey(0), 1, v, ties=8)
  logp, r = logp[0], r[0]
  p_np, r_np = np.exp(np.asarray(logp)), np.asarray(r)
  p_np /= p_np.sum()
  key = jax.random.PRNGKey(1)
  c = compile_time(jax.jit(bon.sample.__wrapped__, static_argnums=(3, 4)), key, logp, r, n, num)
  t = median_time(bon.sample, key, logp, r, n, num, repeats=5)
  rng = np.random.default_rng(0)
  draws = n * num
  for name, fn in [("NumPy choice + arg-max", np_sampler_choice), ("NumPy inverse CDF (same algorithm)", np_sampler_inverse_cdf)]:
    tb = median_time(lambda: fn(rng, p_np, r_np, n, num), repeats=3)
    yield Row("bon", f"sample (n = {n})", f"V=1e4, {num} samples", c, t, name, tb, None,
              {"draws_per_s": draws / t, "baseline_draws_per_s": draws / tb})
