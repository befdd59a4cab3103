# %% [markdown]
# # A sweep from Python into a pandas DataFrame
#
# **Question.** When rewards take only a few distinct values (a coarse reward model, a
# verifier with a few grades), best-of-N sees ties. How do ties change best-of-N's KL, and its
# shortfall against the KL-RL frontier, as $N$ grows from 1 to $10^4$? The answer needs the same
# computation over a grid (number of draws $\times$ reward resolution $\times$ random
# instances), which is what `klrl.sweep` is for.
#
# **What is computed.** A sweep of the registered experiment `bon.stats`, which for one random
# reference over 4,096 outputs (Gaussian logits and rewards, `klrl.problems.random_problem`)
# returns best-of-N's exact KL, its bound $\log N - (N-1)/N$, the frontier $R(\mathrm{KL})$ at the
# same KL, the reward gap and $\mathrm{KL}(\pi_N\|\varphi_\Delta)$ (`klrl.bon.against_frontier`).
# The grid crosses `ties` (0: continuous rewards; $k > 0$: rewards rounded to multiples of
# $1/k$), the seed of the instance, and $N$. The configuration is built as a Python dict and
# checked with `klrl.sweep.config.from_dict` (a TOML string goes through
# `klrl.sweep.config.parse` the same way); `klrl.sweep.engine.sweep` runs it, one compiled kernel
# per static combination, chunk by chunk, and `klrl.sweep.load_results` reads the results as a
# typed DataFrame. See [docs/how-to/sweeps.md](../docs/how-to/sweeps.md) and
# [docs/theory/best-of-n.md](../docs/theory/best-of-n.md).
#
# **How to read the figure.** One colour per reward resolution; lines are medians over the random
# instances, bands their range. Left: best-of-N's KL against the bound (black). Middle: the
# reward gap to the frontier. Right: $\mathrm{KL}(\pi_N\|\varphi_\Delta)$, how far best-of-N's law
# is from the optimal policy at the same KL.

# %%
import os
import tempfile
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import matplotlib.pyplot as plt
import pandas as pd

from klrl import sweep

NAME = "sweep_to_dataframe"
SMALL = os.environ.get("KLRL_EXAMPLES_SMALL", "0") not in ("", "0")
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("KLRL_EXAMPLES_OUT") or HERE / "figures")

# %% [markdown]
# ## The configuration
#
# The dict has the layout of a sweep file: the experiment, `[fixed]` parameters, `[grid]` axes
# (lists, `{seeds = k}`, `{logrange = [start, stop, count]}`, ...) and `[run]` settings. Every
# problem in it is reported at once, with its key path.

# %%
raw = {
    "experiment": "bon.stats",
    "description": "best-of-N against the KL-RL frontier, with and without tied rewards",
    "fixed": {"problem": "random", "vocab": 256 if SMALL else 4096},
    "grid": {
        "ties": [0, 1] if SMALL else [0, 1, 4],
        "seed": {"seeds": 2 if SMALL else 8},
        "n": {"logrange": [1.0, 1e4, 9 if SMALL else 25]},
    },
    "run": {"chunk_size": 256},
}
cfg = sweep.config.from_dict(raw)
print(sweep.engine.describe(cfg))

try:
  sweep.config.from_dict({**raw, "grid": {**raw["grid"], "n": {"logrange": [0.0, 1e4, 9]}, "typo": [1]}})
except sweep.ConfigError as e:
  print(f"\na broken copy is refused with every problem listed:\n{e}\n")

# %% [markdown]
# ## Running it
#
# Results go to a fresh temporary folder here. Pointing `out` at a fixed folder makes the sweep
# resumable: run it again and finished chunks are skipped; a changed configuration is refused.

# %%
out = Path(tempfile.mkdtemp()) / "bon_ties"
summary = sweep.engine.sweep(cfg, out, quiet=True)
print(f"{summary.computed_points} points in {summary.computed_chunks} chunks, {summary.seconds:.1f} s "
      f"(compilation included); results in {out}")

# %% [markdown]
# ## Into pandas
#
# One row per grid point: every parameter (fixed ones included) and every output is a column.

# %%
df = sweep.load_results(out)
print(df.dtypes.to_string())
print(df.head().to_string())

stats = df.groupby(["ties", "n"])[["kl", "kl_bound", "gap", "kl_to_tilted"]].agg(["median", "min", "max"])
table = df.groupby(["n", "ties"])["gap"].median().unstack("ties")
table.columns = [f"gap, ties={t}" for t in table.columns]
above_one = df[df["n"] > 1]                      # the bound is 0 at N = 1
kl_share = (above_one["kl"] / above_one["kl_bound"]).groupby([above_one["n"], above_one["ties"]]).median()
kl_share = kl_share.unstack("ties")
kl_share.columns = [f"KL/bound, ties={t}" for t in kl_share.columns]
summary_table = pd.concat([table, kl_share], axis=1).loc[lambda t: t.index > 1]
print("\nmedian over instances, selected N:")
print(summary_table.iloc[::max(1, len(summary_table) // 6)].to_string(float_format=lambda v: f"{v:.3g}"))
worst = df.groupby("ties").apply(lambda g: g.loc[g["gap"].idxmax(), ["n", "gap", "kl"]], include_groups=False)
print("\nlargest gap per reward resolution (over N and instances):")
print(worst.to_string(float_format=lambda v: f"{v:.3g}"))

# %% [markdown]
# ## The figure

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
names = {0: "continuous rewards"}
for j, (ties, part) in enumerate(stats.groupby(level="ties")):
  n = part.index.get_level_values("n").to_numpy()
  label = names.get(ties, f"rewards rounded to 1/{ties}")
  for ax, col in zip(axes, ("kl", "gap", "kl_to_tilted")):
    ax.plot(n, part[col, "median"], "o-", ms=3, color=colors[j], label=label)
    ax.fill_between(n, part[col, "min"], part[col, "max"], color=colors[j], alpha=0.2, lw=0)
bound = df.groupby("n")["kl_bound"].first()
axes[0].plot(bound.index, bound.to_numpy(), "k--", lw=1, label=r"bound $\log N - (N-1)/N$")
axes[0].set_ylabel(r"$\mathrm{KL}(\pi_N \,\|\, p)$ (nats)")
axes[0].set_title("Best-of-N's KL and its bound")
axes[1].set_yscale("log")
axes[1].set_ylabel(r"$R(\mathrm{KL}) - \mathbb{E}_{\pi_N}[r]$")
axes[1].set_title("Reward gap to the KL-RL frontier")
axes[2].set_yscale("log")
axes[2].set_ylabel(r"$\mathrm{KL}(\pi_N \,\|\, \varphi_\Delta)$ (nats)")
axes[2].set_title("Distance to the optimal policy at the same KL")
for ax in axes:
  ax.set_xscale("log")
  ax.set_xlabel(r"number of draws $N$")
  ax.legend(fontsize=8)
axes[1].set_ylim(1e-6, None)
axes[2].set_ylim(1e-6, None)
fig.suptitle(f"bon.stats sweep: {len(df)} grid points, vocab {int(df['vocab'].iloc[0])}", y=1.0)
fig.tight_layout()

OUT.mkdir(parents=True, exist_ok=True)
fig.savefig(OUT / f"{NAME}.png", dpi=120)
print(f"figure: {OUT / f'{NAME}.png'}")

# %% [markdown]
# **Answer.** With continuous rewards best-of-N's KL follows the bound $\log N - (N-1)/N$ almost
# exactly over this range. Ties pull it below: with rewards rounded to integers (a handful of
# levels) it is about 70-90% of the bound and flattens at $-\log p(\text{top level})$, where some
# instances saturate; the finer rounding to $1/4$ stays within a few percent of the bound. The
# reward gap to the frontier is of order 0.1 (rewards have unit standard deviation) from
# $N \approx 5$ to $N \approx 10^3$ at every resolution: on these random references best-of-N stays
# measurably below the optimal policy at its own KL (compare the Zipf example, where it
# catches up by $N \approx 10^3$). Coarse rewards make the gap *smaller* at large $N$, not
# larger: within a reward level both policies are proportional to $p$, so only their laws over
# the levels can differ, and with few levels both approach the reference conditioned on the top
# level, where the gap vanishes. The printed tables give the medians; the DataFrame is ready for
# any other cut of the results.
