"""Autoregressive problems small enough to enumerate: reference, policy, rewards, KL and the
optimum (docs: theory/autoregressive).

Layout. A problem has a vocabulary of ``V >= 2`` tokens and sequences ``y = (y_1 .. y_T)`` of
``T`` tokens. A policy is a table of log-probabilities with one row per prefix
``y_<t`` (``t = 1 .. T``): ``P = (V^T - 1)/(V - 1)`` rows of ``V`` entries. Prefixes of length
``t`` occupy rows ``[(V^t - 1)/(V - 1), (V^(t+1) - 1)/(V - 1))``, in base-``V`` order (the first
token is the most significant digit): the empty prefix is row 0, the prefix ``(v)`` is row
``1 + v``, the prefix ``(u, v)`` is row ``1 + V + u V + v``, and so on. The ``N = V^T`` complete
sequences are numbered in the same order: sequence ``n`` has tokens ``n``'s base-``V`` digits
(:func:`sequences`). Every quantity over sequences has a last axis of length ``N``; the
prefix sums of the tree are reshapes of it (the sequences sharing a prefix of length ``t`` are
a block of ``V^(T-t)`` consecutive ones).

End token. With ``end_token`` true, token 0 ends a sequence: the positions after it are
absent. They are represented by forcing every row whose prefix contains token 0 to a point
mass on token 0 (those rows take no parameters), so a sequence that ends at position ``t`` is
stored padded with token 0 and strings with another token after an end token have
probability 0. The length ``|y|`` counts the positions up to and including the end token.
Per-token quantities vanish at absent positions (``log rho = 0`` there).

Rewards are stored per token, ``reward[..., n, t] = r_t(y_<=t)`` (the sequence reward is their
sum); a sequence reward ``R(y)`` is stored at the last present position.

Policies are tabular: logits ``theta`` of the shape of the reference table,
``q(.|y_<t) = softmax(theta[row])`` on the support of ``p(.|y_<t)`` (:func:`log_policy`).
Every function takes one problem or a batch of them (leading axes of the arrays).
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from jaxtyping import Array, Bool, Float, Int

from klrl._src import checks as _checks
from klrl._src.logspace import kl as _row_kl

__all__ = ["Problem", "Optimum", "problem", "random_problem", "sequences", "log_policy", "sequence_log_probs",
           "kl", "optimum"]

END = 0          # the end token, when a problem has one
MAX_SEQUENCES = 2 ** 22

public = functools.partial(_checks.public, module="klrl.autoregressive")


class Problem(NamedTuple):
  """An autoregressive problem: a reference per prefix and a reward per sequence and position.

  Build it with :func:`problem` (checked) or :func:`random_problem`. All fields share the
  batch axes (leading axes), so a batch of problems can be ``jax.vmap``-ped over.

  Attributes:
    logp: ``(..., P, V)`` reference log-probabilities ``log p(y_t | y_<t)``, one row per prefix
      (layout in the module docstring); rows of prefixes after an end token are point masses
      on the end token.
    reward: ``(..., V^T, T)`` per-token rewards ``r_t(y_<=t)``, zero at absent positions; the
      sequence reward is ``R(y) = sum_t r_t``.
    end_token: ``(...)`` bool: whether token 0 ends a sequence.
  """
  logp: Array
  reward: Array
  end_token: Array


class Optimum(NamedTuple):
  """The optimum ``q*(y) ∝ p(y) exp(R(y)/beta)`` of ``J`` (see :func:`optimum`).

  Attributes:
    log_policy: ``(..., P, V)`` its table: ``log q*(y_t|y_<t) = log p(y_t|y_<t) + (W(y_<=t) - W(y_<t))/beta``.
    log_prob: ``(..., V^T)`` ``log q*(y)`` of every sequence.
    value: ``(..., P)`` the soft values ``W(y_<t)`` of the prefixes,
      ``exp(W(y_<t)/beta) = E_p[exp(R/beta) | y_<t]`` (``W(y_<=T) = R(y)``).
    log_partition: ``log Z = W(empty)/beta``; ``max J = beta log Z``.
  """
  log_policy: Array
  log_prob: Array
  value: Array
  log_partition: Array


# ---------------------------------------------------------------------------------------------
# The prefix tree (static, NumPy).

class Layout(NamedTuple):
  """Static description of the prefix tree of a ``(V, T)`` problem."""
  vocab: int
  length: int
  offsets: tuple       # first row of each prefix length 0 .. T (offsets[T] = P)
  tokens: np.ndarray   # (N, T) the tokens of every sequence
  present: np.ndarray  # (N, T) positions up to and including the first end token
  dead: np.ndarray     # (P,) rows whose prefix contains an end token
  canonical: np.ndarray  # (N,) the sequence with every token after the first end token set to it

  @property
  def size(self) -> int:
    return self.vocab ** self.length

  def level(self, table, t):
    """Rows of prefixes of length ``t`` of a ``(P, ...)`` table: ``(V^t, ...)``."""
    return table[self.offsets[t]:self.offsets[t + 1]]


def _digits(count: int, width: int, v: int) -> np.ndarray:
  return (np.arange(count)[:, None] // v ** np.arange(width - 1, -1, -1)) % v


@functools.lru_cache(maxsize=64)
def layout(v: int, t: int) -> Layout:
  offsets = tuple((v ** k - 1) // (v - 1) for k in range(t + 1))
  tokens = _digits(v ** t, t, v)
  is_end = tokens == END
  present = (np.cumsum(is_end, axis=1) - is_end) == 0
  dead = np.concatenate([(_digits(v ** k, k, v) == END).any(axis=1) for k in range(t)])
  canon = np.where(present, tokens, END) @ (v ** np.arange(t - 1, -1, -1))
  return Layout(v, t, offsets, tokens, present, dead, canon)


def length_of(where: str, name: str, rows: int, v: int) -> int:
  """The sequence length ``T`` of a table of ``rows = (V^T - 1)/(V - 1)`` rows."""
  if v < 2:
    _checks._fail(where, name, f"must have a vocabulary of at least 2 tokens on its last axis, got {v}")
  t, total = 0, 0
  while total < rows:
    total += v ** t
    t += 1
  if total != rows or t == 0:
    _checks._fail(where, name, f"must have (V^T - 1)/(V - 1) rows (one per prefix of a sequence of T tokens, "
                  f"V = {v}) on its second-to-last axis, got {rows}")
  if v ** t > MAX_SEQUENCES:
    _checks._fail(where, name, f"describes V^T = {v}^{t} sequences; at most {MAX_SEQUENCES} can be enumerated")
  return t


# ---------------------------------------------------------------------------------------------
# Tree computations on one problem (unchecked; leading axes handled by the callers' vmap).

def force(table, end, lay: Layout):
  """``table`` with the rows after an end token set to the point mass on it (where ``end``; any
  batch axes, broadcast)."""
  batch = jnp.broadcast_shapes(table.shape[:-2], jnp.shape(end))
  table, end = jnp.broadcast_to(table, batch + table.shape[-2:]), jnp.broadcast_to(end, batch)
  dead = end[..., None] & jnp.asarray(lay.dead).reshape((1,) * len(batch) + (-1,))
  point = jnp.where(jnp.arange(lay.vocab) == END, 0.0, -jnp.inf).astype(table.dtype)
  return jnp.where(dead[..., None], point, table)


def policy(theta, logp, end, lay: Layout):
  """``log q``: softmax of the logits on the support of each row of ``p``, forced rows kept."""
  return force(jax.nn.log_softmax(jnp.where(logp > -jnp.inf, theta, -jnp.inf), axis=-1), end, lay)


def tokens(table, lay: Layout):
  """``(N, T)``: the log-probability of token ``t`` of every sequence (no gather: repeats)."""
  v, t_max = lay.vocab, lay.length
  return jnp.stack([jnp.repeat(lay.level(table, t).reshape(-1), v ** (t_max - 1 - t)) for t in range(t_max)],
                   axis=-1)


def prefix_log_probs(table, lay: Layout) -> list:
  """``log q(y_<t)`` of every prefix, one array ``(V^t,)`` per length ``t = 0 .. T``."""
  out = [jnp.zeros((1,), table.dtype)]
  for t in range(lay.length):
    out.append((out[-1][:, None] + lay.level(table, t)).reshape(-1))
  return out


def chain_kl(lq, lr, lay: Layout):
  """``KL(q || r) = sum_x q(x) KL(q(.|x) || r(.|x))`` over the prefixes ``x`` (chain rule)."""
  prefix = jnp.concatenate(prefix_log_probs(lq, lay)[:-1])
  return jnp.sum(jnp.where(prefix > -jnp.inf, jnp.exp(prefix) * _row_kl(lq, lr), 0.0))


def soft_optimum(logp, seq_reward, beta, lay: Layout):
  """Backward soft Bellman recursion: ``(log q* table, values W per prefix, log Z)``."""
  u = seq_reward / beta                                  # W / beta at the complete sequences
  rows, values = [], []
  for t in reversed(range(lay.length)):
    q = lay.level(logp, t) + u.reshape(-1, lay.vocab)    # log p(v|x) + W(xv)/beta
    u = logsumexp(q, axis=-1)
    rows.append(q - u[:, None])
    values.append(u)
  return jnp.concatenate(rows[::-1]), beta * jnp.concatenate(values[::-1]), u[0]


def present(end, lay: Layout):
  return jnp.where(end, jnp.asarray(lay.present), True)


# ---------------------------------------------------------------------------------------------
# Checks and broadcasting at the public boundary.

def unpack(where: str, prob, name: str = "problem"):
  """Checks a :class:`Problem`; returns ``(logp, reward, end, layout)`` (rows after an end token
  forced, values checked)."""
  if not isinstance(prob, Problem):
    _checks._fail(where, name, f"must be a klrl.autoregressive.Problem (build one with klrl.autoregressive.problem "
                  f"or random_problem), got {type(prob).__name__}")
  logp = _checks.floating(where, f"{name}.logp", prob.logp, 2)
  lay = layout(logp.shape[-1], length_of(where, f"{name}.logp", logp.shape[-2], logp.shape[-1]))
  reward = _checks.floating(where, f"{name}.reward", prob.reward, 2)
  if reward.shape[-2:] != (lay.size, lay.length):
    _checks._fail(where, f"{name}.reward", f"must have shape (..., {lay.size}, {lay.length}) (V^T sequences by T "
                  f"positions), got {reward.shape}")
  end = jnp.asarray(prob.end_token)
  if end.dtype != jnp.bool_:
    _checks._fail(where, f"{name}.end_token", f"must be a bool (array), got dtype {end.dtype}")
  dtype = jnp.result_type(logp, reward)
  batch = batch_of(where, **{f"{name}.logp": logp.shape[:-2], f"{name}.reward": reward.shape[:-2],
                             f"{name}.end_token": end.shape})
  logp = _checks.log_probs(where, f"{name}.logp", force(logp, end, lay).astype(dtype))
  reward = _checks.finite(where, f"{name}.reward", jnp.broadcast_to(reward, batch + reward.shape[-2:]).astype(dtype))
  return jnp.broadcast_to(logp, batch + logp.shape[-2:]), reward, jnp.broadcast_to(end, batch), lay


def table_arg(where: str, name: str, x, lay: Layout, logits: bool = True):
  """A ``(..., P, V)`` table of logits (``logits``) or log-probabilities on the problem's tree."""
  x = _checks.floating(where, name, x, 2)
  if x.shape[-2:] != (lay.offsets[-1], lay.vocab):
    _checks._fail(where, name, f"must have the shape (..., {lay.offsets[-1]}, {lay.vocab}) of the problem's "
                  f"table (one row per prefix), got {x.shape}")
  if logits:
    return _checks.holds(where, name, x, ~jnp.isnan(x) & (x < jnp.inf), "must not contain NaN or +inf")
  return x


def batch_of(where: str, **shapes) -> tuple[int, ...]:
  """The broadcast of the batch shapes given by name; the first one that does not fit is named."""
  out = ()
  for name, shape in shapes.items():
    try:
      out = tuple(np.broadcast_shapes(out, tuple(shape)))
    except ValueError:
      _checks._fail(where, name, f"has batch shape {tuple(shape)}, which does not broadcast with {out}")
  return out


def vmapped(fn, batch: tuple[int, ...], *args):
  """``fn`` applied to each problem of the batch: every leaf of ``args`` is broadcast to
  ``batch + its own axes`` (``args`` given as ``(value, own_ndim)`` pairs)."""
  values = [jax.tree.map(lambda x, k=k: jnp.broadcast_to(x, batch + jnp.shape(x)[jnp.ndim(x) - k:]), a)
            for a, k in args]
  for _ in batch:
    fn = jax.vmap(fn)
  return fn(*values)


# ---------------------------------------------------------------------------------------------
# Public functions.

@public
def problem(logp: Float[Array, "... prefixes vocab"], reward: Float[Array, "... sequences"] | None = None, *,
            token_reward: Float[Array, "... sequences length"] | None = None,
            end_token: Bool[Array, "..."] | bool = False) -> Problem:
  """A checked :class:`Problem` from users' arrays (docs: theory/autoregressive).

  Args:
    logp: ``(..., P, V)`` reference log-probabilities, one row per prefix (layout in the module
      docstring); ``P = (V^T - 1)/(V - 1)`` fixes the length ``T``. Rows after an end token are
      ignored (set to the point mass on it). ``-inf`` entries restrict the support.
    reward: ``(..., V^T)`` sequence rewards ``R(y)``, in the order of :func:`sequences`.
    token_reward: ``(..., V^T, T)`` per-token rewards ``r_t(y_<=t)`` instead: ``r_t`` must depend
      on the tokens up to position ``t`` only (checked).
    end_token: whether token 0 ends a sequence (a bool, or a bool array over the batch). The
      rewards of a sequence are then read at its canonical string (every token after the first
      end token set to it); values given at other strings and at absent positions are ignored.

  Returns:
    A :class:`Problem` whose fields share the broadcast batch shape.
  """
  where = "klrl.autoregressive.problem"
  logp = _checks.floating(where, "logp", logp, 2)
  lay = layout(logp.shape[-1], length_of(where, "logp", logp.shape[-2], logp.shape[-1]))
  if (reward is None) == (token_reward is None):
    _checks._fail(where, "reward", "or 'token_reward' must be given, and not both")
  end = jnp.asarray(end_token)
  if end.dtype != jnp.bool_:
    _checks._fail(where, "end_token", f"must be a bool (array), got dtype {end.dtype}")
  if reward is not None:
    r = _checks.floating(where, "reward", reward, 1)
    if r.shape[-1] != lay.size:
      _checks._fail(where, "reward", f"must have the V^T = {lay.size} sequences on its last axis, got shape {r.shape}")
    name, r = "reward", jnp.zeros(r.shape + (lay.length,), r.dtype).at[..., -1].set(r)   # at the last position for now
  else:
    name, r = "token_reward", _checks.floating(where, "token_reward", token_reward, 2)
    if r.shape[-2:] != (lay.size, lay.length):
      _checks._fail(where, "token_reward", f"must have shape (..., {lay.size}, {lay.length}), got {r.shape}")
  batch = batch_of(where, logp=logp.shape[:-2], **{name: r.shape[:-2]}, end_token=end.shape)
  dtype = jnp.result_type(logp, r)
  logp = jnp.broadcast_to(logp, batch + logp.shape[-2:]).astype(dtype)
  r = _checks.finite(where, name, jnp.broadcast_to(r, batch + r.shape[-2:]).astype(dtype))
  end = jnp.broadcast_to(end, batch)

  def one(logp, r, end):
    logp = force(logp, end, lay)
    r = jnp.where(end, r[lay.canonical], r)
    if reward is not None:     # R at the last present position
      last = jnp.where(end, jnp.asarray(lay.present.sum(1) - 1), lay.length - 1)
      r = r[:, -1:] * (jnp.arange(lay.length)[None, :] == last[:, None])
    r = jnp.where(present(end, lay), r, 0.0)
    causal = jnp.stack([jnp.all(b == b[:, :1]) for b in
                        (r[:, t].reshape(lay.vocab ** (t + 1), -1) for t in range(lay.length))])
    return logp, r, jnp.all(causal)

  logp, r, causal = vmapped(one, batch, (logp, 2), (r, 2), (end, 0))
  logp = _checks.log_probs(where, "logp", logp)
  r = _checks.holds(where, "token_reward", r, causal, "must depend only on the tokens up to its position "
                    "(token_reward[..., n, t] equal for all sequences n sharing y_1..y_t)")
  return Problem(logp, r, end)


@public(static=("vocab", "length", "binary", "end_token", "per_token", "batch"))
def random_problem(key: Array, vocab: int, length: int, *, binary: bool = True, end_token: bool = False,
                   concentration: Float[Array, ""] = 1.0, per_token: bool = False, batch: tuple[int, ...] = (),
                   success: Float[Array, ""] = 0.3) -> Problem:
  """A random problem, deterministic given ``key`` (docs: theory/autoregressive).

  Each row of the reference is a Dirichlet(``concentration``) draw (drawn in log space: no
  zero masses). Binary rewards mark each sequence correct with probability ``success``, and
  at least one; real rewards are standard normal per sequence, or with ``per_token`` one
  ``N(0, 1/T)`` reward per prefix node ``r_t(y_<=t)``.

  Args:
    key: PRNG key.
    vocab: ``V >= 2`` (static).
    length: ``T >= 1`` (static), ``V^T <= 2^22``.
    binary: 0/1 sequence rewards (a verifier), else real ones.
    end_token: token 0 ends a sequence.
    concentration: Dirichlet concentration of the reference rows (small: peaked rows).
    per_token: real per-token rewards (ignored when ``binary``).
    batch: leading shape of a batch of problems.
    success: probability that a sequence is correct (``binary``).

  Returns:
    A :class:`Problem` of batch shape ``batch``.
  """
  where = "klrl.autoregressive.random_problem"
  v = _checks.integer(where, "vocab", vocab, 2)
  t = _checks.integer(where, "length", length, 1)
  lay = layout(v, length_of(where, "vocab", (v ** t - 1) // (v - 1), v))
  conc = _checks.positive(where, "concentration", _checks.floating(where, "concentration", concentration))
  success = _checks.in_unit_interval(where, "success", _checks.floating(where, "success", success))
  dtype = jnp.result_type(float)
  keys = jax.random.split(key, int(np.prod(batch, dtype=int))).reshape(batch + key.shape)

  def one(key):
    k1, k2, k3 = jax.random.split(key, 3)
    logp = jax.nn.log_softmax(jax.random.loggamma(k1, conc, (lay.offsets[-1], v), dtype), axis=-1)
    if binary:
      r = (jax.random.uniform(k2, (lay.size,), dtype) < success).astype(dtype)
      r = r.at[jnp.asarray(lay.canonical)[jax.random.randint(k3, (), 0, lay.size)]].set(1.0)
      return logp, r
    if per_token:
      nodes = [jax.random.normal(k, (v ** (s + 1),), dtype) / np.sqrt(t) for s, k in enumerate(jax.random.split(k2, t))]
      return logp, jnp.stack([jnp.repeat(x, v ** (t - 1 - s)) for s, x in enumerate(nodes)], axis=-1)
    return logp, jax.random.normal(k2, (lay.size,), dtype)

  fn = one
  for _ in batch:
    fn = jax.vmap(fn)
  logp, r = fn(keys)
  if binary or not per_token:
    return problem(logp, r, end_token=end_token)
  return problem(logp, token_reward=r, end_token=end_token)


@_checks.named("klrl.autoregressive.sequences")
def sequences(where: str, vocab: int, length: int) -> Int[Array, "sequences length"]:
  """``(V^T, T)`` the tokens of every sequence, in the order of every sequence axis of the package
  (base ``V``, first token most significant; with an end token, a sequence that ends at
  position ``t`` is the row padded with token 0).

  Args:
    vocab: ``V >= 2``.
    length: ``T >= 1``.

  Returns:
    An integer array ``(V^T, T)``.
  """
  v, t = _checks.integer(where, "vocab", vocab, 2), _checks.integer(where, "length", length, 1)
  if v ** t > MAX_SEQUENCES:
    _checks._fail(where, "length", f"gives {v}^{t} sequences; at most {MAX_SEQUENCES} can be enumerated")
  return jnp.asarray(layout(v, t).tokens)


@public(static=("problem",))
def log_policy(theta: Float[Array, "... prefixes vocab"], problem: Problem) -> Float[Array, "... prefixes vocab"]:
  """The tabular policy of logits ``theta``: ``log q(.|y_<t) = log_softmax(theta[row])`` on the
  support of the reference row; rows after an end token are the point mass on it.

  Args:
    theta: ``(..., P, V)`` logits (``problem.logp`` gives ``q = p``).
    problem: a :class:`Problem`.

  Returns:
    ``(..., P, V)`` log-probabilities, batch shape broadcast from both arguments.
  """
  where = "klrl.autoregressive.log_policy"
  logp, _, end, lay = unpack(where, problem)
  theta = table_arg(where, "theta", theta, lay)
  batch = batch_of(where, problem=logp.shape[:-2], theta=theta.shape[:-2], end_token=end.shape)
  theta = theta.astype(jnp.result_type(theta, logp))
  return vmapped(lambda th, lp, e: policy(th, lp, e, lay), batch, (theta, 2), (logp, 2), (end, 0))


def _log_table(where, name, table, logp, end, lay):
  table = table_arg(where, name, table, lay, logits=False)
  return _checks.log_probs(where, name, force(table, end, lay).astype(jnp.result_type(table, logp)))


@public(static=("problem",))
def sequence_log_probs(log_table: Float[Array, "... prefixes vocab"],
                       problem: Problem) -> Float[Array, "... sequences"]:
  """``log q(y) = sum_t log q(y_t|y_<t)`` of all ``V^T`` sequences, by the prefix tree.

  Args:
    log_table: ``(..., P, V)`` a policy's log-probabilities (e.g. :func:`log_policy`, or ``problem.logp``).
    problem: the :class:`Problem` whose tree (and end token) it lives on.

  Returns:
    ``(..., V^T)``; strings with a token after an end token have ``-inf``.
  """
  where = "klrl.autoregressive.sequence_log_probs"
  logp, _, end, lay = unpack(where, problem)
  lq = _log_table(where, "log_table", log_table, logp, end, lay)
  batch = batch_of(where, problem=logp.shape[:-2], log_table=lq.shape[:-2], end_token=end.shape)
  return vmapped(lambda t: prefix_log_probs(t, lay)[-1], batch, (lq, 2))


@public(static=("problem",))
def kl(log_table: Float[Array, "... prefixes vocab"], problem: Problem,
       log_other: Float[Array, "... prefixes vocab"] | None = None) -> Float[Array, "..."]:
  """``KL(q || r)`` of two policies on the problem's tree, by the chain rule
  ``sum_x q(x) KL(q(.|x) || r(.|x))`` over prefixes ``x`` (no enumeration of sequences).

  Args:
    log_table: ``(..., P, V)`` log-probabilities of ``q``.
    problem: a :class:`Problem`.
    log_other: ``(..., P, V)`` log-probabilities of ``r``; the reference ``problem.logp`` by default.

  Returns:
    ``KL(q || r)`` of the broadcast batch shape (``+inf`` where ``q`` is not absolutely continuous).
  """
  where = "klrl.autoregressive.kl"
  logp, _, end, lay = unpack(where, problem)
  lq = _log_table(where, "log_table", log_table, logp, end, lay)
  lr = logp if log_other is None else _log_table(where, "log_other", log_other, logp, end, lay)
  batch = batch_of(where, problem=logp.shape[:-2], log_table=lq.shape[:-2], log_other=lr.shape[:-2],
                   end_token=end.shape)
  dtype = jnp.result_type(lq, lr)
  return vmapped(lambda a, b: chain_kl(a, b, lay), batch, (lq.astype(dtype), 2), (lr.astype(dtype), 2))


@public(static=("problem",))
def optimum(problem: Problem, beta: Float[Array, "..."]) -> Optimum:
  """The optimum ``q* ∝ p exp(R/beta)`` of ``J = E_q[R] - beta KL(q || p)``, at the sequence and
  the token level (soft Bellman: ``q*(y_t|y_<t) = p(y_t|y_<t) exp((W(y_<=t) - W(y_<t))/beta)``),
  by one backward pass over the prefix tree (docs: theory/autoregressive).

  Args:
    problem: a :class:`Problem`.
    beta: KL coefficient ``> 0``: a scalar or one per problem.

  Returns:
    An :class:`Optimum`.
  """
  where = "klrl.autoregressive.optimum"
  logp, reward, end, lay = unpack(where, problem)
  beta = _checks.positive(where, "beta", _checks.floating(where, "beta", beta))
  batch = batch_of(where, problem=logp.shape[:-2], beta=beta.shape, end_token=end.shape)
  dtype = jnp.result_type(logp, beta)

  def one(lp, r, e, b):
    table, value, log_z = soft_optimum(lp, r.sum(-1), b, lay)
    table = force(table, e, lay)
    return Optimum(table, prefix_log_probs(table, lay)[-1], value, log_z)

  return vmapped(one, batch, (logp.astype(dtype), 2), (reward.astype(dtype), 2), (end, 0), (beta.astype(dtype), 0))
