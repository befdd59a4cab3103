"""The estimators of :class:`~klrl.autoregressive.Config`, shared by the exact expectation and the
sampler (docs: theory/autoregressive).

Both build the same per-sequence surrogate loss from per-token arrays of a set of sequences
(:class:`Tokens`): all ``V^T`` sequences weighted by their sampler probability (exact), or
``group`` drawn ones weighted ``1/group`` (sampled). Only the advantages differ: the exact
expectation replaces a group advantage by its conditional mean given the sequence's own return
(the other draws averaged out; the means of its positive and negative parts where PPO's clip can
bind), the sampler uses the group it drew. Unchecked; one problem.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.special import gammaln, xlogy

from klrl._src import logspace as _logspace
from klrl.autoregressive.configs import Config, penalised_return
from klrl.autoregressive.problems import Layout, policy, present, tokens

ENUMERATION_LIMIT = 2 ** 24   # group evaluations N^G of an exact group expectation on real values


class Tokens(NamedTuple):
  """Per-token arrays ``(M, T)`` of ``M`` sequences; 0 where ``mask`` is false (absent positions,
  sequences of probability 0)."""
  lp: jax.Array       # log p(y_t | y_<t)
  lmu: jax.Array      # log mu(y_t | y_<t), the sampler (no gradient)
  reward: jax.Array   # r_t
  mask: jax.Array     # present positions of sequences of positive probability
  length: jax.Array   # (M,) |y|


def make_tokens(lp, lmu, reward, mask) -> Tokens:
  alive = jnp.all(lp > -jnp.inf, axis=-1, keepdims=True)
  mask = mask & alive
  zero = lambda x: jnp.where(mask, x, 0.0)
  return Tokens(zero(lp), lax.stop_gradient(zero(lmu)), zero(reward), mask, jnp.maximum(mask.sum(-1), 1))


def enumerate_tokens(logp, log_mu, reward, end, lay: Layout):
  """:class:`Tokens` of all ``V^T`` sequences and their sampler probabilities ``mu(y)``."""
  s = make_tokens(tokens(logp, lay), tokens(log_mu, lay), reward, jnp.broadcast_to(present(end, lay), reward.shape))
  alive = s.mask.any(-1)
  return s, jnp.where(alive, jnp.exp(s.lmu.sum(-1)), 0.0)


def gather_tokens(table, n, lay: Layout):
  """``(M, T)`` ``table[row of y_<t, y_t]`` for the sequences numbered ``n`` (``(M,)``)."""
  v, t_max = lay.vocab, lay.length
  cols = []
  for t in range(t_max):
    prefix, token = n // v ** (t_max - t), (n // v ** (t_max - 1 - t)) % v
    cols.append(table[lay.offsets[t] + prefix, token])
  return jnp.stack(cols, axis=-1)


def draw(key, log_mu, num: int, lay: Layout):
  """``num`` sequences drawn token by token from the table ``log_mu``: their numbers ``n``."""
  n = jnp.zeros((num,), jnp.int32)
  for t, k in enumerate(jax.random.split(key, lay.length)):
    y = jax.random.categorical(k, log_mu[lay.offsets[t] + n], axis=-1)
    n = n * lay.vocab + y
  return n


# ---------------------------------------------------------------------------------------------
# Estimators, returns, advantages.

def kvalue(cfg: Config, d):
  """The per-sample estimator ``k(log rho)`` of ``cfg`` (clamps included)."""
  if cfg.log_clamp is not None:
    d = jnp.clip(d, -cfg.log_clamp, cfg.log_clamp)
  k = _logspace.kl_estimate(cfg.estimator, d)
  return k if cfg.clamp is None else jnp.clip(k, -cfg.clamp, cfg.clamp)


def to_go(x):
  """``sum_{s >= t} x_s`` along the last axis."""
  return jnp.flip(jnp.cumsum(jnp.flip(x, -1), -1), -1)


def penalty(cfg: Config, s: Tokens):
  """``(M, T)`` the KL penalty the return carries (at the sampler's log-probabilities); 0 unless
  the KL is in the reward. A sequence-level penalty sits at the last present position."""
  if not penalised_return(cfg):
    return jnp.zeros_like(s.reward)
  d = s.lmu - s.lp
  if cfg.level == "token":
    return jnp.where(s.mask, kvalue(cfg, d), 0.0)
  last = jnp.arange(d.shape[-1])[None, :] == (s.length - 1)[:, None]
  return jnp.where(last & s.mask, kvalue(cfg, d.sum(-1))[:, None], 0.0)


def returns(cfg: Config, s: Tokens, beta):
  """``(M, T)`` the return each token is credited with (advantages ``none``/``baseline``)."""
  per = s.reward - beta * penalty(cfg, s)
  if cfg.return_kind == "to_go":
    return to_go(per)
  return jnp.broadcast_to(per.sum(-1, keepdims=True), per.shape)


def group_values(cfg: Config, s: Tokens, beta):
  """``(M,)`` the per-sequence values a group advantage normalises."""
  if cfg.return_kind == "full":
    return (s.reward - beta * penalty(cfg, s)).sum(-1)
  return s.reward.sum(-1)


def advantage(cfg: Config, s: Tokens, beta, baseline, group_parts):
  """``(pos, neg)``, ``(M, T)`` each: the advantages ``A = pos - neg`` split into their positive
  and negative parts (PPO's clip gates each sign differently). ``baseline``: the ``(M, T)``
  exact baseline (``"baseline"``); ``group_parts(x, c)``: the parts of ``a(x) - c`` for the group
  advantage ``a`` of the ``(M,)`` values ``x`` and the ``(M, T)`` penalty-to-go ``c``."""
  if cfg.advantage in ("none", "baseline"):
    a = returns(cfg, s, beta) - (baseline if cfg.advantage == "baseline" else 0.0)
    return jnp.maximum(a, 0.0), jnp.maximum(-a, 0.0)
  c = beta * to_go(penalty(cfg, s)) if cfg.return_kind == "to_go" else jnp.zeros_like(s.reward)
  return group_parts(group_values(cfg, s, beta), c)


def conditional_mean(weight, x, lay: Layout):
  """``(N, T)`` ``E_mu[x_t | y_<t]`` from all sequences' ``x`` ``(N, T)`` and probabilities ``weight``
  (the sequences sharing a prefix of length ``t`` are blocks of ``V^(T-t)``)."""
  cols = []
  for t in range(lay.length):
    num = (weight * x[:, t]).reshape(lay.vocab ** t, -1).sum(-1)
    den = weight.reshape(lay.vocab ** t, -1).sum(-1)
    cols.append(jnp.repeat(jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0), lay.vocab ** (lay.length - t)))
  return jnp.stack(cols, axis=-1)


def exact_baseline(cfg: Config, s: Tokens, weight, beta, lay: Layout):
  """``(N, T)`` the exact baseline: ``E_mu[G]`` (full) or the prefix value ``E_mu[G_t | y_<t]`` (to go)."""
  ret = returns(cfg, s, beta)
  if cfg.return_kind == "to_go":
    return conditional_mean(weight, ret, lay)
  return jnp.broadcast_to(jnp.sum(weight * ret[:, 0]), ret.shape)


def group_advantage_of(cfg: Config, x, others):
  """The advantage of a draw of value ``x`` in a group with ``others`` (last axis ``G - 1``)."""
  g, total = cfg.group, x + others.sum(-1)
  if cfg.advantage == "rloo":
    return x - (total - x) / (g - 1)
  mean = total / g
  if cfg.advantage == "dr_grpo":
    return x - mean
  ss = (x - mean) ** 2 + ((others - mean[..., None]) ** 2).sum(-1)
  std = jnp.sqrt(ss / (g - (cfg.std == "sample")))
  equal = jnp.all(others == x[..., None], axis=-1)         # no signal (and no 0/0) in a constant group
  return jnp.where(equal, 0.0, (x - mean) / jnp.where(equal, 1.0, std + cfg.eps))


def sampled_parts(cfg: Config, x, c):
  """``(pos, neg)`` of the advantages of one drawn group of values ``x`` ``(G,)``, minus ``c``."""
  others = jnp.stack([jnp.roll(x, -k) for k in range(1, cfg.group)], axis=-1)
  a = group_advantage_of(cfg, x, others)[:, None] - c
  return jnp.maximum(a, 0.0), jnp.maximum(-a, 0.0)


def binomial(a, g: int):
  """``(k, pmf)``: ``Binom(g - 1, a)`` over ``k = 0 .. g - 1`` (last axis), any batch axes of ``a``."""
  k = jnp.arange(g, dtype=a.dtype).reshape((1,) * a.ndim + (g,))
  a = jnp.clip(a, 0.0, 1.0)[..., None]            # a sum of probabilities may round above 1
  return k, jnp.exp(gammaln(g * 1.0) - gammaln(k + 1) - gammaln(g - k) + xlogy(k, a) + xlogy(g - 1 - k, 1 - a))


def binary_group_advantage(advantage: str, g: int, ddof: int, eps, x, k):
  """The advantage of a draw of 0/1 value ``x`` among ``k`` correct other draws."""
  if advantage == "rloo":
    return x - k / (g - 1)
  m = (x + k) / g
  if advantage == "dr_grpo":
    return x - m
  flat = (m == 0) | (m == 1)
  std = jnp.sqrt(m * (1 - m) * g / (g - ddof))
  return jnp.where(flat, 0.0, (x - m) / jnp.where(flat, 1.0, std + eps))


def binary_terms(a, g: int, advantage: str, ddof: int, eps):
  """``(E[A | correct], E[A | wrong])`` for 0/1 values of success probability ``a``: a sum over
  the number ``k ~ Binom(g - 1, a)`` of correct draws among the others."""
  k, pmf = binomial(a, g)
  adv = lambda x: binary_group_advantage(advantage, g, ddof, eps, x, k)
  return (pmf * adv(1.0)).sum(-1), (pmf * adv(0.0)).sum(-1)


def expected_parts(cfg: Config, x, c, weight, count: bool, split: bool):
  """``(pos, neg)`` ``(N, T)``: ``E[(A_1 - c)^+ | x_1 = x_n]`` and ``E[(A_1 - c)^- | x_1 = x_n]``,
  the other ``G - 1`` draws i.i.d. from ``weight``. Unless ``split`` (the clip can bind) only their
  difference matters, returned as ``(E[A_1 | x_n] - c, 0)``, in closed form for RLOO and Dr. GRPO.
  Otherwise a sum over ``k ~ Binom(G - 1, a)`` correct others for 0/1 values (``count``), or an
  enumeration of the ``N^(G-1)`` ordered groups of others."""
  g, mean = cfg.group, jnp.sum(weight * x)
  if not split and cfg.advantage in ("rloo", "dr_grpo"):
    f = x - mean if cfg.advantage == "rloo" else (1 - 1 / g) * (x - mean)
    return f[:, None] - c, jnp.zeros_like(c)

  def sums(a, w):      # a (N, M) advantages, w (M,) or (N, M) weights: E[a], or E[(a - c)^+], E[(a - c)^-]
    if not split:
      return (jnp.sum(a * w, -1),)
    d = a[:, :, None] - c[:, None, :]
    return jnp.sum(jnp.maximum(d, 0.0) * w[..., None], 1), jnp.sum(jnp.maximum(-d, 0.0) * w[..., None], 1)

  if count:
    k, pmf = binomial(jnp.sum(weight * (x > 0.5)), g)
    own = (x > 0.5).astype(x.dtype)[:, None]
    out = sums(binary_group_advantage(cfg.advantage, g, int(cfg.std == "sample"), cfg.eps, own, k[None, :]),
               jnp.broadcast_to(pmf, (x.shape[0], g)))
  else:
    n, k = x.shape[0], g - 1
    total = n ** k
    chunk = max(1, min(total, (1 << 20) // (n * (2 * c.shape[-1] if split else 1))))
    powers = jnp.asarray([n ** j for j in range(k)], jnp.int32)

    def body(i, acc):
      idx = i * chunk + jnp.arange(chunk, dtype=jnp.int32)
      digits = (idx[:, None] // powers[None, :]) % n                           # (chunk, G - 1)
      w = jnp.where(idx < total, jnp.prod(weight[digits], axis=-1), 0.0)
      a = group_advantage_of(cfg, x[:, None], jnp.broadcast_to(x[digits], (n, chunk, k)))
      return tuple(u + v for u, v in zip(acc, sums(a, w[None, :])))

    start = (jnp.zeros_like(c), jnp.zeros_like(c)) if split else (jnp.zeros_like(x),)
    out = lax.fori_loop(0, -(-total // chunk), body, start)
  return out if split else (out[0][:, None] - c, jnp.zeros_like(c))


# ---------------------------------------------------------------------------------------------
# The surrogate loss.

def surrogate(cfg: Config, lq, s: Tokens, adv, beta, lay: Layout):
  """``(M,)`` each sequence's surrogate loss, whose gradient in ``theta`` (through ``lq``, the
  policy's token log-probabilities, 0 where masked) with the samples fixed is the estimate;
  ``adv = (pos, neg)`` as :func:`advantage` returns."""
  ratio, (pos, neg) = jnp.exp(lq - s.lmu), adv
  if cfg.ratio_clip is not None:   # PPO's min(w A, clip(w) A): no gradient where the clip binds
    pos = jnp.where(ratio <= 1 + cfg.ratio_clip, pos, 0.0)
    neg = jnp.where(ratio >= 1 - cfg.ratio_clip, neg, 0.0)
  pg = ratio * (pos - neg)
  loss = -jnp.sum(jnp.where(s.mask, pg, 0.0), -1)
  if cfg.placement == "loss" and cfg.estimator != "none":
    weigh = {"on": lambda w: 1.0, "stopped": lax.stop_gradient, "differentiated": lambda w: w}[cfg.off_policy]
    d = lq - s.lp
    if cfg.level == "token":
      loss = loss + beta * jnp.sum(jnp.where(s.mask, weigh(ratio) * kvalue(cfg, d), 0.0), -1)
    else:
      loss = loss + beta * weigh(jnp.exp(jnp.sum(lq - s.lmu, -1))) * kvalue(cfg, d.sum(-1))
  if cfg.length_norm == "sequence":
    return loss / s.length
  return loss / lay.length if cfg.length_norm == "max" else loss


def expected(cfg: Config, theta, log_mu, logp, reward, end, beta, count: bool, split: bool, lay: Layout):
  """The exact expected gradient of ``cfg``'s surrogate at ``theta``, sequences drawn from ``log_mu``
  (``split``: the PPO clip can bind, the sampler is not the policy)."""
  s, weight = enumerate_tokens(logp, lax.stop_gradient(log_mu), reward, end, lay)
  baseline = exact_baseline(cfg, s, weight, beta, lay) if cfg.advantage == "baseline" else None
  adv = lax.stop_gradient(advantage(cfg, s, beta, baseline,
                                    lambda x, c: expected_parts(cfg, x, c, weight, count, split)))

  def loss(th):
    lq = jnp.where(s.mask, tokens(policy(th, logp, end, lay), lay), 0.0)
    return jnp.sum(weight * surrogate(cfg, lq, s, adv, beta, lay))

  return jax.grad(loss)(theta)


def sampled(cfg: Config, key, theta, log_mu, logp, reward, end, beta, lay: Layout):
  """One estimate from ``cfg.group`` sequences drawn from ``log_mu``."""
  log_mu = lax.stop_gradient(log_mu)
  n = draw(key, log_mu, cfg.group, lay)
  mask = jnp.where(end, jnp.asarray(lay.present)[n], True)
  s = make_tokens(gather_tokens(logp, n, lay), gather_tokens(log_mu, n, lay), reward[n], mask)
  baseline = None
  if cfg.advantage == "baseline":
    every, weight = enumerate_tokens(logp, log_mu, reward, end, lay)
    baseline = exact_baseline(cfg, every, weight, beta, lay)[n]
  adv = lax.stop_gradient(advantage(cfg, s, beta, baseline, lambda x, c: sampled_parts(cfg, x, c)))

  def loss(th):
    lq = jnp.where(s.mask, gather_tokens(policy(th, logp, end, lay), n, lay), 0.0)
    return jnp.mean(surrogate(cfg, lq, s, adv, beta, lay))

  return jax.grad(loss)(theta)
