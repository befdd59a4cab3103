"""Report section: RLVR accuracy dynamics and the optax training loops (docs: theory/rlvr and training)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from klrl import divergences, rlvr, tilted, train
from klrl.report import Check, Context, Section
from klrl.report.config import integer, real, reals
from klrl.report.plotting import plt, save

TITLE = "Reasoning with verifiable rewards: the Bernoulli-KL gap, entropy and training loops"
DOCS = "theory/rlvr.md"
PAPERS = (
    "Tan, Hong, *A Theoretical Lens for RL-Tuned Language Models via Energy-Based Models* (2025, arXiv:2512.18730)",
)


OPTIONS = {
    "prompts": integer(16, "prompts of the random RLVR problem", low=2),
    "responses": integer(12, "responses per prompt (a quarter of them correct)", low=4),
    "beta": real(0.25, "KL coefficient", low=1e-6),
    "entropy_correct": reals([0.05, 1.0], "entropy of p on correct responses, fraction of its maximum "
                             "(first to last prompt)", low=0.0, high=1.0, size=2),
    "entropy_wrong": reals([1.0, 0.3], "entropy of p on wrong responses, fraction of its maximum "
                           "(first to last prompt)", low=0.0, high=1.0, size=2),
    "steps": integer(600, "steps of every training loop", low=1),
    "eta": real(0.5, "natural-gradient step", low=1e-12),
    "gd_lr": real(4.0, "gradient-descent step", low=1e-12),
    "adam_lr": real(0.1, "Adam step", low=1e-12),
    "seed": integer(0, "random seed", low=0),
}


def run(cfg: dict, ctx: Context) -> Section:
  prompts, responses = cfg["prompts"], cfg["responses"]
  beta, steps, eta = cfg["beta"], cfg["steps"], cfg["eta"]
  h_c, h_w = cfg["entropy_correct"], cfg["entropy_wrong"]
  if ctx.scale:
    prompts, responses = prompts * 64, responses * 1000
  key = jax.random.PRNGKey(cfg["seed"])
  spread = lambda ends: jnp.linspace(float(ends[0]), float(ends[1]), prompts)
  logp, correct = rlvr.random_problem(key, prompts, responses, num_correct=max(1, responses // 4),
                                      entropy_correct=spread(h_c), entropy_wrong=spread(h_w))
  split = rlvr.entropy_split(logp, correct)
  sec = Section("rlvr", TITLE, docs=DOCS, papers=PAPERS, text=(
      "With a 0/1 verifier reward, the optimum of `E_q[c] - beta KL(q||p)` is `pi* ∝ p exp(c/beta)`, "
      "with target accuracy `logit a* = logit a_ref + 1/beta`, and `J(pi*) - J(q) = beta KL(q||pi*)`. "
      "Natural-gradient flow from `p` stays in the tilted family, where the gap equals "
      "`beta kl(a_t||a*)` (current accuracy first); plain gradient descent leaves the family and "
      "its gap lies above. Adam started at `p` stays in the family too (its per-coordinate scaling "
      "cancels the `q(y)` factor of the softmax gradient), so its gap equals the Bernoulli KL up to "
      "Adam's epsilon; started elsewhere it lies above. "
      f"{prompts} prompts x {responses} responses, beta = {beta}, reference accuracy uniform on "
      f"[0.05, 0.6], entropy of p on correct (wrong) responses from {h_c[0]} to {h_c[1]} ({h_w[0]} to "
      f"{h_w[1]}) of its maximum across the prompts; float64."))

  # ---- natural-gradient flow in closed form against the distributions it describes
  t = jnp.linspace(0.0, 8.0 / beta, 81)[:, None]
  fl = jax.tree.map(np.asarray, rlvr.flow(logp, correct, beta, t))
  logq_t = rlvr.natural_gradient_flow(logp, correct, beta, t)
  gap_t = np.asarray(rlvr.suboptimality_gap(logq_t, logp, correct, beta))
  rng = np.random.default_rng(cfg["seed"])
  noise = rng.normal(size=logp.shape)
  c = correct.astype(logp.dtype)
  kl_ref_t = np.asarray(divergences.kl(logq_t, logp))
  entropy_t = np.asarray(divergences.entropy(logq_t))

  # ---- the loops
  npg = train.natural_policy_gradient(logp, correct, beta, optax.sgd(eta), steps)
  lam = 0.0
  for _ in range(steps):
    lam = (1 - eta * beta) * lam + eta
  npg_err = np.max(np.abs(np.asarray(npg.log_policy) - np.asarray(tilted.tilt(logp, c, 1 / lam))))
  gd = train.policy_gradient(logp, correct, beta, optax.sgd(cfg["gd_lr"]), steps)
  adam = optax.adam(cfg["adam_lr"])
  start = jnp.stack([jnp.where(logp > -jnp.inf, logp, 0.0), logp + noise])   # p, and a start off the family
  ad, ad_off = (train.policy_gradient(logp, correct, beta, adam, steps, init=x) for x in start)
  final = {name: np.asarray(rlvr.suboptimality_gap(tr.log_policy, logp, correct, beta)).mean()
           for name, tr in (("gd", gd), ("adam", ad), ("adam_off", ad_off))}
  gd_m, ad_m, ad_off_m, npg_m = (jax.tree.map(np.asarray, tr.metrics) for tr in (gd, ad, ad_off, npg))

  # ---- estimator audit: random (q, p) pairs on 8 responses, from close to far apart
  scale = np.array([0.1, 0.5, 1.0, 2.0])[:, None]
  lq, lp = (jax.nn.log_softmax(jnp.asarray(scale * rng.normal(size=(4, 8))), axis=-1) for _ in range(2))
  a = jax.tree.map(np.asarray, train.kl_estimator_audit(lq, lp))
  rows = [dict(pair=j, true_kl=float(a.kl[j]), estimator=name, mean=float(a.mean[j, i]),
               mean_bias=float(a.mean[j, i] - a.kl[j]), variance=float(a.var[j, i]),
               grad_bias_in_reward=float(a.reward_bias[j, i]), grad_bias_in_loss=float(a.loss_bias[j, i]))
          for j in range(4) for i, name in enumerate(("k1", "k2", "k3"))]

  w = lambda x: float(np.max(x))
  n_flow = gap_t.size
  sec.checks = [
      Check("gap = beta kl(a_t||a*)", "along natural-gradient flow, from the distributions", w(np.abs(gap_t - fl.gap)), 1e-12, n_flow),
      Check("KL to reference", "KL(q_t||p) = kl(a_t||a_ref) along the flow", w(np.abs(kl_ref_t - fl.kl_reference)), 1e-12, n_flow),
      Check("entropy on the flow", "H(q_t) = h(a_t) + a_t H_C + (1-a_t) H_W", w(np.abs(entropy_t - fl.entropy)), 1e-12, n_flow),
      Check("off-family bound", "beta kl(a_k||a*) - gap <= 0 along Adam from a start off the family",
            w(np.maximum(beta * ad_off_m.kl_forward - ad_off_m.gap, 0.0)), 1e-14, steps),
      Check("NPG recursion", "discrete NPG = tilt with lam_{k+1} = (1 - eta beta) lam_k + eta (max |log q| error)", float(npg_err), 1e-12, prompts * responses),
      Check("NPG gap", "gap - beta kl(a_k||a*) along discrete NPG", w(np.abs(npg_m.gap - beta * npg_m.kl_forward)), 1e-12, steps),
      Check("GD above", "beta kl(a_k||a*) - gap <= 0 along gradient descent", w(np.maximum(beta * gd_m.kl_forward - gd_m.gap, 0.0)), 1e-14, steps),
      Check("GD converges", f"mean gap after {steps} steps of gradient descent / initial gap (slow where a_ref is small)",
            final["gd"] / float(gd_m.gap[0]), 1e-2, prompts),
      Check("Adam converges from p", f"mean gap after {steps} Adam steps from p", final["adam"], 1e-10, prompts),
      Check("Adam converges off-family", f"mean gap after {steps} Adam steps from a start off the family "
            "(constant step size: Adam hovers near the optimum)", final["adam_off"], 1e-5, prompts),
      Check("estimator audit", "exact gradient bias of k1 in the reward + k2 in the loss (relative)",
            float(np.max(a.reward_bias[:, 0]) + np.max(a.loss_bias[:, 1])), 1e-12, 4),
  ]

  # ---- figures
  tt = np.asarray(t[:, 0])
  fig, ax = plt.subplots(1, 3, figsize=(15, 4))
  ax[0].semilogy(tt, gap_t.mean(-1), lw=3, alpha=0.4, label="gap J(pi*) - J(q_t)")
  ax[0].semilogy(tt, fl.gap.mean(-1), "k--", label="beta kl(a_t || a*)")
  ax[0].semilogy(tt, beta * fl.kl_reverse.mean(-1), ":", label="beta kl(a* || a_t) (not the gap)")
  ax[0].set(xlabel="t", ylabel="mean over prompts", title="Natural-gradient flow (closed form)")
  ax[0].legend(fontsize=7)
  k = np.arange(steps)
  for name, m, style in (("gradient descent", gd_m, "-"), ("Adam from p", ad_m, "--"), ("Adam, off-family start", ad_off_m, "-."),
                         ("NPG", npg_m, ":")):
    line, = ax[1].semilogy(k, m.gap, style, label=f"gap, {name}")
    ax[1].semilogy(k, beta * m.kl_forward, style, c=line.get_color(), alpha=0.4, lw=3)
  ax[1].set(xlabel="step", title="Loops: gap (thin) and beta kl(a||a*) (thick)", ylim=(1e-12, None))
  ax[1].legend(fontsize=7)
  ax[2].plot(tt, fl.accuracy.mean(-1), label="accuracy (flow)")
  ax[2].plot(tt, fl.entropy.mean(-1), label="entropy (flow)")
  ax[2].axhline(float(fl.target.mean()), ls=":", c="k", lw=0.8, label="a* (mean)")
  ax[2].set(xlabel="t", title="Accuracy and entropy along the flow")
  ax[2].legend(fontsize=7)
  figs = [save(fig, ctx.figure("rlvr_gap"))]

  fig, ax = plt.subplots(1, 2, figsize=(11, 4))
  ax[0].plot(k, gd_m.accuracy, label="accuracy, GD")
  ax[0].plot(k, ad_m.accuracy, label="accuracy, Adam")
  ax[0].plot(k, gd_m.entropy, label="entropy, GD")
  ax[0].plot(k, ad_m.entropy, label="entropy, Adam")
  ax[0].set(xlabel="step", title="Training loops: accuracy and entropy (means over prompts)")
  ax[0].legend(fontsize=7)
  threshold = np.asarray(split.threshold)
  for i in np.linspace(0, prompts - 1, min(4, prompts)).astype(int):
    line, = ax[1].plot(fl.accuracy[:, i], fl.entropy[:, i], label=f"prompt {i}")
    ax[1].axvline(float(threshold[i]), ls=":", c=line.get_color(), lw=0.8)
    ax[1].plot(float(fl.accuracy[-1, i]), float(fl.entropy[-1, i]), "o", c=line.get_color())
  ax[1].set(xlabel="accuracy a_t", ylabel="H(q_t)", title="Entropy vs accuracy (dotted: sigmoid(H_C - H_W); dot: t end)")
  ax[1].legend(fontsize=7)
  figs.append(save(fig, ctx.figure("rlvr_entropy")))
  sec.figures = figs

  curve = [dict(t=float(tt[j]), accuracy=float(fl.accuracy[j].mean()), gap=float(gap_t[j].mean()),
                beta_kl_forward=float(fl.gap[j].mean()), beta_kl_reverse=float(beta * fl.kl_reverse[j].mean()),
                entropy=float(fl.entropy[j].mean())) for j in range(len(tt))]
  sec.tables = {"estimator_audit": rows, "flow": curve}
  sec.text += ("\n\nEstimator audit (exact, by enumeration; `rlvr_estimator_audit.csv`): for samples from q, "
               "the bias of each KL estimator and of the gradient it induces against the true gradient of "
               "KL(q||p) (relative to its norm), when the estimator is subtracted from the reward (score "
               "function) or added to the loss (pathwise). k1 in the reward and k2 in the loss are unbiased; "
               "k1 in the loss has zero expected gradient (bias 1); k3 in the loss follows the gradient of "
               "KL(p||q).\n\n"
               "| pair | KL(q‖p) | estimator | E[k] − KL | Var k | grad bias, in reward | grad bias, in loss |\n"
               "|---|---|---|---|---|---|---|\n"
               + "\n".join(f"| {r['pair']} | {r['true_kl']:.3g} | {r['estimator']} | {r['mean_bias']:.3g} | {r['variance']:.3g} | "
                           f"{r['grad_bias_in_reward']:.3g} | {r['grad_bias_in_loss']:.3g} |" for r in rows))
  return sec
