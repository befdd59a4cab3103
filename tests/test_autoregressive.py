"""klrl.autoregressive: the KL penalty of RLHF/RLVR trainers, settled exactly on enumerable sequences.

Oracles: a NumPy brute force written from the definitions (every sequence, every group of draws,
gradients of the tabular softmax by hand), finite differences of J, the single-step results of
klrl.train at T = 1, closed forms, and Monte Carlo within its standard error.
"""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import klrl
from klrl import autoregressive as ar
from klrl import divergences, train
from klrl.autoregressive import Config

KEY = jax.random.PRNGKey


# ---------------------------------------------------------------------------------------------
# A NumPy brute force, from the definitions (docs: theory/autoregressive).

class Tree:
  """The prefix tree of a problem, enumerated in plain Python."""

  def __init__(self, prob):
    self.logp = np.asarray(prob.logp)
    self.reward = np.asarray(prob.reward)
    self.end = bool(prob.end_token)
    self.v = self.logp.shape[-1]
    self.t = int(round(math.log(self.reward.shape[0], self.v)))
    self.seqs = list(itertools.product(range(self.v), repeat=self.t))

  def row(self, y, t):
    """Row of the prefix y_<t: (V^t - 1)/(V - 1) + the base-V number of y_<t."""
    return (self.v ** t - 1) // (self.v - 1) + sum(y[s] * self.v ** (t - 1 - s) for s in range(t))

  def present(self, y, t):
    return not (self.end and 0 in y[:t])

  def table(self, theta):
    """log q of logits theta: softmax on the support of p, rows after an end token forced."""
    lq = np.where(np.isfinite(self.logp), theta, -np.inf)     # forced rows of p have one finite entry
    top = lq.max(-1, keepdims=True)
    return lq - top - np.log(np.exp(lq - top).sum(-1, keepdims=True))

  def log_prob(self, table, y):
    """(log q(y), per-token log q_t with 0 at absent positions, or None for an impossible string)."""
    per = np.zeros(self.t)
    for t in range(self.t):
      if not self.present(y, t):
        if y[t] != 0:
          return -np.inf, None
        continue
      per[t] = table[self.row(y, t), y[t]]
    return per.sum(), per

  def law(self, table):
    return np.array([np.exp(self.log_prob(table, y)[0]) for y in self.seqs])

  def objective(self, theta, beta):
    lq = self.table(theta)
    total = 0.0
    for n, y in enumerate(self.seqs):
      lqy, per_q = self.log_prob(lq, y)
      if per_q is None or lqy == -np.inf:
        continue
      _, per_p = self.log_prob(self.logp, y)
      total += np.exp(lqy) * (self.reward[n].sum() - beta * (per_q - per_p).sum())
    return total


def k_value(kind, d, clamp=None, log_clamp=None):
  """(k, dk/dd) of an estimator at log rho = d, clamps included (no gradient where they bind)."""
  slope = 1.0
  if log_clamp is not None and abs(d) > log_clamp:
    d, slope = np.clip(d, -log_clamp, log_clamp), 0.0
  k, dk = {"k1": (d, 1.0), "k2": (d * d / 2, d), "k3": (np.expm1(-d) + d, 1 - np.exp(-d)), "none": (0.0, 0.0)}[kind]
  if clamp is not None and abs(k) > clamp:
    k, dk = np.clip(k, -clamp, clamp), 0.0
  return k, dk * slope


def group_adv(cfg, x):
  g, x = len(x), np.asarray(x, float)
  if cfg.advantage == "rloo":
    return x - (x.sum() - x) / (g - 1)
  if cfg.advantage == "dr_grpo":
    return x - x.mean()
  if np.all(x == x[0]):
    return np.zeros(g)
  return (x - x.mean()) / (x.std(ddof=1 if cfg.std == "sample" else 0) + cfg.eps)


def oracle(tree, theta, beta, cfg, behaviour=None):
  """The exact expected gradient of cfg's estimate of grad(-J), by brute force (all groups)."""
  lq_tab, lp_tab = tree.table(theta), tree.logp
  lmu_tab = lq_tab if behaviour is None else tree.table(behaviour)
  info = []      # per sequence: mu, tokens, lq, lp, lmu, reward, present
  for n, y in enumerate(tree.seqs):
    lmu, per_mu = tree.log_prob(lmu_tab, y)
    if per_mu is None or lmu == -np.inf:
      continue
    pres = np.array([tree.present(y, t) for t in range(tree.t)])
    info.append(dict(y=y, mu=np.exp(lmu), lq=tree.log_prob(lq_tab, y)[1], lp=tree.log_prob(lp_tab, y)[1], lmu=per_mu,
                     r=tree.reward[n] * pres, pres=pres, length=pres.sum()))
  for s in info:      # the KL penalty carried by the return (at the sampler's log-probabilities)
    pen = np.zeros(tree.t)
    if cfg.placement == "reward" and cfg.estimator != "none":
      d = s["lmu"] - s["lp"]
      if cfg.level == "token":
        pen = np.array([k_value(cfg.estimator, x, cfg.clamp, cfg.log_clamp)[0] for x in d]) * s["pres"]
      else:
        pen[s["length"] - 1] = k_value(cfg.estimator, d.sum(), cfg.clamp, cfg.log_clamp)[0]
    s["pen"] = pen
    per = s["r"] - beta * pen
    s["ret"] = np.cumsum(per[::-1])[::-1] if cfg.return_kind == "to_go" else np.full(tree.t, per.sum())
    s["value"] = per.sum() if cfg.return_kind == "full" else s["r"].sum()

  def baseline(s, t):          # E_mu[G_t | y_<t]  (to go) or E_mu[G]  (full)
    if cfg.return_kind == "full":
      return sum(o["mu"] * o["ret"][0] for o in info)
    same = [o for o in info if o["y"][:t] == s["y"][:t]]
    return sum(o["mu"] * o["ret"][t] for o in same) / sum(o["mu"] for o in same)

  def grad_of(s, adv):         # gradient of the surrogate of one sequence with advantages adv_t
    g = np.zeros_like(theta)
    ratio = np.exp(s["lq"] - s["lmu"])
    dlq = np.zeros(tree.t)     # d loss / d log q_t
    for t in range(tree.t):
      if not s["pres"][t]:
        continue
      r, a = ratio[t], adv[t]
      clipped = cfg.ratio_clip is not None and (r * a > np.clip(r, 1 - cfg.ratio_clip, 1 + cfg.ratio_clip) * a)
      dlq[t] -= 0.0 if clipped else r * a
    if cfg.placement == "loss" and cfg.estimator != "none":
      d = s["lq"] - s["lp"]
      if cfg.level == "token":
        for t in range(tree.t):
          if s["pres"][t]:
            k, dk = k_value(cfg.estimator, d[t], cfg.clamp, cfg.log_clamp)
            w = ratio[t]
            dlq[t] += beta * {"on": dk, "stopped": w * dk, "differentiated": w * k + w * dk}[cfg.off_policy]
      else:
        k, dk = k_value(cfg.estimator, d.sum(), cfg.clamp, cfg.log_clamp)
        w = np.exp((s["lq"] - s["lmu"]).sum())
        dlq += s["pres"] * beta * {"on": dk, "stopped": w * dk, "differentiated": w * k + w * dk}[cfg.off_policy]
    norm = {"none": 1.0, "sequence": 1.0 / s["length"], "max": 1.0 / tree.t}[cfg.length_norm]
    for t in range(tree.t):
      if s["pres"][t]:
        row = tree.row(s["y"], t)
        q = np.exp(lq_tab[row])
        g[row] += norm * dlq[t] * (np.eye(tree.v)[s["y"][t]] - q)
    return g

  total = np.zeros_like(theta)
  if cfg.advantage in ("none", "baseline"):
    for s in info:
      adv = s["ret"] - (np.array([baseline(s, t) for t in range(tree.t)]) if cfg.advantage == "baseline" else 0.0)
      total += s["mu"] * grad_of(s, adv)
    return total
  for group in itertools.product(info, repeat=cfg.group):
    w = np.prod([s["mu"] for s in group])
    a = group_adv(cfg, [s["value"] for s in group])
    for s, ai in zip(group, a):
      adv = ai if cfg.return_kind == "full" else ai - beta * np.cumsum(s["pen"][::-1])[::-1]
      total += w * grad_of(s, np.broadcast_to(adv, (tree.t,))) / cfg.group
  return total


# ---------------------------------------------------------------------------------------------
# Problems of the tests.

def drawn(seed, v, t, binary):
  """A small problem from users' arrays (random_problem draws Dirichlet rows: slower to compile)."""
  k1, k2 = jax.random.split(KEY(seed))
  logp = jax.nn.log_softmax(1.5 * jax.random.normal(k1, ((v ** t - 1) // (v - 1), v)), axis=-1)
  r = jax.random.normal(k2, (v ** t,))
  return ar.problem(logp, jnp.where(r > 0.3, 1.0, 0.0).at[-1].set(1.0) if binary else r)


REAL = ar.random_problem(KEY(0), 2, 3, binary=False, per_token=True)          # 7 prefixes, 8 sequences
ENDS = ar.random_problem(KEY(1), 3, 2, binary=True, end_token=True)           # 4 prefixes, 9 strings
SHORT = drawn(2, 2, 2, binary=False)                                          # 3 prefixes, 4 sequences
BETA = 0.4


def expected(theta, prob, cfg, **kwargs):
  return ar.expected_gradient(theta, prob, BETA, cfg, **kwargs)


def jointly(fn, *args):
  """``fn(*args)`` in one ``jax.jit``: its calls of klrl's public functions compile as one program
  (a third of the compile time of separate calls)."""
  return jax.jit(fn)(*args)


def logits(prob, seed, scale=1.0):
  """Logits away from p and from q*, where every estimator's bias shows."""
  return prob.logp + scale * jax.random.normal(KEY(seed), prob.logp.shape)


def test_layout_sequences_and_their_probabilities():
  """The base-V layout of prefixes and sequences, the law of a policy, the generator's guarantees."""
  assert np.array_equal(ar.sequences(2, 3), np.array(list(itertools.product(range(2), repeat=3))))
  again = ar.random_problem(KEY(1), 3, 2, binary=True, end_token=True)
  assert all(np.array_equal(a, b) for a, b in zip(again, ENDS))                # deterministic given the key
  r = np.asarray(ENDS.reward).sum(-1)
  assert set(np.unique(r)) <= {0.0, 1.0} and r.max() == 1.0                  # binary, some sequence correct
  assert np.all(np.asarray(ENDS.reward)[:, 1][np.asarray(ar.sequences(3, 2))[:, 0] == 0] == 0)   # absent positions
  for prob in (REAL, ENDS):
    tree, theta = Tree(prob), logits(prob, 3)
    table = ar.log_policy(theta, prob)
    np.testing.assert_allclose(table, tree.table(np.asarray(theta)), atol=1e-14)
    law = np.exp(ar.sequence_log_probs(table, prob))
    np.testing.assert_allclose(law, tree.law(np.asarray(table)), rtol=1e-13, atol=1e-15)
    assert abs(law.sum() - 1) < 1e-13
  impossible = [n for n, y in enumerate(Tree(ENDS).seqs) if y[0] == 0 and y[1] != 0]     # a token after the end
  assert impossible and np.all(np.asarray(ar.sequence_log_probs(ENDS.logp, ENDS))[impossible] == -np.inf)


def test_kl_by_the_chain_rule_and_the_optimum():
  """KL(q||p) by the chain rule = the sum over sequences; q* ∝ p e^{R/beta} at the sequence and the
  token level (soft Bellman), J(q*) = beta log Z is the maximum."""
  for prob in (REAL, ENDS):
    tree, table = Tree(prob), ar.log_policy(logits(prob, 4), prob)
    q, p = tree.law(np.asarray(table)), tree.law(tree.logp)
    live = q > 0
    np.testing.assert_allclose(ar.kl(table, prob), np.sum(q[live] * np.log(q[live] / p[live])), rtol=1e-12)
    star = ar.optimum(prob, BETA)
    r = tree.reward.sum(-1)
    target = np.where(p > 0, p * np.exp(r / BETA), 0)
    np.testing.assert_allclose(np.exp(star.log_prob), target / target.sum(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(star.log_partition, np.log(target.sum()), rtol=1e-13)
    # token level: q*(y_t|y_<t) = p(y_t|y_<t) exp((W(y_<=t) - W(y_<t))/beta), W = beta log E_p[e^{R/beta} | prefix]
    w = np.asarray(star.value)
    for y in tree.seqs[:5]:
      for t in range(tree.t):
        if tree.present(y, t) and t + 1 < tree.t:
          row, child = tree.row(y, t), tree.row(y, t + 1)
          expect = tree.logp[row, y[t]] + (w[child] - w[row]) / BETA
          np.testing.assert_allclose(star.log_policy[row, y[t]], expect, atol=1e-12)
    j_star = ar.objective(star.log_policy, prob, BETA)
    np.testing.assert_allclose(j_star, BETA * star.log_partition, rtol=1e-12)
    assert float(ar.objective(logits(prob, 5), prob, BETA)) < float(j_star)
    assert abs(float(ar.kl(star.log_policy, prob, star.log_policy))) < 1e-14


def test_exact_gradient_is_the_finite_difference_of_j():
  for prob in (REAL, ENDS):
    tree, theta = Tree(prob), np.asarray(logits(prob, 6))
    h, fd = 1e-5, np.zeros_like(theta)
    for i in np.ndindex(theta.shape):
      e = np.zeros_like(theta)
      e[i] = h
      fd[i] = -(tree.objective(theta + e, BETA) - tree.objective(theta - e, BETA)) / (2 * h)
    err = np.max(np.abs(np.asarray(ar.exact_gradient(theta, prob, BETA)) - fd))
    assert err < 1e-9, err


# ---------------------------------------------------------------------------------------------
# Every estimator against the brute force.

ORACLE_CASES = {
    "k1_reward_to_go": (REAL, Config("k1", "reward", return_kind="to_go"), None),
    "k3_reward_full_sequence": (REAL, Config("k3", "reward", level="sequence", return_kind="full"), None),
    "k2_reward_baseline_to_go": (ENDS, Config("k2", "reward", return_kind="to_go", advantage="baseline"), None),
    "k1_reward_baseline_full_norm": (ENDS, Config("k1", "reward", return_kind="full", advantage="baseline",
                                                  length_norm="sequence"), None),
    "k2_loss_sequence": (ENDS, Config("k2", "loss", level="sequence"), None),
    "k3_loss_clamped": (REAL, Config("k3", "loss", clamp=0.05, log_clamp=0.6), None),
    "k3_loss_stopped_off_policy": (REAL, Config("k3", "loss", off_policy="stopped"), "behaviour"),
    "k3_loss_differentiated_off_policy": (ENDS, Config("k3", "loss", off_policy="differentiated",
                                                       ratio_clip=0.2), "behaviour"),
    "k2_loss_sequence_differentiated": (REAL, Config("k2", "loss", level="sequence", off_policy="differentiated"),
                                        "behaviour"),
    "ppo_clip_off_policy": (ENDS, Config("k1", "reward", ratio_clip=0.1, length_norm="max"), "behaviour"),
    "rloo_to_go": (SHORT, Config("k1", "reward", advantage="rloo", group=3), None),
    "dr_grpo_k3_loss": (SHORT, Config("k3", "loss", advantage="dr_grpo", group=3), None),
    "grpo_sample_full_penalised": (SHORT, Config("k1", "reward", return_kind="full", advantage="grpo", group=3), None),
    "grpo_population_to_go": (ENDS, Config("k2", "reward", advantage="grpo", std="population", group=2,
                                           length_norm="sequence", eps=1e-3), None),
    # off-policy group advantages under PPO's clip: each sign of the advantage is gated apart
    "rloo_clip_off_policy": (SHORT, Config("k1", "reward", advantage="rloo", group=2, ratio_clip=0.1), "behaviour"),
    "grpo_clip_off_policy_binary": (ENDS, Config("k1", "reward", advantage="grpo", group=3, ratio_clip=0.1),
                                    "binary"),
}


def test_expected_gradient_matches_the_brute_force():
  """Every combination of estimator, placement, level, return, ratio, clamp, advantage and
  normalisation: the exact expectation equals the NumPy enumeration of every sequence (and every
  group) to rounding."""
  off = lambda b: b in (None, "binary")
  got = jointly(lambda: {name: ar.expected_gradient(logits(prob, 7), prob, BETA, cfg, binary=b == "binary",
                                                    behaviour=None if off(b) else logits(prob, 8, 0.5))
                         for name, (prob, cfg, b) in ORACLE_CASES.items()})
  failures = []
  for name, (prob, cfg, b) in ORACLE_CASES.items():
    mu = None if off(b) else np.asarray(logits(prob, 8, 0.5))
    want = oracle(Tree(prob), np.asarray(logits(prob, 7)), BETA, cfg, mu)
    err, scale = np.max(np.abs(np.asarray(got[name]) - want)), np.max(np.abs(want))
    if not (scale > 1e-3 and err <= 1e-12 * max(1.0, scale)):
      failures.append(f"{name}: max error {err:.3g}, scale {scale:.3g}")
  assert not failures, failures


# ---------------------------------------------------------------------------------------------
# The exact statements (docs: theory/autoregressive).

ONE = drawn(3, 4, 1, binary=False)            # T = 1: a response set


def test_single_token_k2_loss_is_k1_reward_and_k3_loss_is_the_forward_kl():
  """T = 1: k2 in the loss has the expected gradient of k1 in the reward; k3 in the loss gives
  grad KL(p || q); both agree with klrl.train's single-step enumeration."""
  theta = logits(ONE, 9)
  r = ONE.reward[:, 0]
  binary = ar.problem(ONE.logp, jnp.where(r > r.mean(), 1.0, 0.0))
  k1_reward, k2_loss, k3_loss, reward_only, exact, k3_binary = jointly(lambda th: [
      expected(th, ONE, Config("k1", "reward")), expected(th, ONE, Config("k2", "loss")),
      expected(th, ONE, Config("k3", "loss")), expected(th, ONE, Config("none", "loss")),
      ar.exact_gradient(th, ONE, BETA), ar.expected_gradient(th, binary, BETA, Config("k3", "loss"))], theta)
  np.testing.assert_allclose(k2_loss, k1_reward, rtol=0, atol=1e-14)
  np.testing.assert_allclose(k1_reward, exact, rtol=0, atol=1e-14)
  forward = jax.grad(lambda th: divergences.kl(ONE.logp[0], jax.nn.log_softmax(th[0])))(theta)
  np.testing.assert_allclose(k3_loss, reward_only + BETA * forward, rtol=0, atol=1e-14)
  single = train.expected_sampled_gradient(theta[0], ONE.logp[0], r > r.mean(), BETA, group=1, advantage="reinforce",
                                           kl="k3", kl_in="loss")     # klrl.train takes 0/1 rewards
  np.testing.assert_allclose(k3_binary[0], single, rtol=0, atol=1e-14)


def test_token_k2_loss_misses_exactly_the_future_kl():
  """grad KL = local + future; the per-token k2 loss follows local only, so its expected gradient
  is grad(-J) - beta future; k3 with a differentiated ratio follows the same; the k1 loss follows
  no KL at all. The future term is a sizeable part of grad KL on random problems."""
  sizes = []
  for prob in (REAL, ENDS):
    parts, exact, k2, k3d, k1 = jointly(lambda th: [
        ar.kl_gradient(th, prob), ar.exact_gradient(th, prob, BETA), expected(th, prob, Config("k2", "loss")),
        expected(th, prob, Config("k3", "loss", off_policy="differentiated")),
        expected(th, prob, Config("k1", "loss"))], logits(prob, 10))
    np.testing.assert_allclose(parts.local + parts.future, parts.total, rtol=0, atol=1e-14)
    np.testing.assert_allclose(k2 - exact, -BETA * parts.future, rtol=0, atol=1e-14)
    np.testing.assert_allclose(k3d, k2, rtol=0, atol=1e-14)
    np.testing.assert_allclose(k1 - exact, -BETA * parts.total, rtol=0, atol=1e-14)
    sizes.append(float(jnp.linalg.norm(parts.future) / jnp.linalg.norm(parts.total)))
  assert min(sizes) > 0.05, sizes


def test_token_k3_loss_is_a_local_forward_kl_gradient():
  """Per-token k3 in the loss: E_q[sum_t (1 - 1/rho_t) grad log q_t] = sum_x q(x) grad KL(p(.|x) || q(.|x))."""
  for prob in (REAL, ENDS):
    theta = logits(prob, 11)
    tree, table = Tree(prob), np.asarray(ar.log_policy(theta, prob))
    weights = jnp.asarray(prefix_probs(table, tree))          # q(x), held fixed
    k3, none, local = jointly(lambda th: [
        expected(th, prob, Config("k3", "loss")), expected(th, prob, Config("none", "loss")),
        jax.grad(lambda t: jnp.sum(weights * divergences.kl(tree.logp, ar.log_policy(t, prob))))(th)], theta)
    np.testing.assert_allclose(k3 - none, BETA * local, rtol=0, atol=1e-13)


def prefix_probs(table, tree):
  """q(x) of every prefix row: the product of the conditionals along the prefix."""
  out = np.zeros(len(tree.logp))
  out[0] = 1.0
  for t in range(1, tree.t):
    for x in itertools.product(range(tree.v), repeat=t):
      row = tree.row(x, t)
      out[row] = out[tree.row(x[:-1], t - 1)] * np.exp(table[tree.row(x[:-1], t - 1), x[-1]])
  return out


def test_unbiased_configurations_return_the_exact_gradient():
  """k1 in the reward (to go or full, with or without an exact baseline, RLOO), k2 of the sequence
  log-ratio in the loss, and the PPO/RLOO presets are unbiased, with an end token too; GRPO is not."""
  configs = (Config("k1", "reward"), Config("k1", "reward", return_kind="full"),
             Config("k1", "reward", advantage="baseline"), Config("k2", "loss", level="sequence"),
             ar.PRESETS["trl_rloo"], ar.PRESETS["trl_ppo"])
  out = jointly(lambda: [(ar.exact_gradient(logits(prob, 12), prob, BETA),
                          [expected(logits(prob, 12), prob, cfg) for cfg in configs]) for prob in (REAL, ENDS)])
  for exact, got in out:
    for cfg, g in zip(configs, got):
      np.testing.assert_allclose(g, exact, rtol=0, atol=1e-14 * float(jnp.max(jnp.abs(exact))), err_msg=str(cfg))
  bias = ar.gradient_bias(logits(ENDS, 12), ENDS, BETA, ar.PRESETS["trl_grpo"], binary=True)
  assert float(bias.error) > 0.05 and float(bias.cosine) < 1 - 1e-4


# ---------------------------------------------------------------------------------------------
# GRPO on 0/1 rewards: the binomial count, its large-group limit, its fixed point.

BIN = drawn(4, 2, 2, binary=True)


def test_grpo_binomial_count_equals_the_enumeration_of_groups():
  """On 0/1 rewards GRPO's expectation by the count over Binom(G-1, a) equals the enumeration of
  every group (klrl's and the brute force), and klrl.train's at T = 1."""
  theta = logits(BIN, 13)
  configs = (Config("k3", "loss", advantage="grpo", group=3, eps=1e-4),
             Config("none", "loss", advantage="grpo", std="population", group=4, length_norm="sequence"))
  got = jointly(lambda th: [(ar.expected_gradient(th, BIN, BETA, cfg, binary=True),
                             ar.expected_gradient(th, BIN, BETA, cfg)) for cfg in configs], theta)
  for cfg, (counted, enumerated) in zip(configs, got):
    np.testing.assert_allclose(counted, enumerated, rtol=0, atol=1e-14)
  np.testing.assert_allclose(got[0][0], oracle(Tree(BIN), np.asarray(theta), BETA, configs[0]), rtol=0, atol=1e-13)
  r = ONE.reward[:, 0]
  one = ar.problem(ONE.logp, (r > r.mean()).astype(jnp.float64))
  theta = logits(one, 14)
  cfg = Config("k3", "loss", advantage="grpo", std="population", group=3, eps=1e-4)
  single = train.expected_sampled_gradient(theta[0], one.logp[0], r > r.mean(), BETA, group=3,
                                           advantage="grpo", kl="k3", kl_in="loss", eps=1e-4)
  np.testing.assert_allclose(ar.expected_gradient(theta, one, BETA, cfg, binary=True)[0], single, atol=1e-14)


def test_binary_advantage_closed_form_and_its_arcsine_limit():
  """E[A | correct] - E[A | wrong] with the population std and eps = 0 is
  sum_k Binom(k; G-1, a) [sqrt((G-k-1)/(k+1)) + sqrt(k/(G-k))], and tends to
  1/sqrt(a(1-a)) = d/da 2 arcsin sqrt(a) with an O(1/G) error (group-mean convention); the
  expected GRPO gradient without KL is gain * grad a: GRPO ascends 2 arcsin sqrt(a)."""
  a, small, large = jnp.array([0.03, 0.2, 0.5, 0.9]), (2, 5, 17), (1000, 10_000, 100_000)
  theta, g = logits(BIN, 15), 64
  accuracy = lambda th: jnp.sum(jnp.exp(ar.sequence_log_probs(ar.log_policy(th, BIN), BIN)) * BIN.reward.sum(-1))
  out = jointly(lambda a, th: dict(
      small=[ar.binary_advantage(a, n).gain for n in small], large=[ar.binary_advantage(a, n).gain for n in large],
      sample=ar.binary_advantage(a, large[-1], std="sample").gain,
      edges=ar.binary_advantage(jnp.array([0.0, 1.0]), 8).gain,
      rloo=ar.binary_advantage(a, 6, advantage="rloo").gain, dr=ar.binary_advantage(a, 6, advantage="dr_grpo").gain,
      grpo=expected(th, BIN, Config("none", "loss", advantage="grpo", std="population", group=g, eps=0.0), binary=True),
      gain=ar.binary_advantage(accuracy(th), g).gain, grad_a=jax.grad(accuracy)(th)), a, theta)
  for n, gain in zip(small, out["small"]):
    k = np.arange(n)
    pmf = np.array([[math.comb(n - 1, j) * x ** j * (1 - x) ** (n - 1 - j) for j in k] for x in np.asarray(a)])
    terms = np.where(k < n - 1, np.sqrt(np.maximum(n - k - 1, 0) / (k + 1)), 0) + np.sqrt(k / np.maximum(n - k, 1))
    np.testing.assert_allclose(gain, pmf @ terms, rtol=1e-13)
  limit = 1 / jnp.sqrt(a * (1 - a))
  errors = [float(jnp.max(jnp.abs(gain / limit - 1))) for gain in out["large"]]
  assert errors[-1] < 2e-4 and errors[1] / errors[2] > 5, errors           # O(1/G)
  assert float(jnp.max(jnp.abs(out["sample"] / limit - 1))) < 2e-4
  # at a = 0 (a = 1) only the lone correct (wrong) draw of a group carries signal: gain sqrt(G - 1)
  np.testing.assert_allclose(out["edges"], np.sqrt(7), rtol=1e-15)
  np.testing.assert_allclose(out["rloo"], 1.0, rtol=1e-14)
  np.testing.assert_allclose(out["dr"], 5 / 6, rtol=1e-14)
  np.testing.assert_allclose(out["grpo"], -out["gain"] * out["grad_a"], rtol=0, atol=1e-14)


def test_fixed_points_unbiased_land_on_the_optimum_biased_elsewhere():
  """Exact expected-gradient dynamics (optax, natural preconditioning): k1 in the reward lands on
  q* (a stationary point of J); the per-token k2 loss lands elsewhere, where |grad J| > 0; GRPO
  with the k3 loss converges to a success probability above the reference's."""
  opt, steps = ar.DEFAULT_OPTIMIZER, 1500
  good, biased, grpo = jointly(lambda b: [
      ar.fixed_point(BIN, b, Config("k1", "reward"), opt, steps, natural=True),
      ar.fixed_point(BIN, b, Config("k2", "loss"), opt, steps, natural=True),
      ar.fixed_point(BIN, b, ar.PRESETS["trl_grpo"], opt, steps, natural=True, binary=True)], BETA)
  assert float(good.kl_optimum) < 1e-12 and float(good.grad_norm) < 1e-9 and float(good.residual) < 1e-9
  assert good.metrics.objective.shape == (steps,) and float(good.metrics.kl_optimum[0]) > 1e-2
  assert float(biased.residual) < 1e-9 and float(biased.kl_optimum) > 1e-3 and float(biased.grad_norm) > 1e-3
  reference = float(jnp.sum(jnp.exp(ar.sequence_log_probs(BIN.logp, BIN)) * BIN.reward.sum(-1)))
  assert float(grpo.residual) < 1e-9 and float(grpo.reward) > reference + 0.1
  assert float(grpo.kl_optimum) > 1e-3


@pytest.mark.slow
def test_fixed_points_off_policy_samplers():
  """PPO-style rounds of samples (refresh > 1, clip) rest where on-policy dynamics rest (q* for
  k1 in the reward); sampling from the reference with per-token ratios does not reach q*."""
  opt, cfg = ar.DEFAULT_OPTIMIZER, Config("k1", "reward", ratio_clip=0.2)
  rounds, reference = jointly(lambda b: [
      ar.fixed_point(BIN, b, cfg, opt, 1500, natural=True, refresh=4),
      ar.fixed_point(BIN, b, Config("k1", "reward"), opt, 1500, natural=True, sampler="reference")], BETA)
  assert float(rounds.kl_optimum) < 1e-12 and float(rounds.residual) < 1e-9
  assert float(reference.residual) < 1e-9 and float(reference.kl_optimum) > 1e-4


# ---------------------------------------------------------------------------------------------
# Monte Carlo: the sampler agrees with the exact expectation.

MC_CASES = {
    "trl_grpo_binary": (ENDS, ar.PRESETS["trl_grpo"]._replace(group=3), None),
    "grpo_real_penalised": (SHORT, Config("k1", "reward", return_kind="full", advantage="grpo", group=3), None),
    "k3_differentiated_off_policy_clip": (REAL, Config("k3", "loss", off_policy="differentiated", ratio_clip=0.2,
                                                       level="sequence", advantage="rloo", group=2), "behaviour"),
}


@pytest.mark.slow
def test_sampled_gradient_mean_is_the_exact_expectation():
  """The mean of 4000 sampled estimates (sequences drawn token by token) is within 5 standard
  errors of the exact expectation in every coordinate, and the squared z-scores average about 1."""
  def both(keys):
    out = {}
    for name, (prob, cfg, behaviour) in MC_CASES.items():
      theta, mu = logits(prob, 16), None if behaviour is None else logits(prob, 17, 0.5)
      binary = cfg.advantage == "grpo" and prob is ENDS
      out[name] = (jax.vmap(lambda k: ar.sampled_gradient(k, theta, prob, BETA, cfg, behaviour=mu))(keys),
                   expected(theta, prob, cfg, behaviour=mu, binary=binary))
    return out

  for name, (draws, exact) in jointly(both, jax.random.split(KEY(18), 4000)).items():
    mean, se = draws.mean(0), draws.std(0) / np.sqrt(draws.shape[0])
    live = np.asarray(se > 0)
    z = np.asarray(jnp.where(live, (mean - exact) / jnp.where(live, se, 1.0), 0.0))
    assert np.max(np.abs(z)) < 5.0 and np.mean(z[live] ** 2) < 3.0, (name, z)
    np.testing.assert_allclose(jnp.where(live, 0.0, mean - exact), 0.0, atol=1e-14, err_msg=name)


def test_sampler_frequencies_and_sampled_training():
  """Sequences drawn token by token have the law of the policy (impossible strings never drawn);
  sampled training with a decaying step ends near q* for k1 in the reward."""
  table = ar.log_policy(logits(ENDS, 19), ENDS)
  n = ar.sample(KEY(20), table, ENDS, 20_000)
  law = np.exp(np.asarray(ar.sequence_log_probs(table, ENDS)))
  freq = np.bincount(np.asarray(n), minlength=law.size) / n.size
  assert np.all(freq[law == 0] == 0)
  assert np.max(np.abs(freq - law) / np.sqrt(law * (1 - law) / n.size + 1e-300)) < 5
  run = ar.sampled_training(KEY(21), BIN, BETA, Config("k1", "reward", advantage="baseline", group=8),
                            optax.adam(optax.exponential_decay(0.1, 600, 0.01)), 600)
  assert float(run.kl_optimum) < 2e-3 < float(run.metrics.kl_optimum[0])


# ---------------------------------------------------------------------------------------------
# Batches, precision, the audit, and input errors.

@pytest.mark.slow
def test_batches_of_problems_and_betas_broadcast_like_a_loop():
  """A batch of problems (and one beta per problem) gives what one call per problem gives, and a
  user's jax.vmap over problems gives the same."""
  probs = ar.random_problem(KEY(22), 2, 2, binary=True, batch=(2,))
  betas = jnp.array([0.1, 2.0])
  theta = probs.logp + jax.random.normal(KEY(23), probs.logp.shape)
  cfg = ar.PRESETS["trl_grpo"]
  one = lambda i: jax.tree.map(lambda x: x[i], probs)
  out = jointly(lambda th, b: dict(
      batch=ar.expected_gradient(th, probs, b, cfg, binary=True),
      mapped=jax.vmap(lambda t, p, c: ar.expected_gradient(t, p, c, cfg, binary=True))(th, probs, b),
      loop=[ar.expected_gradient(th[i], one(i), b[i], cfg, binary=True) for i in range(2)],
      star=ar.optimum(probs, b).log_prob, star_1=ar.optimum(one(1), b[1]).log_prob,
      kl=ar.kl(ar.log_policy(th[0], probs), probs),                    # one policy against two problems
      objective=ar.objective(th, probs, b[:, None])), theta, betas)     # beta's axes are batch axes
  np.testing.assert_allclose(out["mapped"], out["batch"], rtol=0, atol=1e-15)
  for i in range(2):
    np.testing.assert_allclose(out["batch"][i], out["loop"][i], rtol=0, atol=1e-15)
  np.testing.assert_allclose(out["star"][1], out["star_1"], rtol=0, atol=1e-14)
  assert out["kl"].shape == (2,) and out["objective"].shape == (2, 2)


def test_float32_agrees_with_float64():
  """In float32 the exact expected gradient matches float64 to ~1e-6 of its scale."""
  prob = ENDS
  theta = logits(prob, 24)
  cfg = ar.PRESETS["trl_ppo"]
  single = ar.Problem(prob.logp.astype(jnp.float32), prob.reward.astype(jnp.float32), prob.end_token)
  got = ar.expected_gradient(theta.astype(jnp.float32), single, jnp.float32(BETA), cfg)
  want = ar.expected_gradient(theta, prob, BETA, cfg)
  assert got.dtype == jnp.float32
  assert float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want))) < 1e-5


def test_audit_table():
  """One row per configuration; unbiased rows have no bias and land on q*; a GRPO row on real
  rewards whose group enumeration is refused is NaN."""
  configs = {"k1": Config("k1", "reward"), "grpo": Config("k3", "loss", advantage="grpo", group=24)}
  table = ar.audit(SHORT, jnp.array([0.3, 1.0]), configs, steps=800)
  assert table.error.shape == (2, 2) and table.optimum_kl.shape == (2,)
  assert float(jnp.max(table.error[:, 0])) < 1e-12 and float(jnp.max(table.kl_optimum[:, 0])) < 1e-10
  assert bool(jnp.all(jnp.isnan(table.error[:, 1])))
  np.testing.assert_allclose(table.reward[:, 0], table.optimum_reward, rtol=1e-9)


def test_bad_input_raises_input_error_naming_the_argument():
  logp, reward = np.asarray(SHORT.logp), np.asarray(SHORT.reward.sum(-1))
  cases = [
      (lambda: ar.problem(logp[:2], reward), "'logp'"),                        # not (V^T - 1)/(V - 1) rows
      (lambda: ar.problem(logp + 0.1, reward), "'logp'"),                      # rows not normalised
      (lambda: ar.problem(logp, reward[:3]), "'reward'"),
      (lambda: ar.problem(logp, np.where(np.arange(4) == 0, np.nan, reward)), "'reward'"),
      (lambda: ar.problem(logp, token_reward=np.arange(8.0).reshape(4, 2)), "'token_reward'"),   # r_0 not causal
      (lambda: ar.problem(logp, reward, end_token=1), "'end_token'"),
      (lambda: ar.expected_gradient(logits(SHORT, 1), SHORT, -1.0, Config()), "'beta'"),
      (lambda: ar.expected_gradient(logits(SHORT, 1), SHORT, BETA, Config(estimator="k4")), "'config'"),
      (lambda: ar.expected_gradient(logits(SHORT, 1), SHORT, BETA, Config(advantage="grpo")), "'config'"),  # group 1
      (lambda: ar.expected_gradient(logits(SHORT, 1), SHORT, BETA, Config(off_policy="stopped")), "'config'"),
      (lambda: ar.expected_gradient(logits(REAL, 1), REAL, BETA, Config(advantage="grpo", group=9)), "group=9"),
      (lambda: ar.expected_gradient(logits(SHORT, 1), SHORT, BETA, Config(advantage="grpo", group=2), binary=True),
       "binary=True"),
      (lambda: ar.expected_gradient(logits(REAL, 1), SHORT, BETA, Config()), "'theta'"),
      (lambda: ar.expected_gradient(logits(SHORT, 1), (logp, reward), BETA, Config()), "'problem'"),
      (lambda: ar.fixed_point(SHORT, BETA, Config(), optax.sgd(0.1), 0), "'steps'"),
      (lambda: ar.binary_advantage(1.5, 4), "'a'"),
      (lambda: ar.sequences(1, 3), "'vocab'"),
  ]
  for call, name in cases:
    with pytest.raises(klrl.InputError, match=name):
      call()


@pytest.mark.slow
def test_exact_gradient_at_a_hundred_thousand_sequences():
  """V^T = 3^10 = 59049 and 2^17 = 131072 sequences: the expected gradients of the presets run on
  the CPU and the unbiased ones equal the exact gradient."""
  for v, t in ((3, 10), (2, 17)):
    prob = ar.random_problem(KEY(25), v, t, binary=True, end_token=True)
    theta = logits(prob, 26, 0.3)
    exact = ar.exact_gradient(theta, prob, BETA)
    for name in ("k1_reward_to_go", "trl_ppo", "trl_grpo", "verl_grpo_low_var_kl"):
      got = ar.expected_gradient(theta, prob, BETA, ar.PRESETS[name], binary=True)
      assert bool(jnp.all(jnp.isfinite(got)))
      if name in ("k1_reward_to_go", "trl_ppo"):
        np.testing.assert_allclose(got, exact, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(exact))))


@pytest.mark.slow
def test_audit_of_every_preset():
  """The audit of every preset on a binary problem: the unbiased presets land on q*, each GRPO
  preset above the reference's success probability."""
  prob = ar.random_problem(KEY(27), 2, 3, binary=True)
  table = ar.audit(prob, jnp.array([0.1, 0.5]), binary=True, steps=2000)
  names = list(ar.PRESETS)
  for i, name in enumerate(names):
    if name in ("k1_reward_to_go", "k1_reward_full", "k2_loss_sequence", "trl_rloo", "trl_ppo"):
      assert float(jnp.max(table.kl_optimum[:, i])) < 1e-10, name
    if "grpo" in name and "k1_loss" not in name:
      assert bool(jnp.all(table.reward[:, i] > table.reference_reward)), name
