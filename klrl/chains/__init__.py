"""Self-correcting models as Markov chains: potential, detailed balance, convergence, hitting
times and spectra (docs: theory/chains).

A state is a whole response and one round of refinement maps ``s`` to ``s'``. The reference
model is a kernel ``p(s'|s)``, the transition reward is ``r(s, s')`` and the RL-tuned model is
the tilted kernel (Tan and Hong, *A Theoretical Lens for RL-Tuned Language Models via
Energy-Based Models*, 2025)::

    K(s'|s) = p(s'|s) exp(r(s, s') / beta) / Z(s),    Z(s) = sum_u p(u|s) exp(r(s, u) / beta).

If the reward is a potential (``r(s,s') - r(s',s) = Phi(s') - Phi(s)``) and the reference is
reversible (``mu(s) p(s'|s) = mu(s') p(s|s')``), ``K`` satisfies detailed balance with the
canonical potential ``V = log mu + Phi / beta + log Z`` and its stationary law is ``pi ∝ e^V``.

Conventions. Kernels are passed as LOG kernels: an array ``(..., M, M)`` whose rows (last
axis) are log-probabilities, ``-inf`` for impossible moves; leading axes are batch axes and
broadcast. Laws over states are log-probabilities over the last axis. Every function is pure
and composes with ``jit``, ``vmap`` and ``grad``.

Modules, each with its numerics and accuracy:

- :mod:`klrl.chains.build`: the tilted kernel, reversible references from joint weights,
  random rewards and joints (with a violation of the assumptions of exactly known size), and
  birth-death chains.
- :mod:`klrl.chains.assumptions`: the reward-potential and reversibility residuals, the
  canonical potential ``V`` and the detailed-balance residual against it.
- :mod:`klrl.chains.equilibrium`: the stationary law, by the subtraction-free
  Grassmann-Taksar-Heyman elimination (a small relative error in every mass, however tiny) or
  by an LU solve that bounds its own error in every mass and hands the kernels it cannot
  vouch for to the elimination.
- :mod:`klrl.chains.dynamics`: laws over rounds, KL, free energy, TV and chi^2 to equilibrium,
  and the drift of a potential.
- :mod:`klrl.chains.hitting`: hitting times by subtraction-free elimination of the M-matrix
  ``I - K_FF`` (``+inf`` where the target can be avoided forever), and the drift, spectral and
  Kac bounds.
- :mod:`klrl.chains.spectra`: spectra of reversible kernels through the exactly symmetric
  ``sqrt(K(s'|s) K(s|s'))`` and ``eigh``, gaps, mixing bounds, and the general eigenvalues of
  kernels that are not reversible.
- :mod:`klrl.chains.sparse`: chains with 10^4-10^5 states in neighbour-list form, with the
  closed-form stationary law and the Lanczos gap.

Every public name is exported here: ``klrl.chains.<name>``.
"""
from klrl.chains.assumptions import (Balance, PotentialFit, detailed_balance, kolmogorov_cycles, potential,
                                    reward_potential)
from klrl.chains.build import Reward, birth_death, kernel, random_joint, random_reward, reference_from_joint
from klrl.chains.dynamics import Drift, Relaxation, drift, evolve, relaxation
from klrl.chains.equilibrium import stationary
from klrl.chains.hitting import HittingBounds, hitting_bounds, hitting_times
from klrl.chains.sparse import (LanczosGap, SparseChain, SparseJoint, lanczos_gap, random_sparse_joint, sparse_chain,
                               to_dense)
from klrl.chains.spectra import (MixingBounds, absolute_spectral_gap, eigenvalues, mixing_bounds, relaxation_time,
                                spectral_gap, spectrum)

__all__ = [
    "Reward", "PotentialFit", "Balance", "Relaxation", "Drift", "HittingBounds", "MixingBounds",
    "SparseJoint", "SparseChain", "LanczosGap",
    "kernel", "reference_from_joint", "random_joint", "random_reward", "birth_death",
    "reward_potential", "potential", "detailed_balance", "kolmogorov_cycles",
    "stationary", "evolve", "relaxation", "drift",
    "hitting_times", "hitting_bounds",
    "spectrum", "spectral_gap", "absolute_spectral_gap", "relaxation_time", "mixing_bounds", "eigenvalues",
    "random_sparse_joint", "sparse_chain", "to_dense", "lanczos_gap",
]
