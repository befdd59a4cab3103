"""Memoryless sequences with an additive reward: large deviations, exact laws, BoN ≍ KL-RL.

Tokens are i.i.d. from ``p`` and a length-``n`` sequence has reward ``S_n = sum_i r(y_i)``
(docs: theory/memoryless; Yang et al., *Asymptotics of Language Model Alignment*, 2024). Everything
follows from the cumulant generating function ``A(t) = log E_p exp(t r)``:

* Cramer's rate ``I_p(x) = sup_t (t x - A(t))`` of ``S_n / n`` under ``p`` (:func:`rate_function`),
  with ``I_p(x_delta) = delta`` at the mean reward ``x_delta = R(delta)`` of the KL-RL solution;
* the rate under the KL-RL solution ``phi_delta^{(x) n}``, ``I_delta(x) = I_p(x) - delta -
  lam_delta (x - x_delta)`` (:func:`tilted_rate_function`), and its scaled cumulant generating
  function ``Lambda_delta(t) = A(lam_delta + t) - A(lam_delta)`` (:func:`scgf`), also in the
  Renyi cross-entropy form of the paper (:func:`scgf_renyi`), with scaled cumulants of any
  order by automatic differentiation (:func:`scaled_cumulants`);
* the exact law of ``S_n`` when the rewards lie on a lattice (:func:`lattice`,
  :func:`sequence_law`), and best-of-N over whole sequences with ``N = e^{n delta}`` against
  ``phi_delta^{(x) n}`` (:func:`bon_vs_kl`);
* instances: English word frequencies with VADER valence (:func:`english_unigram`), and users'
  arrays read through :mod:`klrl.data` (:func:`load_problem`).

Modules: :mod:`~klrl.memoryless.rates` (the generating functions and rate functions, with the
numerics of the Legendre transform), :mod:`~klrl.memoryless.lattices` (the lattice law and the
law of ``S_n`` by tilted FFTs), :mod:`~klrl.memoryless.best_of_n` (best-of-N against the
KL-RL solution). The instances are :func:`klrl.instances.english_unigram` and
:func:`klrl.instances.load_unigram`, published here under the names above. Every public
function names itself ``klrl.memoryless.<name>`` in its messages.
"""
from klrl import instances
from klrl._src import checks as _checks
from klrl.instances import Unigram
from klrl.memoryless.best_of_n import BonVsKL, bon_vs_kl, bon_vs_kl_enumerated, bon_vs_kl_lattice
from klrl.memoryless.lattices import Lattice, SequenceLaw, lattice, sequence_law
from klrl.memoryless.rates import (LargeDeviations, cgf, large_deviations, rate_function, scaled_cumulants, scgf,
                                   scgf_renyi, tilted_rate_function)

__all__ = [
    "Lattice", "SequenceLaw", "BonVsKL", "LargeDeviations", "Unigram",
    "cgf", "rate_function", "tilted_rate_function", "scgf", "scgf_renyi", "scaled_cumulants", "large_deviations",
    "lattice", "sequence_law", "bon_vs_kl", "bon_vs_kl_lattice", "bon_vs_kl_enumerated",
    "english_unigram", "load_problem",
]

english_unigram = _checks.renamed(instances.english_unigram, "klrl.memoryless.english_unigram")
load_problem = _checks.renamed(instances.load_unigram, "klrl.memoryless.load_problem")
