"""Reasoning with verifiable rewards (RLVR): the optimal reasoning distribution and the accuracy
dynamics of natural-gradient flow (docs: theory/rlvr; Tan & Hong, *A Theoretical Lens for RL-Tuned
Language Models via Energy-Based Models*, 2025).

For each prompt a verifier marks responses correct (``c(y) = 1``) or wrong; the reference
accuracy is ``a_ref = p(correct)``. The KL-regularised objective with reward ``c`` is::

    J(q) = E_q[c] - beta KL(q || p) = beta log Z - beta KL(q || pi*),
    pi*(y) = p(y) exp(c(y) / beta) / Z,      Z = 1 - a_ref + a_ref e^{1/beta},

so ``pi* = a* p(.|correct) + (1 - a*) p(.|wrong)`` with ``logit a* = logit a_ref + 1/beta`` and
the suboptimality gap is ``J(pi*) - J(q) = beta KL(q || pi*)``. Natural-gradient flow on softmax
logits (Fisher metric, unit time scale) is solved in closed form by
``log q_t = e^{-beta t} log q_0 + (1 - e^{-beta t}) log pi* + const``; from ``q_0 = p`` it stays
in the tilted family ``q_t ∝ p exp(lam_t c)``, ``lam_t = (1 - e^{-beta t}) / beta``, where

- the gap is a Bernoulli KL: ``J(pi*) - J(q_t) = beta kl(a_t || a*)`` (current accuracy first;
  the other direction ``kl(a* || a_t)`` is not the gap), and ``KL(q_t || p) = kl(a_t || a_ref)``;
- ``da/dt = beta a (1 - a) (logit a* - logit a)``;
- ``H(q_t) = h(a_t) + a_t H_C + (1 - a_t) H_W`` with ``H_C``, ``H_W`` the entropies of ``p``
  restricted to correct and wrong responses; above ``a = sigmoid(H_C - H_W)`` accuracy is bought
  with entropy.

Started elsewhere (or trained by plain gradient descent) only ``gap >= beta kl(a || a*)`` holds
(data processing: the accuracy is a coarsening of ``q``). Every function takes the reference as
log-probabilities over the last axis and the verifier's verdicts as a boolean mask of the same
shape; leading axes are prompts and broadcast, and per-prompt parameters (``beta``, ``t``)
broadcast with them (``t`` of shape ``(T, 1)`` against ``P`` prompts gives ``(T, P)``).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from klrl import divergences, instances, tilted
from klrl._src import checks as _checks
from klrl._src import logspace as _logspace
from klrl.divergences import log_normalize
from klrl.instances import Problem

__all__ = [
    "Problem", "EntropySplit", "FlowStats", "random_problem", "load_problem", "accuracy",
    "target_accuracy", "log_partition", "optimal_policy", "suboptimality_gap",
    "natural_gradient_flow", "flow", "entropy_split",
]


class EntropySplit(NamedTuple):
  """How the reference's entropy splits between correct and wrong responses (per prompt).

  Attributes:
    accuracy: ``a_ref = p(correct)``.
    entropy_correct: ``H_C``, the entropy of ``p(. | correct)``.
    entropy_wrong: ``H_W``, the entropy of ``p(. | wrong)`` (0 when no response is wrong).
    threshold: ``sigmoid(H_C - H_W)``: along the flow, entropy falls as accuracy rises above it.
  """
  accuracy: Array
  entropy_correct: Array
  entropy_wrong: Array
  threshold: Array


class FlowStats(NamedTuple):
  """Closed-form statistics of natural-gradient flow from ``q_0 = p`` at time ``t``.

  Attributes:
    accuracy: ``a_t = sigmoid(logit a_ref + lam_t)``.
    target: ``a* = sigmoid(logit a_ref + 1/beta)``.
    gap: ``J(pi*) - J(q_t) = beta kl(a_t || a*)``.
    kl_forward: ``kl(a_t || a*)`` (current accuracy first): ``beta`` times it is the gap.
    kl_reverse: ``kl(a* || a_t)`` (target first, the abstract's wording): not the gap.
    kl_reference: ``KL(q_t || p) = kl(a_t || a_ref)``.
    entropy: ``H(q_t) = h(a_t) + a_t H_C + (1 - a_t) H_W``.
    velocity: ``da/dt = beta a_t (1 - a_t) (logit a* - logit a_t)``.
  """
  accuracy: Array
  target: Array
  gap: Array
  kl_forward: Array
  kl_reverse: Array
  kl_reference: Array
  entropy: Array
  velocity: Array


# ---------------------------------------------------------------------------------------------
# Validation and per-prompt masses.

def _beta(where, beta):
  return _checks.positive(where, "beta", beta)


# ---------------------------------------------------------------------------------------------
# Problems (klrl.instances, under this module's names).

random_problem = _checks.renamed(instances.random_rlvr_problem, "klrl.rlvr.random_problem")
load_problem = _checks.renamed(instances.load_rlvr_problem, "klrl.rlvr.load_problem")


# ---------------------------------------------------------------------------------------------
# Closed forms.

@_checks.public
def accuracy(logq: Float[Array, "... y"], correct: Bool[Array, "... y"]) -> Float[Array, "..."]:
  """Accuracy ``q(correct) = sum_y q(y) c(y)`` of a policy, per prompt (docs: theory/rlvr)."""
  _, _, la, _, _ = _checks.prompts("klrl.rlvr.accuracy", logq, correct, name="logq")
  return jnp.exp(la)


@_checks.public
def target_accuracy(logp: Float[Array, "... y"], correct: Bool[Array, "... y"], beta: Float[Array, "..."]) -> Float[Array, "..."]:
  """Accuracy of the optimal policy: ``logit a* = logit a_ref + 1/beta`` (docs: theory/rlvr).

  Args:
    logp: reference log-probabilities.
    correct: the verifier's verdicts (bool), same shape.
    beta: KL coefficient ``> 0``, broadcasting with the prompts.

  Returns:
    ``a* = a_ref e^{1/beta} / Z``, computed as a sigmoid of logits from log-masses.
  """
  where = "klrl.rlvr.target_accuracy"
  _, _, la, lw, prm = _checks.prompts(where, logp, correct, beta=beta)
  return jax.nn.sigmoid(la - lw + 1 / _beta(where, prm["beta"]))


@_checks.public
def log_partition(logp: Float[Array, "... y"], correct: Bool[Array, "... y"], beta: Float[Array, "..."]) -> Float[Array, "..."]:
  """``log Z = log(1 - a_ref + a_ref e^{1/beta})``; ``beta log Z`` is the optimal value of J."""
  where = "klrl.rlvr.log_partition"
  _, _, la, lw, prm = _checks.prompts(where, logp, correct, beta=beta)
  return jnp.logaddexp(lw, la + 1 / _beta(where, prm["beta"]))


@_checks.public
def optimal_policy(logp: Float[Array, "... y"], correct: Bool[Array, "... y"], beta: Float[Array, "..."]) -> Float[Array, "... y"]:
  """The optimal reasoning distribution ``pi* ∝ p exp(c / beta)`` (docs: theory/rlvr).

  The tilt of :func:`klrl.tilted.tilt` with the 0/1 reward; equal to
  ``a* p(. | correct) + (1 - a*) p(. | wrong)``.

  Returns:
    ``log pi*``, ``-inf`` where ``p`` has no mass.
  """
  where = "klrl.rlvr.optimal_policy"
  logp, correct, _, _, prm = _checks.prompts(where, logp, correct, beta=beta)
  return tilted.tilt(logp, correct.astype(logp.dtype), _beta(where, prm["beta"]))


@_checks.public
def suboptimality_gap(logq: Float[Array, "... y"], logp: Float[Array, "... y"], correct: Bool[Array, "... y"],
                      beta: Float[Array, "..."]) -> Float[Array, "..."]:
  """``J(pi*) - J(q) = beta KL(q || pi*)`` per prompt (its mean over prompts is the suboptimality gap).

  From the identity ``J(q) = beta log Z - beta KL(q || pi*)`` (docs: theory/rlvr); computed as the
  KL, which is non-negative and has no cancellation.

  Args:
    logq: the policy's log-probabilities.
    logp: reference log-probabilities.
    correct: the verifier's verdicts (bool).
    beta: KL coefficient ``> 0``; at ``beta = inf`` the gap is its limit, 0 for ``q = p`` and
      ``+inf`` otherwise.
  """
  where = "klrl.rlvr.suboptimality_gap"
  logq = _checks.floating(where, "logq", logq, 1)
  _checks.same_support(where, "logp", _checks.floating(where, "logp", logp, 1), "logq", logq)
  logp, correct, la, lw, prm = _checks.prompts(where, logp, correct, others={"logq": logq}, beta=beta)
  beta = _beta(where, prm["beta"])
  logq = _checks.log_probs(where, "logq", jnp.broadcast_to(logq, logp.shape).astype(logp.dtype))
  # Chain rule over {correct, wrong}: KL(q || pi*) = kl(a_q || a*) + a_q KL(q_C || p_C) + (1 - a_q) KL(q_W || p_W),
  # pi* and p having the same conditionals; logit a* = logit a + 1/beta. No term loses digits as beta grows.
  la_q, lw_q = _logspace.log_masses(logq, correct)
  within = jnp.where(correct, (logq - la_q[..., None]) - (logp - la[..., None]),
                     (logq - lw_q[..., None]) - (logp - lw[..., None]))
  conditional = jnp.maximum(jnp.sum(jnp.where(logq > -jnp.inf, jnp.exp(logq) * within, 0.0), axis=-1), 0.0)  # KLs: >= 0
  x, y = la_q - lw_q, (la - lw) + 1 / beta                          # logit a_q (+-inf allowed), logit a*
  kl = _logspace.bernoulli_kl_logits(x, y, (la - lw - x) + 1 / beta) + conditional
  # beta = inf: pi* = p, and beta KL(q || p) is 0 for q = p and +inf otherwise.
  return jnp.where(beta == jnp.inf, jnp.where(kl > 0, jnp.inf, 0.0), beta * kl)


def _lam(beta, t):
  """``lam_t = (1 - e^{-beta t}) / beta``, the tilt of the flow at time ``t``."""
  return -jnp.expm1(-beta * t) / beta


@_checks.public
def natural_gradient_flow(logp: Float[Array, "... y"], correct: Bool[Array, "... y"], beta: Float[Array, "..."],
                          t: Float[Array, "..."], logq0: Float[Array, "... y"] | None = None) -> Float[Array, "... y"]:
  """Natural-gradient flow of ``J`` on softmax logits, in closed form (docs: theory/rlvr).

  The flow ``dtheta/dt = c - beta log(q_theta / p)`` (the Fisher-preconditioned gradient, up to a
  constant per prompt) is solved by
  ``log q_t = e^{-beta t} log q_0 + (1 - e^{-beta t}) log pi* + const``. From ``q_0 = p`` (the
  default) this is the tilt ``q_t ∝ p exp(lam_t c)``, ``lam_t = (1 - e^{-beta t}) / beta``.

  Args:
    logp: reference log-probabilities.
    correct: the verifier's verdicts (bool).
    beta: KL coefficient ``> 0``.
    t: time ``>= 0`` (unit time scale), broadcasting with the prompts.
    logq0: the starting policy (default ``p``); it must put no mass where ``p`` has none.

  Returns:
    ``log q_t``.
  """
  where = "klrl.rlvr.natural_gradient_flow"
  if logq0 is not None:
    logq0 = _checks.floating(where, "logq0", logq0, 1)
    _checks.same_support(where, "logp", _checks.floating(where, "logp", logp, 1), "logq0", logq0)
  others = None if logq0 is None else {"logq0": logq0}
  logp, correct, _, _, prm = _checks.prompts(where, logp, correct, others=others, beta=beta, t=t)
  beta = _beta(where, prm["beta"])[..., None]
  t = _checks.nonnegative(where, "t", prm["t"])[..., None]
  c = correct.astype(logp.dtype)
  # Exponents centred on the correct responses (c - 1 <= 0), so that large tilts keep every digit.
  if logq0 is None:
    return log_normalize(logp + _lam(beta, t) * (c - 1))
  logq0 = jnp.broadcast_to(_checks.log_probs(where, "logq0", logq0), logp.shape).astype(logp.dtype)
  support = logp > -jnp.inf
  logq0 = _checks.holds(where, "logq0", logq0, support | (logq0 == -jnp.inf),
                        "puts mass where 'logp' has none (the flow needs q0 << p)")
  w = jnp.exp(-beta * t)
  log_pi = log_normalize(logp + (c - 1) / beta)
  mix = jnp.where(w > 0, w * logq0, 0.0) + jnp.where(w < 1, (1 - w) * log_pi, 0.0)
  return log_normalize(jnp.where(support, mix, -jnp.inf))


@_checks.public
def entropy_split(logp: Float[Array, "... y"], correct: Bool[Array, "... y"]) -> EntropySplit:
  """Reference accuracy, entropies of ``p`` on correct and wrong responses, and the threshold.

  Along the flow ``dH/da = log((1 - a)/a) + H_C - H_W``, so entropy rises with accuracy below
  ``sigmoid(H_C - H_W)`` and falls above it (docs: theory/rlvr).
  """
  logp, correct, la, lw, _ = _checks.prompts("klrl.rlvr.entropy_split", logp, correct)
  return _split(logp, correct, la, lw)


def _split(logp, correct, la, lw) -> EntropySplit:
  has_wrong = lw > -jnp.inf
  h_c = divergences.entropy(jnp.where(correct, logp - la[..., None], -jnp.inf))
  # rows without a wrong response get a stand-in law (p itself), masked out below.
  cond_w = jnp.where(has_wrong[..., None], jnp.where(correct, -jnp.inf, logp - lw[..., None]), logp)
  h_w = jnp.where(has_wrong, divergences.entropy(cond_w), 0.0)
  return EntropySplit(jnp.exp(la), h_c, h_w, jax.nn.sigmoid(h_c - h_w))


@_checks.public
def flow(logp: Float[Array, "... y"], correct: Bool[Array, "... y"], beta: Float[Array, "..."],
         t: Float[Array, "..."]) -> FlowStats:
  """Accuracy, gap, Bernoulli KLs and entropy along natural-gradient flow from ``p``, closed form.

  With ``lam_t = (1 - e^{-beta t}) / beta`` (docs: theory/rlvr): ``logit a_t = logit a_ref + lam_t``;
  the suboptimality gap ``J(pi*) - J(q_t)`` equals ``beta kl(a_t || a*)`` (``.kl_forward``, the
  current accuracy first), not ``beta kl(a* || a_t)`` (``.kl_reverse``); ``KL(q_t || p) =
  kl(a_t || a_ref)``; ``H(q_t) = h(a_t) + a_t H_C + (1 - a_t) H_W``. The Bernoulli KLs are
  evaluated from the logits (:func:`klrl.divergences.bernoulli_kl_logits`), so they stay
  accurate for accuracies within ``1e-9`` of 1. Nothing of size ``|y|`` is formed beyond one
  pass for ``a_ref``, ``H_C`` and ``H_W``, so a fine time grid is cheap.

  Args:
    logp: reference log-probabilities.
    correct: the verifier's verdicts (bool).
    beta: KL coefficient ``> 0``.
    t: time ``>= 0``, broadcasting with the prompts.

  Returns:
    A :class:`FlowStats`.
  """
  where = "klrl.rlvr.flow"
  logp, correct, la, lw, prm = _checks.prompts(where, logp, correct, beta=beta, t=t)
  beta = _beta(where, prm["beta"])
  t = _checks.nonnegative(where, "t", prm["t"])
  split = _split(logp, correct, la, lw)
  logit_ref = la - lw
  logit_t, logit_star = logit_ref + _lam(beta, t), logit_ref + 1 / beta
  remaining = jnp.exp(-beta * t) / beta            # logit a* - logit a_t = 1/beta - lam_t
  a_t = jax.nn.sigmoid(logit_t)
  kl = divergences.bernoulli_kl_logits         # accurate also for accuracies near 0 or 1
  forward = kl(logit_t, logit_star)
  return FlowStats(
      accuracy=a_t,
      target=jax.nn.sigmoid(logit_star),
      gap=beta * forward,
      kl_forward=forward,
      kl_reverse=kl(logit_star, logit_t),
      kl_reference=kl(logit_t, logit_ref),
      entropy=(divergences.binary_entropy(a_t) + a_t * split.entropy_correct
               + (1 - a_t) * split.entropy_wrong),
      velocity=beta * a_t * (1 - a_t) * remaining,
  )
