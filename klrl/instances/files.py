"""Users' files: reading and writing arrays, and loading whole instances from them.

The one place in klrl that opens files. Files hold one row per prompt (leading axes are
prompts, the last axis is the support: responses or tokens). Formats, chosen by the file suffix:

- ``.npy``: one array (the ``key`` arguments are then ignored);
- ``.npz``: named arrays (``numpy.savez``);
- ``.safetensors``: named arrays, read with the ``safetensors`` package's NumPy API (the
  optional extra ``klrl[data]``).

The array readers (:func:`read`, :func:`log_probs`, :func:`mask`, :func:`reward`) and
:func:`save` are also public as :mod:`klrl.data`, the name their messages use. Validation is
done on the host, in NumPy, before anything reaches JAX, so every error is a
:class:`klrl.InputError` that names the file, the array and the offending row: a missing key
(the message lists the keys there are), a wrong shape, a wrong dtype (a mask must be boolean),
NaN or infinite values, log-probabilities that do not normalise. Accepted arrays come back as
JAX arrays in their stored floating dtype (float64 needs ``jax_enable_x64``).

Whole instances: :func:`load_rlvr_problem` (a reference over responses and the verifier's
verdicts) and :func:`load_unigram` (a per-token reference and reward on a lattice).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from klrl._src import checks as _checks
from klrl._src.checks import InputError
from klrl.instances.types import Problem, Unigram

__all__ = ["read", "save", "log_probs", "mask", "reward", "load_rlvr_problem", "load_unigram"]

Source = str | Path | Mapping[str, np.ndarray]
_SUFFIXES = (".npy", ".npz", ".safetensors")


def _safetensors():
  try:
    import safetensors
  except ImportError:
    raise InputError("klrl.data: reading .safetensors files needs the 'safetensors' package "
                     "(pip install 'klrl[data]')") from None
  return safetensors


_MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK"}


def _check_file(path: Path) -> None:
  """Raises unless ``path`` is a readable file whose first bytes fit its suffix."""
  if path.suffix not in _SUFFIXES:
    raise InputError(f"klrl.data: file '{path}' has suffix '{path.suffix}'; klrl reads {', '.join(_SUFFIXES)}")
  if not path.is_file():
    raise InputError(f"klrl.data: file '{path}' does not exist")
  with open(path, "rb") as f:
    head = f.read(8)
  kinds = {".npy": "a .npy array", ".npz": "a .npz archive (zip)"}
  if path.suffix in _MAGIC and not head.startswith(_MAGIC[path.suffix]):
    other = [kinds[s] for s, m in _MAGIC.items() if head.startswith(m)]
    seen = f"it holds {other[0]}: rename it" if other else "it is not in that format (empty, truncated or another kind of file)"
    raise InputError(f"klrl.data: could not read '{path}' as {path.suffix}: {seen}")


def _native(x: np.ndarray) -> np.ndarray:
  """``x`` in the machine's byte order (files may store big-endian arrays)."""
  return x if x.dtype.isnative else x.astype(x.dtype.newbyteorder("="))


class _File(Mapping):
  """The arrays of one file, each read (and decompressed) only when asked for, at most once."""

  def __init__(self, path: str | Path):
    self.path = Path(path)
    _check_file(self.path)
    self._cache: dict[str, np.ndarray] = {}
    self._keys = self._attempt(self._list)

  def _attempt(self, fn, *args):
    try:
      return fn(*args)
    except InputError:
      raise
    except Exception as e:  # a corrupt or foreign file: say which, keep the reader's reason
      raise InputError(f"klrl.data: could not read '{self.path}' as {self.path.suffix}: {e}") from None

  def _list(self) -> list[str]:
    if self.path.suffix == ".npy":
      return [self.path.stem]
    if self.path.suffix == ".npz":
      with np.load(self.path, allow_pickle=False) as f:
        return list(f.files)
    with _safetensors().safe_open(str(self.path), framework="numpy") as f:
      return list(f.keys())

  def _load(self, key: str) -> np.ndarray:
    if self.path.suffix == ".npy":
      return np.load(self.path, allow_pickle=False)
    if self.path.suffix == ".npz":
      with np.load(self.path, allow_pickle=False) as f:
        return f[key]
    with _safetensors().safe_open(str(self.path), framework="numpy") as f:
      return f.get_tensor(key)

  def __getitem__(self, key: str) -> np.ndarray:
    if key not in self._keys:
      raise KeyError(key)
    if key not in self._cache:
      self._cache[key] = _native(np.asarray(self._attempt(self._load, key)))
    return self._cache[key]

  def __iter__(self):
    return iter(self._keys)

  def __len__(self) -> int:
    return len(self._keys)


def read(path: str | Path) -> dict[str, np.ndarray]:
  """Reads every array of a ``.npy``, ``.npz`` or ``.safetensors`` file.

  Args:
    path: the file; its suffix chooses the format, and its first bytes must fit the suffix.

  Returns:
    A dict from names to NumPy arrays in the machine's byte order; a ``.npy`` file gives one
    entry named after the file stem.
  """
  return dict(_File(path))


def save(path: str | Path, arrays: Mapping[str, np.ndarray | Array]) -> Path:
  """Writes named arrays to ``.npz`` or ``.safetensors`` (or one array to ``.npy``)."""
  path = Path(path)
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  if path.suffix == ".npy":
    if len(arrays) != 1:
      raise InputError(f"klrl.data.save: a .npy file holds one array, got {len(arrays)} ({list(arrays)})")
    np.save(path, next(iter(arrays.values())))
  elif path.suffix == ".npz":
    np.savez(path, **arrays)
  elif path.suffix == ".safetensors":
    _safetensors()
    import safetensors.numpy
    safetensors.numpy.save_file({k: np.ascontiguousarray(_native(v)) for k, v in arrays.items()}, str(path))
  else:
    raise InputError(f"klrl.data.save: file '{path}' has suffix '{path.suffix}'; klrl writes {', '.join(_SUFFIXES)}")
  return path


def _get(where: str, source: Source, key: str) -> tuple[np.ndarray, str]:
  """The array ``key`` of a file or dict (reading only that array of a file), and a phrase
  naming it for messages."""
  if isinstance(source, _File):
    arrays, name = source, f"'{source.path}'"
  elif isinstance(source, Mapping):
    arrays, name = source, "the arrays given"
  else:
    arrays, name = _File(source), f"'{Path(source)}'"
  if isinstance(arrays, _File) and arrays.path.suffix == ".npy":
    return next(iter(arrays.values())), f"the array in {name}"
  if key not in arrays:
    raise InputError(f"{where}: {name} has no array '{key}' (it has: {', '.join(sorted(arrays)) or 'none'})")
  return _native(np.asarray(arrays[key])), f"array '{key}' of {name}"


def _logsumexp(x: np.ndarray) -> np.ndarray:
  m = np.max(x, axis=-1, keepdims=True)
  m = np.where(np.isfinite(m), m, 0.0)
  with np.errstate(divide="ignore"):
    return (m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True)))[..., 0]


def _row_of(bad: np.ndarray) -> str:
  idx = np.argwhere(bad)[0]
  return f"row {tuple(int(i) for i in idx[:-1])}, position {int(idx[-1])}" if idx.size > 1 else f"position {int(idx[0])}"


def _floating(where: str, what: str, x: np.ndarray, ndim: int | None) -> np.ndarray:
  """Checked floating array; half precision (and other floats under 32 bits) comes back as float32."""
  if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.floating):
    raise InputError(f"{where}: {what} must be a floating array, got dtype {x.dtype}")
  if x.ndim < 1 or x.shape[-1] == 0:
    raise InputError(f"{where}: {what} must have a non-empty last axis (the support), got shape {x.shape}")
  if ndim is not None and x.ndim != ndim:
    raise InputError(f"{where}: {what} must have {ndim} axes (prompts x support), got shape {x.shape}")
  if np.isnan(x).any():
    raise InputError(f"{where}: {what} contains NaN at {_row_of(np.isnan(x))}")
  return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def log_probs(source: Source, key: str = "logp", *, probabilities: bool = False, normalise: bool = False,
              ndim: int | None = None) -> Float[Array, "... v"]:
  """Reference log-probabilities, one row per prompt, checked to normalise over the last axis.

  Arrays stored in half precision (float16) are read as float32: their rows must normalise to
  the stored precision (``8 eps``, 7.8e-3 for float16) and are then normalised exactly.

  Args:
    source: a file path or a dict of arrays (from :func:`read`).
    key: the array's name (ignored for ``.npy``).
    probabilities: the array holds probabilities (in ``[0, 1]``), not log-probabilities.
    normalise: the array holds unnormalised log-weights (logits); normalise each row.
    ndim: required number of axes, if any (2 for prompts x responses).

  Returns:
    Log-probabilities (``-inf`` for zero mass) whose rows sum to one within ``1e-6`` (float64)
    or ``1e-4`` (float32).

  Raises:
    InputError: missing key, wrong dtype or shape, NaN, ``+inf``, negative probabilities, or
      rows that do not normalise (the worst row is named).
  """
  return _log_probs("klrl.data.log_probs", source, key, probabilities, normalise, ndim)


def _log_probs(where, source, key, probabilities=False, normalise=False, ndim=None):
  x, what = _get(where, source, key)
  stored = x.dtype
  x = _floating(where, what, x, ndim)
  if probabilities:
    if (x < 0).any() or np.isinf(x).any():
      raise InputError(f"{where}: {what} holds probabilities, which must be finite and >= 0 "
                       f"(bad value at {_row_of((x < 0) | np.isinf(x))})")
    with np.errstate(divide="ignore"):
      x = np.log(x)
  if (x == np.inf).any():
    raise InputError(f"{where}: {what} contains +inf at {_row_of(x == np.inf)} (log-probabilities are <= 0)")
  lse = _logsumexp(x.astype(np.float64))
  if normalise:
    if np.isneginf(lse).any():
      raise InputError(f"{where}: {what} has a row with no mass at all (every entry -inf)")
    x = (x - lse[..., None]).astype(x.dtype)
  else:
    half = stored.itemsize < 4 and np.issubdtype(stored, np.floating)
    tol = 8 * float(np.finfo(stored).eps) if half else 1e-4 if x.dtype.itemsize <= 4 else 1e-6
    err = np.abs(lse)
    if not (err <= tol).all():
      i = np.unravel_index(np.argmax(np.where(np.isnan(err), np.inf, err)), err.shape)
      raise InputError(f"{where}: {what} is not normalised: row {tuple(int(j) for j in i)} has logsumexp "
                       f"{lse[i]:.3g} (must be 0 within {tol:g}; pass normalise=True for logits, "
                       f"probabilities=True for probabilities)")
    if half:
      x = (x - lse[..., None]).astype(x.dtype)
  return jnp.asarray(x)


def mask(source: Source, key: str = "correct", *, shape: tuple[int, ...] | None = None) -> Bool[Array, "... v"]:
  """A boolean mask (e.g. the verifier's correct responses), one row per prompt.

  Args:
    source: a file path or a dict of arrays.
    key: the array's name (ignored for ``.npy``).
    shape: required shape (that of the log-probabilities it goes with), if any.

  Raises:
    InputError: missing key, a dtype other than bool (0/1 integers or floats are refused, so
      that a probability array is never taken for a mask), or a wrong shape.
  """
  return _mask("klrl.data.mask", source, key, shape)


def _mask(where, source, key, shape=None):
  x, what = _get(where, source, key)
  if x.dtype != np.bool_:
    raise InputError(f"{where}: {what} must be a boolean mask (dtype bool), got dtype {x.dtype}; "
                     "save it with .astype(bool)")
  _shape(where, what, x, shape)
  return jnp.asarray(x)


def reward(source: Source, key: str = "reward", *, shape: tuple[int, ...] | None = None) -> Float[Array, "... v"]:
  """Finite floating rewards, one row per prompt.

  Raises:
    InputError: missing key, non-floating dtype, NaN or infinite values, or a wrong shape.
  """
  return _reward("klrl.data.reward", source, key, shape)


def _reward(where, source, key, shape=None):
  x, what = _get(where, source, key)
  x = _floating(where, what, x, None)
  if np.isinf(x).any():
    raise InputError(f"{where}: {what} must be finite, got inf at {_row_of(np.isinf(x))}")
  _shape(where, what, x, shape)
  return jnp.asarray(x)


def _shape(where, what, x, shape):
  if shape is not None and tuple(x.shape) != tuple(shape):
    raise InputError(f"{where}: {what} has shape {tuple(x.shape)}, expected {tuple(shape)} "
                     "(the shape of the log-probabilities)")



# ---------------------------------------------------------------------------------------------
# Whole instances.

@_checks.named("klrl.instances.load_rlvr_problem")
def load_rlvr_problem(where: str, path: str | Path, *, logp_key: str = "logp", correct_key: str = "correct",
                      probabilities: bool = False) -> Problem:
  """Reads an RLVR problem from a ``.npz`` or ``.safetensors`` file (see :mod:`klrl.data`).

  Args:
    path: the file, with a 2-D array of reference log-probabilities (prompts x responses) and
      a boolean mask of the same shape.
    logp_key: name of the log-probabilities (or probabilities, see below).
    correct_key: name of the mask.
    probabilities: the reference is stored as probabilities rather than log-probabilities.

  Returns:
    A :class:`~klrl.instances.Problem`.

  Raises:
    InputError: everything :mod:`klrl.data` checks, plus a prompt with no correct response of
      positive reference probability (the prompt is named).
  """
  arrays = _File(path)
  logp = _log_probs(where, arrays, logp_key, probabilities, ndim=2)
  correct = _mask(where, arrays, correct_key, shape=logp.shape)
  none = ~np.any(np.asarray(correct) & (np.asarray(logp) > -np.inf), axis=-1)
  if none.any():
    raise InputError(f"{where}: array '{correct_key}' of '{path}' marks no response of "
                     f"positive reference probability as correct for prompt(s) {np.flatnonzero(none)[:10].tolist()}")
  return Problem(logp, correct)


@_checks.named("klrl.instances.load_unigram")
def load_unigram(where: str, path, *, reward_path=None, logp_key: str = "logp", reward_key: str = "reward",
                 scale: float = 1.0, rounding: bool = False, probabilities: bool = False) -> Unigram:
  """Reads per-token reference log-probabilities and rewards from users' files (:mod:`klrl.data`).

  One row per prompt: ``logp[..., v]`` is the reference law of a token and ``reward[..., v]``
  its reward, of the same shape. Files are ``.npz`` or ``.safetensors`` with both arrays, or
  two ``.npy`` files (``path`` for ``logp``, ``reward_path`` for the rewards). Everything
  :mod:`klrl.data` validates (missing arrays, dtypes, shapes, NaN, infinite rewards,
  log-probabilities that do not normalise) is refused with an error naming the file, the
  array and the row; here the rewards must in addition lie on the lattice ``(1/scale) Z``
  that the exact sequence law needs (:func:`klrl.memoryless.lattice`), or are rounded to it
  when ``rounding``.

  Args:
    path: file with the log-probabilities (and the rewards, unless ``reward_path`` is given).
    reward_path: file with the rewards, if not ``path``.
    logp_key: name of the log-probabilities (ignored for ``.npy``).
    reward_key: name of the rewards (ignored for ``.npy``).
    scale: rewards times ``scale`` must be integers (e.g. 10 for multiples of 0.1).
    rounding: round the rewards to the nearest multiple of ``1/scale`` instead of refusing them.
    probabilities: the file holds probabilities rather than log-probabilities.

  Returns:
    :class:`~klrl.instances.Unigram` ``(logp, reward, ())``, ready for
    :func:`klrl.memoryless.lattice` with the same ``scale``.

  Raises:
    InputError: a bad file or array, or rewards off the lattice (the first one is named).
  """
  arrays = _File(path)
  logp = _log_probs(where, arrays, logp_key, probabilities)
  source = arrays if reward_path is None else _File(reward_path)
  rew = _reward(where, source, reward_key, shape=logp.shape)
  source = source.path
  name = f"the array in '{source}'" if Path(source).suffix == ".npy" else f"array '{reward_key}' of '{source}'"
  k = _checks.lattice_integers(where, rew, scale, rounding, name)
  if rounding:
    rew = jnp.asarray(k / float(scale), rew.dtype)
  return Unigram(logp, rew, ())
