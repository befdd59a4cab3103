# %% [markdown]
# # Accuracy and entropy along RLVR training
#
# **Question.** Training a reasoning model against a verifier raises its accuracy; its entropy
# usually falls ("entropy collapse"), but not always. Along KL-regularised RLVR, how do accuracy
# and entropy move together, and what decides whether gaining accuracy costs entropy?
#
# **What is computed.** Two prompts with the same reference accuracy $a_{\text{ref}} = 0.2$ and the
# same $\beta$, differing only in how the reference spreads its mass: on prompt A the correct
# responses are few favourites and the wrong ones are diverse ($H_C < H_W$); on prompt B it is
# the other way round ($H_C > H_W$). Generated with `klrl.rlvr.random_problem`.
#
# - Natural-gradient flow in closed form, `klrl.rlvr.flow`: accuracy $a_t$ with
#   $\operatorname{logit} a_t = \operatorname{logit} a_{\text{ref}} + (1 - e^{-\beta t})/\beta$, entropy
#   $H(q_t) = h(a_t) + a_t H_C + (1-a_t) H_W$, and the suboptimality gap
#   $\beta\,\mathrm{kl}(a_t\|a^\star)$. The entropy split and the threshold
#   $\operatorname{sigmoid}(H_C - H_W)$ come from `klrl.rlvr.entropy_split`.
# - The optax training loops of `klrl.train`: natural policy gradient (`optax.sgd`), whose
#   iterates are exactly the flow's tilts at times $t_k$ with
#   $e^{-\beta t_k} = (1 - \eta\beta)^k$, and plain policy gradient with the same step size,
#   which does not stay in the tilted family.
#
# See [docs/theory/rlvr.md](../docs/theory/rlvr.md) ("Natural-gradient flow", "Entropy against
# accuracy") and [docs/theory/training.md](../docs/theory/training.md).
#
# **How to read the figure.** Solid lines: the closed-form flow; dots: natural policy gradient
# at its matching times; dashed: plain policy gradient, plotted against steps times learning
# rate. Left and middle: accuracy and entropy against time (linear up to $t = 1$, logarithmic
# after). Right: entropy against accuracy;
# the dotted verticals are the thresholds, to the right of which more accuracy means less
# entropy.

# %%
import os
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

from klrl import rlvr, train

NAME = "rlvr_accuracy_entropy"
SMALL = os.environ.get("KLRL_EXAMPLES_SMALL", "0") not in ("", "0")
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("KLRL_EXAMPLES_OUT") or HERE / "figures")

RESPONSES = 32 if SMALL else 256
NUM_CORRECT = RESPONSES // 4
BETA, A_REF = 0.15, 0.2
ETA = 0.1                          # learning rate of both training loops
STEPS = 200 if SMALL else 1000     # so training runs to time STEPS * ETA

# %% [markdown]
# ## Two prompts
#
# Entropies are given as fractions of their maxima ($\log$ of the number of correct or wrong
# responses).

# %%
prob = rlvr.random_problem(jax.random.PRNGKey(0), 2, RESPONSES, num_correct=NUM_CORRECT, accuracy=A_REF,
                           entropy_correct=jnp.array([0.2, 0.95]), entropy_wrong=jnp.array([0.95, 0.2]))
logp, correct = prob.logp, prob.correct
split = rlvr.entropy_split(logp, correct)
a_star = np.asarray(rlvr.target_accuracy(logp, correct, BETA))
names = ["A: few correct favourites", "B: many correct paths"]
for i, name in enumerate(names):
  print(f"prompt {name}: a_ref = {float(split.accuracy[i]):.3f}, H_C = {float(split.entropy_correct[i]):.3f}, "
        f"H_W = {float(split.entropy_wrong[i]):.3f}, threshold sigmoid(H_C - H_W) = {float(split.threshold[i]):.3f}, "
        f"target a* = {a_star[i]:.4f}")

# %% [markdown]
# ## The closed-form flow

# %%
t = np.concatenate([np.linspace(0.0, 1.0, 50, endpoint=False), np.geomspace(1.0, STEPS * ETA, 350)])
f = rlvr.flow(logp, correct, BETA, t[:, None])        # (times, prompts)
acc, ent, gap = np.asarray(f.accuracy), np.asarray(f.entropy), np.asarray(f.gap)

# %% [markdown]
# ## The training loops
#
# The loops average their metrics over prompts, so each prompt is trained separately under
# `jax.vmap`.

# %%
npg = jax.vmap(lambda lp, c: train.natural_policy_gradient(lp, c, BETA, optax.sgd(ETA), STEPS).metrics)(logp, correct)
pg = jax.vmap(lambda lp, c: train.policy_gradient(lp, c, BETA, optax.sgd(ETA), STEPS).metrics)(logp, correct)
k = np.arange(STEPS)
t_npg = -k * np.log1p(-ETA * BETA) / BETA                # the flow time of natural-gradient iterate k
on_flow = rlvr.flow(logp, correct, BETA, t_npg[:, None])
err_acc = np.max(np.abs(np.asarray(npg.accuracy).T - np.asarray(on_flow.accuracy)))
err_ent = np.max(np.abs(np.asarray(npg.entropy).T - np.asarray(on_flow.entropy)))
print(f"natural policy gradient vs the closed-form flow at t_k: max |accuracy difference| {err_acc:.1e}, "
      f"max |entropy difference| {err_ent:.1e}")

for i, name in enumerate(names):
  peak = int(np.argmax(ent[:, i]))
  trend = (f"rises to its peak {ent[peak, i]:.3f} at accuracy {acc[peak, i]:.3f} (the threshold), then falls"
           if 0 < peak < len(t) - 1 else ("falls throughout" if peak == 0 else "rises throughout"))
  print(f"prompt {name}: entropy {ent[0, i]:.3f} -> {ent[-1, i]:.3f} while accuracy {acc[0, i]:.3f} -> "
        f"{acc[-1, i]:.4f}; entropy {trend}")
  print(f"  at t = {t[-1]:.0f}: gap {gap[-1, i]:.2e}; plain policy gradient reaches accuracy "
        f"{float(pg.accuracy[i, -1]):.4f}, entropy {float(pg.entropy[i, -1]):.3f}, gap {float(pg.gap[i, -1]):.2e}")

# %% [markdown]
# ## The figure

# %%
colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
every = np.unique(np.concatenate([[0], np.geomspace(1, STEPS - 1, 25).astype(int)]))   # markers, log-spaced
fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(15, 4.5))
for i, name in enumerate(names):
  col, lw = colors[i], (3.5, 1.5)[i]     # the two accuracy curves coincide: same a_ref and beta
  ax.plot(t, acc[:, i], color=col, lw=lw, label=f"{name}: flow")
  ax.plot(t_npg[every], np.asarray(npg.accuracy[i])[every], "o", ms=4, color=col, label="natural PG")
  ax.plot(k * ETA, np.asarray(pg.accuracy[i]), "--", color=col, lw=1.2, label="plain PG")
  ax.axhline(a_star[i], color=col, ls=":", lw=1)
  bx.plot(t, ent[:, i], color=col, lw=2, label=f"{name}: flow")
  bx.plot(t_npg[every], np.asarray(npg.entropy[i])[every], "o", ms=4, color=col, label="natural PG")
  bx.plot(k * ETA, np.asarray(pg.entropy[i]), "--", color=col, lw=1.2, label="plain PG")
  cx.plot(acc[:, i], ent[:, i], color=col, lw=2, label=f"{name}: flow")
  cx.plot(np.asarray(pg.accuracy[i]), np.asarray(pg.entropy[i]), "--", color=col, lw=1.2, label="plain PG")
  cx.axvline(float(split.threshold[i]), color=col, ls=":", lw=1.2, label=f"threshold {float(split.threshold[i]):.2f}")
for x in (ax, bx):
  x.set_xscale("symlog", linthresh=1.0)      # linear up to t = 1, logarithmic after
  x.set_xlim(0.0, STEPS * ETA)
ax.set_xlabel(r"time $t$ (steps $\times$ learning rate; symlog)")
ax.set_ylabel("accuracy")
ax.set_title(r"Accuracy (dotted: target $a^\star$; the two flows coincide)")
ax.legend(fontsize=7)
bx.set_xlabel(r"time $t$ (steps $\times$ learning rate; symlog)")
bx.set_ylabel("entropy (nats)")
bx.set_title("Entropy of the policy")
bx.legend(fontsize=7)
cx.set_xlabel("accuracy")
cx.set_ylabel("entropy (nats)")
cx.set_title("Entropy against accuracy")
cx.legend(fontsize=7)
fig.suptitle(rf"KL-regularised RLVR, $\beta$ = {BETA}, {RESPONSES} responses per prompt, {NUM_CORRECT} correct", y=1.0)
fig.tight_layout()

OUT.mkdir(parents=True, exist_ok=True)
fig.savefig(OUT / f"{NAME}.png", dpi=120)
print(f"figure: {OUT / f'{NAME}.png'}")

# %% [markdown]
# **Answer.** Along natural-gradient training the policy stays a tilt of the reference, so its
# entropy is a function of its accuracy alone, $H = h(a) + aH_C + (1-a)H_W$, with slope
# $\log\frac{1-a}{a} + H_C - H_W$. Whether accuracy costs entropy is decided by the threshold
# $\operatorname{sigmoid}(H_C - H_W)$. On prompt A, whose correct answers are a few favourites,
# the threshold is below the starting accuracy and the entropy falls from the start (collapse).
# On prompt B, whose correct answers are many and varied, the entropy first *rises* with
# accuracy, peaks exactly at the threshold, and only then falls as the accuracy approaches
# $a^\star$. The accuracy itself is the same on both prompts: it depends only on $a_{\text{ref}}$ and
# $\beta$. The natural policy gradient loop reproduces the closed form to rounding. Plain policy
# gradient with the same step size climbs much more slowly from a low accuracy (the softmax
# gradient is small where the policy has little mass) and, having left the tilted family, traces
# a different entropy-accuracy path.
