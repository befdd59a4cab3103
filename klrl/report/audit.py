"""The table of ``klrl audit``: where each KL-penalty configuration of the trainers converges.

For a family of random autoregressive problems (docs: theory/autoregressive) and a few values of
``beta``, one row per configuration (:data:`klrl.autoregressive.PRESETS` by default) with its
gradient bias against ``grad J`` and where its exact expected-gradient dynamics end, averaged
over the problems of the family. The numbers come from :func:`klrl.autoregressive.audit`; this
module only draws the problems, lays out the rows and writes them (Markdown, CSV, a figure).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from klrl import autoregressive

__all__ = ["Family", "COLUMNS", "rows", "markdown", "to_csv", "figure"]

COLUMNS = {   # column -> (header, what it is)
    "preset": ("configuration", "name of the configuration (klrl.autoregressive.PRESETS)"),
    "rewards": ("rewards", "binary (a verifier) or real (standard normal per sequence)"),
    "beta": ("beta", "KL coefficient"),
    "error": ("grad error", "|E[g] - grad J| / |grad J| half-way from p to q*"),
    "cosine": ("cosine", "cosine between E[g] and grad J there"),
    "reward": ("E[R] at end", "expected reward where the exact dynamics end"),
    "kl_reference": ("KL(q||p)", "KL to the reference there"),
    "kl_optimum": ("KL(q||q*)", "KL to the optimum q* there (0: it converges to q*)"),
    "grad_norm": ("|grad J|", "norm of grad J there (0: a stationary point of J)"),
}


class Family(NamedTuple):
  """A family of random problems (:func:`klrl.autoregressive.random_problem`).

  Attributes:
    vocab: tokens ``V``.
    length: tokens per sequence ``T``.
    problems: random problems averaged over.
    seed: PRNG seed.
    concentration: Dirichlet concentration of the reference rows.
  """
  vocab: int = 3
  length: int = 4
  problems: int = 4
  seed: int = 0
  concentration: float = 1.0


def rows(family: Family, betas, rewards=("binary", "real"), presets=None, steps: int | None = None,
         log=lambda msg: None) -> list[dict]:
  """One dict per (reward kind, beta, configuration), the columns of :data:`COLUMNS` plus the
  optimum's and the reference's reward and the optimum's KL (``optimum_reward``, ``optimum_kl``,
  ``reference_reward``), each averaged over the problems of the family."""
  configs = autoregressive.PRESETS if presets is None else {k: autoregressive.PRESETS[k] for k in presets}
  betas = np.asarray(betas, float)
  out = []
  for i, kind in enumerate(rewards):
    key = jax.random.fold_in(jax.random.PRNGKey(family.seed), i)
    prob = autoregressive.random_problem(key, family.vocab, family.length, binary=kind == "binary",
                                         concentration=family.concentration, batch=(family.problems,))
    log(f"audit: {kind} rewards, V = {family.vocab}, T = {family.length}, {family.problems} problems, "
        f"{len(configs)} configurations, beta = {betas.tolist()} ...")
    kwargs = {} if steps is None else {"steps": steps}
    table = autoregressive.audit(prob, jnp.asarray(betas)[:, None], configs, binary=kind == "binary", **kwargs)
    table = jax.tree.map(lambda x: np.mean(np.asarray(x), axis=1), table)    # mean over the problems (NaN: refused)
    for b, beta in enumerate(betas):
      for c, name in enumerate(configs):
        row = {"preset": name, "rewards": kind, "beta": float(beta)}
        row.update({k: float(getattr(table, k)[b, c]) for k in list(COLUMNS)[3:]})
        row.update({k: float(getattr(table, k)[b]) for k in ("optimum_reward", "optimum_kl", "reference_reward")})
        out.append(row)
  return out


def _fmt(x) -> str:
  if isinstance(x, str):
    return x
  if not np.isfinite(x):
    return "n/a"
  return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def markdown(table: list[dict]) -> str:
  """The rows as Markdown, one table per (reward kind, beta), each with a line for ``q*``."""
  parts = []
  for kind in dict.fromkeys(r["rewards"] for r in table):
    for beta in dict.fromkeys(r["beta"] for r in table if r["rewards"] == kind):
      sel = [r for r in table if r["rewards"] == kind and r["beta"] == beta]
      parts.append(f"**{kind} rewards, beta = {beta:g}**: reference E[R] = {_fmt(sel[0]['reference_reward'])}, "
                   f"optimum q*: E[R] = {_fmt(sel[0]['optimum_reward'])}, KL(q*||p) = {_fmt(sel[0]['optimum_kl'])}\n")
      keys = [k for k in COLUMNS if k not in ("rewards", "beta")]
      parts.append("| " + " | ".join(COLUMNS[k][0] for k in keys) + " |")
      parts.append("|" + "|".join("---" if k == "preset" else "---:" for k in keys) + "|")
      parts += ["| " + " | ".join(_fmt(r[k]) for k in keys) + " |" for r in sel]
      parts.append("")
  return "\n".join(parts)


def to_csv(table: list[dict]) -> str:
  """The rows as CSV, every column (a header line first)."""
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=list(table[0]), lineterminator="\n")
  writer.writeheader()
  writer.writerows(table)
  return buf.getvalue()


def figure(table: list[dict], path: Path) -> Path:
  """Bars of ``KL(q_end || q*)`` per configuration, one panel per reward kind, one bar per beta."""
  from klrl.report.plotting import plt, save
  kinds = list(dict.fromkeys(r["rewards"] for r in table))
  names = list(dict.fromkeys(r["preset"] for r in table))
  betas = list(dict.fromkeys(r["beta"] for r in table))
  fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 0.3 * len(names) + 1.5), sharey=True, squeeze=False)
  height = 0.8 / len(betas)
  for ax, kind in zip(axes[0], kinds):
    for j, beta in enumerate(betas):
      val = {r["preset"]: r["kl_optimum"] for r in table if r["rewards"] == kind and r["beta"] == beta}
      y = np.arange(len(names)) + (j - (len(betas) - 1) / 2) * height
      ax.barh(y, [max(val.get(n, np.nan), 1e-12) for n in names], height, label=f"beta = {beta:g}")
    ax.set_xscale("log")
    ax.set_xlim(left=1e-12)
    ax.set_yticks(np.arange(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("KL(q_end || q*)  (1e-12: converges to q*)")
    ax.set_title(f"{kind} rewards")
    ax.legend(fontsize=7)
  return save(fig, path, "Where each KL-penalty configuration converges: KL from the end of its exact "
              "expected-gradient dynamics to the optimum q*, per configuration and beta.")
