"""The experiments a sweep can run: pure functions from one grid point to its measurements.

An experiment maps a mapping of scalar parameters to a dict of scalar outputs. Parameters are
declared with :class:`Param`: *static* ones (sizes, choices, flags) are Python values fixed
for a compiled kernel, *traced* ones (budgets, temperatures, seeds) are 0-d arrays, so the
engine ``vmap``\\ s the function over the points of a chunk inside one ``jit``. Everything a
sweep needs to know about an experiment (the schema of its parameters, the conditions between
them, its outputs) is in its declaration; the configuration check and the engine read nothing else.

Adding an experiment for another module is one decorated function::

    @experiment("bon.stats", params=dict(INSTANCE, n=Param(float, low=1.0)),
                outputs=("kl", "mean_reward", "win_rate"))
    def bon_stats(p, dtype):
      logp, reward = instance(p, dtype)
      s = bon.stats(logp, reward, p["n"])
      return dict(kl=s.kl, mean_reward=s.mean_reward, win_rate=s.win_rate)

A condition between parameters (a length at most a buffer size, say) is a :class:`Limit`,
checked for every grid point when the configuration is loaded::

    limits=(Limit(("n", "n_max"), lambda v: v["n"] <= v["n_max"], "{n} exceeds {n_max}"),)
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from klrl import autoregressive, bon, chains, markov, memoryless, problems, rlvr, tilted

__all__ = ["Param", "Limit", "Experiment", "EXPERIMENTS", "experiment", "INSTANCE", "instance"]

REQUIRED = object()


class Param(NamedTuple):
  """Declaration of one parameter of an experiment.

  Attributes:
    type: ``int``, ``float``, ``str`` or ``bool`` (strings and flags are always static).
    static: whether the value is a compile-time constant (shapes, choices) rather than traced.
    default: value used when the configuration does not set it; ``REQUIRED`` if none.
    low: smallest allowed value (inclusive), for numbers.
    high: largest allowed value (inclusive), for numbers.
    positive: whether the value must be ``> 0`` (numbers).
    choices: allowed values (strings).
    doc: one line for the documentation and error messages.
  """
  type: type
  static: bool = False
  default: Any = REQUIRED
  low: float | None = None
  high: float | None = None
  positive: bool = False
  choices: tuple | None = None
  doc: str = ""

  @property
  def required(self) -> bool:
    return self.default is REQUIRED


class Limit(NamedTuple):
  """A condition between parameters that every grid point must meet (checked by :func:`klrl.sweep.config.load`).

  Attributes:
    params: the parameters it involves; a violation is reported at the key path of the first
      one that is swept (else the first).
    check: ``check(values) -> bool``, ``values`` mapping each of ``params`` to a value or to a
      NumPy array of values (so it must broadcast: ``lambda v: v["n"] <= v["n_max"]``).
    violation: what a failing point is, ``{name}`` standing for a parameter's value
      (``"{n} exceeds {n_max}"``).
  """
  params: tuple[str, ...]
  check: Callable[[Mapping[str, Any]], Any]
  violation: str


class Experiment(NamedTuple):
  """A registered experiment: ``fn(params, dtype) -> {output: 0-d array}``, with the
  limits (:class:`Limit`) its parameters must meet."""
  name: str
  fn: Callable[[Mapping[str, Any], Any], dict[str, Array]]
  params: dict[str, Param]
  outputs: tuple[str, ...]
  doc: str
  limits: tuple[Limit, ...] = ()


EXPERIMENTS: dict[str, Experiment] = {}


def experiment(name: str, *, params: dict[str, Param], outputs: tuple[str, ...], limits: tuple[Limit, ...] = ()):
  """Registers ``fn(params, dtype) -> dict`` under ``name`` (``"<module>.<what>"``).

  Args:
    name: the name configurations give in ``experiment``.
    params: its parameters.
    outputs: the names of the outputs ``fn`` returns.
    limits: conditions between parameters that every grid point must meet.
  """
  def register(fn):
    clash = set(params) & set(outputs)
    if clash:
      raise ValueError(f"experiment {name}: names {sorted(clash)} are both parameters and outputs")
    traced = [k for k, p in params.items() if p.type in (str, bool) and not p.static]
    if traced:
      raise ValueError(f"experiment {name}: string and boolean parameters {traced} must be static")
    unknown = [k for lim in limits for k in lim.params if k not in params]
    if unknown:
      raise ValueError(f"experiment {name}: limits name {unknown}, which are not parameters")
    EXPERIMENTS[name] = Experiment(name, fn, dict(params), tuple(outputs), (fn.__doc__ or "").strip(), tuple(limits))
    return fn
  return register


# ---------------------------------------------------------------------------------------------
# Problem instances shared by experiments on one reference/reward pair.

INSTANCE = dict(
    vocab=Param(int, static=True, low=2, doc="support size V"),
    problem=Param(str, static=True, default="random", choices=("random", "zipf"),
                  doc="'random': Gaussian logits and rewards (klrl.problems.random_problem); "
                      "'zipf': Zipf reference with linear reward (klrl.problems.zipf_linear)"),
    seed=Param(int, default=0, low=0, doc="PRNG seed of the random instance"),
    temperature=Param(float, default=2.0, low=0.0, doc="scale of the random logits"),
    ties=Param(int, static=True, default=0, low=0, doc="if > 0, rewards rounded to this many levels per unit"),
    exponent=Param(float, default=1.1, low=0.0, doc="Zipf exponent"),
)


def instance(p: Mapping[str, Any], dtype) -> tuple[Float[Array, "v"], Float[Array, "v"]]:
  """The reference/reward pair named by the :data:`INSTANCE` parameters of a grid point."""
  if p["problem"] == "zipf":
    return problems.zipf_linear(p["vocab"], p["exponent"], dtype)
  logp, reward = problems.random_problem(jax.random.PRNGKey(p["seed"]), 1, p["vocab"],
                                         temperature=p["temperature"], ties=p["ties"], dtype=dtype)
  return logp[0], reward[0]


# ---------------------------------------------------------------------------------------------
# klrl.tilted (docs: theory/tilted).

@experiment(
    "tilted.frontier",
    params=dict(INSTANCE,
                delta=Param(float, low=0.0, doc="KL budget Δ (a fraction of Δ_max if relative)"),
                relative=Param(bool, static=True, default=False, doc="budget is delta * Δ_max")),
    outputs=("budget", "frontier", "beta", "lam", "kl", "delta_max", "saturated", "iterations"))
def tilted_frontier(p, dtype):
  """The KL-constrained optimum at budget Δ: ``R(Δ)``, ``beta_Δ``, its KL, ``Δ_max``, Newton steps."""
  logp, reward = instance(p, dtype)
  delta_max = tilted.max_kl(logp, reward)
  budget = p["delta"] * delta_max if p["relative"] else jnp.asarray(p["delta"], dtype)
  sol = tilted.kl_constrained(logp, reward, budget)
  return dict(budget=budget, frontier=sol.mean_reward, beta=sol.beta, lam=sol.lam, kl=sol.kl,
              delta_max=delta_max, saturated=sol.saturated, iterations=sol.iterations)


@experiment(
    "tilted.stats",
    params=dict(INSTANCE, beta=Param(float, positive=True, doc="KL coefficient beta > 0")),
    outputs=("log_z", "kl", "mean_reward", "var_reward", "entropy"))
def tilted_stats(p, dtype):
  """Statistics of the tilted policy ``pi_beta``: ``log Z``, KL, mean and variance of r, entropy."""
  logp, reward = instance(p, dtype)
  s = tilted.stats(logp, reward, p["beta"])
  return s._asdict()


# ---------------------------------------------------------------------------------------------
# klrl.bon (docs: theory/best-of-n).

@experiment(
    "bon.stats",
    params=dict(INSTANCE, n=Param(float, low=1.0, doc="number of draws N >= 1 (real)")),
    outputs=("kl", "mean_reward", "win_rate", "kl_bound", "frontier", "gap", "lam", "kl_to_tilted"))
def bon_stats(p, dtype):
  """Best-of-N against the KL-RL frontier at its own KL: KL, reward, win rate, bound, gap."""
  logp, reward = instance(p, dtype)
  f = bon.against_frontier(logp, reward, p["n"])
  return dict(kl=f.kl, mean_reward=f.mean_reward, win_rate=f.win_rate, kl_bound=bon.kl_bound(p["n"]),
              frontier=f.frontier, gap=f.gap, lam=f.lam, kl_to_tilted=f.kl_to_tilted)


# ---------------------------------------------------------------------------------------------
# klrl.memoryless (docs: theory/memoryless).

THREE_LETTERS = ((0.5, 0.3, 0.2), (0.0, 1.0, 3.0))   # reference and rewards of the 'three' instance


@experiment(
    "memoryless.bon_vs_kl",
    params=dict(instance=Param(str, static=True, default="bernoulli", choices=("bernoulli", "three", "random"),
                               doc="per-token law: 'bernoulli' (reward 1 with probability p_good, else 0), 'three' "
                                   "(p = (.5, .3, .2), r = (0, 1, 3)), 'random' (random logits over rewards 0..vocab-1)"),
                vocab=Param(int, static=True, default=8, low=2, doc="support size of the random instance"),
                seed=Param(int, default=0, low=0, doc="PRNG seed of the random instance"),
                temperature=Param(float, default=2.0, low=0.0, doc="scale of the random logits"),
                p_good=Param(float, default=0.3, low=0.0, high=1.0, doc="Bernoulli success probability"),
                delta=Param(float, low=0.0, doc="per-token KL budget Δ (N = e^{nΔ} sequences)"),
                n=Param(int, low=1, doc="sequence length n <= n_max"),
                n_max=Param(int, static=True, default=1000, low=1, doc="largest sequence length (sizes the buffers)")),
    outputs=("mean_reward", "kl", "kl_to_tilted", "win_rate", "target_reward", "lam", "predicted_gap"),
    limits=(Limit(("n", "n_max"), lambda v: v["n"] <= v["n_max"], "{n} exceeds {n_max} (the buffers hold n <= n_max)"),))
def memoryless_bon_vs_kl(p, dtype):
  """Best-of-e^{nΔ} over sequences of n i.i.d. tokens against the KL-RL solution, per token."""
  # Rewards are NumPy constants: the lattice's size depends on their values, not on traced ones.
  if p["instance"] == "bernoulli":
    logp, reward = problems.bernoulli(p["p_good"], dtype)[0], np.array([0.0, 1.0], dtype)
  elif p["instance"] == "three":
    logp, reward = jnp.log(jnp.array(THREE_LETTERS[0], dtype)), np.array(THREE_LETTERS[1], dtype)
  else:
    logp = problems.random_problem(jax.random.PRNGKey(p["seed"]), 1, p["vocab"], temperature=p["temperature"],
                                   dtype=dtype)[0][0]
    reward = np.arange(p["vocab"], dtype=dtype)
  lat = memoryless.lattice(logp, reward)
  out = memoryless.bon_vs_kl_lattice(lat, p["delta"], p["n"], size=p["n_max"] * (lat.log_mass.shape[-1] - 1) + 1)
  return out._asdict()


# ---------------------------------------------------------------------------------------------
# klrl.chains (docs: theory/chains).

@experiment(
    "chains.gap",
    params=dict(states=Param(int, static=True, low=2, doc="number of states M"),
                seed=Param(int, default=0, low=0, doc="PRNG seed of the random reversible chain"),
                beta=Param(float, positive=True, doc="KL coefficient beta > 0"),
                concentration=Param(float, default=1.0, low=0.0, doc="log-normal scale of the joint weights")),
    outputs=("spectral_gap", "absolute_gap", "relaxation_time", "max_balance_residual"))
def chains_gap(p, dtype):
  """Spectral gaps of the tilted kernel of a random reversible chain with a potential reward."""
  k1, k2 = jax.random.split(jax.random.PRNGKey(p["seed"]))
  log_ref = chains.reference_from_joint(chains.random_joint(k1, p["states"], 0.0, p["concentration"]).astype(dtype))
  reward = chains.random_reward(k2, p["states"]).reward.astype(dtype)
  log_k = chains.kernel(log_ref, reward, p["beta"])
  return dict(spectral_gap=chains.spectral_gap(log_k), absolute_gap=chains.absolute_spectral_gap(log_k),
              relaxation_time=chains.relaxation_time(log_k),
              max_balance_residual=chains.detailed_balance(log_k).max_residual)


# ---------------------------------------------------------------------------------------------
# klrl.rlvr (docs: theory/rlvr).

@experiment(
    "rlvr.flow",
    params=dict(responses=Param(int, static=True, low=2, doc="responses per prompt"),
                num_correct=Param(int, static=True, low=1, doc="correct responses per prompt"),
                seed=Param(int, default=0, low=0, doc="PRNG seed of the random prompt"),
                accuracy=Param(float, low=0.0, high=1.0, doc="reference accuracy a_ref in (0, 1)"),
                entropy_correct=Param(float, default=0.9, low=0.0, high=1.0, doc="entropy of p(.|correct), fraction of max"),
                entropy_wrong=Param(float, default=0.9, low=0.0, high=1.0, doc="entropy of p(.|wrong), fraction of max"),
                beta=Param(float, positive=True, doc="KL coefficient beta > 0"),
                t=Param(float, low=0.0, doc="time along natural-gradient flow")),
    outputs=("accuracy_t", "target", "gap", "kl_forward", "kl_reverse", "kl_reference", "entropy"),
    limits=(Limit(("num_correct", "responses"), lambda v: v["num_correct"] < v["responses"],
                  "{num_correct} is not below {responses} (a prompt needs a wrong response)"),
            Limit(("accuracy",), lambda v: (v["accuracy"] > 0) & (v["accuracy"] < 1),
                  "{accuracy} is not strictly between 0 and 1 (both kinds of response need mass)")))
def rlvr_flow(p, dtype):
  """Natural-gradient flow from the reference in closed form: accuracy, gap, Bernoulli KLs, entropy."""
  prob = rlvr.random_problem(jax.random.PRNGKey(p["seed"]), 1, p["responses"], num_correct=p["num_correct"],
                             accuracy=p["accuracy"], entropy_correct=p["entropy_correct"],
                             entropy_wrong=p["entropy_wrong"], dtype=dtype)
  f = rlvr.flow(prob.logp[0], prob.correct[0], p["beta"], p["t"])
  return dict(accuracy_t=f.accuracy, target=f.target, gap=f.gap, kl_forward=f.kl_forward,
              kl_reverse=f.kl_reverse, kl_reference=f.kl_reference, entropy=f.entropy)


# ---------------------------------------------------------------------------------------------
# klrl.markov (docs: theory/markov).

@experiment(
    "markov.kl_rl",
    params=dict(vocab=Param(int, static=True, low=2, doc="tokens V of the random Markov reference"),
                seed=Param(int, default=0, low=0, doc="PRNG seed of the random reference"),
                concentration=Param(float, static=True, default=1.0, positive=True,
                                    doc="Dirichlet concentration of the rows of P (small: peaked rows, strong memory)"),
                delta=Param(float, low=0.0, doc="per-token KL budget Δ (the budget of n tokens is nΔ)"),
                n=Param(int, low=1, doc="sequence length n")),
    outputs=("mean_reward", "kl", "lam", "max_kl", "saturated", "rate_reward", "rate_lam", "rate_max_kl"))
def markov_kl_rl(p, dtype):
  """KL-RL over n Markov tokens at budget nΔ against its per-token limit (x_Δ, λ_Δ) as n grows."""
  ref = markov.random_reference(jax.random.PRNGKey(p["seed"]), p["vocab"], concentration=p["concentration"], dtype=dtype)
  fin = markov.kl_constrained(ref, p["delta"], p["n"])
  lim = markov.kl_constrained_rate(ref, p["delta"])
  return dict(mean_reward=fin.mean_reward, kl=fin.kl, lam=fin.lam, max_kl=fin.max_kl, saturated=fin.saturated,
              rate_reward=lim.mean_reward, rate_lam=lim.lam, rate_max_kl=lim.max_kl)


# ---------------------------------------------------------------------------------------------
# klrl.autoregressive (docs: theory/autoregressive).

@experiment(
    "autoregressive.fixed_point",
    params=dict(vocab=Param(int, static=True, default=3, low=2, doc="tokens V"),
                length=Param(int, static=True, default=3, low=1, doc="tokens per sequence T (V^T enumerated)"),
                binary=Param(bool, static=True, default=True, doc="0/1 sequence rewards (else standard normal)"),
                preset=Param(str, static=True, choices=tuple(autoregressive.PRESETS),
                             doc="configuration (klrl.autoregressive.PRESETS; `klrl audit --list`)"),
                steps=Param(int, static=True, default=1500, low=1, doc="steps of the exact expected-gradient dynamics"),
                seed=Param(int, default=0, low=0, doc="PRNG seed of the random problem"),
                beta=Param(float, positive=True, doc="KL coefficient beta > 0")),
    outputs=("reward", "kl_reference", "kl_optimum", "grad_norm", "residual", "optimum_reward", "reference_reward"))
def autoregressive_fixed_point(p, dtype):
  """Where a trainer's KL configuration converges: E[R], KL(q||p), KL(q||q*), |grad J| at the end."""
  prob = autoregressive.random_problem(jax.random.PRNGKey(p["seed"]), p["vocab"], p["length"], binary=p["binary"])
  prob = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, prob)
  end = autoregressive.fixed_point(prob, p["beta"], autoregressive.PRESETS[p["preset"]], autoregressive.DEFAULT_OPTIMIZER,
                                   p["steps"], binary=p["binary"], natural=True)
  star = autoregressive.optimum(prob, p["beta"])
  ref = autoregressive.sequence_log_probs(prob.logp, prob)
  seq_reward = jnp.sum(prob.reward, axis=-1)
  return dict(reward=end.reward, kl_reference=end.kl_reference, kl_optimum=end.kl_optimum, grad_norm=end.grad_norm,
              residual=end.residual, optimum_reward=jnp.sum(jnp.exp(star.log_prob) * seq_reward),
              reference_reward=jnp.sum(jnp.exp(ref) * seq_reward))
