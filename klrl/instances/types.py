"""The instances' result types: an RLVR problem and a memoryless (unigram) language model."""
from __future__ import annotations

from typing import NamedTuple

from jaxtyping import Array

__all__ = ["Problem", "Unigram"]


class Problem(NamedTuple):
  """An RLVR problem: one row per prompt, responses on the last axis.

  Attributes:
    logp: reference log-probabilities of the responses (``-inf`` for zero mass).
    correct: the verifier's verdicts, a boolean mask of the same shape.
  """
  logp: Array
  correct: Array


class Unigram(NamedTuple):
  """A memoryless (unigram) language model with a per-token reward.

  From :func:`klrl.instances.english_unigram` or :func:`klrl.instances.load_unigram`.

  Attributes:
    logp: log-probabilities of the tokens, normalised over the last axis, ``(..., k)``.
    reward: the per-token reward, same shape.
    words: the vocabulary, most frequent first (:func:`klrl.instances.english_unigram`); ``()``
      when unknown.
  """
  logp: Array
  reward: Array
  words: tuple
