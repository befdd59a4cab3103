"""Benchmarks of klrl.autoregressive: the exact expected gradient of a configuration over all V^T
sequences, against a NumPy enumeration of the same sum.

Cases, on random binary problems with V = 10 tokens and T = 2 .. 5 positions (10^2 .. 10^5
sequences, float64, one problem per call):

- ``expected_gradient/k1_reward_to_go``: the per-token k1 penalty in the reward-to-go (the
  true gradient);
- ``expected_gradient/trl_grpo``: TRL's GRPO (k3 in the loss, group-normalised advantages by the
  binomial count over 8 draws, per-sequence length normalisation).

The baseline is a vectorised NumPy enumeration computing the same expectation (token
log-probabilities by repeats of the prefix tables, the per-token score coefficients, and the
gradient of the tabular softmax by ``np.bincount`` per prefix row), timed in alternation with
klrl in the same run (:func:`benchmarks.harness.paired_times`); its result is compared with
klrl's (``max_diff``). The bandwidth column uses a model of the bytes one call must touch (the
``N x T`` rewards and token log-probabilities, the tables), a lower bound on the traffic.
"""
from __future__ import annotations

import functools

import jax
import numpy as np
from scipy.special import gammaln, log_softmax

from benchmarks.harness import Row, compile_time, paired_times
from klrl import autoregressive as ar

V, BETA = 10, 0.3


def _tokens(table, v, t_max):
  """``(N, T)`` log-probabilities of every sequence's tokens from a ``(P, V)`` table."""
  off = [(v ** t - 1) // (v - 1) for t in range(t_max + 1)]
  return np.stack([np.repeat(table[off[t]:off[t + 1]].reshape(-1), v ** (t_max - 1 - t)) for t in range(t_max)], -1)


def _score_gradient(coef, lq_table, v, t_max):
  """Gradient of ``-sum_{n,t} coef[n, t] log q(y_t | y_<t)`` in the logits of a tabular softmax."""
  n = v ** t_max
  off = [(v ** t - 1) // (v - 1) for t in range(t_max + 1)]
  seq = np.arange(n)
  rows, v_ = lq_table.shape
  weight = np.zeros(rows * v_)
  for t in range(t_max):
    flat = (off[t] + seq // v ** (t_max - t)) * v_ + (seq // v ** (t_max - 1 - t)) % v
    weight += np.bincount(flat, coef[:, t], minlength=rows * v_)
  weight = weight.reshape(rows, v_)
  return -(weight - np.exp(lq_table) * weight.sum(-1, keepdims=True))


def np_expected_gradient(theta, logp, reward, v, t_max, preset):
  """The exact expectation of a preset's gradient estimate, by NumPy enumeration."""
  lq_table = log_softmax(theta, axis=-1)
  lq, lp = _tokens(lq_table, v, t_max), _tokens(logp, v, t_max)
  q = np.exp(lq.sum(-1))
  d = lq - lp
  if preset == "k1_reward_to_go":
    ret = np.flip(np.cumsum(np.flip(reward - BETA * d, -1), -1), -1)
    return _score_gradient(q[:, None] * ret, lq_table, v, t_max)
  # trl_grpo: E[A | own reward] by the count of correct draws among the 7 others, k3 in the loss
  cfg = ar.PRESETS["trl_grpo"]
  g, correct = cfg.group, reward.sum(-1) > 0.5
  a = np.sum(q * correct)
  k = np.arange(g)
  pmf = np.exp(gammaln(g) - gammaln(k + 1) - gammaln(g - k) + k * np.log(a) + (g - 1 - k) * np.log1p(-a))

  def adv(x, j):
    m = j / g
    std = np.sqrt(m * (1 - m) * g / (g - 1))
    flat = (j == 0) | (j == g)
    return np.where(flat, 0.0, (x - m) / np.where(flat, 1.0, std + cfg.eps))

  f = np.where(correct, pmf @ adv(1.0, k + 1), pmf @ adv(0.0, k))
  coef = q[:, None] * (f[:, None] - BETA * (1 - np.exp(-d))) / t_max    # d loss / d log q_t, per-sequence mean
  return _score_gradient(coef, lq_table, v, t_max)


def run(args):
  lengths = (2, 3) if args.quick else (2, 3, 4, 5)
  for t_max in lengths:
    prob = ar.random_problem(jax.random.PRNGKey(t_max), V, t_max, binary=True)
    theta = prob.logp + 0.5 * jax.random.normal(jax.random.PRNGKey(100 + t_max), prob.logp.shape)
    lp_np, th_np, r_np = np.asarray(prob.logp), np.asarray(theta), np.asarray(prob.reward)
    nbytes = 8 * (3 * r_np.size + 3 * lp_np.size)
    rounds = args.rounds or (3 if args.quick else 5)
    for name in ("k1_reward_to_go", "trl_grpo"):
      cfg = ar.PRESETS[name]
      fn = functools.partial(ar.expected_gradient, config=cfg, binary=True)
      c = compile_time(jax.jit(functools.partial(ar.expected_gradient.__wrapped__, config=cfg, binary=True)),
                       theta, prob, BETA)
      baseline = lambda: np_expected_gradient(th_np, lp_np, r_np, V, t_max, name)
      t, tb, ratios = paired_times(fn, (theta, prob, BETA), baseline, rounds)
      diff = float(np.max(np.abs(np.asarray(fn(theta, prob, BETA)) - baseline())))
      yield Row("autoregressive", f"expected_gradient/{name}", f"10^{t_max} (V={V}, T={t_max})", c, t,
                "NumPy enumeration", tb, nbytes, {"max_diff": diff}, ratios)
