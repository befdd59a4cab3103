"""Markov-token references: KL-regularised RL and best-of-N when tokens form a Markov chain
(docs: theory/markov).

A reference whose tokens form a Markov chain (initial law ``mu``, transition matrix ``P``) with
an additive reward ``S_n = r_0(y_1) + sum_t r(y_{t-1}, y_t)`` (per token ``r(y_t)`` as a special
case). Everything follows from the tilted matrix ``P_lam(i, j) = P(i, j) e^{lam r(i, j)}``
(Balasundaram and Rameshwar, arXiv 2610.01828, extending Yang et al., *Asymptotics of Language
Model Alignment*, 2024, from i.i.d. to Markov tokens):

* references (:func:`reference` from users' arrays, :func:`random_reference`, and a real bigram
  model of news text with VADER valence, :func:`english_bigram`);
* the exact cumulant generating function ``A_n`` of ``S_n`` (:func:`log_mgf`), its scaled limit
  ``Lambda = log rho`` (:func:`scgf`) and the Doob transform, the limiting Markov policy of
  the tilt (:func:`doob`);
* the range of per-token rewards reachable at exponential cost (cycle means, :func:`reward_range`)
  and the Gärtner-Ellis rate function (:func:`rate_function`);
* KL-RL over sequences of ``n`` tokens (:func:`kl_constrained`) and per token as ``n -> inf``
  (:func:`kl_constrained_rate`);
* the exact law of ``S_n`` for lattice rewards (:func:`sequence_law`), best-of-N over sequences
  against KL-RL (:func:`bon_vs_kl`), and when one step of best-of-N is a tilt (:func:`single_step`).

Every public function names itself ``klrl.markov.<name>`` in its messages. The functions take a
:class:`Reference`; all but :func:`sequence_law`, :func:`bon_vs_kl` and the instances compose with
``jit``, ``vmap`` and ``grad``.
"""
from klrl.markov.cumulants import Doob, doob, log_mgf, scgf
from klrl.markov.kl_rl import RateSolution, SequenceSolution, kl_constrained, kl_constrained_rate
from klrl.markov.law import BonVsKL, SequenceLaw, SingleStep, bon_vs_kl, sequence_law, single_step
from klrl.markov.rates import RewardRange, rate_function, reward_range
from klrl.markov.references import Bigram, Reference, english_bigram, random_reference, reference

__all__ = [
    "Reference", "Bigram", "Doob", "RewardRange", "SequenceSolution", "RateSolution", "SequenceLaw", "BonVsKL",
    "SingleStep",
    "reference", "random_reference", "english_bigram",
    "log_mgf", "scgf", "doob", "reward_range", "rate_function", "kl_constrained", "kl_constrained_rate",
    "sequence_law", "bon_vs_kl", "single_step",
]
