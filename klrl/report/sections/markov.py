"""Report section: best-of-N and KL-RL for references whose tokens form a Markov chain
(docs: theory/markov)."""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from klrl import markov, memoryless, tilted
from klrl.report import Check, Context, Section
from klrl.report.config import integer, real
from klrl.report.plotting import plt, save

TITLE = "Alignment with memory: best-of-N and KL-RL for Markov-token references"
DOCS = "theory/markov.md"
PAPERS = (
    "Balasundaram, Rameshwar, alignment asymptotics for Markov-token references (arXiv:2610.01828)",
    "Yang, Salamatian, Sun, Suresh, Beirami, *Asymptotics of Language Model Alignment* (2024)",
)

OPTIONS = {
    "instances": integer(16, "random Markov references per check", low=2),
    "vocab": integer(4, "tokens V of the random references", low=2),
    "delta": real(0.1, "per-token KL budget of best-of-N with N = e^{n delta}", low=1e-6),
    "n_max": integer(256, "longest sequence of the random chain's convergence curve", low=4),
    "bigram_words": integer(100, "word states of the English bigram instance (plus <other>)", low=2),
    "bigram_n_max": integer(4, "longest sequence of the English bigram's convergence curve", low=1),
    "seed": integer(0, "random seed", low=0),
}


def _lengths(n_max):
  return [n for n in (1, 4, 16, 64, 256, 1024, 4096) if n <= n_max]     # each length compiles once


def _curve(ref, delta, lengths, scale=1.0):
  out = [markov.bon_vs_kl(ref, delta, n, scale) for n in lengths]
  return {k: np.array([float(getattr(o, k)) for o in out]) for k in out[0]._fields}


def run(cfg: dict, ctx: Context) -> Section:
  m, v, delta = cfg["instances"], cfg["vocab"], cfg["delta"]
  key = jax.random.PRNGKey(cfg["seed"])
  k1, k2, k3 = jax.random.split(key, 3)
  sec = Section("markov", TITLE, docs=DOCS, papers=PAPERS, text=(
      "A reference whose tokens form a Markov chain (initial law mu, transitions P) and an additive "
      "reward S_n. The tilted matrix P_lam(i, j) = P(i, j) e^{lam r(j)} gives the exact cumulant generating "
      "function A_n(lam) = log E[e^{lam S_n}] and its per-token limit Lambda(lam) = log rho(lam) (Perron root); "
      "the Doob transform of P_lam is the limiting KL-RL policy, and best-of-N with N = e^{n delta} approaches "
      f"it per token as n grows. {m} random references with V = {v} (integer rewards 0..3), float64."))

  # Identical rows: every quantity is the memoryless one.
  logp = jax.nn.log_softmax(jax.random.normal(k1, (m, v)), axis=-1)
  r = jnp.asarray(np.random.default_rng(cfg["seed"]).integers(0, 4, (m, v)), logp.dtype)
  iid = markov.reference(logp, jnp.broadcast_to(logp[:, None, :], (m, v, v)), r)
  lam = jnp.linspace(-1.5, 1.5, 7)[:, None]
  err_iid = float(jnp.max(jnp.abs(markov.scgf(iid, lam) - memoryless.cgf(logp, r, lam))))
  xs = tilted.stats(logp, r, 2.0).mean_reward           # inside the domain: the tilted mean at lam = 1/2
  err_rate = float(jnp.max(jnp.abs(markov.rate_function(iid, xs) - memoryless.rate_function(logp, r, xs))))

  # Two states: rho(lam) is the larger root of a quadratic.
  ab = jax.random.uniform(k2, (m, 2), minval=0.05, maxval=0.95)
  a, b = ab[:, 0], ab[:, 1]
  trans = jnp.stack([jnp.stack([1 - a, a], -1), jnp.stack([b, 1 - b], -1)], -2)
  a, b = a[None], b[None]                               # against lam[:, None]
  r2 = jnp.array([0.0, 1.0])
  two = markov.reference(jnp.log(jnp.full((m, 2), 0.5)), jnp.log(trans), jnp.broadcast_to(r2, (m, 2)))
  e = jnp.exp(lam)
  tr, det = (1 - a) + (1 - b) * e, e * ((1 - a) * (1 - b) - a * b)
  closed = jnp.log((tr + jnp.sqrt(tr * tr - 4 * det)) / 2)
  err_two = float(jnp.max(jnp.abs(markov.scgf(two, lam) - closed)))

  # Brute force: all V^n sequences of a random chain.
  ref = markov.random_reference(k3, v, shape=(m,), levels=4)
  n_small = 4
  seqs = np.array(list(itertools.product(range(v), repeat=n_small)))
  li, lt, rw = (np.asarray(x) for x in (ref.log_init, ref.log_trans, ref.reward))
  fr = np.asarray(ref.first_reward)
  logp_seq = li[:, seqs[:, 0]] + sum(lt[:, seqs[:, t - 1], seqs[:, t]] for t in range(1, n_small))
  s_seq = fr[:, seqs[:, 0]] + sum(rw[:, seqs[:, t - 1], seqs[:, t]] for t in range(1, n_small))
  lam_b = np.linspace(-1.0, 1.0, 5)[:, None, None]
  brute = np.log(np.sum(np.exp(logp_seq[None] + lam_b * s_seq[None]), axis=-1))
  err_brute = float(np.max(np.abs(np.asarray(markov.log_mgf(ref, lam_b[..., 0], n_small)) - brute)))

  # Lambda' by implicit derivatives against central differences; the Doob transform's KL rate.
  l0, h = jnp.asarray(0.7), 1e-5
  slope = jax.grad(lambda x: jnp.sum(markov.scgf(ref, x)))(jnp.full((m,), 0.7))
  fd = (markov.scgf(ref, l0 + h) - markov.scgf(ref, l0 - h)) / (2 * h)
  err_fd = float(jnp.max(jnp.abs(slope - fd) / jnp.maximum(1.0, jnp.abs(fd))))
  doob = markov.doob(ref, l0)
  kl_rate = l0 * slope - markov.scgf(ref, l0)
  err_doob = float(jnp.max(jnp.abs(doob.kl_rate - kl_rate)))

  # Best-of-e^{n delta} over sequences approaches KL-RL per token.
  lengths = _lengths(cfg["n_max"])
  chain = markov.random_reference(jax.random.fold_in(key, 7), v, levels=4)
  cur = _curve(chain, delta, lengths)
  gaps = np.abs(cur["mean_reward"] - cur["limit_reward"])
  tail = slice(len(lengths) // 2, None)
  monotone = float(np.max(np.diff(cur["kl_to_tilted"][tail]) > 0))
  sec.checks = [
      Check("identical rows = memoryless", "Lambda(lam) of P with rows p = A(lam) of klrl.memoryless, absolute",
            err_iid, 1e-12, m),
      Check("identical rows: rate function", "I(x) = memoryless rate function, absolute", err_rate, 1e-9, m),
      Check("two-state Perron root", "log rho(lam) = log of the larger root of rho^2 - tr rho + det", err_two, 1e-12, m),
      Check("A_n by enumeration", f"log E[e^(lam S_n)] over all V^{n_small} sequences, absolute", err_brute, 1e-11, m),
      Check("Lambda' implicit = finite differences", "relative, h = 1e-5", err_fd, 1e-7, m),
      Check("Doob KL rate", "KL rate of Q_lam to P = lam Lambda' - Lambda, absolute", err_doob, 1e-10, m),
      Check("best-of-N -> KL-RL per token", f"KL(pi_N || phi_n)/n decreases in n from n = {lengths[len(lengths) // 2]} "
            "(1 = violated)", monotone, 0.0, 1),
      Check("per-token reward gap shrinks", f"|E[S_n]/n - x_delta| at n = {lengths[-1]} over its value at n = 1",
            float(gaps[-1] / max(gaps[0], 1e-300)), 0.2, 1),
  ]

  fig, ax = plt.subplots(1, 2, figsize=(11, 4))
  curves = [("random chain, V = %d" % v, lengths, cur)]
  try:
    bigram = markov.english_bigram(cfg["bigram_words"])
  except ImportError as err:
    sec.text += f" The English bigram instance was skipped: {err}."
  else:
    bl = _lengths(cfg["bigram_n_max"])
    ctx.log(f"      English bigram: V = {len(bigram.words)}, n up to {bl[-1]} ...")
    curves.append((f"English bigram, V = {len(bigram.words)}", bl, _curve(bigram.ref, delta, bl, 10.0)))
    sec.text += (f" The real instance is a bigram model of the Lee background corpus ({bigram.tokens} words of "
                 f"news text, shipped with gensim) over its {len(bigram.words) - 1} most frequent words and "
                 "<other>, with VADER valence as the per-token reward.")
  for name, ls, c in curves:
    ax[0].plot(ls, c["mean_reward"] / c["limit_reward"], "o-", label=f"{name} (x_delta = {c['limit_reward'][0]:.3g})")
    ax[1].plot(ls, c["kl_to_tilted"], "o-", label=f"{name}: KL(pi_N || phi_n)/n")
    ax[1].plot(ls, np.abs(c["kl"] - delta), "x--", c=ax[1].lines[-1].get_color(), label=f"{name}: |KL(pi_N || p)/n - delta|")
  ax[0].axhline(1.0, ls=":", c="k", lw=1)
  ax[0].set(xscale="log", xlabel="sequence length n", ylabel="reward per token / x_delta",
            title=f"Best-of-e^(n delta) against the KL-RL limit x_delta, delta = {delta}")
  ax[1].set(xscale="log", yscale="log", xlabel="sequence length n", ylabel="nats per token",
            title="Best-of-N against KL-RL, per token")
  ax[0].legend(fontsize=7)
  ax[1].legend(fontsize=6)
  sec.figures = [save(fig, ctx.figure("markov_bon_vs_kl"))]
  sec.tables = {"convergence": [dict(instance=name, n=n, **{k: float(c[k][i]) for k in c})
                                for name, ls, c in curves for i, n in enumerate(ls)]}
  return sec
