"""Spectra of reversible kernels, spectral gaps and the mixing bounds (docs: theory/chains).

``spectrum`` uses ``D^{1/2} K D^{-1/2}`` (``D = diag pi``), which for a reversible kernel is the
entrywise geometric mean ``sqrt(K(s'|s) K(s|s'))``: exactly symmetric, free of ``pi`` and of its
errors, and solved by ``eigh``. Its derivative at a cluster of equal eigenvalues (within
``sqrt(eps)``) is the derivative of the cluster's mean eigenvalue: defined, finite, independent
of the eigenvector basis, and equal to the true derivative at simple ones. Kernels that are
not reversible have complex spectra: ``eigenvalues`` uses the general eigensolver.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float

from klrl import divergences
from klrl._src import checks as _checks
from klrl.chains import _args
from klrl.chains.equilibrium import _pi_checked


class MixingBounds(NamedTuple):
  """Mixing bounds of a reversible chain (see :func:`mixing_bounds`).

  Attributes:
    tv: ``(1/2) lam*^t sqrt(chi2(p_0 || pi))`` over rounds ``t = 0..T``, bounds ``TV(p_t, pi)``.
    kl: ``log(1 + lam*^(2t) chi2(p_0 || pi))``, bounds ``KL(p_t || pi)``.
    worst_tv: ``exp(-gamma* t) / pi_min``, bounds ``max_s TV(K^t(s, .), pi)``.
    mixing_time: ``log(1 / (eps pi_min)) / gamma*``, bounds ``t_mix(eps)``.
  """
  tv: Array
  kl: Array
  worst_tv: Array
  mixing_time: Array


def _sym(logk):
  """``D^{1/2} K D^{-1/2}`` of a reversible kernel, as ``sqrt(K(s'|s) K(s|s'))``: exactly symmetric."""
  return jnp.exp(0.5 * (logk + jnp.swapaxes(logk, -1, -2)))


def _eigh_desc(s):
  w, v = jnp.linalg.eigh(s)
  return w[..., ::-1], v[..., ::-1]


@jax.custom_jvp
def _eigvalsh(s):
  """Eigenvalues of symmetric ``s``, descending; derivative averaged over degenerate clusters."""
  return _eigh_desc(s)[0]


@_eigvalsh.defjvp
def _eigvalsh_jvp(primals, tangents):
  (s,), (ds,) = primals, tangents
  w, v = _eigh_desc(s)
  d = jnp.einsum("...ij,...ik,...kj->...j", v, ds, v)       # v_j^T ds v_j
  tol = jnp.sqrt(jnp.finfo(w.dtype).eps)
  same = jnp.abs(w[..., :, None] - w[..., None, :]) <= tol
  return w, jnp.sum(jnp.where(same, jnp.broadcast_to(d[..., None, :], same.shape), 0.0), axis=-1) / jnp.sum(same, axis=-1)


def _spectrum_arg(where, log_kernel):
  logk = _args.log_kernel(where, "log_kernel", log_kernel)
  if logk.shape[-1] < 2:
    _checks._fail(where, "log_kernel", "needs at least 2 states for a spectral gap")
  return logk, _eigvalsh(_sym(logk))


def _lam_star(w):
  return jnp.maximum(jnp.abs(w[..., 1]), jnp.abs(w[..., -1]))


@_args.public
def spectrum(log_kernel: Float[Array, "... m m"]) -> Float[Array, "... m"]:
  """Eigenvalues of a reversible kernel, real and descending: ``1 = l_1 >= l_2 >= ... >= l_M``.

  The spectral theory is on the theory page (docs: theory/chains).

  Computed with a symmetric eigensolver on ``D^{1/2} K D^{-1/2}`` (``D = diag pi``), which for a
  reversible ``K`` equals ``sqrt(K(s'|s) K(s|s'))`` entrywise. For a kernel that is not
  reversible (see :func:`detailed_balance`) this is not its spectrum: use :func:`eigenvalues`.
  At equal eigenvalues the derivative is that of the cluster's mean.

  Args:
    log_kernel: log kernel ``(..., M, M)`` of a reversible chain.

  Returns:
    The ``M`` real eigenvalues, descending, ``(..., M)``.
  """
  where = "klrl.chains.spectrum"
  return _eigvalsh(_sym(_args.log_kernel(where, "log_kernel", log_kernel)))


@_args.public
def spectral_gap(log_kernel: Float[Array, "... m m"]) -> Float[Array, "..."]:
  """Spectral gap ``gamma = 1 - l_2`` of a reversible kernel (docs: theory/chains).

  Args:
    log_kernel: log kernel ``(..., M, M)`` of a reversible chain, ``M >= 2``.

  Returns:
    ``1 - l_2``, ``(...)``; positive for a periodic chain (use :func:`eigenvalues` for ``|l_2|``).
  """
  return 1 - _spectrum_arg("klrl.chains.spectral_gap", log_kernel)[1][..., 1]


@_args.public
def absolute_spectral_gap(log_kernel: Float[Array, "... m m"]) -> Float[Array, "..."]:
  """Absolute spectral gap ``gamma* = 1 - max(|l_2|, |l_M|)`` of a reversible kernel (docs: theory/chains).

  Differentiable: the derivative is that of the eigenvalue attaining the maximum (half each
  when ``|l_2| = |l_M|``), with degenerate eigenvalues handled as in :func:`spectrum`.

  Args:
    log_kernel: log kernel ``(..., M, M)`` of a reversible chain, ``M >= 2``.

  Returns:
    ``gamma*``, ``(...)``; 0 for a periodic chain.
  """
  return 1 - _lam_star(_spectrum_arg("klrl.chains.absolute_spectral_gap", log_kernel)[1])


@_args.public
def relaxation_time(log_kernel: Float[Array, "... m m"]) -> Float[Array, "..."]:
  """Relaxation time ``t_rel = 1 / gamma*`` of a reversible kernel (docs: theory/chains).

  Args:
    log_kernel: log kernel ``(..., M, M)`` of a reversible chain, ``M >= 2``.

  Returns:
    ``1 / gamma*``, ``(...)``; ``+inf`` for a periodic chain.
  """
  return 1 / (1 - _lam_star(_spectrum_arg("klrl.chains.relaxation_time", log_kernel)[1]))


@_args.public(static=("rounds",))
def mixing_bounds(log_kernel: Float[Array, "... m m"], log_p0: Float[Array, "... m"], rounds: int,
                  eps: Float[Array, ""] = 0.25) -> MixingBounds:
  """The mixing bounds (docs: theory/chains) for a reversible chain, over rounds ``t = 0..T``.

  With ``lam* = 1 - gamma*``: ``TV(p_t, pi) <= (1/2) lam*^t sqrt(chi2(p_0 || pi))``,
  ``KL(p_t || pi) <= log(1 + lam*^(2t) chi2(p_0 || pi))``,
  ``max_s TV(K^t(s, .), pi) <= exp(-gamma* t) / pi_min`` and
  ``t_mix(eps) <= log(1 / (eps pi_min)) / gamma*``.

  Args:
    log_kernel: log kernel of a reversible chain.
    log_p0: initial log-laws ``(..., M)``.
    rounds: number of rounds ``T`` (static).
    eps: total-variation level of the mixing time, in ``(0, 1)``.

  Returns:
    A :class:`MixingBounds`.
  """
  where = "klrl.chains.mixing_bounds"
  logk, w = _spectrum_arg(where, log_kernel)
  logp0 = _checks.log_probs(where, "log_p0", _args.law(where, "log_p0", log_p0, logk.shape[-1]))
  batch = _args.batch(where, "log_p0", logp0.shape, logp0.shape[:-1], logk.shape[:-2])
  eps = _checks.positive(where, "eps", _checks.floating(where, "eps", eps)).astype(logk.dtype)
  pi = _pi_checked(where, logk)
  shape = batch + (logk.shape[-1],)
  chi = divergences.chi2(jnp.broadcast_to(logp0, shape).astype(logk.dtype), jnp.broadcast_to(jnp.log(pi), shape))
  lam = jnp.broadcast_to(_lam_star(w), batch)[..., None]
  gam = 1 - lam
  pmin = jnp.broadcast_to(jnp.min(pi, axis=-1), batch)
  t = jnp.broadcast_to(jnp.arange(rounds + 1, dtype=logk.dtype), batch + (rounds + 1,))
  decay = lam ** t
  return MixingBounds(0.5 * decay * jnp.sqrt(chi)[..., None], jnp.log1p(decay * decay * chi[..., None]),
                      jnp.exp(-gam * t) / pmin[..., None], jnp.log(1 / (eps * pmin)) / gam[..., 0])


def _platform():
  dev = jax.config.jax_default_device
  if dev is not None:
    return dev if isinstance(dev, str) else dev.platform
  return jax.default_backend()


@_args.public
def eigenvalues(log_kernel: Float[Array, "... m m"]) -> Array:
  """All eigenvalues of any kernel (complex), ``1`` first, then by decreasing modulus (docs: theory/chains).

  For chains that are not reversible, where :func:`spectrum` does not apply. Uses the general
  eigensolver ``jnp.linalg.eig``, which JAX provides on CPU (and on CUDA/ROCm GPUs); on other
  backends this raises ``NotImplementedError``. Not differentiable.

  Args:
    log_kernel: log kernel ``(..., M, M)``, reversible or not.

  Returns:
    Complex eigenvalues ``(..., M)``; ``abs`` gives the moduli, ``1 - |l_2|`` the modulus gap.
  """
  where = "klrl.chains.eigenvalues"
  logk = _args.log_kernel(where, "log_kernel", log_kernel)
  platform = _platform()
  if platform not in ("cpu", "gpu", "cuda", "rocm"):
    raise NotImplementedError(
        f"{where}: JAX has no general (non-symmetric) eigensolver on the '{platform}' backend; run "
        "this call on the CPU (JAX_PLATFORMS=cpu, or inside jax.default_device(jax.devices('cpu')[0])), "
        "or use klrl.chains.spectrum for a reversible chain")
  w = jnp.linalg.eig(lax.stop_gradient(jnp.exp(logk)))[0]
  first = jnp.abs(w - 1) == jnp.min(jnp.abs(w - 1), axis=-1, keepdims=True)
  order = jnp.lexsort((-w.real, -jnp.abs(w), (~first).astype(jnp.int32)), axis=-1)
  return jnp.take_along_axis(w, order, axis=-1)
