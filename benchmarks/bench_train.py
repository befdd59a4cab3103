"""Benchmarks of klrl.train: training-loop steps per second against a NumPy loop of the same updates.

Cases, on RLVR problems of P prompts x Y responses (float64, tabular softmax policies):

- ``adam``: exact policy gradient with Adam; ``npg``: natural policy gradient (closed-form
  Fisher inverse) with SGD; both with the exact metrics of every iterate recorded in the scan.
- ``grpo/G``: group-normalised advantages from G draws per prompt, k3 in the loss, Adam.

The baseline is a NumPy loop doing the same updates (and computing the same metrics) step by
step, timed in the same run. Times are per step (medians over repeats of a whole loop); the
bandwidth column uses a model of the bytes one step must touch (arrays of size P x Y read or
written once each), so it is a lower bound on the traffic.
"""
from __future__ import annotations

import functools

import jax
import numpy as np
import optax

from benchmarks.harness import Row, compile_time, median_time
from klrl import rlvr, train

BETA, LR = 0.25, 0.05


# ---------------------------------------------------------------------------------------------
# The NumPy loops.

def _log_softmax(x):
  m = x.max(-1, keepdims=True)
  return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def _metrics(lq, logp, c, log_pi, logit_star):
  q = np.exp(lq)
  a = (q * c).sum(-1)
  kl_ref = (q * (lq - logp)).sum(-1)
  gap = BETA * (q * (lq - log_pi)).sum(-1)
  logit = np.log(a) - np.log1p(-a)
  sp = lambda x: np.logaddexp(0.0, x)
  bkl = lambda x, y: sp(y) - sp(x) - (1 / (1 + np.exp(-x))) * (y - x)
  ent = -(q * lq).sum(-1)
  return [a.mean(), gap.mean(), bkl(logit, logit_star).mean(), bkl(logit_star, logit).mean(), ent.mean(), kl_ref.mean()]


class _Adam:
  def __init__(self, shape):
    self.m, self.v, self.t = np.zeros(shape), np.zeros(shape), 0

  def step(self, g):
    self.t += 1
    self.m = 0.9 * self.m + 0.1 * g
    self.v = 0.999 * self.v + 0.001 * g * g
    mh, vh = self.m / (1 - 0.9 ** self.t), self.v / (1 - 0.999 ** self.t)
    return -LR * mh / (np.sqrt(vh) + 1e-8)


def _target(logp, c):
  log_pi = _log_softmax(logp + c / BETA)
  a = (np.exp(logp) * c).sum(-1)
  return log_pi, np.log(a) - np.log1p(-a) + 1 / BETA


def np_loop(logp, c, steps, kind, group=8, seed=0):
  """The same updates as klrl.train, one NumPy step at a time; returns the final logits."""
  theta = logp.copy()
  log_pi, logit_star = _target(logp, c)
  adam = _Adam(theta.shape)
  rng = np.random.default_rng(seed)
  p_, y_ = theta.shape
  rows = np.arange(p_)[:, None]
  for _ in range(steps):
    lq = _log_softmax(theta)
    q = np.exp(lq)
    _metrics(lq, logp, c, log_pi, logit_star)
    g_ = c - BETA * (lq - logp)
    if kind == "npg":
      theta = theta + LR * (g_ - (q * g_).sum(-1, keepdims=True))
      continue
    if kind == "adam":
      grad = -q * (g_ - (q * g_).sum(-1, keepdims=True))
    else:                                             # grpo, k3 in the loss
      cdf = np.cumsum(q, -1)
      u = rng.random((p_, group)) * cdf[:, -1:]
      y = np.searchsorted((cdf + rows).ravel(), (u + rows).ravel(), side="right").reshape(p_, group) - rows * y_
      y = np.minimum(y, y_ - 1)
      r = c[rows, y]
      adv = (r - r.mean(-1, keepdims=True)) / (r.std(-1, keepdims=True) + 1e-4)
      w = -adv + BETA * (1 - np.exp(logp[rows, y] - lq[rows, y]))      # d/dlog q of the surrogate
      grad = np.zeros_like(theta)
      np.add.at(grad, (np.broadcast_to(rows, y.shape), y), w / group)
      grad -= q * (w.sum(-1, keepdims=True) / group)
    theta = theta + adam.step(grad)
  return theta


# ---------------------------------------------------------------------------------------------

def _case(name, fn, args, steps, baseline, nbytes, p_, y_, extra=None):
  jitted = jax.jit(fn)
  c = compile_time(jitted, *args)
  reps = 3
  t = median_time(jitted, *args, repeats=reps) / steps
  tb = median_time(baseline, repeats=1 if p_ * y_ >= 2 ** 22 else reps) / steps
  extra = dict(extra or {}, steps_per_s=1 / t, baseline_steps_per_s=1 / tb)
  return Row("train", name, f"{p_}x{y_}", c, t, "NumPy loop", tb, nbytes, extra)


def run(args):
  prompts = 64 if args.quick else 1024
  sizes = (1000, 4000) if args.quick else (1000, 10_000, 100_000)
  steps = 10 if args.quick else 50
  for y_ in sizes:
    logp, correct = rlvr.random_problem(jax.random.PRNGKey(y_), prompts, y_, num_correct=y_ // 10)
    lp, c = np.asarray(logp), np.asarray(correct, np.float64)
    cell = lp.size * lp.itemsize
    adam = optax.adam(LR)
    fn = functools.partial(train.policy_gradient.__wrapped__, optimizer=adam, steps=steps)
    trace = train.policy_gradient(logp, correct, BETA, adam, steps)
    err = float(np.max(np.abs(np.asarray(trace.params) - np_loop(lp, c, steps, "adam"))))
    yield _case("adam", lambda lp_, cc, b: fn(lp_, cc, b), (logp, correct, BETA), steps,
                lambda: np_loop(lp, c, steps, "adam"), 10 * cell, prompts, y_, {"max_param_diff": err})
    sgd = optax.sgd(LR)
    fn_n = functools.partial(train.natural_policy_gradient.__wrapped__, optimizer=sgd, steps=steps)
    yield _case("npg", lambda lp_, cc, b: fn_n(lp_, cc, b), (logp, correct, BETA), steps,
                lambda: np_loop(lp, c, steps, "npg"), 4 * cell, prompts, y_)
  y_ = sizes[-1]
  logp, correct = rlvr.random_problem(jax.random.PRNGKey(1), prompts, y_, num_correct=y_ // 10)
  lp, c = np.asarray(logp), np.asarray(correct, np.float64)
  for group in ((8, 64) if args.quick else (8, 16, 32, 64)):
    fn_s = functools.partial(train.sampled_policy_gradient.__wrapped__, optimizer=optax.adam(LR), steps=steps,
                             group=group, advantage="grpo", kl="k3", kl_in="loss")
    yield _case(f"grpo/{group}", lambda k, lp_, cc, b: fn_s(k, lp_, cc, b),
                (jax.random.PRNGKey(0), logp, correct, BETA), steps,
                lambda: np_loop(lp, c, steps, "grpo", group), 10 * lp.size * lp.itemsize, prompts, y_)
