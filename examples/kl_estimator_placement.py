# %% [markdown]
# # Where the KL estimator goes decides what RLVR trains to
#
# **Question.** RL trainers for language models estimate $\mathrm{KL}(q\|p)$ from the sampled
# responses with one of three per-sample estimators, $k_1 = \log\rho$, $k_2 = \frac12(\log\rho)^2$ or
# $k_3 = \rho^{-1} - 1 + \log\rho$ ($\rho = q(y)/p(y)$), and put $\beta k$ either **in the reward**
# (subtracted from the verifier's score, differentiated through the score function) or **in the
# loss** (added and differentiated directly). Which of the six combinations actually optimise
# $J(q) = \mathbb E_q[c] - \beta\,\mathrm{KL}(q\|p)$, and what do the others converge to?
#
# **What is computed.**
#
# - `klrl.train.kl_estimator_audit` at the optimum $\pi^\star$: for each estimator, its exact mean
#   and variance and the exact expected gradient in either placement, with its relative bias
#   against the true $\nabla\mathrm{KL}(q\|p)$. A placement whose expected gradient is biased at
#   $\pi^\star$ cannot have $\pi^\star$ as its fixed point.
# - The **exact mean dynamics** of each combination: gradient steps along
#   $\nabla\mathbb E_q[c] - \beta\,g_{\text{placement}}(q)$ with the audit's expected gradient
#   $g$, i.e. what the sampled trainer does on average, with no noise.
# - The real **sampled trainer**, `klrl.train.sampled_policy_gradient` (leave-one-out REINFORCE,
#   groups of 8), for each combination and a few seeds.
#
# See [docs/theory/training.md](../docs/theory/training.md), section "Per-sample KL estimators
# and where they are placed", and [docs/theory/rlvr.md](../docs/theory/rlvr.md) for $\pi^\star$.
#
# **How to read the figure.** Top left: the relative bias of each combination's expected KL
# gradient at $\pi^\star$ (0 means unbiased). Top right: accuracy along training, exact mean
# dynamics (lines) and sampled runs (faint), against the optimal accuracy $a^\star$ and the
# accuracy $a_{\text{rev}}$ of the reverse-KL optimum. Bottom left: $\mathrm{KL}(q\|\pi^\star)$, the
# suboptimality gap divided by $\beta$. Bottom right: the final policies over the responses.

# %%
import os
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from klrl import divergences, rlvr, train

NAME = "kl_estimator_placement"
SMALL = os.environ.get("KLRL_EXAMPLES_SMALL", "0") not in ("", "0")
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("KLRL_EXAMPLES_OUT") or HERE / "figures")

RESPONSES, NUM_CORRECT, A_REF, BETA = 6, 2, 0.3, 0.5
STEPS = 800 if SMALL else 3000
LEARNING_RATE = 0.1
SEEDS = 2 if SMALL else 4
COMBOS = [(k, place) for k in ("k1", "k2", "k3") for place in ("reward", "loss")]
# Each combination compiles its own sampled loop; the small run samples only two of them.
SAMPLED = [("k1", "reward"), ("k3", "loss")] if SMALL else COMBOS

# %% [markdown]
# ## The problem and its two reference points
#
# One prompt with six responses, two of them correct, and reference accuracy 0.3. The optimum
# $\pi^\star \propto p\,e^{c/\beta}$ has accuracy
# $\operatorname{logit} a^\star = \operatorname{logit} a_{\text{ref}} + 1/\beta$.
# A trainer that follows $\nabla\mathrm{KL}(p\|q)$ instead (the reverse KL) has, for tabular logits,
# the stationary condition $q(y)\,(c(y) - a) = \beta\,(q(y) - p(y))$, i.e.
# $q(y) = \beta p(y)/(\beta + a - c(y))$; summing over the correct responses gives
# $a^2 + (\beta - 1)\,a - \beta a_{\text{ref}} = 0$.

# %%
prob = rlvr.random_problem(jax.random.PRNGKey(0), 1, RESPONSES, num_correct=NUM_CORRECT, accuracy=A_REF)
logp, correct = prob.logp[0], prob.correct[0]
c = correct.astype(logp.dtype)
log_opt = rlvr.optimal_policy(logp, correct, BETA)
a_star = float(rlvr.target_accuracy(logp, correct, BETA))
a_rev = ((1 - BETA) + np.sqrt((1 - BETA) ** 2 + 4 * BETA * A_REF)) / 2
q_rev = BETA * np.exp(np.asarray(logp)) / (BETA + a_rev - np.asarray(c))
print(f"a_ref = {A_REF}, beta = {BETA}: optimal accuracy a* = {a_star:.4f}, reverse-KL optimum a_rev = {a_rev:.4f}")

# %% [markdown]
# ## The audit at the optimum

# %%
audit = train.kl_estimator_audit(log_opt, logp)
bias = {(k, place): float((audit.reward_bias if place == "reward" else audit.loss_bias)[i])
        for i, k in enumerate(("k1", "k2", "k3")) for place in ("reward", "loss")}
print(f"KL(pi* || p) = {float(audit.kl):.4f}")
for i, k in enumerate(("k1", "k2", "k3")):
  print(f"  {k}: mean {float(audit.mean[i]):.4f} (bias {float(audit.mean[i] - audit.kl):+.1e}), "
        f"variance {float(audit.var[i]):.2e}; gradient bias in the reward {bias[k, 'reward']:.2e}, "
        f"in the loss {bias[k, 'loss']:.2e}")

# %% [markdown]
# ## Exact mean dynamics of the six combinations
#
# All six run side by side in one compiled `lax.scan`: row $i$ of the logits follows
# combination $i$. The expected KL gradients come from the audit evaluated at the current
# policies (the audit broadcasts over the six rows), and $\nabla_\theta\mathbb E_q[c] = q\,(c - a)$.

# %%
estimator = jnp.array([("k1", "k2", "k3").index(k) for k, _ in COMBOS])
in_reward = jnp.array([place == "reward" for _, place in COMBOS])


def mean_gradient(theta):
  """Expected gradient of -J that each combination's trainer follows."""
  logq = jax.nn.log_softmax(theta, axis=-1)
  q = jnp.exp(logq)
  a = jnp.sum(q * c, axis=-1, keepdims=True)
  au = train.kl_estimator_audit(logq, logp)               # gradients: (combos, 3 estimators, responses)
  rows = jnp.arange(len(COMBOS))
  kl_grad = jnp.where(in_reward[:, None], au.reward_gradient[rows, estimator], au.loss_gradient[rows, estimator])
  return -(q * (c - a)) + BETA * kl_grad


@jax.jit
def exact_runs(theta0):
  opt = optax.sgd(LEARNING_RATE)

  def step(carry, _):
    theta, state = carry
    updates, state = opt.update(mean_gradient(theta), state, theta)
    theta = optax.apply_updates(theta, updates)
    logq = jax.nn.log_softmax(theta, axis=-1)
    accuracy = jnp.sum(jnp.exp(logq) * c, axis=-1)
    return (theta, state), (accuracy, divergences.kl(logq, log_opt), divergences.kl(logq, logp))

  theta0 = jnp.broadcast_to(theta0, (len(COMBOS),) + theta0.shape)
  (theta, _), history = jax.lax.scan(step, (theta0, opt.init(theta0)), None, length=STEPS)
  return jax.nn.log_softmax(theta, axis=-1), history


exact_logq, (exact_acc, exact_gap, exact_kl) = exact_runs(logp)
exact_acc, exact_gap, exact_kl = (np.asarray(x).T for x in (exact_acc, exact_gap, exact_kl))   # (combos, steps)

# %% [markdown]
# ## The sampled trainer
#
# `sampled_policy_gradient` draws 8 responses per step from the current policy, uses
# leave-one-out advantages and places the estimator as asked; its recorded metrics are exact
# functions of the iterate. It is `vmap`ped over seeds. (With `KLRL_EXAMPLES_SMALL=1` only two
# combinations are sampled, to keep the run short.)

# %%
keys = jax.random.split(jax.random.PRNGKey(1), SEEDS)
sampled = {}
for k, place in SAMPLED:
  run = jax.vmap(lambda key, k=k, place=place: train.sampled_policy_gradient(
      key, logp[None], correct[None], BETA, optax.sgd(LEARNING_RATE), STEPS, group=8, advantage="loo",
      kl=k, kl_in=place).metrics)
  m = run(keys)
  sampled[k, place] = (np.asarray(m.accuracy), np.asarray(m.gap) / BETA)

print(f"\nafter {STEPS} steps of sgd({LEARNING_RATE}); a* = {a_star:.4f}, a_rev = {a_rev:.4f}")
print(f"{'combination':>16} {'bias at pi*':>12} {'accuracy':>9} {'sampled':>17} {'KL(q||pi*)':>11} "
      f"{'KL(q||p)':>9}  final q")
for i, (k, place) in enumerate(COMBOS):
  acc_s = sampled[k, place][0][:, -1] if (k, place) in sampled else None
  acc_s = f"{acc_s.mean():8.4f} ± {acc_s.std():.4f}" if acc_s is not None else "not sampled"
  q_final = " ".join(f"{v:.3f}" for v in np.exp(np.asarray(exact_logq[i])))
  print(f"{k + ' in ' + place:>16} {bias[k, place]:12.2e} {exact_acc[i, -1]:9.4f} {acc_s:>17} "
        f"{exact_gap[i, -1]:11.2e} {exact_kl[i, -1]:9.4f}  {q_final}")
print(f"{'pi*':>16} {'':12} {a_star:9.4f} {'':>17} {0.0:11.2e} {float(audit.kl):9.4f}  "
      + " ".join(f"{v:.3f}" for v in np.exp(np.asarray(log_opt))))
print(f"{'p':>16} {'':12} {A_REF:9.4f} {'':>17} {'':>11} {0.0:9.4f}  "
      + " ".join(f"{v:.3f}" for v in np.exp(np.asarray(logp)))
      + f"   (correct: {np.nonzero(np.asarray(correct))[0].tolist()})")
k3_loss = exact_logq[COMBOS.index(("k3", "loss"))]
print(f"reverse-KL optimum: KL(q_rev || pi*) = {float(divergences.kl(jnp.log(q_rev), log_opt)):.2e}; "
      f"k3 in the loss ends at KL {float(divergences.kl(k3_loss, jnp.log(q_rev))):.1e} from it")

# %% [markdown]
# ## The figure

# %%
colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
styles = {"reward": "-", "loss": "--"}
steps = np.arange(STEPS)
fig, ((ax, bx), (cx, dx)) = plt.subplots(2, 2, figsize=(13, 9))

labels = [f"{k}\n{place}" for k, place in COMBOS]
heights = [bias[combo] for combo in COMBOS]
bars = ax.bar(range(len(COMBOS)), heights, color=[colors[i] for i in range(len(COMBOS))])
for rect, h in zip(bars, heights):
  ax.annotate(f"{h:.2g}" if h > 1e-8 else "0", (rect.get_x() + rect.get_width() / 2, h), ha="center", va="bottom")
ax.set_xticks(range(len(COMBOS)), labels)
ax.set_xlabel("estimator and placement")
ax.set_ylabel(r"$\|\mathbb{E}\,\hat g - \nabla \mathrm{KL}\| \,/\, \|\nabla \mathrm{KL}\|$ at $\pi^\star$")
ax.set_title("Relative bias of the expected KL gradient (audit)")

for i, combo in enumerate(COMBOS):
  col, ls = colors[i], styles[combo[1]]
  bx.plot(steps, exact_acc[i], ls, color=col, lw=2, label=f"{combo[0]} in the {combo[1]}")
  cx.semilogy(steps, np.maximum(exact_gap[i], 1e-16), ls, color=col, lw=2, label=f"{combo[0]} in the {combo[1]}")
  for acc_s, gap_s in zip(*sampled.get(combo, ((), ()))):
    bx.plot(steps, acc_s, color=col, lw=0.6, alpha=0.35)
    cx.semilogy(steps, np.maximum(gap_s, 1e-16), color=col, lw=0.6, alpha=0.35)
bx.axhline(a_star, color="black", ls=":", label=rf"$a^\star$ = {a_star:.3f}")
bx.axhline(a_rev, color="gray", ls="-.", label=rf"$a_{{rev}}$ = {a_rev:.3f}")
bx.set_xlabel("training step")
bx.set_ylabel("accuracy $q$(correct)")
bx.set_title("Accuracy: exact mean dynamics (bold), sampled runs (faint)")
bx.legend(fontsize=8, ncol=2)
cx.set_xlabel("training step")
cx.set_ylabel(r"$\mathrm{KL}(q \,\|\, \pi^\star)$ = gap / $\beta$ (nats)")
cx.set_title(r"Distance to the optimum $\pi^\star$")
cx.legend(fontsize=8, ncol=2)

x = np.arange(RESPONSES)
dx.bar(x - 0.2, np.exp(np.asarray(logp)), width=0.4, color="lightgray", label="reference $p$")
dx.bar(x + 0.2, np.exp(np.asarray(log_opt)), width=0.4, color="none", edgecolor="black", label=r"optimum $\pi^\star$")
for i, combo in enumerate(COMBOS):
  dx.plot(x + 0.2 + 0.05 * (i - 2.5), np.exp(np.asarray(exact_logq[i])), "o", ms=5, color=colors[i],
          label=f"{combo[0]} in the {combo[1]}")
dx.set_xticks(x, [f"{j}\n{'correct' if bool(correct[j]) else 'wrong'}" for j in x])
dx.set_xlabel("response")
dx.set_ylabel("probability")
dx.set_title(f"Final policies after {STEPS} steps (exact mean dynamics)")
dx.legend(fontsize=8, ncol=2)
fig.tight_layout()

OUT.mkdir(parents=True, exist_ok=True)
fig.savefig(OUT / f"{NAME}.png", dpi=120)
print(f"figure: {OUT / f'{NAME}.png'}")

# %% [markdown]
# **Answer.** Only two combinations optimise the KL-regularised objective: $k_1$ in the reward
# and $k_2$ in the loss. Their expected gradients are exactly $\nabla\mathrm{KL}(q\|p)$, and both
# converge to $\pi^\star$ (the sampled runs too, up to their noise). $k_3$ in the loss estimates
# the KL's *value* without bias, but its gradient is that of the reverse divergence
# $\mathrm{KL}(p\|q)$: it converges, to the reverse-KL optimum, whose accuracy $a_{\text{rev}}$ is
# below $a^\star$ here. The other three do not keep the policy near the reference. $k_1$ in the
# loss has expected gradient zero, so training maximises accuracy alone and slowly piles the mass
# onto one correct response; $k_3$ in the reward does the same, fast; $k_2$ in the reward heads
# for the reference conditioned on being correct (accuracy 1, $\mathrm{KL}(q\|p) = -\log a_{\text{ref}}$).
# An unbiased estimate of the KL does not give an unbiased gradient of it: what matters is the
# gradient each placement induces, which the audit computes exactly, and a bias at $\pi^\star$
# means the trainer cannot stop there.
