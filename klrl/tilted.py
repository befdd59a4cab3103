"""Energy-based (tilted) policies: the closed form of KL-regularised and KL-constrained RL.

For a reference ``p`` and a reward ``r`` on the same support (docs: theory/tilted)::

    J_beta(q) = E_q[r] - beta KL(q || p),     pi_beta = p exp(r / beta) / Z_beta.

The maximiser of ``J_beta`` is ``pi_beta`` (Gibbs variational principle) and the optimal value
is ``beta log Z_beta``. The KL-constrained problem ``max E_q[r] s.t. KL(q || p) <= delta`` is
solved by the tilt ``pi_{1/lam}`` whose ``lam`` solves ``K(lam) = lam A'(lam) - A(lam) = delta``,
where ``A(lam) = log E_p exp(lam r)`` is the cumulant generating function of ``r`` under ``p``
(Yang et al., *Asymptotics of Language Model Alignment*, 2024). Past the largest feasible
budget ``delta_max = -log p(S*)`` (``S*`` the reward maximisers in the support of ``p``) the
answer is ``p`` conditioned on ``S*``.

Numerics. All functions work in log space. The cumulants at a given ``lam`` come from one
pass over the data (:func:`cumulants`, :mod:`klrl._src.cumulants`): for small ``lam (r_max - r_min) <= 1`` the reward is
centred at its mean under ``p`` and the sums use ``expm1`` so that ``KL = O(lam^2)`` keeps its
relative accuracy; for larger ``lam`` the reward is centred at ``r_max`` so that the distance
to saturation ``delta_max - KL`` is computed without cancellation. The constrained root is
found by safeguarded Newton on ``G(lam) = log K - log(delta_max - K)``, a function that is
linear in ``log lam`` for small budgets and linear in ``lam`` near saturation. In float64 and
for ``V >= 4096`` the first steps are Halley steps on sums taken in float32 (cheaper passes)
until ``|G| <= 0.02``, and one more Halley step, which lands near float32's rounding level, is
taken without a pass to confirm it; float64 passes follow, and the last step is taken on the
quadratic Taylor model of ``K`` when a bound on its remainder is below the tolerance, which
saves the pass that would only confirm convergence. A solve takes 2 to 6 passes on typical
problems. Where every budget exceeds 1/8 no iterate is in the small-``lam`` regime, and the
pass before the solve (extremes of ``r``, moments of ``p`` for the starting point, ``p(S*)``)
also sums in float32. Derivatives through the root are implicit (not unrolled).

Accuracy (measured by ``tests/test_tilted.py`` and ``benchmarks/bench_tilted.py``): the KL of
``kl_constrained``'s policy matches ``delta`` to ``1e-10 max(1, delta)`` in float64 and to
``1e-5`` relative in float32 (as computed by klrl in that precision), for ``delta`` from
``1e-8`` to ``delta_max (1 - 1e-9)`` and vocabularies up to ``10^6``.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.scipy.special import logsumexp
from jaxtyping import Array, Float

from klrl._src import checks as _checks, cumulants as _cum, roots as _roots, rows as _rows
from klrl._src.cumulants import Cumulants
from klrl._src.logspace import expectation, kl as _kl

__all__ = [
    "Cumulants", "TiltStats", "Constrained", "tilt", "log_partition", "cumulants", "stats",
    "objective", "kl_constrained", "frontier", "max_kl", "dual_frontier",
]


class TiltStats(NamedTuple):
  """Statistics of the tilted policy ``pi_beta`` (see :func:`stats`)."""
  log_z: Array
  kl: Array
  mean_reward: Array
  var_reward: Array
  entropy: Array


class Constrained(NamedTuple):
  """Solution of the KL-constrained problem (see :func:`kl_constrained`).

  Attributes:
    beta: KL coefficient ``1/lam`` of the solution; ``inf`` at ``delta = 0``, ``0`` when the
      constraint is saturated (``delta >= delta_max``, which includes constant rewards).
    log_policy: log-probabilities of the solution ``phi_delta``.
    kl: ``KL(phi_delta || p)`` of the returned policy.
    mean_reward: ``E_phi[r] = R(delta)``.
    lam: ``1/beta``.
    saturated: whether ``delta >= delta_max``.
    iterations: passes over the data the root solve took, float32 ones included (the largest
      over the batch). The whole call makes three more: the maxima, the constants, the policy.
  """
  beta: Array
  log_policy: Array
  kl: Array
  mean_reward: Array
  lam: Array
  saturated: Array
  iterations: Array
  converged: Array


# ---------------------------------------------------------------------------------------------
# Validation.

# ---------------------------------------------------------------------------------------------
# One-pass cumulants.


def _prepare(where, logp, reward) -> _cum.Prep:
  """Per-row constants from one pass, with the input value checks folded into that pass."""
  return _rows.checked(where, lambda lp, r: _cum.constants_block(lp, r, True), ("logp",), ("reward",), logp, reward)


def _log_z(where, logp, reward, beta):
  """Checked ``c`` and ``log Z_beta - c / beta`` of each row, with ``c = max r``, from one pass that
  also checks the inputs. Centred, ``(r - c) / beta`` keeps the rewards' differences where
  ``r / beta`` would round them away (rewards offset far from zero, small ``beta``).

  The checks hold per-row values only: a check on a whole ``B x V`` array makes XLA copy it.
  """
  def rows(logp, reward, beta):
    c = jnp.max(reward, axis=-1)
    return ((c, logsumexp(logp + (reward - c[..., None]) / beta[..., None], axis=-1)),
            jnp.exp(logsumexp(logp, axis=-1)), jnp.sum(0.0 * reward, axis=-1))

  return _rows.checked(where, rows, ("logp",), ("reward",), logp, reward, beta)


def _one_pass(where, logp, reward, lam) -> Cumulants:
  """Checked cumulants at ``lam``: the constants and the sums of each block of rows in turn,
  while the block is in cache (see :mod:`klrl._src.rows`)."""
  def rows(logp, reward, lam):
    prep, total, probe = _cum.constants_block(logp, reward, False)
    return _cum.cumulants_block(logp, reward, lam, prep, False), total, probe

  return _rows.checked(where, rows, ("logp",), ("reward",), logp, reward, lam)


def _log_policy(logp, reward, lam, mean, kl, mean_gap, r_max):
  """``log p + lam r - A(lam) = log p + lam (r - A'(lam)) + K(lam)``: large ``lam`` does not cancel.

  ``A'(lam)`` is rounded to the spacing of the rewards' floats: for rewards offset far from
  zero (``10^4`` with a spread of ``10^-2``, say) ``lam`` times that rounding would shift every
  log-probability alike. The shift is put back from ``mean_gap = A'(lam) - r_max``, which the
  solver knows unrounded; it is zero in exact arithmetic, so it carries no derivative.
  """
  fix = lax.stop_gradient(lam * ((mean - r_max) - mean_gap))
  return logp + lam[..., None] * (reward - mean[..., None]) + (kl + fix)[..., None]


# ---------------------------------------------------------------------------------------------
# Regularised problem.

@_checks.public
def tilt(logp: Float[Array, "... v"], reward: Float[Array, "... v"], beta: Float[Array, "..."]) -> Float[Array, "... v"]:
  """Log-probabilities of the tilted policy ``pi_beta = p exp(r / beta) / Z_beta``.

  The maximiser of ``E_q[r] - beta KL(q || p)`` (docs: theory/tilted).

  Args:
    logp: reference log-probabilities, ``-inf`` for zero mass.
    reward: finite rewards on the same support.
    beta: KL coefficient ``> 0``, a scalar or one per row.

  Returns:
    ``log pi_beta``; zero-mass entries of ``p`` stay ``-inf``.
  """
  where = "klrl.tilted.tilt"
  logp, reward, beta = _checks.logp_reward(where, logp, reward, False, beta=(beta, _checks.positive))
  c, log_zc = _log_z(where, logp, reward, beta)
  return logp + (reward - c[..., None]) / beta[..., None] - log_zc[..., None]


@_checks.public
def log_partition(logp: Float[Array, "... v"], reward: Float[Array, "... v"], beta: Float[Array, "..."]) -> Float[Array, "..."]:
  """``log Z_beta = log E_p exp(r / beta)``; ``beta log Z_beta`` is the optimal value of ``J_beta``."""
  where = "klrl.tilted.log_partition"
  logp, reward, beta = _checks.logp_reward(where, logp, reward, False, beta=(beta, _checks.positive))
  c, log_zc = _log_z(where, logp, reward, beta)
  return c / beta + log_zc


@_checks.public
def cumulants(logp: Float[Array, "... v"], reward: Float[Array, "... v"], lam: Float[Array, "..."]) -> Cumulants:
  """The cumulant generating function ``A(lam)`` of the reward under ``p`` and what it gives.

  ``A'`` is the tilted mean, ``A''`` the tilted variance and ``lam A' - A`` the KL of the
  tilt; higher cumulants follow by differentiating ``.mean`` in ``lam``. One pass over the
  data, accurate for small and large ``lam`` (see the module docstring).

  Args:
    logp: reference log-probabilities.
    reward: finite rewards.
    lam: inverse temperature ``lam = 1/beta >= 0`` (``lam = 0`` gives ``p`` itself).
  """
  where = "klrl.tilted.cumulants"
  logp, reward, lam = _checks.logp_reward(where, logp, reward, False, lam=(lam, _checks.nonnegative))
  return _one_pass(where, logp, reward, lam)


@_checks.public
def stats(logp: Float[Array, "... v"], reward: Float[Array, "... v"], beta: Float[Array, "..."]) -> TiltStats:
  """Statistics of ``pi_beta``: ``log Z``, ``KL(pi || p)``, mean and variance of ``r``, entropy.

  ``E_pi[r] = A'(1/beta)``, ``Var_pi[r] = A''(1/beta)`` and ``KL(pi || p) = lam A' - A``
  (docs: theory/tilted), from one pass over the data.
  """
  where = "klrl.tilted.stats"
  logp, reward, beta = _checks.logp_reward(where, logp, reward, False, beta=(beta, _checks.positive))
  c = _one_pass(where, logp, reward, 1.0 / beta)
  return TiltStats(log_z=c.log_z, kl=c.kl, mean_reward=c.mean, var_reward=c.var,
                   entropy=c.cross_entropy - c.kl)


@_checks.public
def objective(logq: Float[Array, "... v"], logp: Float[Array, "... v"], reward: Float[Array, "... v"],
              beta: Float[Array, "..."]) -> Float[Array, "..."]:
  """The KL-regularised objective ``J_beta(q) = E_q[r] - beta KL(q || p)``.

  By the Gibbs variational identity ``J_beta(q) = beta log Z_beta - beta KL(q || pi_beta)``.
  """
  where = "klrl.tilted.objective"
  logq = _checks.floating(where, "logq", logq, 1)
  _checks.batch_shape(where, {"logq": logq, "logp": logp, "reward": reward}, {"beta": beta})
  logp, reward, beta = _checks.logp_reward(where, logp, reward, beta=(beta, _checks.positive))
  _checks.same_support(where, "logp", logp, "logq", logq)
  shape = jnp.broadcast_shapes(logp.shape, logq.shape)
  logq = jnp.broadcast_to(_checks.log_probs(where, "logq", logq), shape).astype(logp.dtype)
  logp, reward = jnp.broadcast_to(logp, shape), jnp.broadcast_to(reward, shape)
  return expectation(logq, reward) - jnp.broadcast_to(beta, shape[:-1]) * _kl(logq, logp)


# ---------------------------------------------------------------------------------------------
# Constrained problem.

@_checks.public
def max_kl(logp: Float[Array, "... v"], reward: Float[Array, "... v"]) -> Float[Array, "..."]:
  """``delta_max = -log p(S*)``: the KL of ``p`` conditioned on its reward maximisers.

  Budgets at or above it saturate the constraint. Zero for a constant reward.
  """
  where = "klrl.tilted.max_kl"
  logp, reward = _checks.logp_reward(where, logp, reward, False)
  return -_prepare(where, logp, reward).log_ps


def _residual(kl, gap, var, lam, target, tiny):
  """``G = log K - log(delta_max - K) - target`` and ``dG/dlam``."""
  kl, gap = jnp.maximum(kl, tiny), jnp.maximum(gap, tiny)
  return jnp.log(kl) - jnp.log(gap) - target, lam * var * (1 / kl + 1 / gap)


_PRESOLVE_MIN_V = 4096   # below this a pass costs less than the loop around it
_LAST_STEP_G = 0.02


def _presolve32(logp, reward, lam, lo, hi, prep: _cum.Prep, target, spread, active):
  """Halley steps with the sums in float32 for rows with ``lam (r_max - r_min) > 1`` (where
  ``K`` has no cancellation), cheaper than float64 passes, to about float32's rounding level of
  ``G`` (``1e-6`` to ``1e-5``). From there one float64 pass usually finishes."""
  tiny = jnp.finfo(logp.dtype).tiny

  def evaluate(lam):
    s0, s1, s2, s3 = _cum.power_sums(logp, reward, prep.l_max, prep.r_max, lam, single=True)[:4]
    m = s1 / s0
    var = jnp.maximum(s2 / s0 - m * m, 0.0)
    k3 = s3 / s0 - 3 * m * var - m * m * m
    kl = lam * m - prep.l_max - jnp.log(s0)
    gap = -prep.log_ps - kl
    g, dg = _residual(kl, gap, var, lam, target, tiny)
    dk, d2k = lam * var, var + lam * k3               # K', K''
    d2g = d2k * dg / jnp.maximum(dk, tiny) + dk * dk * (1 / gap ** 2 - 1 / kl ** 2)
    # Rounding level of G: the sums are good to ~2e-7 relative, K is a difference of two terms.
    floor = jnp.maximum(3e-6, 1e-6 * (jnp.abs(lam * m) + jnp.abs(kl - lam * m)) * (1 / kl + 1 / gap))
    return jnp.where(s0 > 0, g, jnp.nan), dg, d2g, floor   # NaN: every weight underflowed

  large = lambda lam: lam * spread > 1.0
  done = lambda lam, v: ~large(lam) | ~(jnp.abs(v[0]) > jnp.maximum(v[3], _LAST_STEP_G))
  root = _roots.solve(evaluate, lam, lo, hi, active, done=done, max_steps=8, halley=True, log_newton=lambda x: ~large(x))
  g, dg, d2g, floor = root.value
  # Halley's error is cubic: from |G| <= _LAST_STEP_G one more step lands near float32's rounding
  # level, so it is taken without a float32 pass to confirm it (the float64 pass does).
  last = active & large(root.x) & (jnp.abs(g) > floor)
  lam32 = _roots.step(root.x, root.lo, root.hi, g, dg, last, d2g=d2g, log_newton=~large(root.x))[0]
  # A row whose float32 sums failed (NaN) or left it outside the large regime starts afresh.
  fresh = active & large(lam)
  keep = fresh & jnp.isfinite(lam32) & large(lam32)
  return jnp.where(keep, lam32, lam), jnp.where(jnp.any(fresh), root.iterations + 1, 0)


def _solve(logp, reward, delta, prep: _cum.Prep, active):
  """Safeguarded Newton for ``K(lam) = delta`` on rows where ``active``; no derivatives.

  Returns ``lam``, the number of passes over the data (float64 and float32) and
  ``(A'(lam), K(lam), A'(lam) - r_max)`` from the last pass.
  """
  dtype = logp.dtype
  tol = 1e-13 if jnp.finfo(dtype).bits > 32 else 2e-6
  tiny = jnp.finfo(dtype).tiny
  dmax = -prep.log_ps
  spread = jnp.where(active, prep.r_max - prep.r_min, 1.0)
  d = jnp.where(active, delta, 0.5 * jnp.where(dmax > 0, dmax, 1.0))
  target = jnp.log(d) - jnp.log(jnp.maximum(dmax - d, tiny))
  lo = jnp.sqrt(8 * d) / spread                        # K(lam) <= lam^2 spread^2 / 8
  # A variance below rounding level of the spread is noise; the floor keeps lam0 finite.
  var0 = jnp.maximum(prep.var, jnp.maximum((jnp.finfo(dtype).eps * spread) ** 2, tiny))
  lam0 = jnp.maximum(jnp.sqrt(2 * d / var0), lo)
  hi = jnp.full_like(lo, jnp.inf)
  it32 = jnp.array(0)
  if dtype == jnp.float64 and logp.shape[-1] >= _PRESOLVE_MIN_V:
    lam0, it32 = _presolve32(logp, reward, lam0, lo, hi, prep, target, spread, active)

  def evaluate(lam):
    c, k3, mean_gap = _cum.cumulants_block(logp, reward, lam, prep, gap=True, entropy=False, third=True)
    return _residual(c.kl, c.kl_gap, c.var, lam, target, tiny) + (c.mean, c.kl, c.var, k3, mean_gap)

  def finish(lam, ev):
    """The root of the quadratic Taylor model of ``K`` at ``lam``, and a bound on its error."""
    g, dg, mean, kl, var, k3, mean_gap = ev
    dk, d2k = lam * var, var + lam * k3                 # K', K''
    h = (d - kl) / dk
    for _ in range(2):
      h_last, h = h, (d - kl - 0.5 * d2k * h * h) / dk
    # Remainder: |K'''| <= 2 |k3| + lam |k4| with |k4| <= var spread^2; and the model's own residual.
    err = (2 * jnp.abs(k3) + jnp.maximum(lam, 1.0) * var * spread ** 2) * jnp.abs(h) ** 3 / 6
    err = err + 0.5 * jnp.abs(d2k * (h_last * h_last - h * h))
    ok = jnp.isfinite(h) & (err <= 0.1 * tol * jnp.minimum(d, dmax - d))
    dmean = var * h + 0.5 * k3 * h * h
    return h, ok, (mean + dmean, kl + dk * h + 0.5 * d2k * h * h, mean_gap + dmean)

  done = lambda lam, ev: ~(jnp.abs(ev[0]) > tol) | finish(lam, ev)[1]
  root = _roots.solve(evaluate, lam0, lo, hi, active, done=done, max_steps=60, closed_rtol=1e-15,
                      log_newton=lambda lam: lam * spread <= 1.0)
  lam, ev = root.x, root.value
  # The last step without a pass where the Taylor model is exact to the tolerance.
  h, ok, (mean, kl, mean_gap) = finish(lam, ev)
  step = active & (jnp.abs(ev[0]) > tol) & ok
  return (jnp.where(step, lam + h, lam), root.iterations + 1 + it32, jnp.where(step, mean, ev[2]),
          jnp.where(step, kl, ev[3]), jnp.where(step, mean_gap, ev[6]), root.converged)


@jax.custom_jvp
def _root(logp, reward, delta, saturated, prep):
  """``lam`` with ``K(lam) = delta`` (0 where ``delta = 0`` or the row is saturated), the solve's
  passes, ``A'(lam)``, ``K(lam)`` and ``A'(lam) - r_max`` from the solver's last pass, and whether
  the solve converged. ``A'(lam) - r_max`` is for a rounding correction only (:func:`_log_policy`)
  and carries no derivative."""
  active = (~saturated) & (delta > 0)
  lam, it, mean, kl, mean_gap, converged = _solve(logp, reward, delta, prep, active)
  return (jnp.where(active, lam, 0.0), it, jnp.where(active, mean, prep.mu), jnp.where(active, kl, 0.0),
          jnp.where(active, mean_gap, prep.mu - prep.r_max), converged)


def _root_jvp(primals, tangents):
  logp, reward, delta, saturated, prep = primals
  dlogp, dreward, ddelta, _, dprep = tangents
  lam, it, mean, kl, mean_gap, converged = _root(*primals)
  # Implicit function theorem: K(lam) = delta gives K'(lam) dlam = ddelta - dK|_lam.
  cum_of = lambda lp, r, pr: _cum.cumulants(lp, r, lam, pr, entropy=False)
  zero = lambda t: isinstance(t, SymbolicZero)
  data_tangents = (dlogp, dreward, dprep)
  if all(zero(t) for t in jax.tree.leaves(data_tangents, is_leaf=zero)):   # only delta moves
    c, dk, dmean = cum_of(logp, reward, prep), 0.0, 0.0
  else:
    dense = jax.tree.map(lambda t, x: jnp.zeros_like(x) if zero(t) else t, data_tangents,
                         (logp, reward, prep), is_leaf=zero)
    c, dc = jax.jvp(cum_of, (logp, reward, prep), dense)
    dk, dmean = dc.kl, dc.mean
  slope = lam * c.var                                   # K'(lam) = lam A''(lam)
  inv = jnp.where(slope > 0, 1 / jnp.where(slope > 0, slope, 1.0), 0.0)
  dlam = inv * ((0.0 if zero(ddelta) else ddelta) - dk)
  float0 = lambda x: jnp.zeros(x.shape, jax.dtypes.float0)
  return (lam, it, mean, kl, mean_gap, converged), (dlam, float0(it), dmean + c.var * dlam, dk + slope * dlam,
                                                    jnp.zeros_like(mean_gap), float0(converged))


_root.defjvp(_root_jvp, symbolic_zeros=True)


@jax.custom_jvp
def _top_mean(logp, reward, r_max, log_ps):
  """``E[r | S*] = r_max``, with the derivatives of ``sum_{S*} p r / p(S*)``: ``p( . | S*)`` in ``reward``."""
  return r_max


def _top_mean_jvp(primals, tangents):
  logp, reward, r_max, log_ps = primals
  dreward = tangents[1]
  top = (logp > -jnp.inf) & (reward == r_max[..., None])
  p_top = jnp.where(top, jnp.exp(logp - log_ps[..., None]), 0.0)
  return r_max, jnp.sum(p_top * dreward, axis=-1)   # the log p terms vanish: r is constant on S*


_top_mean.defjvp(_top_mean_jvp)


@jax.custom_jvp
def _infinite_slope(delta, at_zero):
  """Zero, with derivative ``+inf`` in ``delta`` where ``at_zero``: ``R'(0) = +inf``."""
  return jnp.zeros_like(delta)


def _infinite_slope_jvp(primals, tangents):
  delta, at_zero = primals
  ddelta, _ = tangents
  out = jnp.zeros_like(delta)
  if isinstance(ddelta, SymbolicZero):
    return out, jnp.zeros_like(delta)
  return out, jnp.where(at_zero, jnp.inf, 0.0) * ddelta


_infinite_slope.defjvp(_infinite_slope_jvp, symbolic_zeros=True)


@_checks.public
def kl_constrained(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."]) -> Constrained:
  """Solves ``max_q E_q[r]`` subject to ``KL(q || p) <= delta`` in closed form.

  Cases (docs: theory/tilted): for ``0 <= delta < delta_max`` the answer is the tilt whose ``lam``
  solves ``lam A'(lam) - A(lam) = delta`` (the constraint is active); for
  ``delta >= delta_max = -log p(S*)`` it is ``p( . | S*)``, ties at the maximum weighted in
  proportion to ``p``, with ``beta = 0``; a constant reward is always saturated and returns
  ``p``.

  Derivatives are exact and implicit: ``d lam / d delta = 1 / (lam A''(lam))``, and those in
  ``logp`` and ``reward`` follow from the implicit function theorem, so ``dR/d delta = beta``.
  At ``delta = 0`` the solution is ``p`` and ``beta = inf``: ``d mean_reward / d delta`` is
  ``+inf`` (the true one-sided limit, ``R'(delta) = beta``), ``d kl / d delta = 1``, the
  derivatives in ``delta`` of ``log_policy``, ``lam`` and ``beta`` are reported as 0 (their true
  values are infinite), and derivatives in ``logp`` and ``reward`` are those of ``p``. Saturated rows have ``d kl / d delta = 0`` and
  the derivatives of ``p( . | S*)`` in ``logp`` and ``reward``.

  Args:
    logp: reference log-probabilities (``-inf`` for zero mass), shape ``(..., V)``.
    reward: finite rewards, broadcasting with ``logp``. The solution is invariant under
      ``r -> c r``; it is computed for ``|r| <= 1.3e152`` with each row's spread 0 or
      ``>= 1.5e-152`` (float32: ``1.8e17`` and ``1.1e-17``), and rewards outside raise
      :class:`klrl.InputError` (rescale them).
    delta: KL budget ``>= 0``, a scalar or one per row.

  Returns:
    A :class:`Constrained` with ``beta``, ``log_policy``, ``kl``, ``mean_reward``, ``lam``,
    ``saturated``, ``iterations`` and ``converged``.
  """
  where = "klrl.tilted.kl_constrained"
  logp, reward, delta = _checks.logp_reward(where, logp, reward, False, delta=(delta, _checks.nonnegative))
  return _kl_constrained(where, logp, reward, delta)


def _kl_constrained(where, logp, reward, delta) -> Constrained:
  """Checked solution. Each block of rows is solved while it is in cache (:mod:`klrl._src.rows`);
  the policy is then written in one pass from the checked per-row results, so the large output
  is neither stacked block by block nor passed through the checks."""
  def rows(logp, reward, delta):
    prep, total, probe = _solve_constants(logp, reward, delta)
    saturated = delta >= -prep.log_ps
    lam, it, mean, kl, mean_gap, converged = _root(logp, reward, delta, saturated, prep)
    return (lam, jnp.broadcast_to(it, delta.shape), mean, kl, mean_gap, converged, prep), total, probe

  lam, it, mean, kl, mean_gap, converged, prep = _rows.checked(where, rows, ("logp",), ("reward",), logp, reward, delta)
  lam, mean, kl, mean_gap = _checks.reward_range(where, (lam, mean, kl, mean_gap), prep.r_min, prep.r_max)
  return _constrained(logp, reward, delta, prep, lam, jnp.max(it, initial=0), mean, kl, mean_gap, converged)


def _solve_constants(logp, reward, delta):
  """The constants of :func:`_kl_constrained`'s rows, in float32 where no row needs ``E_p r``
  exactly. It is needed where ``delta = 0`` (the answer's mean reward) and where an iterate has
  ``lam (r_max - r_min) <= 1`` (the sums centred at ``E_p r``). Since ``K(lam) <= lam^2
  (r_max - r_min)^2 / 8``, every iterate (``lam >= sqrt(8 delta) / (r_max - r_min)``) has
  ``lam (r_max - r_min) > 1`` once ``delta > 1/8``."""
  if logp.dtype != jnp.float64 or logp.shape[-1] < _PRESOLVE_MIN_V:
    return _cum.constants_block(logp, reward, True)
  return lax.cond(jnp.all(delta > 0.125), _cum.constants_block32, lambda lp, r: _cum.constants_block(lp, r, True),
                  logp, reward)


def _constrained(logp, reward, delta, prep: _cum.Prep, lam, it, mean, kl, mean_gap, converged) -> Constrained:
  """The solution from the root ``lam`` and ``A'(lam)``, ``K(lam)``, ``A'(lam) - r_max`` of each row."""
  dmax = -prep.log_ps
  saturated = delta >= dmax
  log_tilt = _log_policy(logp, reward, lam, mean, kl, mean_gap, prep.r_max)
  # KL of the returned policy as computed, with the derivative of the identity K(lam(delta)) = delta.
  kl_tilt = delta + lax.stop_gradient(kl - delta)

  top = (logp > -jnp.inf) & (reward == prep.r_max[..., None])
  log_sat = jnp.where(top, logp - prep.log_ps[..., None], -jnp.inf)
  mean_sat = _top_mean(logp, reward, prep.r_max, prep.log_ps)

  sat = saturated[..., None]
  safe_lam = jnp.where(lam > 0, lam, 1.0)
  beta = jnp.where(saturated, 0.0, jnp.where(lam > 0, 1 / safe_lam, jnp.inf))
  return Constrained(
      beta=beta,
      log_policy=jnp.where(sat, log_sat, log_tilt),
      kl=jnp.where(saturated, dmax, kl_tilt),
      mean_reward=jnp.where(saturated, mean_sat, mean + _infinite_slope(delta, (delta == 0) & ~saturated)),
      lam=jnp.where(saturated, jnp.inf, lam),
      saturated=saturated,
      iterations=it,
      converged=converged,
  )


@_checks.public
def frontier(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."]) -> Float[Array, "..."]:
  """The reward-KL frontier ``R(delta) = E_{phi_delta}[r]``: concave, increasing, ``R' = beta``."""
  where = "klrl.tilted.frontier"
  logp, reward, delta = _checks.logp_reward(where, logp, reward, False, delta=(delta, _checks.nonnegative))
  return _kl_constrained(where, logp, reward, delta).mean_reward


@_checks.public
def dual_frontier(logp: Float[Array, "... v"], reward: Float[Array, "... v"], delta: Float[Array, "..."],
                  lam: Float[Array, "... k"]) -> Float[Array, "... k"]:
  """The dual objective ``(delta + A(lam)) / lam`` on a grid of ``lam > 0`` (last axis).

  Its minimum over ``lam`` is ``R(delta)``; every value is an upper bound on ``R(delta)``.
  """
  where = "klrl.tilted.dual_frontier"
  lam = _checks.floating(where, "lam", lam, 1)
  _checks.batch_shape(where, {"logp": logp, "reward": reward, "lam": lam}, {"delta": delta})
  logp, reward, delta = _checks.logp_reward(where, logp, reward, delta=(delta, _checks.nonnegative))
  lam = _checks.positive(where, "lam", lam).astype(logp.dtype)
  logp, reward, lam, delta = _checks.broadcast(where, {"logp": logp, "reward": reward, "lam": lam}, {"delta": delta})
  a = logsumexp(logp[..., None, :] + lam[..., None] * reward[..., None, :], axis=-1)
  return (delta[..., None] + a) / lam
