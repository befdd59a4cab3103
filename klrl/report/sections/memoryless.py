"""Report section: memoryless sequences, large deviations, and best-of-N ≍ KL-RL (docs: theory/memoryless)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from klrl import memoryless, tilted
from klrl.report import Check, Context, Section
from klrl.report.config import integer, real
from klrl.report.plotting import plt, save

TITLE = "Memoryless sequences: large deviations and best-of-N ≍ KL-RL"
DOCS = "theory/memoryless.md"
PAPERS = (
    "Yang, Salamatian, Sun, Suresh, Beirami, *Asymptotics of Language Model Alignment* (2024)",
)
REQUIRES = ("wordfreq", "vaderSentiment")   # the English/VADER instance (extra `real`)

THREE = (np.log([0.5, 0.3, 0.2]), np.array([0.0, 1.0, 3.0]))


def _pad(lat: memoryless.Lattice, width: int) -> memoryless.Lattice:
  """The same law on ``width`` lattice points (zero mass above), so that calls share one shape."""
  return lat._replace(log_mass=jnp.pad(lat.log_mass, (0, width - lat.log_mass.shape[-1]), constant_values=-jnp.inf))


def _np(x):
  return jax.tree.map(np.asarray, x)


OPTIONS = {
    "instances": integer(61, "random supports for the rate-function checks (plus the three instances)", low=4),
    "vocab": integer(8, "their support size (rewards on a quarter grid, so with ties)", low=2),
    "n_max": integer(100_000, "largest sequence length for the Bernoulli and 3-letter instances", low=16),
    "n_max_english": integer(1000, "largest sequence length for the English/VADER instance", low=16),
    "english_words": integer(0, "vocabulary of the English instance: the top k words, 0 for all (~3.2e5)", low=0),
    "rate_points": integer(201, "points on each rate-function curve", low=3),
    "bernoulli_p": real(0.3, "success probability of the Bernoulli token", low=1e-6, high=1 - 1e-6),
    "seed": integer(0, "random seed", low=0),
}


def run(cfg: dict, ctx: Context) -> Section:
  m, vocab = cfg["instances"], cfg["vocab"]
  n_max, n_english = cfg["n_max"], cfg["n_max_english"]
  k_english = cfg["english_words"] or None
  points = cfg["rate_points"]
  if ctx.scale:
    m, n_english = m * 16, n_max
  rng = np.random.default_rng(cfg["seed"])

  english = memoryless.english_unigram(k_english)
  lat_en = memoryless.lattice(english.logp, english.reward, 10)
  width = lat_en.log_mass.shape[-1]
  q = cfg["bernoulli_p"]
  instances = [  # name, lattice, delta
      (f"Bernoulli token, p = {q:g}", memoryless.lattice(np.log([1 - q, q]), np.array([0.0, 1.0])), 0.2),
      ("3 letters, p = (.5, .3, .2), r = (0, 1, 3)", memoryless.lattice(*THREE), 0.3),
      (f"English/VADER, {len(english.words)} words", lat_en, 0.1),
  ]
  lats = [_pad(lat, width) for _, lat, _ in instances]
  deltas = np.array([d for *_, d in instances])
  sec = Section("memoryless", TITLE, docs=DOCS, papers=PAPERS, text=(
      "Tokens are i.i.d. from p and a sequence of n tokens has reward S_n = sum r(y_i). The KL-RL "
      "solution at budget nΔ is phi_Δ^n; best-of-N over whole sequences with N = e^{nΔ} "
      "approaches it per token: reward → x_Δ = R(Δ), KL to p → Δ, KL to phi_Δ^n → 0, with a "
      "reward gap ≈ log n / (2 lam_Δ n). Every best-of-N value below is exact (the law of S_n on "
      "its lattice, by FFTs under several exponential tilts, accurate in the tails where best-of-N "
      "lives; N has up to ~10^4 digits). The real instance is the English unigram model of the "
      "`wordfreq` package with the VADER valence of each word as reward (0 for unlisted words: "
      f"{100 * float(np.exp(lat_en.log_mass[39])):.1f}% of the mass is tied at 0). Rate-function "
      f"checks run on {m} random supports of size {vocab} (tied rewards) and on the three instances."))

  # ---- best-of-N over sequences, every instance and every n in one call
  grid = lambda top: np.unique(np.round(np.logspace(0, np.log10(top), 13)).astype(int))
  ns = [grid(n_max), grid(n_max), grid(n_english)]
  enum_deltas = np.array([0.05, 0.3, 1.0, 2.0])                   # the last one past delta_max
  rows = [(i, n, deltas[i]) for i in range(3) for n in ns[i]] + [(1, 6, d) for d in enum_deltas]
  batch = jax.tree.map(lambda *a: jnp.stack(a), *[lats[i] for i, _, _ in rows])
  out = _np(memoryless.bon_vs_kl_lattice(batch, np.array([d for *_, d in rows]), np.array([n for _, n, _ in rows])))

  # ---- rate functions: the three instances and random supports, one batch (padded to one width)
  logp = np.full((m + 3, width), -np.inf)
  reward = np.zeros((m + 3, width))
  for i, lat in enumerate(lats):
    logp[i], reward[i] = lat.log_mass, lat.reward
  p = rng.dirichlet(np.full(vocab, 0.8), m)
  logp[3:, :vocab], reward[3:, :vocab] = np.log(p), np.round(rng.normal(size=(m, vocab)) * 4) / 4
  has = logp > -np.inf
  lo, hi = np.where(has, reward, np.inf).min(-1), np.where(has, reward, -np.inf).max(-1)
  fixed = np.concatenate([deltas, np.zeros(m)])             # the instances' budgets; random ones:
  frac = np.concatenate([np.zeros(3), rng.uniform(0.05, 0.95, m)])   # a fraction of delta_max
  t = np.linspace(-8, 8, 1001)

  @jax.jit
  def library(logp, reward, fixed, frac):
    # All the library calls on this batch in one compilation (the report only orchestrates).
    deltas = fixed + frac * tilted.max_kl(logp, reward)
    x = lo[:, None] + (hi - lo)[:, None] * jnp.linspace(0, 1, points)[None, :]
    ld = memoryless.large_deviations(logp[:, None], reward[:, None], deltas[:, None], x,
                                     jnp.broadcast_to(t, (m + 3, t.shape[0])))
    enum = memoryless.bon_vs_kl_enumerated(np.broadcast_to(THREE[0], (4, 3)), THREE[1], enum_deltas, 6)
    return deltas, x, ld, enum

  all_deltas, x, ld, enum = _np(library(logp, reward, fixed, frac))
  i_p, i_d, lam, x_d = ld.rate, ld.tilted_rate, ld.lam[:, 0], ld.target[:, 0]
  # Brute-force Legendre transform on the t grid, at interior points (the ends are exact by formula).
  inner = slice(points // 5, 4 * points // 5)
  brute = (x[:, inner, None] * t[None, None, :] - ld.cgf[:, None, :]).max(-1)
  h2 = (t[1] - t[0]) ** 2 * (hi - lo) ** 2 / 32             # grid error <= A'' h^2 / 8, A'' <= spread^2 / 4

  # ---- checks
  n_rows = sum(len(v) for v in ns)
  fin = np.isfinite(enum.kl_to_tilted)
  got = jax.tree.map(lambda v: v[n_rows:], out)
  enum_err = max(np.max(np.abs(a_[fin if k == 2 else slice(None)] - b_[fin if k == 2 else slice(None)]))
                 for k, (a_, b_) in enumerate(zip((got.mean_reward, got.kl, got.kl_to_tilted, got.win_rate),
                                                  (enum.mean_reward, enum.kl, enum.kl_to_tilted, enum.win_rate))))
  inf_ok = np.all(np.isinf(got.kl_to_tilted) == np.isinf(enum.kl_to_tilted))
  last = np.cumsum([len(v) for v in ns]) - 1
  ratio = (out.target_reward - out.mean_reward)[last] / out.predicted_gap[last]
  klt = [out.kl_to_tilted[s:e + 1] for s, e in zip(np.concatenate([[0], last[:-1] + 1]), last)]
  ident = np.abs(i_d - (i_p - all_deltas[:, None] - lam[:, None] * (x - x_d[:, None])))
  ok = np.isfinite(i_p)
  sec.checks = [
      Check("I_p(x_Δ) = Δ", "Cramér rate at the KL-RL mean reward equals the budget, relative",
            float(np.max(np.abs(ld.rate_at_target[:, 0] - all_deltas) / np.maximum(1, all_deltas))), 1e-11, m + 3),
      Check("Fenchel–Young", "I_p(x) >= t x - A(t) on a grid of t (worst violation)",
            float(np.max(brute - i_p[:, inner] - 1e-13 * np.abs(ld.cgf).max(-1, keepdims=True)).clip(0)), 1e-12, m + 3),
      Check("Legendre agreement", "I_p from the Newton solve vs brute-force max over the t grid, over the grid's bound",
            float(np.max((i_p[:, inner] - brute) / (h2[:, None] + 1e-12))), 1.0, m + 3),
      Check("I_Δ identity", "I_Δ(x) = I_p(x) - Δ - lam_Δ (x - x_Δ), absolute / max(1, I_p)",
            float(np.max(ident[ok] / np.maximum(1, i_p[ok]))), 1e-9, m + 3),
      Check("I_Δ(x_Δ) = 0", "the rate under phi_Δ vanishes at x_Δ only (and is >= 0)",
            float(max(np.max(np.abs(ld.tilted_rate_at_target)), -np.min(i_d))), 1e-13, m + 3),
      Check("SCGF = Rényi form", "A(lam+t) - A(lam) = t log sum e^r + lam H_{1+lam} - (lam+t) H_{1+lam+t}, abs / max(1, |Λ|)",
            float(np.max(np.abs(ld.scgf - ld.scgf_renyi) / np.maximum(1, np.abs(ld.scgf)))), 1e-11, m + 3),
      Check("enumeration agreement", "best-of-N over sequences vs all 3^6 sequences (reward, KLs, win rate), 4 budgets",
            float(enum_err) if inf_ok else float("inf"), 1e-12, 4),
      Check("KL to phi decreasing", "(1/n) KL(pi_N || phi_Δ^n) decreases along n (largest increase)",
            float(max(np.max(np.diff(k)) for k in klt)), 0.0, 3),
      Check("reward gap ≈ log n / (2 lam n)", f"|gap / prediction - 1| at the largest n ({n_max}, {n_max}, {n_english})",
            float(np.max(np.abs(ratio - 1))), 0.1, 3),
  ]

  # ---- figures
  fig, ax = plt.subplots(3, 3, figsize=(13, 10.5))
  table = []
  start = 0
  for i, ((name, _, delta), n) in enumerate(zip(instances, ns)):
    o = jax.tree.map(lambda v: v[start:start + len(n)], out)
    start += len(n)
    target = float(o.target_reward[0])
    ax[i, 0].plot(n, o.mean_reward, "o-", ms=3, label=r"best-of-$e^{n\Delta}$")
    ax[i, 0].plot(n, target - o.predicted_gap, ":", c="gray", label=r"$x_\Delta - \log n\,/\,(2\lambda_\Delta n)$")
    ax[i, 0].axhline(target, c="k", lw=0.8, label=r"$x_\Delta$")
    ax[i, 1].plot(n, o.kl, "o-", ms=3, label=r"$\mathrm{KL}(\pi_N \| p^n)\,/\,n$")
    ax[i, 1].axhline(delta, c="k", lw=0.8, label=rf"$\Delta$ = {delta:g}")
    ax[i, 2].loglog(n[1:], o.kl_to_tilted[1:], "o-", ms=3, label=r"$\mathrm{KL}(\pi_N \| \phi_\Delta^n)\,/\,n$")
    ax[i, 2].loglog(n[1:], np.log(n[1:]) / (2 * n[1:]), ":", c="gray", label=r"$\log n\,/\,(2n)$")
    ax[i, 0].set(xscale="log", ylabel="per-token reward")
    ax[i, 1].set(xscale="log", ylabel="per-token KL to p", title=name)
    ax[i, 2].set(ylabel=r"per-token KL to $\phi_\Delta^n$")
    for j in range(3):
      ax[i, j].legend(fontsize=7)
    table += [dict(instance=name, n=int(nn), delta=delta, mean_reward=float(a_), target_reward=target, kl=float(b_),
                   kl_to_tilted=float(c_), win_rate=float(w_), predicted_gap=float(g_))
              for nn, a_, b_, c_, w_, g_ in zip(n, o.mean_reward, o.kl, o.kl_to_tilted, o.win_rate, o.predicted_gap)]
  for j, lab in enumerate([r"$\to x_\Delta$", r"$\to \Delta$", r"$\to 0$"]):
    ax[2, j].set_xlabel(rf"sequence length n  ($N = e^{{n\Delta}}$)   {lab}")
  fig2, ax2 = plt.subplots(1, 3, figsize=(13, 3.8))
  for i, (name, _, delta) in enumerate(instances):
    fin = np.isfinite(i_p[i])
    ax2[i].plot(x[i][fin], i_p[i][fin], label=r"$I_p$ (under p)")
    fin = np.isfinite(i_d[i])
    ax2[i].plot(x[i][fin], i_d[i][fin], label=r"$I_\Delta$ (under $\phi_\Delta$)")
    ax2[i].axvline(x_d[i], c="k", ls=":", lw=0.8, label=r"$x_\Delta$")
    ax2[i].axhline(delta, c="gray", ls="--", lw=0.8, label=r"$\Delta = I_p(x_\Delta)$")
    ax2[i].set(title=name, xlabel="per-token reward x", yscale="symlog" if i == 2 else "linear")
    ax2[i].set_ylim(bottom=0)
  ax2[0].set_ylabel("rate (nats per token)")
  ax2[2].set_ylabel("rate (symlog scale)")
  ax2[0].legend(fontsize=7)
  sec.figures = [save(fig, ctx.figure("memoryless_convergence")), save(fig2, ctx.figure("memoryless_rates"))]
  sec.tables = {"convergence": table}
  return sec
