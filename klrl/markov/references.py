"""Markov-token references: construction from arrays, random generators and a real bigram model
(docs: theory/markov).

A :class:`Reference` holds, in log space and batched over leading axes, the initial law ``mu``
of the first token, the transition matrix ``P`` of the next token given the previous one, and an
additive reward ``S_n = r_0(y_1) + sum_{t=2..n} r(y_{t-1}, y_t)``. A per-token reward ``r(y_t)``
is the special case ``r(i, j) = r(j)``, ``r_0 = r``; it is stored in the same pair form, so every
function of :mod:`klrl.markov` takes either kind.
"""
from __future__ import annotations

import collections
import functools
import importlib.util
import os
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from klrl._src import checks as _checks
from klrl.markov import _core

__all__ = ["Reference", "Bigram", "reference", "random_reference", "english_bigram"]


class Reference(NamedTuple):
  """A Markov-token reference with an additive reward (see :func:`reference`).

  Attributes:
    log_init: ``log mu``, the law of the first token, ``(..., V)``.
    log_trans: ``log P``, rows ``log P(j | i)`` normalised over the last axis, ``(..., V, V)``;
      ``-inf`` for impossible transitions. ``P`` is irreducible.
    reward: ``r(i, j)``, the reward of token ``j`` after token ``i``, ``(..., V, V)`` (a per-token
      reward ``r(j)`` is stored as ``r[..., None, :]`` broadcast).
    first_reward: ``r_0(j)``, the reward of the first token, ``(..., V)``.
  """
  log_init: Array
  log_trans: Array
  reward: Array
  first_reward: Array


def unpack(where: str, ref) -> tuple:
  """The four arrays of a :class:`Reference` (a tuple would be turned into one array by the
  public wrapper); anything else is refused."""
  if not isinstance(ref, Reference):
    raise _checks.InputError(f"{where}: argument 'ref' must be a klrl.markov.Reference (see klrl.markov.reference), "
                             f"got {type(ref).__name__}")
  return tuple(ref)


@_core.public(name="reference")
def _checked(log_init, log_trans, reward, first_reward):
  args, = _core.check("klrl.markov.reference", log_init, log_trans, reward, first_reward)
  return Reference(*args)


def reference(log_init: Float[Array, "... v"], log_trans: Float[Array, "... v v"],
              reward: Float[Array, "... v"] | None = None, *, pair_reward: Float[Array, "... v v"] | None = None,
              first_reward: Float[Array, "... v"] | None = None) -> Reference:
  """A checked Markov-token reference from users' arrays (NumPy or JAX; e.g. from :mod:`klrl.data`).

  Give exactly one of ``reward`` (per token, ``r(y_t)``, shape ``(..., V)``) and ``pair_reward``
  (per transition, ``r(y_{t-1}, y_t)``, shape ``(..., V, V)``). The first token is rewarded by
  ``first_reward`` (default: ``reward`` itself for per-token rewards, 0 for pair rewards). The
  model is described on the theory page (docs: theory/markov).

  Checked (errors name the argument): shapes, finite rewards, ``log_init`` and each row of
  ``log_trans`` normalised (to ``1e-6`` in float64, ``1e-4`` in float32), and ``P`` irreducible
  (every state reaches every other; drop unused states first).

  Args:
    log_init: log-probabilities of the first token.
    log_trans: log transition matrix, rows over the last axis (``jnp.log(P)``).
    reward: per-token reward.
    pair_reward: per-transition reward.
    first_reward: reward of the first token.

  Returns:
    A :class:`Reference`, broadcast to one batch shape.
  """
  where = "klrl.markov.reference"
  if (reward is None) == (pair_reward is None):
    raise _checks.InputError(f"{where}: give exactly one of the arguments 'reward' (per token) and 'pair_reward'")
  if reward is not None:
    reward = _checks.floating(where, "reward", reward, 1)
    pair = reward[..., None, :]
    first = reward if first_reward is None else first_reward
  else:
    pair = _checks.floating(where, "pair_reward", pair_reward, 2)
    first = jnp.zeros(pair.shape[:-2] + pair.shape[-1:], pair.dtype) if first_reward is None else first_reward
  v = jnp.shape(log_trans)[-1]
  if pair.shape[-1] != v:
    name = "reward" if reward is not None else "pair_reward"
    _checks._fail(where, name, f"has {pair.shape[-1]} states on its last axis but 'log_trans' has {v}")
  if reward is not None:
    pair = jnp.broadcast_to(pair, pair.shape[:-2] + (v, v))
  return _checked(log_init, log_trans, pair, first)


@_checks.named("klrl.markov.random_reference")
def random_reference(where: str, key: Array, v: int, *, shape: tuple[int, ...] = (), concentration: float = 1.0,
                     density: float = 1.0, levels: int | None = None, pair: bool = False, dtype=None) -> Reference:
  """A random Markov-token reference, deterministic given ``key``.

  Rows of ``P`` and the initial law are Dirichlet(``concentration``) draws (small values give
  peaked rows). With ``density < 1`` each transition is kept with that probability, and the
  cycle ``0 -> 1 -> ... -> V-1 -> 0`` always, so ``P`` stays irreducible. Rewards are standard
  normal, or integers uniform on ``0..levels-1`` when ``levels`` is given (a lattice, for the
  exact sequence law); per token, or per transition with ``pair=True`` (then the first token's
  reward is drawn too).

  Args:
    key: a JAX PRNG key.
    v: vocabulary size ``V >= 1``.
    shape: batch shape.
    concentration: Dirichlet concentration ``> 0``.
    density: fraction of transitions allowed, in ``(0, 1]``.
    levels: number of integer reward levels, or None for Gaussian rewards.
    pair: per-transition rewards ``r(i, j)`` instead of per-token ``r(j)``.
    dtype: floating dtype (default: JAX's default float).

  Returns:
    A :class:`Reference` with batch shape ``shape``.
  """
  v = _core.static_count(where, "v", v, 1)
  if not (isinstance(concentration, (int, float)) and concentration > 0):
    raise _checks.InputError(f"{where}: argument 'concentration' must be a number > 0, got {concentration!r}")
  if not (isinstance(density, (int, float)) and 0 < density <= 1):
    raise _checks.InputError(f"{where}: argument 'density' must be a number in (0, 1], got {density!r}")
  if levels is not None:
    levels = _core.static_count(where, "levels", levels, 1)
  dtype = dtype or jnp.result_type(float)
  shape = tuple(shape)
  k_init, k_trans, k_keep, k_r, k_r0 = jax.random.split(key, 5)
  alpha = jnp.full((v,), concentration, dtype)
  init = jax.random.dirichlet(k_init, alpha, shape, dtype)
  keep = jax.random.uniform(k_keep, shape + (v, v), dtype) < density
  keep = keep | jnp.broadcast_to(jnp.roll(jnp.eye(v, dtype=bool), 1, axis=-1), keep.shape)
  gam = jax.random.gamma(k_trans, alpha, shape + (v, v), dtype)
  gam = jnp.where(keep, jnp.maximum(gam, jnp.finfo(dtype).tiny), 0.0)
  trans = gam / jnp.sum(gam, axis=-1, keepdims=True)
  with np.errstate(divide="ignore"):
    log_init, log_trans = jnp.log(jnp.maximum(init, jnp.finfo(dtype).tiny)), jnp.log(trans)
  log_init = log_init - jax.scipy.special.logsumexp(log_init, axis=-1, keepdims=True)

  def draw(k, s):
    if levels is None:
      return jax.random.normal(k, s, dtype)
    return jax.random.randint(k, s, 0, levels).astype(dtype)

  if pair:
    return reference(log_init, log_trans, pair_reward=draw(k_r, shape + (v, v)), first_reward=draw(k_r0, shape + (v,)))
  return reference(log_init, log_trans, draw(k_r, shape + (v,)))


# ---------------------------------------------------------------------------------------------
# A real instance: a bigram model of news text with VADER valence.

class Bigram(NamedTuple):
  """A bigram language model with a per-token reward (see :func:`english_bigram`).

  Attributes:
    ref: the :class:`Reference` (``V = k + 1`` states: the words, then ``<other>``).
    words: the vocabulary, most frequent first, ending with ``"<other>"``.
    tokens: number of running words in the corpus.
  """
  ref: Reference
  words: tuple
  tokens: int


_CORPUS = ("test", "test_data", "lee_background.cor")


def _corpus_path(where: str) -> str:
  spec = importlib.util.find_spec("gensim")
  path = None if spec is None or not spec.submodule_search_locations else \
      os.path.join(spec.submodule_search_locations[0], *_CORPUS)
  if path is None or not os.path.isfile(path):
    raise ImportError(f"{where} needs the optional package gensim (it ships the Lee background corpus, "
                      f"gensim/test/test_data/lee_background.cor): pip install gensim")
  return path


def _analyzer(where: str):
  try:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
  except ImportError as e:
    raise ImportError(f"{where} needs the optional package vaderSentiment: pip install 'klrl[real]'") from e
  return SentimentIntensityAnalyzer


@functools.lru_cache(maxsize=1)
def _tokens(path: str) -> tuple:
  with open(path, encoding="utf-8", errors="replace") as f:
    return tuple(w for line in f for w in re.findall(r"[a-z]+(?:'[a-z]+)?", line.lower()))


@_checks.named("klrl.markov.english_bigram")
def english_bigram(where: str, k: int = 100, *, smoothing: float = 0.0, dtype=None) -> Bigram:
  """A bigram model of English news text with VADER valence as the per-token reward.

  The corpus is the Lee background corpus (300 Australian Broadcasting Corporation news
  articles, 59,890 whitespace-separated words; Lee, Pincombe and Welsh, 2005) that the package
  ``gensim`` ships inside its wheel (``gensim/test/test_data/lee_background.cor``), so it works
  offline; gensim itself is not imported. Words are lower-cased runs of letters (with an inner
  apostrophe). The ``k`` most frequent words are states, every other word is the state
  ``<other>``. ``P`` counts bigrams over the corpus read as one cyclic stream (the last word is
  followed by the first), so ``P`` is irreducible and the unigram frequencies, used as the
  initial law, are exactly its stationary law. ``smoothing`` adds that many pseudo-counts to
  every transition. The reward is the word's valence in the VADER lexicon (``vaderSentiment``,
  multiples of 0.1: ``scale=10`` puts it on the integer lattice), 0 for unlisted words and for
  ``<other>``. Needs ``gensim`` and ``vaderSentiment``; each missing one raises ImportError
  saying which.

  Args:
    k: number of word states (``V = k + 1`` with ``<other>``), at most the number of distinct
      words.
    smoothing: additive pseudo-count ``>= 0`` per transition.
    dtype: floating dtype (default: JAX's default float).

  Returns:
    :class:`Bigram` ``(ref, words, tokens)``.
  """
  path = _corpus_path(where)
  analyzer = _analyzer(where)
  tokens = _tokens(path)
  counts = collections.Counter(tokens)
  ranked = sorted(counts, key=lambda w: (-counts[w], w))
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(ranked):
    raise _checks.InputError(f"{where}: argument 'k' must be an int in [1, {len(ranked)}], got {k!r}")
  if not (isinstance(smoothing, (int, float)) and smoothing >= 0):
    raise _checks.InputError(f"{where}: argument 'smoothing' must be a number >= 0, got {smoothing!r}")
  words = tuple(ranked[:k])
  index = {w: i for i, w in enumerate(words)}
  ids = np.array([index.get(w, k) for w in tokens])
  c = np.zeros((k + 1, k + 1))
  np.add.at(c, (ids, np.roll(ids, -1)), 1.0)
  c = c + float(smoothing)
  with np.errstate(divide="ignore"):
    log_trans = np.log(c) - np.log(c.sum(axis=1, keepdims=True))
  # Row and column sums of the cyclic counts are equal (each the word's count, plus the
  # pseudo-counts), so their normalisation is the stationary law of P.
  log_init = np.log(c.sum(axis=0)) - np.log(c.sum())
  lexicon = analyzer().lexicon
  valence = np.array([lexicon.get(w, 0.0) for w in words] + [0.0])
  dtype = dtype or jnp.result_type(float)
  ref = reference(jnp.asarray(log_init, dtype), jnp.asarray(log_trans, dtype), jnp.asarray(valence, dtype))
  return Bigram(ref, words + ("<other>",), len(tokens))
