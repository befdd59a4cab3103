"""A real instance: English word frequencies as a unigram model, with VADER valence as the reward.

Needs the optional packages ``wordfreq`` and ``vaderSentiment`` (the extra ``klrl[real]``);
they are imported on first use, so klrl imports without them. Both work offline.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np

from klrl._src import checks as _checks
from klrl.instances.types import Unigram

__all__ = ["english_unigram"]


def _packages(where: str):
  try:
    import wordfreq
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
  except ImportError as e:
    raise ImportError(f"{where} needs the optional packages wordfreq and vaderSentiment: "
                      "pip install 'klrl[real]'") from e
  return wordfreq, SentimentIntensityAnalyzer


@functools.lru_cache(maxsize=1)
def _ranked(wordfreq, analyzer):
  """Every word of wordfreq's English list, most frequent first, with its frequency and valence."""
  freq = wordfreq.get_frequency_dict("en", wordlist="best")
  words = sorted(freq, key=lambda w: -freq[w])          # stable: ties keep wordfreq's order
  lexicon = analyzer().lexicon
  f = np.array([freq[w] for w in words], dtype=np.float64)
  valence = np.array([lexicon.get(w, 0.0) for w in words], dtype=np.float64)
  return tuple(words), f, valence


@_checks.named("klrl.instances.english_unigram")
def english_unigram(where: str, k: int | None = None, *, dtype=None) -> Unigram:
  """English word frequencies as a memoryless language model, with VADER valence as the reward.

  ``p`` is the frequency of each of the ``k`` most frequent English words in the ``wordfreq``
  package (all ~3.2e5 words when ``k`` is None), renormalised over those words; the reward is
  the word's valence in the VADER sentiment lexicon (``vaderSentiment``; from -3.9 to 3.4) and
  0 for the ~97% of words it does not list: a linear, per-token reward exactly as the theory of
  memoryless sequences assumes (docs: theory/memoryless), with a massive tie at 0. Valences are
  multiples of 0.1, so ``scale=10`` puts them on the integer lattice
  (:func:`klrl.memoryless.lattice`). Both packages work offline (optional extra ``real``).

  Args:
    k: vocabulary size (the top ``k`` words), or None for the full list.
    dtype: floating dtype of the arrays (default: JAX's default float).

  Returns:
    :class:`~klrl.instances.Unigram` ``(logp, reward, words)``.
  """
  words, f, valence = _ranked(*_packages(where))
  if k is not None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(words):
      raise _checks.InputError(f"{where}: argument 'k' must be an int in [1, {len(words)}] "
                               f"or None (all words), got {k!r}")
    words, f, valence = words[:k], f[:k], valence[:k]
  dtype = dtype or jnp.result_type(float)
  logp = np.log(f) - np.log(f.sum())
  return Unigram(jnp.asarray(logp, dtype), jnp.asarray(valence, dtype), words)
