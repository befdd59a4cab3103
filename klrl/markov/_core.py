"""Numerics and argument checks shared by the modules of :mod:`klrl.markov` (docs: theory/markov).

- log-space matrix products (``lse``, ``logmm``, ``logvm``) that never produce NaN, also not
  in their derivatives, where a row or column has no mass;
- ``log_mgf``: ``log(u^T M^m 1)`` for integer ``m`` (traced, one per row) by binary powering
  in log space with a max-shift at every step, so nothing overflows for large ``lam n``;
- ``perron``: the Perron root and the stationary pair law ``w(i,j) = l_i M_ij h_j / (rho l^T h)``
  of a nonnegative irreducible matrix given in log space, with exact derivatives of every order
  through the fundamental matrix of the Doob transform (a ``jax.custom_jvp``, no unrolled
  iterations);
- max-plus numerics: Karp's maximum cycle mean, the Kleene star, a max-plus eigenvector (the
  potential that makes the tilted matrix bounded by ``P``) and the spectral radius of the
  critical graph (``-log`` of it is the largest KL rate).

Every public function of the package names itself ``klrl.markov.<name>`` in its messages.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from klrl._src import checks as _checks

PACKAGE = "klrl.markov"
BITS = 31          # log_mgf takes n < 2^31


def public(fn=None, *, static: tuple[str, ...] = (), name: str | None = None):
  """:func:`klrl._src.checks.public` under the package's public name ``klrl.markov.<name>``."""
  return _checks.public(fn, static=static, module=PACKAGE, name=name)


# ---------------------------------------------------------------------------------------------
# Log-space products.

def lse(x, axis):
  """``log sum exp`` over ``axis`` (an int or a tuple); ``-inf`` (with zero derivative) where
  every term is ``-inf``."""
  m = lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  s = jnp.sum(jnp.exp(x - m), axis=axis, keepdims=True)
  pos = s > 0
  return jnp.squeeze(jnp.where(pos, jnp.log(jnp.where(pos, s, 1.0)) + m, -jnp.inf), axis)


def logmm(a, b):
  """``log(exp(a) @ exp(b))`` over the last two axes."""
  return lse(a[..., :, :, None] + b[..., None, :, :], axis=-2)


def logvm(u, a):
  """``log(exp(u) @ exp(a))`` for a row vector ``u``."""
  return lse(u[..., :, None] + a, axis=-2)


def maxmm(a, b):
  """Max-plus product over the last two axes."""
  return jnp.max(a[..., :, :, None] + b[..., None, :, :], axis=-2)


def _top(x, axes):
  t = lax.stop_gradient(jnp.max(x, axis=axes))
  return jnp.where(jnp.isfinite(t), t, 0.0)


def log_mgf(u, logm, m, bits: int = BITS):
  """``log sum_j (exp(u) M^m)_j`` for integers ``0 <= m < 2^bits`` (per row), ``M = exp(logm)``.

  Binary powering in log space: the square ``S`` and the vector are shifted by their maxima at
  every step and the shifts summed apart, so the values stay finite for any ``lam n``. Relative
  error of ``exp`` of the result about ``m V eps`` (nonnegative sums have no cancellation).
  """
  t_u, t_s = _top(u, -1), _top(logm, (-2, -1))
  carry = (u - t_u[..., None], t_u, logm - t_s[..., None, None], t_s)

  def body(b, carry):
    u, us, s, ss = carry
    take = ((m >> b) & 1) == 1
    un = logvm(u, s)
    tn = _top(un, -1)
    u = jnp.where(take[..., None], un - tn[..., None], u)
    us = jnp.where(take, us + ss + tn, us)
    s2 = logmm(s, s)
    c = _top(s2, (-2, -1))
    return u, us, s2 - c[..., None, None], 2 * ss + c

  u, us, _, _ = lax.fori_loop(0, bits, body, _checks.vary_alike(carry, (u, logm, m)))
  return lse(u, -1) + us


# ---------------------------------------------------------------------------------------------
# Perron root and pair law, with implicit derivatives.

def _vectors(logm):
  """``(log h, log l)`` of an irreducible ``M = exp(logm)`` (up to scale), from the limit of the
  powers of the lazy matrix ``M + c I`` (primitive, same eigenvectors): 64 squarings in log space (the power ``2^64``: converged for any second eigenvalue below
  ``1 - 1e-17`` of the first), each shifted by its maximum. A fixed count: a data-dependent
  ``while_loop`` here, nested in the root solvers' loops, deadlocked XLA:CPU (jax 0.10)."""
  v = logm.shape[-1]
  rs = lse(logm, -1)
  logc = 0.5 * (jnp.max(rs, axis=-1) + jnp.min(rs, axis=-1))
  eye = jnp.broadcast_to(jnp.eye(v, dtype=bool), logm.shape)
  a = jnp.where(eye, jnp.logaddexp(logm, logc[..., None, None]), logm)
  a = a - _top(a, (-2, -1))[..., None, None]

  def body(k, s):
    s2 = logmm(s, s)
    return s2 - _top(s2, (-2, -1))[..., None, None]

  s = lax.fori_loop(0, 64, body, _checks.vary_alike(a, logm))
  g, f = lse(s, -1), lse(s, -2)
  for _ in range(2):   # power steps with M itself polish the rounding of the squares
    g = lse(logm + g[..., None, :], -1)
    g = g - _top(g, -1)[..., None]
    f = lse(f[..., :, None] + logm, -2)
    f = f - _top(f, -1)[..., None]
  return g, f


def _fundamental(q, pi, steps: int = 64):
  """``Z' = (I - Q' + 1 pi^T)^{-1} = sum_k (Q' - 1 pi^T)^k`` for the lazy chain ``Q' = (I + Q)/2``, as
  the product ``prod_k (I + A^(2^k))`` with ``A = Q' - 1 pi^T`` (spectral radius ``< 1`` for an
  irreducible ``Q``). With it ``(I - Q) x = c`` and ``y^T (I - Q) = d^T`` (``pi^T c = 0``, ``d^T 1 =
  0``) are solved by ``x = Z' c / 2`` and ``y^T = d^T Z' / 2`` with ``pi^T x = 0``, ``y^T 1 = 0``.
  Matrix products only (a LAPACK solve inside the solvers' loops deadlocked XLA:CPU, jax 0.10)."""
  eye = jnp.broadcast_to(jnp.eye(q.shape[-1], dtype=q.dtype), q.shape)
  a = 0.5 * (eye + q) - jnp.broadcast_to(pi[..., None, :], q.shape)

  def body(k, carry):
    z, a = carry
    return z + jnp.matmul(z, a), jnp.matmul(a, a)

  return lax.fori_loop(0, steps, body, _checks.vary_alike((eye, a)))[0]


@jax.custom_jvp
def perron(logm):
  """``(log rho, log w)`` of an irreducible nonnegative ``M = exp(logm)`` (``-inf`` = no edge).

  ``w(i, j) = l_i M_ij h_j / (rho l^T h)`` is the stationary pair law of the Doob transform
  ``Q(i,j) = M_ij h_j / (rho h_i)`` (its row marginal ``pi ∝ l h`` is stationary for ``Q``), and
  ``d log rho = sum_ij w_ij d log M_ij``. Normalisation-free, so the derivatives are unique.
  """
  g, f = _vectors(logm)
  a = f[..., :, None] + logm + g[..., None, :]
  top = lse(a, (-2, -1))
  return top - lse(f + g, -1), a - top[..., None, None]


@perron.defjvp
def _perron_jvp(primals, tangents):
  (logm,), (dlogm,) = primals, tangents
  log_rho, log_w = perron(logm)
  has = logm > -jnp.inf
  dlogm = jnp.where(has, dlogm, 0.0)
  w = jnp.exp(log_w)
  log_pi = lse(log_w, -1)
  pi = jnp.exp(log_pi)
  q = jnp.where(has, jnp.exp(log_w - log_pi[..., None]), 0.0)
  drho = jnp.sum(w * dlogm, axis=(-2, -1))
  # Q = D_h^{-1} M D_h / rho is stochastic: (I - Q) dg = b - drho with b_i = sum_j Q_ij dlogM_ij,
  # solved through the fundamental matrix of the lazy chain; then pi^T (I - Q) = 0 gives d pi.
  b = jnp.sum(q * dlogm, axis=-1)
  z = _fundamental(q, pi)
  dg = 0.5 * jnp.einsum("...ij,...j->...i", z, b - drho[..., None])
  dlogq = dlogm + dg[..., None, :] - dg[..., :, None] - drho[..., None, None]
  rhs = jnp.sum(pi[..., :, None] * q * dlogq, axis=-2)
  dpi = 0.5 * jnp.einsum("...i,...ij->...j", rhs, z)
  dlogw = jnp.where(has, (dpi / pi)[..., :, None] + dlogq, 0.0)
  return (log_rho, log_w), (drho, dlogw)


def doob(log_w):
  """``(log Q, log pi)`` of the Doob transform from its pair law."""
  log_pi = lse(log_w, -1)
  return jnp.where(log_w > -jnp.inf, log_w - log_pi[..., None], -jnp.inf), log_pi


def kl_rate(log_w, log_trans):
  """``sum_i pi_i KL(Q(i, .) || P(i, .))`` as a sum of nonnegative terms
  ``P (1 + u) log(1 + u) - P u``, ``u = Q/P - 1`` (relative accuracy also where it is tiny)."""
  from klrl._src.logspace import one_plus_log_one_plus
  log_q, log_pi = doob(log_w)
  has = log_w > -jnp.inf
  u = jnp.expm1(jnp.where(has, log_q - log_trans, 0.0))
  terms = jnp.where(has, jnp.exp(log_trans) * one_plus_log_one_plus(u), 0.0)
  return jnp.sum(jnp.exp(log_pi) * jnp.sum(terms, axis=-1), axis=-1)


# ---------------------------------------------------------------------------------------------
# Max-plus: cycle means, potentials, the critical graph.

def max_cycle_mean(weight):
  """Karp's maximum cycle mean of ``weight`` ``(..., V, V)`` (``-inf`` = no edge).

  ``D_k(v)`` is the largest weight of a walk of ``k`` edges ending at ``v`` (from any start);
  then ``max_v min_k (D_V(v) - D_k(v)) / (V - k)``. Exact for integer weights.
  """
  v = weight.shape[-1]
  d0 = jnp.zeros(weight.shape[:-1], weight.dtype)

  def step(d, _):
    dn = jnp.max(d[..., :, None] + weight, axis=-2)
    return dn, dn

  dv, ds = lax.scan(step, _checks.vary_alike(d0, weight), None, length=v)
  dk = jnp.concatenate([d0[None], ds[:-1]], axis=0)                       # D_0 .. D_{V-1}
  k = jnp.arange(v, dtype=weight.dtype).reshape((v,) + (1,) * (weight.ndim - 1))
  ratio = jnp.where(jnp.isfinite(dk), (dv[None] - dk) / (v - k), jnp.inf)
  per_node = jnp.where(jnp.isfinite(dv), jnp.min(ratio, axis=0), -jnp.inf)
  return jnp.max(per_node, axis=-1)


def potential(weight, c, tol):
  """A max-plus eigenvector ``v`` of ``weight - c`` (``c`` the maximum cycle mean):
  ``v_i = max_j (weight_ij - c + v_j)``, from the Kleene star's column at a critical node.

  Returns ``(v, rt)`` with ``rt_ij = weight_ij - c + v_j - v_i <= 0`` (clamped against rounding;
  ``-inf`` off the edges), zero on the edges of the saturation graph.
  """
  n = weight.shape[-1]
  wb = weight - c[..., None, None]
  eye = jnp.broadcast_to(jnp.eye(n, dtype=bool), wb.shape)
  star = jnp.where(eye, jnp.maximum(wb, 0.0), wb)
  for _ in range(max(1, math.ceil(math.log2(max(n, 2))))):
    star = jnp.maximum(star, maxmm(star, star))
  star = jnp.where(eye, 0.0, star)
  closing = jnp.max(wb + jnp.swapaxes(star, -1, -2), axis=-1)             # best cycle through each node
  k = jnp.argmax(closing, axis=-1)
  v = jnp.take_along_axis(star, k[..., None, None], axis=-1)[..., 0]
  rt = jnp.minimum(wb + v[..., None, :] - v[..., :, None], 0.0)
  return v, jnp.where(weight > -jnp.inf, rt, -jnp.inf)


def log_spectral_radius(logm, steps: int = 64):
  """``log rho`` of any nonnegative ``exp(logm)`` (reducible too): the growth rate of the largest
  entry of ``M^(2^k)`` (Gelfand), by normalised squaring; error ``O(log V / 2^steps)``."""
  t0 = _top(logm, (-2, -1))

  def body(k, carry):
    s, r = carry
    s2 = logmm(s, s)
    c = _top(s2, (-2, -1))
    return s2 - c[..., None, None], r + c * jnp.exp2(-(k + 1.0)).astype(logm.dtype)

  _, r = lax.fori_loop(0, steps, body, _checks.vary_alike((logm - t0[..., None, None], t0), logm))
  return r


def edge_tol(weight, has):
  """Tolerance below which a potential-shifted edge weight counts as zero (saturated)."""
  spread = jnp.max(jnp.where(has, jnp.abs(weight), 0.0), axis=(-2, -1))
  return 64 * weight.shape[-1] * jnp.finfo(weight.dtype).eps * jnp.maximum(spread, 1.0)


class Ends(NamedTuple):
  """Cycle-mean range and the KL rates at its ends (per row)."""
  low: jax.Array
  high: jax.Array
  rate_low: jax.Array     # I(low) = -log rho(P on the min-mean saturation graph)
  rate_high: jax.Array    # I(high) = Delta_max
  rt_high: jax.Array      # reward shifted by the potential of the max-mean side (<= 0)
  rt_low: jax.Array       # reward shifted by the potential of the min-mean side (>= 0)


def ends(log_trans, reward) -> Ends:
  """Minimum and maximum cycle means of the reward and the rate function at both."""
  has = log_trans > -jnp.inf
  w = jnp.where(has, reward, -jnp.inf)
  hi = lax.stop_gradient(max_cycle_mean(w))
  lo = lax.stop_gradient(-max_cycle_mean(jnp.where(has, -reward, -jnp.inf)))
  tol = edge_tol(reward, has)

  def side(weight, c):
    _, rt = potential(lax.stop_gradient(weight), c, tol)
    sat = jnp.where(rt >= -tol[..., None, None], log_trans, -jnp.inf)
    return rt, -lax.stop_gradient(log_spectral_radius(sat))

  rt_hi, rate_hi = side(w, hi)
  rt_lo, rate_lo = side(jnp.where(has, -reward, -jnp.inf), -lo)
  rate_hi = jnp.maximum(rate_hi, 0.0)
  rate_lo = jnp.maximum(rate_lo, 0.0)
  # A degenerate reward (every cycle has the same mean) has I = 0 at that mean.
  flat = hi - lo <= tol
  return Ends(lo, hi, jnp.where(flat, 0.0, rate_lo), jnp.where(flat, 0.0, rate_hi), rt_hi, -rt_lo)


# ---------------------------------------------------------------------------------------------
# Argument checks.

class Args(NamedTuple):
  log_init: jax.Array
  log_trans: jax.Array
  reward: jax.Array
  first_reward: jax.Array


def irreducible(log_trans):
  """Whether every state reaches every other (boolean reachability by squaring)."""
  v = log_trans.shape[-1]
  a = ((log_trans > -jnp.inf) | jnp.broadcast_to(jnp.eye(v, dtype=bool), log_trans.shape)).astype(jnp.float32)
  for _ in range(max(1, math.ceil(math.log2(max(v, 2))))):
    a = (jnp.matmul(a, a) > 0).astype(jnp.float32)
  return jnp.all(a > 0, axis=(-2, -1))


def check(where, log_init, log_trans, reward, first_reward, values=True, **params):
  """The reference's arrays and per-row parameters, checked and broadcast to one batch shape.

  ``params`` maps a name to ``(value, check)`` (``check`` may be None). Returns ``Args`` and
  the parameters, all in one floating dtype.
  """
  log_trans = _checks.floating(where, "log_trans", log_trans, 2)
  _checks.square(where, "log_trans", log_trans)
  v = log_trans.shape[-1]
  log_init = _checks.floating(where, "log_init", log_init, 1)
  reward = _checks.floating(where, "reward", reward, 2)
  first_reward = _checks.floating(where, "first_reward", first_reward, 1)
  for name, x, tail in (("log_init", log_init, (v,)), ("reward", reward, (v, v)), ("first_reward", first_reward, (v,))):
    if tuple(x.shape[-len(tail):]) != tail:
      _checks._fail(where, name, f"must end with shape {tail} for {v} states, got {x.shape}")
  xs = {name: _checks.floating(where, name, value) for name, (value, _) in params.items()}
  rows = {"log_init": log_init, "log_trans": log_trans[..., 0], "reward": reward[..., 0], "first_reward": first_reward}
  batch = _checks.batch_shape(where, rows, xs)
  dtype = jnp.result_type(log_init, log_trans, reward, first_reward, *xs.values())
  if values:
    log_init = _checks.log_probs(where, "log_init", log_init)
    log_trans = _checks.log_kernel(where, "log_trans", log_trans)
    log_trans = _checks.holds(where, "log_trans", log_trans, irreducible(log_trans),
                              "is not irreducible: some state cannot reach another (klrl.markov needs an "
                              "irreducible transition matrix; drop states that are never used)")
    reward = _checks.finite(where, "reward", reward)
    first_reward = _checks.finite(where, "first_reward", first_reward)
  cast = lambda x, tail: jnp.broadcast_to(x, batch + tail).astype(dtype)
  args = Args(cast(log_init, (v,)), cast(log_trans, (v, v)), cast(reward, (v, v)), cast(first_reward, (v,)))
  out = []
  for (name, (_, chk)), x in zip(params.items(), xs.values()):
    x = cast(x, ())
    out.append(x if chk is None else chk(where, name, x))
  return (args, *out)


def count_array(where, name, n, low=1, high=2 ** BITS - 1):
  """Sequence lengths as an integer array (value-checked: integers in ``[low, high]``)."""
  n = _checks.floating(where, name, n)
  return _checks.holds(where, name, n, (n >= low) & (n <= high) & (n == jnp.round(n)),
                       f"must be an integer in [{low}, {high}]")


def static_count(where, name, x, low):
  if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < low:
    raise _checks.InputError(f"{where}: argument '{name}' must be a Python int >= {low}, got {x!r}")
  return int(x)


# ---------------------------------------------------------------------------------------------
# Best sequences (for the largest and smallest S_n and the probability of attaining them).

def _pair_mm(a, b, tol):
  cand = a[0][..., :, :, None] + b[0][..., None, :, :]
  best = jnp.max(cand, axis=-2)
  lp = lse(jnp.where(cand >= best[..., None, :] - tol[..., None, None, None],
                     a[1][..., :, :, None] + b[1][..., None, :, :], -jnp.inf), axis=-2)
  return best, lp


def _pair_vm(u, a, tol):
  best, lp = _pair_mm((u[0][..., None, :], u[1][..., None, :]), a, tol)
  return best[..., 0, :], lp[..., 0, :]


def top(log_init, first_reward, log_trans, reward, m, bits: int = BITS):
  """``(s_max, log P(S = s_max))`` of ``S = r_0(y_1) + sum r(y_{t-1}, y_t)`` over ``m`` transitions
  (integers per row), in the semiring of pairs (best reward, log-probability of attaining it).
  Rewards within ``1e3 eps (1 + m) max|r|`` of the best count as ties."""
  has = log_trans > -jnp.inf
  scale = jnp.maximum(jnp.max(jnp.where(has, jnp.abs(reward), 0.0), axis=(-2, -1)),
                      jnp.max(jnp.abs(first_reward), axis=-1))
  tol = 1e3 * jnp.finfo(reward.dtype).eps * (2.0 + m) * jnp.maximum(scale, 1.0)
  u = (jnp.where(log_init > -jnp.inf, first_reward, -jnp.inf), log_init)
  s = (jnp.where(has, reward, -jnp.inf), log_trans)

  def body(b, carry):
    u, s = carry
    take = (((m >> b) & 1) == 1)[..., None]
    un = _pair_vm(u, s, tol)
    u = (jnp.where(take, un[0], u[0]), jnp.where(take, un[1], u[1]))
    return u, _pair_mm(s, s, tol)

  u, _ = lax.fori_loop(0, bits, body, _checks.vary_alike((u, s), (log_init, log_trans, m)))
  best = jnp.max(u[0], axis=-1)
  return best, lse(jnp.where(u[0] >= best[..., None] - tol[..., None], u[1], -jnp.inf), -1)


# ---------------------------------------------------------------------------------------------
# A scalar root with implicit derivatives.

def implicit_root(solve, k_of):
  """``root(data, target, active, aux) -> (lam, converged)`` with ``K(data, lam) = target`` where
  ``active`` (``lam = 0`` elsewhere), ``K = k_of(data, lam, aux)``, differentiated implicitly:
  ``d lam = (d target - dK|_lam) / K'(lam)`` (0 where inactive or ``K' = 0``). ``aux`` (a pytree
  of arrays that the solver needs: bounds, centrings) carries no derivative."""
  @jax.custom_jvp
  def root(data, target, active, aux):
    return solve(data, target, active, aux)

  @root.defjvp
  def _jvp(primals, tangents):
    data, target, active, aux = primals
    ddata, dtarget = tangents[:2]
    lam, converged = root(data, target, active, aux)
    at = lax.stop_gradient(jnp.where(active & jnp.isfinite(lam), lam, 0.0))
    _, dk = jax.jvp(lambda d: k_of(d, at, aux), (data,), (ddata,))
    _, slope = jax.jvp(lambda l: k_of(data, l, aux), (at,), (jnp.ones_like(at),))
    ok = active & (slope > 0)
    dlam = jnp.where(ok, (dtarget - dk) / jnp.where(ok, slope, 1.0), 0.0)
    return (lam, converged), (dlam, jnp.zeros(converged.shape, jax.dtypes.float0))

  return root
