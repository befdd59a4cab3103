"""Report section: self-correcting models as Markov chains (docs: theory/chains).

All checks run on one batch of chains of one size, which holds the chains of the figures too
(a line of responses at several beta, the epsilon grid of a violating chain), so that every
library function is compiled once.
"""
from __future__ import annotations

import jax
import numpy as np

from klrl import chains
from klrl.report import Check, Context, Section
from klrl.report.config import integer, reals
from klrl.report.plotting import plt, save

TITLE = "Self-correcting models as Markov chains"
DOCS = "theory/chains.md"
PAPERS = (
    "Tan, Hong, *A Theoretical Lens for RL-Tuned Language Models via Energy-Based Models* (2025, arXiv:2512.18730)",
)


def _random_chains(seeds_ref, seeds_rew, eps_ref, eps_rew, m):
  """Random chains of the chains theory: reference from a (perturbed) joint, (perturbed) transition reward."""
  key = jax.random.PRNGKey
  logp = [chains.reference_from_joint(chains.random_joint(key(int(s)), m, e)) for s, e in zip(seeds_ref, eps_ref)]
  reward = [chains.random_reward(key(int(s)), m, e).reward for s, e in zip(seeds_rew, eps_rew)]
  return np.stack(logp), np.stack(reward)


def _line(m):
  """A lazy nearest-neighbour reference on a line of responses, and a quality that grows along it."""
  s = np.arange(m)
  joint = np.where(np.abs(s[:, None] - s[None, :]) <= 1, 0.0, -np.inf)
  return np.asarray(chains.reference_from_joint(joint)), 3.0 * s / (m - 1)


OPTIONS = {
    "instances": integer(64, "chains per batch (the figures' chains included)", low=4),
    "states": integer(10, "states of every chain", low=3),
    "rounds": integer(80, "refinement rounds of the relaxation checks", low=1),
    "betas": reals([0.25, 0.5, 1.0, 2.0], "beta values of the line of responses", low=1e-6),
    "epsilons": reals([0.0, 0.05, 0.1, 0.2, 0.4, 0.8], "sizes of the assumption violations", low=0.0, high=1.0),
    "seed": integer(0, "random seed", low=0),
}


def run(cfg: dict, ctx: Context) -> Section:
  n, m, rounds = cfg["instances"], cfg["states"], cfg["rounds"]
  betas = np.asarray(cfg["betas"])
  eps_grid = np.asarray(cfg["epsilons"])
  seed = cfg["seed"]
  if ctx.scale:
    n, m = n * 16, m * 4
  nb, ne = len(betas), len(eps_grid)
  sec = Section("chains", TITLE, docs=DOCS, papers=PAPERS, text=(
      "The RL-tuned refinement kernel `K(s'|s) ∝ p(s'|s) exp(r(s,s')/beta)` of a reversible "
      "reference and a potential reward is in detailed balance with `e^V`, "
      "`V = log mu + Phi/beta + log Z`, so `pi ∝ e^V`. Checks run in float64 on a batch of "
      f"{n} chains of {m} states: a line of responses whose quality Phi grows along it, at {nb} values of beta, "
      "then random chains (symmetric log-normal joint, Gaussian potential plus a symmetric part, "
      "log-uniform beta in [0.22, 7.4]). The violation checks use a second batch in which the "
      "reference joint and the reward both carry a pure-cycle perturbation of size epsilon "
      f"(an epsilon grid on one chain, then epsilon = 0.5)."))

  # ---- reversible batch: the line of responses at several beta, then random chains
  rng = np.random.default_rng(seed)
  line_p, phi = _line(m)
  seeds = 1000 * seed + np.arange(n)
  logp, reward = _random_chains(seeds, seeds + n, np.zeros(n), np.zeros(n), m)
  logp, reward = np.array(logp), np.array(reward)
  logp[:nb], reward[:nb] = line_p, phi
  beta = np.exp(rng.uniform(-1.5, 2.0, n))
  beta[:nb] = betas
  logk = chains.kernel(logp, reward, beta)
  v = chains.potential(logp, reward, beta)
  pi = chains.stationary(logk)
  bal = chains.detailed_balance(logk, v)
  with np.errstate(divide="ignore"):
    eye = np.log(np.eye(m))
  p0 = 3 * rng.standard_normal((n, 1, m))
  p0 = p0 - np.log(np.sum(np.exp(p0), axis=-1, keepdims=True))
  starts = np.concatenate([p0, np.broadcast_to(eye, (n, m, m))], axis=1)     # random, then each state
  rel = chains.relaxation(logk[:, None], starts, rounds, v[:, None])
  mb = chains.mixing_bounds(logk[:, None], starts, rounds)
  dr = chains.drift(logk, v)
  target = np.broadcast_to(np.arange(m) >= m - 2, (n, m))               # the two best responses of the line
  drift_v = np.where(np.arange(n)[:, None] < nb, phi, v)                   # the drift bound with V = Phi on the line
  hb = chains.hitting_bounds(logk, target, drift_v)
  tight = chains.hitting_bounds(logk, target, -hb.times)
  gap_of = lambda lp, r, b: chains.absolute_spectral_gap(chains.kernel(lp, r, b))
  slope = jax.vmap(jax.grad(gap_of, argnums=2))(logp, reward, beta)
  h = 1e-6 * beta
  fd = (gap_of(logp, reward, beta + h) - gap_of(logp, reward, beta - h)) / (2 * h)

  # ---- violating batch: an epsilon grid on one chain, then random chains at epsilon = 0.5
  seeds_e = np.concatenate([np.full(ne, 1000 * seed + 2 * n), seeds + 2 * n])[:n]
  eps = np.concatenate([eps_grid, np.full(n - ne, 0.5)])
  lp_e, r_e = _random_chains(seeds_e, seeds_e + n, eps, eps, m)
  _, r_0 = _random_chains(seeds_e, seeds_e + n, eps, np.zeros(n), m)
  b_e = np.full(n, 0.7)
  lk_e = chains.kernel(lp_e, r_e, b_e)
  v_e = chains.potential(lp_e, r_e, b_e)
  fit_e = chains.reward_potential(r_e)
  ref_e = chains.detailed_balance(lp_e)
  bal_e = chains.detailed_balance(lk_e, v_e)
  flux_e = chains.detailed_balance(lk_e).flux
  hb_e = chains.hitting_bounds(lk_e, target, v_e)
  rel_e = chains.relaxation(lk_e[:, None], starts, rounds, v_e[:, None])
  eig_e = chains.eigenvalues(lk_e[ne - 1])
  spec_0 = chains.spectrum(lk_e[0])

  # ---- the gap against beta for the line of responses: one more batch of n betas
  grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), n))
  lp_g, r_g = np.broadcast_to(line_p, (n, m, m)), np.broadcast_to(phi, (n, m, m))
  lk_g = chains.kernel(lp_g, r_g, grid)
  gap_g, spec_g = chains.absolute_spectral_gap(lk_g), chains.spectrum(lk_g)
  slope_g = jax.vmap(jax.grad(gap_of, argnums=2))(lp_g, r_g, grid)

  # ---- checks, in NumPy
  (pi, v, bal, rel, mb, dr, hb, tight, slope, fd, r_e, r_0, fit_e, ref_e, bal_e, flux_e, hb_e, rel_e, eig_e, spec_0,
   gap_g, spec_g, slope_g) = jax.tree.map(np.asarray, (
       pi, v, bal, rel, mb, dr, hb, tight, slope, fd, r_e, r_0, fit_e, ref_e, bal_e, flux_e, hb_e, rel_e, eig_e, spec_0,
       gap_g, spec_g, slope_g))
  worst = np.max(rel.tv[:, 1:], axis=1)
  mixed = np.any(worst <= 0.25, axis=-1)
  t_mix = np.argmax(worst <= 0.25, axis=-1)
  pred = ref_e.residual + 2 * (r_e - r_0) / b_e[:, None, None]
  w = lambda x: float(np.max(x))
  starts_n = n * (m + 1)
  sec.checks = [
      Check("detailed balance", "max |V(s) + log K(s'|s) - V(s') - log K(s|s')|, canonical V", w(bal.max_residual), 1e-12, n),
      Check("pi ∝ e^V", "max |pi / e^V - 1| (pi by GTH)", w(np.abs(pi / np.exp(v) - 1)), 1e-12, n),
      Check("monotone KL", "max_t KL(p_{t+1}||pi) - KL(p_t||pi), random and point-mass starts",
            w(np.diff(rel.kl, axis=-1)), 1e-14, starts_n),
      Check("free energy", "max_t F(p_{t+1}) - F(p_t), F = -E_p V - H(p)", w(np.diff(rel.free_energy, axis=-1)), 1e-12, starts_n),
      Check("zero mean drift", "max |sum_s pi(s) (K V - V)(s)|", w(np.abs(dr.mean)), 1e-13, n),
      Check("TV bound", "max_t TV(p_t, pi) - (1/2) lam*^t sqrt(chi2(p_0||pi))", w(rel.tv - mb.tv), 1e-13, starts_n),
      Check("KL bound", "max_t KL(p_t||pi) - log(1 + lam*^2t chi2(p_0||pi))", w(rel.kl - mb.kl), 1e-13, starts_n),
      Check("worst-start TV bound", "max_t max_s TV(K^t(s,.), pi) - exp(-gamma* t)/pi_min", w(worst - mb.worst_tv[:, 0]), 1e-13, n),
      Check("mixing-time bound", "t_mix(1/4) - log(4/pi_min)/gamma* (chains mixed within the horizon)",
            w(np.where(mixed, t_mix + 1 - mb.mixing_time[:, 0], -np.inf)), 0.0, int(np.sum(mixed))),
      Check("spectral hitting bound", "E_pi tau_A / [(1 - pi(A))/(gamma pi(A))] <= 1", w(hb.mean_time / hb.spectral), 1.0, n),
      Check("drift bound", "max_{s not in A} E_s tau_A / [(V_max - V(s))/delta] <= 1; V = Phi on the line, canonical V "
            "on the random chains (those with delta > 0)", w(np.divide(hb.times, hb.drift, out=np.zeros((n, m)), where=~target)), 1.0,
            int(np.sum(np.isfinite(hb.drift[:, 0])))),
      Check("drift bound, tight", "|E_s tau_A - bound| / max(1, E_s tau_A) for V = -E tau_A (drift 1)",
            w(np.abs(tight.drift - hb.times) / np.maximum(1.0, hb.times)), 1e-9, n),
      Check("Kac", "|E_{pi_A} tau_A^+ pi(A) - 1|", w(np.abs(hb.return_time / hb.kac - 1)), 1e-12, n),
      Check("d gamma*/d beta", "|derivative - central difference| / max(1, |derivative|)",
            w(np.abs(slope - fd) / np.maximum(1.0, np.abs(slope))), 1e-6, n),
      Check("violation: reward residual", "reward-potential residual = 2 eps max|B| (eps B: the cyclic part added)",
            w(np.abs(fit_e.residual - 2 * np.max(np.abs(r_e - r_0), axis=(-2, -1)))), 1e-13, n),
      Check("violation: detailed balance", "residual against canonical V = reference's own + 2 eps B / beta",
            w(np.abs(bal_e.residual - pred)), 1e-12, n),
      Check("violation: Kac", "Kac's identity holds without reversibility", w(np.abs(hb_e.return_time / hb_e.kac - 1)), 1e-12, n),
      Check("violation: monotone KL", "KL(p_t||pi) still decreases (data processing inequality)",
            w(np.diff(rel_e.kl, axis=-1)), 1e-14, starts_n),
  ]
  table = lambda **cols: [dict(zip(cols, row)) for row in zip(*(np.asarray(c).tolist() for c in cols.values()))]
  sec.tables = {
      "gap": table(beta=grid, absolute_gap=gap_g, spectral_gap=1 - spec_g[:, 1], d_gap_d_beta=slope_g),
      "violation": table(epsilon=eps_grid, reward_residual=fit_e.residual[:ne], reference_residual=ref_e.max_residual[:ne],
                         kernel_residual=bal_e.max_residual[:ne], flux=flux_e[:ne], mean_hitting_time=hb_e.mean_time[:ne],
                         spectral_bound=hb_e.spectral[:ne], return_time=hb_e.return_time[:ne], kac=hb_e.kac[:ne]),
  }

  # ---- figures
  betas, eps_grid = np.asarray(betas), np.asarray(eps_grid)
  fig, ax = plt.subplots(2, 2, figsize=(11, 8))
  t = np.arange(rounds + 1)
  i = min(1, nb - 1)
  ax[0, 0].semilogy(t, rel.kl[i, 1], label="KL(p_t || pi)")
  ax[0, 0].semilogy(t, rel.tv[i, 1], label="TV(p_t, pi)")
  ax[0, 0].semilogy(t, np.minimum(mb.tv[i, 1], 1.0), "--", label="TV bound ½ lam*^t sqrt(chi2_0)")
  ax[0, 0].semilogy(t, mb.kl[i, 1], ":", label="KL bound log(1 + lam*^2t chi2_0)")
  ax[0, 0].set(xlabel="round t", ylim=(1e-16, 1e2), title=f"The line from its worst response, beta={betas[i]:g}")
  ax[0, 0].legend(fontsize=7)
  for j in range(nb):
    ax[0, 1].plot(phi, np.log(pi[j]), "o", ms=4, label=f"beta={betas[j]:g}")
  ax[0, 1].set(xlabel="quality Phi(s)", ylabel="log pi(s)",
               title="Stationary law of the line (log pi = V: slope ~ 1/beta)")
  ax[0, 1].legend(fontsize=8)
  ax[1, 0].plot(grid, gap_g, label="absolute gap gamma*")
  ax[1, 0].plot(grid, 1 - spec_g[:, 1], "--", label="spectral gap gamma")
  for j in range(0, n, max(1, n // 6)):
    b0 = float(grid[j])
    bb = np.array([b0 / 1.4, b0 * 1.4])
    ax[1, 0].plot(bb, float(gap_g[j]) + float(slope_g[j]) * (bb - b0), "r-", lw=0.8)
  ax[1, 0].set(xscale="log", xlabel="beta", title="Gaps of the line against beta (red: d/d beta)")
  ax[1, 0].legend(fontsize=8)
  s = np.arange(m)[: m - 2]
  for j in range(nb):
    c = f"C{j}"
    ax[1, 1].semilogy(s, hb.times[j, : m - 2], "o-", c=c, ms=3, label=f"E_s tau, beta={betas[j]:g}")
    ax[1, 1].semilogy(s, hb.drift[j, : m - 2], "--", c=c)
    ax[1, 1].plot([m - 2.5], [hb.mean_time[j]], "*", c=c, ms=9)
    ax[1, 1].plot([m - 2.5], [hb.spectral[j]], "_", c=c, ms=14, mew=2)
  ax[1, 1].plot([], [], "k--", label="drift bound, V = Phi")
  ax[1, 1].plot([], [], "k*", label="E_pi tau")
  ax[1, 1].plot([], [], "k_", ms=14, mew=2, label="spectral bound on E_pi tau")
  ax[1, 1].set(xlabel="start state s (target: the two best)", ylabel="rounds", title="Hitting the best responses")
  ax[1, 1].legend(fontsize=7, ncol=2)
  figs = [save(fig, ctx.figure("chains_line"))]

  fig, ax = plt.subplots(2, 2, figsize=(11, 8))
  e = np.asarray(eps_grid)
  ax[0, 0].plot(e, fit_e.residual[:ne], "o-", label="reward-potential residual")
  ax[0, 0].plot(e, ref_e.max_residual[:ne], "s-", label="reference detailed-balance residual")
  ax[0, 0].plot(e, bal_e.max_residual[:ne], "^-", label="K against canonical V")
  ax[0, 0].plot(e, np.max(np.abs(pred[:ne]), axis=(-2, -1)), "k+", ms=10, label="predicted")
  ax[0, 0].set(xlabel="violation epsilon", title="Residuals of the assumptions (both broken by epsilon)")
  ax[0, 0].legend(fontsize=7)
  ev = eig_e
  circle = np.exp(1j * np.linspace(0, 2 * np.pi, 200))
  ax[0, 1].plot(circle.real, circle.imag, "k", lw=0.5)
  ax[0, 1].plot(ev.real, ev.imag, "o", label=f"epsilon={e[-1]:g}")
  ax[0, 1].plot(spec_0, np.zeros(m), "x", label="epsilon=0 (real)")
  ax[0, 1].set(aspect="equal", title="Eigenvalues: complex once reversibility fails")
  ax[0, 1].legend(fontsize=8)
  for j in (0, ne - 1):
    ax[1, 0].semilogy(t, rel_e.kl[j, 1], label=f"KL(p_t||pi), eps={e[j]:g}")
    ax[1, 0].semilogy(t, np.maximum(rel_e.free_energy[j, 1], 1e-17), "--", label=f"KL(p_t||e^V), eps={e[j]:g}")
  ax[1, 0].set(xlabel="round t", ylim=(1e-14, 10), title="Relaxation: to pi, and to the canonical e^V")
  ax[1, 0].legend(fontsize=7)
  ax[1, 1].plot(e, hb_e.mean_time[:ne], "o-", label="E_pi tau_A (exact)")
  ax[1, 1].plot(e, hb_e.spectral[:ne], "s--", label="spectral bound (valid at epsilon = 0 only)")
  ax[1, 1].plot(e, hb_e.return_time[:ne], "^-", label="E_{pi_A} tau_A^+ (exact)")
  ax[1, 1].plot(e, hb_e.kac[:ne], "k:", label="Kac 1/pi(A)")
  ax[1, 1].set(xlabel="violation epsilon", ylabel="rounds", title="Hitting a 2-state target")
  ax[1, 1].legend(fontsize=7)
  figs.append(save(fig, ctx.figure("chains_violation")))
  sec.figures = figs
  return sec
