"""Instances: the references, rewards and verifiers that the theory modules are run on.

Three sources, each returning JAX arrays with the support on the last axis and one row per
prompt:

- synthetic (:mod:`klrl.instances.synthetic`): random references with Gaussian rewards
  (:func:`random_problem`), a Zipf reference with a linear reward (:func:`zipf_linear`), a
  two-outcome reward (:func:`bernoulli`), and RLVR prompts with a set reference accuracy and
  entropy split (:func:`random_rlvr_problem`);
- users' files (:mod:`klrl.instances.files`, the one place that opens files): arrays from
  ``.npy``, ``.npz`` and ``.safetensors`` files, checked on the host (:func:`read`,
  :func:`log_probs`, :func:`mask`, :func:`reward`, and :func:`save`), and whole instances read
  from them (:func:`load_rlvr_problem`, :func:`load_unigram`);
- a real instance (:mod:`klrl.instances.english`): English word frequencies with VADER valence
  as a per-token reward (:func:`english_unigram`; optional packages ``wordfreq`` and
  ``vaderSentiment``).

The theory modules publish the ones they use under their own names: :mod:`klrl.problems` (the
synthetic pairs), :mod:`klrl.data` (the array readers), ``klrl.rlvr.random_problem`` and
``klrl.rlvr.load_problem``, ``klrl.memoryless.english_unigram`` and
``klrl.memoryless.load_problem``.
"""
from klrl.instances.english import english_unigram
from klrl.instances.files import load_rlvr_problem, load_unigram, log_probs, mask, read, reward, save
from klrl.instances.synthetic import bernoulli, random_problem, random_rlvr_problem, zipf_linear
from klrl.instances.types import Problem, Unigram

__all__ = [
    "Problem", "Unigram",
    "random_problem", "zipf_linear", "bernoulli", "random_rlvr_problem",
    "read", "save", "log_probs", "mask", "reward", "load_rlvr_problem", "load_unigram",
    "english_unigram",
]
