"""The KL penalty as RLHF/RLVR trainers implement it, settled exactly on autoregressive sequences
small enough to enumerate (docs: theory/autoregressive).

A problem is a reference ``p(y) = prod_t p(y_t | y_<t)`` over sequences of ``T`` tokens from a
vocabulary of ``V`` (optionally with an end token) and a reward per sequence or per token; the
policy is a table of logits, one row per prefix. The objective is
``J(q) = E_q[R] - beta KL(q || p)``, maximised by ``q* ∝ p exp(R/beta)``.

- :mod:`~klrl.autoregressive.problems`: :class:`Problem`, :func:`problem`, :func:`random_problem`,
  :func:`sequences`, :func:`log_policy`, :func:`sequence_log_probs`, :func:`kl` (chain rule),
  :func:`optimum` (sequence and token level, soft values).
- :mod:`~klrl.autoregressive.configs`: :class:`Config` (estimator ``k1/k2/k3``, placement,
  level, return, off-policy ratio, clamps, advantage, group, length normalisation) and the
  :data:`PRESETS` of TRL, OpenRLHF and verl with the :data:`QUESTIONS` they answer.
- :mod:`~klrl.autoregressive.gradients`: :func:`objective`, :func:`exact_gradient`,
  :func:`kl_gradient` (local and future-KL parts), :func:`expected_gradient` (the exact
  expectation of any configuration), :func:`gradient_bias`, :func:`binary_advantage`.
- :mod:`~klrl.autoregressive.dynamics`: :func:`fixed_point` (exact expected-gradient dynamics
  with optax) and :func:`audit` (a table over configurations).
- :mod:`~klrl.autoregressive.sampled`: :func:`sample`, :func:`sampled_gradient`,
  :func:`sampled_training` (Monte Carlo with the same configurations).

Every public name is exported here: ``klrl.autoregressive.<name>``.
"""
from klrl.autoregressive.configs import PRESETS, QUESTIONS, Config
from klrl.autoregressive.dynamics import (DEFAULT_OPTIMIZER, DEFAULT_STEPS, AuditTable, FixedPoint, Metrics, audit,
                                          fixed_point)
from klrl.autoregressive.gradients import (Bias, BinaryAdvantage, KLGradient, binary_advantage, exact_gradient,
                                           expected_gradient, gradient_bias, kl_gradient, objective)
from klrl.autoregressive.problems import (Optimum, Problem, kl, log_policy, optimum, problem, random_problem,
                                          sequence_log_probs, sequences)
from klrl.autoregressive.sampled import sample, sampled_gradient, sampled_training

__all__ = [
    "Problem", "Optimum", "Config", "Bias", "KLGradient", "BinaryAdvantage", "Metrics", "FixedPoint", "AuditTable",
    "PRESETS", "QUESTIONS", "DEFAULT_OPTIMIZER", "DEFAULT_STEPS",
    "problem", "random_problem", "sequences", "log_policy", "sequence_log_probs", "kl", "optimum",
    "objective", "exact_gradient", "kl_gradient", "expected_gradient", "gradient_bias", "binary_advantage",
    "fixed_point", "audit", "sample", "sampled_gradient", "sampled_training",
]
