"""Report section: the KL penalty as trainers implement it, on autoregressive sequences
(docs: theory/autoregressive)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from klrl import autoregressive as ar
from klrl.report import Check, Context, Section, audit
from klrl.report.config import integer, real
from klrl.report.plotting import plt, save

TITLE = "The KL penalty as trainers implement it: exact expected gradients and fixed points on sequences"
DOCS = "theory/autoregressive.md"
PAPERS = (
    "Liu et al., on KL estimators and their placement in RL for LLMs (arXiv:2510.01555)",
    "Tang, Munos, on the KL gradient estimators of RLHF (arXiv:2506.09477)",
    "Vojnovic, Yun, on the fixed points of GRPO (arXiv:2502.18548)",
    "Mroueh, on GRPO's success amplification with verifiable rewards (arXiv:2503.06639)",
)

OPTIONS = {
    "problems": integer(8, "random problems per check", low=1),
    "vocab": integer(3, "tokens V of the random problems", low=2),
    "length": integer(3, "tokens per sequence T (V^T sequences are enumerated)", low=2),
    "beta": real(0.2, "KL coefficient of the checks and of the audit figure", low=1e-6),
    "steps": integer(1500, "steps of each exact expected-gradient run", low=1),
    "seed": integer(0, "random seed", low=0),
}

# The configurations of the audit figure: the references and one preset of each trainer.
FIGURE_PRESETS = ("k1_reward_to_go", "k2_loss", "k2_loss_sequence", "trl_grpo", "verl_grpo_low_var_kl")


def _rel(a, b):
  return float(jnp.max(jnp.sqrt(jnp.sum((a - b) ** 2, axis=(-2, -1)) / jnp.sum(b * b, axis=(-2, -1)))))


def run(cfg: dict, ctx: Context) -> Section:
  n, v, t, beta = cfg["problems"], cfg["vocab"], cfg["length"], cfg["beta"]
  key = jax.random.PRNGKey(cfg["seed"])
  k1, k2, k3, k4 = jax.random.split(key, 4)
  sec = Section("autoregressive", TITLE, docs=DOCS, papers=PAPERS, text=(
      "Trainers put a per-token KL estimator (k1 = log rho, k2 = (log rho)^2/2, k3 = 1/rho - 1 + log rho) "
      "into the reward or into the loss, per token or per sequence, and normalise advantages over groups. "
      "On problems small enough to enumerate all V^T sequences (and all groups), klrl computes each "
      "configuration's exact expected gradient and where its exact dynamics converge. "
      f"{n} random problems with V = {v}, T = {t} (real rewards unless stated), random logits, beta = {beta}; float64."))

  real_t = ar.random_problem(k1, v, t, binary=False, batch=(n,))
  real_1 = ar.random_problem(k2, v, 1, binary=False, batch=(n,))
  theta_t = jax.random.normal(k3, real_t.logp.shape, real_t.logp.dtype)
  theta_1 = jax.random.normal(k4, real_1.logp.shape, real_1.logp.dtype)
  grad = lambda th, prob, c: ar.expected_gradient(th, prob, beta, c)
  exact_t = ar.exact_gradient(theta_t, real_t, beta)

  # T = 1: k2 in the loss = k1 in the reward; k3 in the loss follows KL(p || q).
  k2_loss_1 = grad(theta_1, real_1, ar.Config("k2", "loss"))
  k1_reward_1 = grad(theta_1, real_1, ar.Config("k1", "reward"))
  no_kl_1 = grad(theta_1, real_1, ar.Config("none", "reward"))
  lp1 = real_1.logp

  def forward_kl(th, lp):
    return jnp.sum(jnp.exp(lp) * (lp - jax.nn.log_softmax(th, axis=-1)))

  grad_forward = jax.vmap(jax.grad(forward_kl))(theta_1, lp1)
  k3_loss_1 = grad(theta_1, real_1, ar.Config("k3", "loss"))
  # T > 1: the per-token k2 loss misses exactly beta times the future-KL term; the sequence k2
  # loss and k1 in the reward-to-go are unbiased.
  parts = ar.kl_gradient(theta_t, real_t)
  k2_token = grad(theta_t, real_t, ar.Config("k2", "loss"))
  future = jnp.sqrt(jnp.sum(parts.future ** 2, axis=(-2, -1)) / jnp.sum(parts.total ** 2, axis=(-2, -1)))
  # GRPO on 0/1 rewards: the finite-group gain against its large-group limit 1/sqrt(a(1-a)).
  a = jnp.linspace(0.05, 0.95, 19)
  groups = (2, 4, 8, 16, 64, 256, 1024)
  gains = np.stack([np.asarray(ar.binary_advantage(a, g).gain) for g in groups])
  limit = np.asarray(1 / jnp.sqrt(a * (1 - a)))
  rel_limit = np.max(np.abs(gains[-1] / limit - 1))
  increasing = float(np.max(np.diff(gains, axis=0) < -1e-12))
  # The audit of a few presets on binary rewards: with a KL penalty, GRPO's fixed point has a
  # larger success probability than the reference.
  family = audit.Family(v, t, n, cfg["seed"], 1.0)
  table = audit.rows(family, [beta], ("binary",), FIGURE_PRESETS, cfg["steps"], log=ctx.log)
  by = {r["preset"]: r for r in table}
  grpo_gain = min(by[k]["reward"] - by[k]["reference_reward"] for k in ("trl_grpo", "verl_grpo_low_var_kl"))
  unbiased_end = max(by[k]["kl_optimum"] for k in ("k1_reward_to_go", "k2_loss_sequence"))

  sec.checks = [
      Check("k2 loss = k1 reward (T = 1)", "on-policy single token: the expected gradients agree, relative",
            _rel(k2_loss_1, k1_reward_1), 1e-12, n),
      Check("k3 loss = grad KL(p||q) (T = 1)", "E[grad of beta k3] = beta grad KL(p||q), relative",
            _rel(k3_loss_1 - no_kl_1, beta * grad_forward), 1e-12, n),
      Check("k2 token loss misses the future KL", "E[g_k2 token] - grad(-J) = -beta future-KL term, relative",
            _rel(k2_token - exact_t, -beta * parts.future), 1e-12, n),
      Check("sequence k2 loss unbiased", "E[g] = grad(-J), relative",
            _rel(grad(theta_t, real_t, ar.Config("k2", "loss", level="sequence")), exact_t), 1e-12, n),
      Check("k1 reward-to-go unbiased", "E[g] = grad(-J), relative",
            _rel(grad(theta_t, real_t, ar.Config("k1", "reward", return_kind="to_go")), exact_t), 1e-12, n),
      Check("GRPO large-group limit", "population-std gain at G = 1024 against 1/sqrt(a(1-a)) = d/da 2 arcsin sqrt(a), "
            "relative", float(rel_limit), 0.05, len(a)),
      Check("GRPO gain increases with G", "exact finite-G gains never decrease from G = 2 to 1024 (1 = violated)",
            increasing, 0.0, len(a) * len(groups)),
      Check("unbiased runs reach q*", "KL(q_end || q*) of k1 reward-to-go and sequence k2 loss (binary rewards)",
            unbiased_end, 1e-6, n),
      Check("GRPO amplifies success", "min over GRPO presets of -(E_end[R] - E_p[R]) (<= 0: above the reference)",
            -grpo_gain, 0.0, n),
  ]
  sec.text += (f" The future-KL term that the per-token k2 loss misses is {float(jnp.min(future)):.2f} to "
               f"{float(jnp.max(future)):.2f} of |grad KL| on these problems.")

  fig, ax = plt.subplots(1, 2, figsize=(11, 4))
  for g, row in zip(groups, gains):
    ax[0].plot(np.asarray(a), row / limit, label=f"G = {g}")
  ax[0].set(xlabel="success probability a", ylabel="gain x sqrt(a(1-a))",
            title="GRPO (population std): exact gain over its large-G limit")
  ax[0].legend(fontsize=7)
  names = list(FIGURE_PRESETS)
  ax[1].barh(np.arange(len(names)), [max(by[k]["kl_optimum"], 1e-12) for k in names])
  ax[1].set_xscale("log")
  ax[1].set_xlim(left=1e-12)
  ax[1].set_yticks(np.arange(len(names)), names, fontsize=7)
  ax[1].invert_yaxis()
  ax[1].set(xlabel="KL(q_end || q*)  (1e-12 or less: converges to q*)", title=f"Where each configuration converges (binary, beta = {beta})")
  sec.figures = [save(fig, ctx.figure("autoregressive_grpo_and_fixed_points"))]
  sec.tables = {"audit": table, "grpo_gain": [dict(group=g, a=float(x), gain=float(y)) for g, row in zip(groups, gains)
                                              for x, y in zip(a, row)]}
  return sec
