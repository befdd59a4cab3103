"""Report section: best-of-N, its bounds, and best-of-N against the KL-RL frontier (docs: theory/best-of-n)."""
from __future__ import annotations

import jax
import numpy as np

from klrl import bon, divergences, problems, tilted
from klrl.report import Check, Context, Section
from klrl.report.config import integer
from klrl.report.plotting import plt, save

TITLE = "Best-of-N: exact laws, bounds, and best-of-N against the KL-RL frontier"
DOCS = "theory/best-of-n.md"
PAPERS = (
    "Beirami et al., *Theoretical guarantees on the best-of-n alignment policy* (2024)",
    "Gui, Gârbacea, Veitch, *BoNBoN alignment* (2024)",
    "Verdun et al., *Soft best-of-n sampling* (2025)",
    "Yang, Salamatian, Sun, Suresh, Beirami, *Asymptotics of Language Model Alignment* (2024)",
)


def _pad(width, lp, r):
  return (np.pad(np.asarray(lp), (0, width - len(lp)), constant_values=-np.inf), np.pad(np.asarray(r), (0, width - len(r))))


def _examples(width, random_lp, random_r):
  """(name, logp, reward) of a few supports, binary, tied, random, nearly continuous, all
  padded with zero-mass outputs to one width so that each library call compiles once."""
  yield ("binary, p(good) = 1/2", *_pad(width, *problems.bernoulli(0.5)))
  yield ("binary, p(good) = 0.1", *_pad(width, *problems.bernoulli(0.1)))
  yield "4 tied levels", *_pad(width, *TIED)
  yield f"random, {len(random_lp)} outputs", *_pad(width, random_lp, random_r)
  yield "Zipf, V = 1000 (nearly continuous)", *_pad(width, *problems.zipf_linear(1000))


TIED = (np.log([0.4, 0.1, 0.2, 0.2, 0.1]), np.array([0.0, 1.0, 1.0, 2.0, 3.0]))


def _rows(x, k):
  return np.broadcast_to(x, (k,) + x.shape)


def _np(x):
  return jax.tree.map(np.asarray, x)


OPTIONS = {
    "instances": integer(256, "random reference/reward instances per check (half with tied rewards)", low=4),
    "vocab": integer(40, "support size of the random instances", low=4),
    "mc_samples": integer(100_000, "explicit best-of-N samples per row in the Monte Carlo check", low=1000),
    "seed": integer(0, "random seed", low=0),
}


def run(cfg: dict, ctx: Context) -> Section:
  m, vocab = cfg["instances"], cfg["vocab"]
  num = cfg["mc_samples"]
  if ctx.scale:
    m, vocab, num = m * 16, vocab * 64, num * 10
  rng = np.random.default_rng(cfg["seed"])
  sec = Section("bon", TITLE, docs=DOCS, papers=PAPERS, text=(
      "Best-of-N keeps the best of N draws from p; on the reward levels its law is "
      "`P_N(k) = F_k^N - F-_k^N`, evaluated in log space for real N (up to 1e300 here). "
      "`log N - (N-1)/N` is an **upper bound** on its KL, attained only without atoms: with "
      "binary outputs the KL stays below `-log p(good)` for every N (first figure). Checks run "
      f"in float64 on {m} random references of support {vocab} (half with tied rewards, all "
      "with zero-mass outputs), N drawn log-uniformly in [1, 1e4]. The gap bounds use "
      "`sum_k P_k^2` over reward levels (tied outputs merged), which is what makes them hold "
      "with ties."))

  # ---- random instances: half with exact ties, all with zero-mass outputs
  key = jax.random.PRNGKey(cfg["seed"])
  logp, r = (np.array(x) for x in problems.random_problem(key, m, vocab, zero_mass=2))
  half = m // 2
  r[half:] = np.round(r[half:] * 4) / 4              # exact ties (as problems.random_problem(ties=4))
  n = np.exp(rng.uniform(0.0, np.log(1e4), m))
  fr = s = _np(bon.against_frontier(logp, r, n))      # BoN's KL, reward, win rate; the frontier
  bound, w_bound = _np(bon.kl_bound(n)), _np(bon.win_rate_bound(n))
  limit = _np(bon.kl_limit(logp, r))
  far_kl = _np(divergences.kl(bon.log_policy(logp, r, np.full(m, 1e300)), logp))
  est = _np(bon.kl_estimator(rng.uniform(0.0, 1.0, m), n))
  ok = np.isfinite(fr.lam)
  ident = np.abs(fr.kl_to_tilted[ok] - fr.lam[ok] * fr.gap[ok]) / np.maximum(1e-3, fr.kl_to_tilted[ok])
  law = _np(bon.log_policy(logp, r, n))
  as_tilt = _np(tilted.tilt(logp, np.where(logp > -np.inf, _np(bon.transformed_reward(logp, r, n)), 0.0), np.ones(m)))
  mid = _np(bon.mid_rank(logp, r))
  w_front = _np(tilted.kl_constrained(logp, mid, s.kl).mean_reward)

  # Monte Carlo: explicit draws against the exact law, per-cell z-scores (tied rows).
  mc = slice(half, half + 4)
  idx = np.asarray(bon.sample(key, logp[mc], r[mc], 4, num))
  exact = np.exp(_np(bon.log_policy(logp, r, np.where(np.arange(m) < half + 4, 4.0, n)))[mc])
  freq = np.stack([np.bincount(i, minlength=vocab) for i in idx]) / num
  with np.errstate(divide="ignore", invalid="ignore"):
    z = np.where(exact > 0, (freq - exact) / np.sqrt(exact * (1 - exact) / num),
                 np.where(freq > 0, np.inf, 0.0))                    # zero-mass outputs never drawn

  # Soft best-of-N: tau -> 0 gives hard best-of-N (tied rows: reward spacing 1/4, tau = 1/140).
  n_int = np.round(n)
  soft = _np(bon.soft_log_policy(logp, r, n_int, np.full(m, 1 / 140), nodes=4096))[half:]
  hard = _np(bon.log_policy(logp, r, n_int))[half:]

  w = lambda x: float(np.max(x))
  sec.checks = [
      Check("KL bound", "KL(pi_N||p) - (log N - (N-1)/N) <= 0", w(s.kl - bound), 1e-13, m),
      Check("KL bound gap", "log N - (N-1)/N - KL <= 2N(N-1) sum_k P_k^2 (levels)", w(bound - s.kl - _np(bon.kl_gap_bound(logp, r, n))), 1e-13, m),
      Check("win-rate bound", "W - N/(N+1) <= 0 (ties count 1/2)", w(s.win_rate - w_bound), 1e-13, m),
      Check("win-rate gap", "N/(N+1) - W <= ((N-1)/2) sum_k P_k^2", w(w_bound - s.win_rate - _np(bon.win_rate_gap_bound(logp, r, n))), 1e-13, m),
      Check("KL limit", "|KL(N = 1e300) - (-log p(S*))| / -log p(S*)", w(np.abs(far_kl - limit) / limit), 1e-12, m),
      Check("estimator range", "Beirami's estimate lies in [0, log N - (N-1)/N]", w(np.maximum(-est, est - bound)), 1e-13, m),
      Check("frontier dominance", "E_{pi_N}[r] - R(KL(pi_N||p)) <= 0", w(-fr.gap), 1e-12, m),
      Check("closeness identity", "|KL(pi_N||phi) - lam (R - E_{pi_N} r)| / max(1e-3, KL)", w(ident), 1e-8, int(ok.sum())),
      Check("BoN is a tilt", "tilt(p, log(P_N/P_k), beta = 1) = pi_N (max abs. prob. error)", w(np.abs(np.exp(as_tilt) - np.exp(law))), 1e-13, m),
      Check("win-rate frontier", "W_BoN - (win-rate-optimal tilt at BoN's KL) <= 0", w(s.win_rate - w_front), 1e-12, m),
      Check("Monte Carlo", f"|z| of the sampler's cell frequencies vs the exact law ({num} samples, N = 4)", float(np.abs(z).max()), 4.0, 4),
      Check("soft -> hard", "soft BoN at tau = spacing/35 vs hard BoN (max abs. prob. error)", w(np.abs(np.exp(soft) - np.exp(hard))), 1e-12, m - half),
  ]

  # ---- figures: the examples padded to width 1000, 80 values of N or of the budget each
  examples = list(_examples(1000, logp[0][logp[0] > -np.inf], r[0][logp[0] > -np.inf]))
  k = 80
  ns = np.exp(np.linspace(0.0, np.log(1e6), k))
  fig, ax = plt.subplots(figsize=(6.5, 4.2))
  ax.plot(ns, _np(bon.kl_bound(ns)), "k--", label="log N - (N-1)/N (upper bound)")
  limits = _np(bon.kl_limit(np.stack([e[1] for e in examples]), np.stack([e[2] for e in examples])))
  kl_rows, front_rows, points = [], [], {}
  for (name, lp, rr), lim in zip(examples, limits):
    points[name] = st = _np(bon.stats(_rows(lp, k), _rows(rr, k), ns))
    line, = ax.plot(ns, st.kl, label=name)
    ax.axhline(lim, ls=":", lw=0.8, c=line.get_color())
    kl_rows += [dict(example=name, n=float(a), kl=float(b), win_rate=float(c)) for a, b, c in zip(ns, st.kl, st.win_rate)]
  ax.set(xscale="log", xlabel="N", ylabel="KL(π_N || p) (nats)", title="KL of best-of-N (dotted: the limit -log p(S*))")
  ax.legend(fontsize=7)

  # Reward-KL plane: the frontier and the best-of-N points (N = 1 ... 1e6).
  fig2, ax2 = plt.subplots(1, 2, figsize=(11, 4))
  for panel, (name, lp, rr) in zip(ax2, examples[3:]):
    st = points[name]
    d = np.linspace(0.0, st.kl[-1] * 1.1, k)
    curve = _np(tilted.kl_constrained(_rows(lp, k), _rows(rr, k), d).mean_reward)
    at_bon = _np(tilted.kl_constrained(_rows(lp, k), _rows(rr, k), st.kl).mean_reward)
    panel.plot(d, curve, "k-", label="KL-RL frontier R(Δ)")
    panel.plot(st.kl[::4], st.mean_reward[::4], "o", ms=4, label="best-of-N")
    panel.set(title=name, xlabel="KL(π || p) (nats)", ylabel="E[r]")
    panel.legend(fontsize=8)
    front_rows += [dict(example=name, n=float(a), kl=float(b), bon_reward=float(c), frontier=float(e), gap=float(e - c))
                   for a, b, c, e in zip(ns, st.kl, st.mean_reward, at_bon)]

  # Win rate against KL: best-of-N vs the win-rate-optimal tilt, discrete and continuous.
  fig3, ax3 = plt.subplots(figsize=(6.5, 4.2))
  name, lp, rr = examples[3]
  st = points[name]
  d = np.linspace(0.0, st.kl[-1] * 1.05, k)
  keep = logp[0] > -np.inf
  mid0 = _rows(np.pad(mid[0][keep], (0, 1000 - keep.sum())), k)        # row 0's mid-ranks, padded
  ax3.plot(d, _np(tilted.kl_constrained(_rows(lp, k), mid0, d).mean_reward), "C0-", label=f"win-rate-optimal tilt ({name})")
  ax3.plot(st.kl[::4], st.win_rate[::4], "C0o", ms=4, label="best-of-N (same support)")
  bb = _np(bon.bonbon(np.linspace(0.0, 60.0, k)))
  ax3.plot(bb.kl, bb.win_rate, "k-", lw=1, label="continuous: tilt p exp(cF), W(c) vs KL(c)")
  ax3.plot(_np(bon.kl_bound(ns)), _np(bon.win_rate_bound(ns)), "k--", lw=1, label="continuous: best-of-N, N/(N+1) vs log N - (N-1)/N")
  ax3.set(xlabel="KL(π || p) (nats)", ylabel="win rate against p", xlim=(0, st.kl[-1] * 1.05), ylim=(0.45, 1.0),
          title="Win rate against KL")
  ax3.legend(fontsize=7)

  # Soft best-of-N tends to the tilt: N (reward gap) and N^2 KL level off (same shapes as the checks).
  soft_n = np.exp(np.linspace(0.0, np.log(1e6), m))
  lp, rr = (_rows(x, m) for x in _pad(vocab, *TIED))
  tau = 0.5
  sl = _np(bon.soft_log_policy(lp, rr, soft_n, np.full(m, tau), nodes=4096))
  tl = _np(tilted.tilt(lp, rr, np.full(m, tau)))
  gap = np.sum((np.exp(tl) - np.exp(sl)) * rr, axis=-1)
  kl = _np(divergences.kl(sl, tl))
  fig4, ax4 = plt.subplots(figsize=(6.5, 4.2))
  ax4.plot(soft_n, soft_n * gap, label="N × (E_tilt r - E_soft r)")
  ax4.plot(soft_n, soft_n ** 2 * kl, label="N² × KL(soft || tilt)")
  ax4.set(xscale="log", xlabel="N", title=f"Soft best-of-N → tilt (4 tied levels, τ = {tau})")
  ax4.legend(fontsize=8)

  sec.figures = [save(fig, ctx.figure("bon_kl_vs_n")), save(fig2, ctx.figure("bon_vs_frontier")),
                 save(fig3, ctx.figure("bon_win_rate")), save(fig4, ctx.figure("bon_soft"))]
  sec.tables = {"kl_vs_n": kl_rows, "vs_frontier": front_rows}
  return sec
