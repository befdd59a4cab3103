"""Report section: energy-based (tilted) policies and the KL-constrained closed form (docs: theory/tilted)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from klrl import divergences, problems, tilted
from klrl.report import Check, Context, Section
from klrl.report.config import integer
from klrl.report.plotting import plt, save

TITLE = "Energy-based policies and the KL-constrained closed form"
DOCS = "theory/tilted.md"
PAPERS = (
    "Tan, Hong, *A Theoretical Lens for RL-Tuned Language Models via Energy-Based Models* (2025, arXiv:2512.18730)",
    "Yang, Salamatian, Sun, Suresh, Beirami, *Asymptotics of Language Model Alignment* (2024)",
)


def _examples(vocab):
  yield "Zipf reference, linear reward", *problems.zipf_linear(vocab)
  lp, r = problems.random_problem(jax.random.PRNGKey(7), 1, vocab)
  yield "random logits, Gaussian reward", lp[0], r[0]
  yield "tied maxima (4 points)", jnp.log(jnp.array([0.4, 0.3, 0.2, 0.1])), jnp.array([0.0, 1.0, 2.0, 2.0])
  yield "Bernoulli, p(good) = 0.2", *problems.bernoulli(0.2)


def _random_q(key, logp, concentration=1.0):
  """A random law absolutely continuous w.r.t. p (same support)."""
  g = concentration * jax.random.normal(key, logp.shape, logp.dtype)
  return jax.nn.log_softmax(jnp.where(logp > -jnp.inf, g, -jnp.inf), axis=-1)


OPTIONS = {
    "instances": integer(256, "random reference/reward/q instances per check", low=2),
    "vocab": integer(40, "support size of the random instances", low=2),
    "frontier_points": integer(60, "points on each frontier curve", low=2),
    "seed": integer(0, "random seed", low=0),
}


def run(cfg: dict, ctx: Context) -> Section:
  n, vocab = cfg["instances"], cfg["vocab"]
  points = cfg["frontier_points"]
  if ctx.scale:
    n, vocab = n * 16, vocab * 256
  key = jax.random.PRNGKey(cfg["seed"])
  k = jax.random.split(key, 6)
  sec = Section("tilted", TITLE, docs=DOCS, papers=PAPERS, text=(
      "The optimum of `E_q[r] - beta KL(q||p)` is the tilt `pi_beta ∝ p exp(r/beta)`; the "
      "KL-constrained optimum at budget Δ is the tilt whose KL is Δ, or `p(.|S*)` past "
      "`Δ_max = -log p(S*)`. Checks run in float64 on random references (log-normal-like "
      f"logits, Gaussian rewards, some with exact ties and zero-mass entries), {n} instances of "
      f"support size {vocab}."))

  # ---- random instances
  logp, r = problems.random_problem(k[0], n, vocab, ties=4, zero_mass=2)
  logq = _random_q(k[1], logp)
  beta = jnp.exp(jax.random.uniform(k[2], (n,), minval=-3, maxval=2))
  dmax = tilted.max_kl(logp, r)
  frac = jax.random.uniform(k[3], (n,), minval=1e-6, maxval=1 - 1e-6)
  delta = dmax * frac
  sol = tilted.kl_constrained(logp, r, delta)

  j = tilted.objective(logq, logp, r, beta)
  gibbs = beta * tilted.log_partition(logp, r, beta) - beta * divergences.kl(logq, tilted.tilt(logp, r, beta))
  err_gibbs = jnp.abs(j - gibbs) / jnp.maximum(1.0, jnp.abs(j))

  kl_err = jnp.abs(divergences.kl(sol.log_policy, logp) - delta) / jnp.maximum(1.0, delta)

  lam_grid = jnp.exp(jnp.linspace(-6, 6, 400))
  dual = tilted.dual_frontier(logp, r, delta, lam_grid)
  a_opt = tilted.cumulants(logp, r, sol.lam).log_z
  dual_at_opt = (delta + a_opt) / sol.lam
  err_dual = jnp.maximum(jnp.abs(dual_at_opt - sol.mean_reward), jnp.maximum(0.0, sol.mean_reward - dual.min(-1)))

  eq = divergences.expectation(logq, r)
  klq = divergences.kl(logq, logp)
  closeness = klq - delta + sol.lam * (sol.mean_reward - eq)
  err_close = jnp.abs(divergences.kl(logq, sol.log_policy) - closeness) / jnp.maximum(1.0, closeness)

  beaten = eq - tilted.frontier(logp, r, jnp.minimum(klq, dmax))

  grads = jax.vmap(jax.grad(lambda lp, rr, d: tilted.frontier(lp, rr, d), argnums=2))(logp, r, delta)
  err_slope = jnp.abs(grads - sol.beta) / sol.beta

  over = tilted.kl_constrained(logp, r, dmax * 1.5)
  top = (logp > -jnp.inf) & (r == jnp.max(jnp.where(logp > -jnp.inf, r, -jnp.inf), -1, keepdims=True))
  cond = jnp.where(top, logp - jax.scipy.special.logsumexp(jnp.where(top, logp, -jnp.inf), -1, keepdims=True), -jnp.inf)
  err_sat = jnp.max(jnp.abs(jnp.exp(over.log_policy) - jnp.exp(cond)), -1)

  w = lambda x: float(jnp.max(x))
  sec.checks = [
      Check("gibbs", "J(q) = beta log Z - beta KL(q||pi_beta), relative", w(err_gibbs), 1e-12, n),
      Check("constraint", "|KL(phi_Δ||p) - Δ| / max(1, Δ)", w(kl_err), 1e-10, n),
      Check("primal = dual", "R(Δ) = (Δ + A(lam_Δ))/lam_Δ = min_lam (Δ + A(lam))/lam", w(err_dual), 1e-10, n),
      Check("closeness", "KL(q||phi_Δ) = KL(q||p) - Δ + lam_Δ (R(Δ) - E_q r), relative", w(err_close), 1e-9, n),
      Check("frontier dominance", "E_q[r] - R(KL(q||p)) <= 0 for random q", w(beaten), 1e-12, n),
      Check("dR/dΔ = beta", "implicit derivative of the frontier, relative", w(err_slope), 1e-8, n),
      Check("saturation", "Δ >= Δ_max gives p(.|S*) with ties weighted by p (max abs prob. error)", w(err_sat), 1e-14, n),
  ]

  # ---- figures: the frontier and the tilt family
  fig, ax = plt.subplots(1, 2, figsize=(11, 4))
  rows = []
  betas = jnp.exp(jnp.linspace(-4, 4, points))
  fig2, ax2 = plt.subplots(1, 2, figsize=(11, 4))
  for name, lp, rr in _examples(vocab):
    dm = float(tilted.max_kl(lp, rr))
    d = jnp.linspace(0.0, dm * 1.15, points)
    lpb, rrb = jnp.broadcast_to(lp, (points,) + lp.shape), jnp.broadcast_to(rr, (points,) + rr.shape)
    res = tilted.kl_constrained(lpb, rrb, d)
    ax[0].plot(np.asarray(d), np.asarray(res.mean_reward), label=name)
    ax[0].axvline(dm, ls=":", c=ax[0].lines[-1].get_color(), lw=0.8)
    ok = ~np.asarray(res.saturated) & (np.asarray(d) > 0)
    ax[1].plot(np.asarray(d)[ok], np.asarray(res.beta)[ok], label=name)
    rows += [dict(example=name, delta=float(a), frontier=float(b), beta=float(c), saturated=bool(s))
             for a, b, c, s in zip(d, res.mean_reward, res.beta, res.saturated)]
    st = tilted.stats(lpb, rrb, betas)
    ax2[0].plot(np.asarray(betas), np.asarray(st.kl), label=name)
    ax2[1].plot(np.asarray(betas), np.asarray(st.mean_reward), label=name)
  ax[0].set(xlabel="KL budget Δ (nats)", ylabel="R(Δ) = max E_q[r]", title="Reward–KL frontier (dotted: Δ_max)")
  ax[1].set(xlabel="KL budget Δ", ylabel="beta_Δ = R'(Δ)", yscale="log", title="Slope of the frontier")
  ax[0].legend(fontsize=8)
  ax2[0].set(xscale="log", yscale="log", xlabel="beta", ylabel="KL(pi_beta || p)", title="Tilt family: KL")
  ax2[1].set(xscale="log", xlabel="beta", ylabel="E_pi[r]", title="Tilt family: mean reward")
  ax2[0].legend(fontsize=8)
  sec.figures = [save(fig, ctx.figure("tilted_frontier")), save(fig2, ctx.figure("tilted_family"))]
  sec.tables = {"frontier": rows}
  return sec
