"""Benchmarks of klrl.memoryless: the exact law of S_n and best-of-N over sequences, against SciPy/NumPy.

Cases: per-token laws on ``L`` consecutive integer rewards (``L = 2`` is the binomial, with an
exact ``lgamma`` reference; other ``L`` random Dirichlet masses) for sequence lengths ``n``
from 10 to 1e5, and the English/VADER instance at its full vocabulary (~3.2e5 words, 74
lattice points).

Baselines, measured in the same run:

- ``scipy fftconvolve``: the law of ``S_n`` as the ``n``-fold convolution of the token law in
  linear space by repeated squaring with ``scipy.signal.fftconvolve`` (``~log2 n`` FFTs),
  negative round-off clipped to 0. Its absolute error is ``~1e-16`` of the peak, so it loses
  the tails; ``baseline_ok`` is the fraction of the points with probability ``>= 1e-300``
  where it is still within ``1e-8`` relative (klrl's target).
- ``NumPy log-space convolution`` (where feasible, ``n (L-1) <= 2000``): the exact ``n``-fold
  convolution in log space, ``O(n^2 L^2)``; it meets the same accuracy target and is the
  reference of klrl's error there.
- best-of-N: the baseline's law (``fftconvolve``) through the best-of-N level law
  (docs: theory/best-of-n) in NumPy (``log N = n delta``, ``log1p``/``expm1`` forms),
  per-token reward and KL to ``p^n``.
  ``diff_reward``/``diff_kl`` compare it with klrl: where the tail is lost it is wrong.

``rel_err`` is klrl's worst ``|log p - log p_ref|`` over the points with ``p_ref >= 1e-300``.
Compile time is the first call's time minus a steady call's; the bytes of the sequence law are
those of its output only (a lower bound: each tilt's FFTs move more).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.signal import fftconvolve
from scipy.special import gammaln, logsumexp

from benchmarks.harness import Row, median_time
from klrl import memoryless

FLOOR = -690.0         # log 1e-300


def np_law_fft(q, n):
  """Law of the sum of ``n`` i.i.d. draws of ``q`` (linear space), by repeated squaring."""
  out, base = np.ones(1), q
  while n:
    if n & 1:
      out = np.maximum(fftconvolve(out, base), 0.0)
    n >>= 1
    if n:
      base = np.maximum(fftconvolve(base, base), 0.0)
  return out


def np_law_log(logq, n):
  """Exact ``n``-fold convolution in log space, ``O(n^2 L^2)``."""
  out = np.zeros(1)
  for _ in range(n):
    m = np.full((len(out) + len(logq) - 1, len(logq)), -np.inf)
    for j, lq in enumerate(logq):
      m[j:j + len(out), j] = out + lq
    out = logsumexp(m, axis=1)
  return out


def np_bon(law, levels, n, delta):
  """Per-token reward and KL to ``p^n`` of best-of-``e^{n delta}`` from a law of ``S_n`` (NumPy).

  ``log P_N(s) = N log F(s) + log(1 - (F^-(s) / F(s))^N)`` with ``N log x`` formed as
  ``-exp(log N + log(-log x))``, so that ``N = e^{n delta}`` never overflows.
  """
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    law = law / law.sum()
    tail = np.clip(np.cumsum(law[::-1])[::-1] - law, 0.0, 1.0)  # P(S > s)
    below = np.clip(np.cumsum(law) - law, 0.0, 1.0)             # P(S < s)
    log_n = n * delta
    log_f = np.log1p(-tail)
    a = -np.exp(log_n + np.log(-log_f))
    d = np.where(below > 0, -np.exp(log_n + np.log(np.maximum(log_f - np.log(below), 0.0))), -np.inf)
    log_pn = np.where((law > 0) & (log_f > -np.inf), a + np.log(-np.expm1(d)), -np.inf)
    pn = np.exp(log_pn)
    kl = np.sum(np.where(pn > 0, pn * (log_pn - np.log(law)), 0.0))
  return float(pn @ levels) / n, float(kl) / n


def _timed(fn, *args, repeats):
  t = time.perf_counter()
  jax.block_until_ready(fn(*args))
  first = time.perf_counter() - t
  run = median_time(fn, *args, repeats=repeats)
  return max(first - run, 0.0), run


def _token_law(levels, seed):
  if levels == 2:
    return np.log([0.7, 0.3])
  return np.log(np.random.default_rng(seed).dirichlet(np.ones(levels)))


def _err(got, ref):
  keep = ref >= FLOOR
  return float(np.max(np.abs(got[keep] - ref[keep])))


def _ok(base, ref):
  keep = ref >= FLOOR
  with np.errstate(divide="ignore"):
    return float(np.mean(np.abs(np.log(base[keep]) - ref[keep]) <= 1e-8))


def run(args):
  cases = [(2, [10, 1000, 100_000]), (10, [10, 1000])] if args.quick else \
      [(2, [10, 100, 1000, 10_000, 100_000]), (10, [10, 100, 1000, 10_000, 100_000]), (100, [10, 100, 1000, 10_000])]
  reps = 3 if args.quick else 5
  delta = 0.2
  for levels, ns in cases:
    logq = _token_law(levels, levels)
    lat = memoryless.Lattice(jnp.asarray(logq), jnp.asarray(0.0), jnp.asarray(1.0), jnp.asarray(1.0))
    for n in ns:
      size = f"L={levels}, n={n}"
      c, t = _timed(lambda: memoryless.sequence_law(lat, n).log_prob, repeats=reps)
      got = np.asarray(memoryless.sequence_law(lat, n).log_prob)
      tb = median_time(lambda: np_law_fft(np.exp(logq), n), repeats=reps)
      base = np_law_fft(np.exp(logq), n)
      if levels == 2:
        k = np.arange(n + 1)
        ref, ref_name = gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1) + k * logq[1] + (n - k) * logq[0], "lgamma"
      elif n * (levels - 1) <= 2000:
        ref, ref_name = np_law_log(logq, n), "log-space convolution"
      else:
        ref, ref_name = None, "none"
      extra = {"points": got.size}
      if ref is not None:
        extra |= {"rel_err": _err(got, ref), "reference": ref_name, "baseline_ok": _ok(base, ref)}
      else:          # no independent reference: agreement with the baseline where it is reliable (bulk)
        bulk = base >= 1e-4 * base.max()
        extra |= {"bulk_diff_vs_baseline": float(np.max(np.abs(got[bulk] - np.log(base[bulk])))),
                  "baseline_ok_vs_klrl": _ok(base, got)}
      yield Row("memoryless", "sequence_law", size, c, t, "scipy fftconvolve", tb, 8 * got.size, extra)
      if n * (levels - 1) <= 2000:
        td = median_time(lambda: np_law_log(logq, n), repeats=1)
        yield Row("memoryless", "sequence_law", size, c, t, "NumPy log-space convolution", td, 8 * got.size,
                  {"rel_err": extra["rel_err"]})
      # Best-of-N over sequences, N = e^{n delta}.
      c, t = _timed(lambda: memoryless.bon_vs_kl_lattice(lat, delta, n), repeats=reps)
      out = memoryless.bon_vs_kl_lattice(lat, delta, n)
      levels_n = np.arange(base.size, dtype=np.float64)
      tb = median_time(lambda: np_bon(np_law_fft(np.exp(logq), n), levels_n, n, delta), repeats=reps)
      r_b, kl_b = np_bon(base, levels_n, n, delta)
      yield Row("memoryless", f"bon_vs_kl (delta={delta})", size, c, t, "fftconvolve + NumPy level law", tb, None,
                {"kl": float(out.kl), "kl_to_tilted": float(out.kl_to_tilted),
                 "diff_reward": abs(float(out.mean_reward) - r_b), "diff_kl": abs(float(out.kl) - kl_b)})

  # The real instance at full vocabulary: the lattice (klrl.lattice vs np.bincount), then best-of-N.
  u = memoryless.english_unigram()
  logp_np, reward_np = np.asarray(u.logp), np.asarray(u.reward)
  c, t = _timed(lambda: memoryless.lattice(u.logp, u.reward, 10).log_mass, repeats=reps)
  lat = memoryless.lattice(u.logp, u.reward, 10)
  k = np.rint(reward_np * 10).astype(np.int64)
  np_lattice = lambda: np.bincount(k - k.min(), np.exp(logp_np))
  tb = median_time(np_lattice, repeats=reps)
  yield Row("memoryless", "lattice (English/VADER)", f"V={len(u.words)}", c, t, "NumPy rint + bincount", tb,
            16 * len(u.words), {"max_abs_diff": float(np.max(np.abs(np.exp(lat.log_mass) - np_lattice())))})
  q = np.exp(np.asarray(lat.log_mass))
  delta = 0.1
  for n in ([1000] if args.quick else [10, 100, 1000, 10_000]):
    c, t = _timed(lambda: memoryless.bon_vs_kl_lattice(lat, delta, n), repeats=reps)
    out = memoryless.bon_vs_kl_lattice(lat, delta, n)
    levels_n = (n * float(lat.offset) + np.arange(n * (q.size - 1) + 1)) / 10
    tb = median_time(lambda: np_bon(np_law_fft(q, n), levels_n, n, delta), repeats=reps)
    r_b, kl_b = np_bon(np_law_fft(q, n), levels_n, n, delta)
    yield Row("memoryless", f"bon_vs_kl English/VADER (delta={delta})", f"V={len(u.words)}, L=74, n={n}", c, t,
              "fftconvolve + NumPy level law", tb, None,
              {"mean_reward": float(out.mean_reward), "target": float(out.target_reward[()]),
               "kl": float(out.kl), "diff_reward": abs(float(out.mean_reward) - r_b),
               "diff_kl": abs(float(out.kl) - kl_b)})
