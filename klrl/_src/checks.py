"""Input validation at the public boundary of klrl.

Every public function of klrl is wrapped by :func:`public`. Shape and dtype problems are
found while tracing (plain Python, so also under ``jax.jit``) and raise :class:`InputError`
at once. Value problems (NaN, infinite rewards, log-probabilities that do not normalise,
``beta <= 0``, ...) are found inside the compiled computation, without host callbacks, so
that JAX's persistent compilation cache can store every public function:

- each check records an integer code (0 when it holds) in the :class:`Errors` of the call
  being traced, and returns its argument unchanged;
- called on concrete arrays, a public function returns its outputs and the codes from one
  compiled function; the wrapper reads the codes and raises :class:`InputError` naming the
  function and the argument;
- called on traced values (inside a caller's ``jax.jit``, ``vmap``, ``grad`` or
  ``shard_map``) the codes are tied to the outputs through one host callback that raises the
  same message when the computation runs (JAX wraps it in its runtime error; the message is
  also logged first, so that it heads the output);
- :func:`collect` traces a function with the codes returned as an output instead: the sweep
  engine uses it so that its compiled kernels stay free of callbacks too.
- :func:`named` gives functions checked in plain Python (file loaders, generators) the
  public name their messages use, and :func:`renamed` publishes one under a second name.

Broadcasting. One rule gives the shape of every call, in every module:

- an argument over a support (log-probabilities, rewards, masks, a grid along the last axis)
  has batch axes: all its axes but the last;
- a per-row parameter (``beta``, ``delta``, ``n``, ``temperature``, ``t``, ``x``, ``alpha``,
  ``eps``, ...: a scalar or one per row) has batch axes: all its axes;
- the batch shape of a call is the NumPy broadcast of the batch axes of all its arguments, and
  every output has that batch shape (followed by the output's own axes, such as the support).

So a parameter's extra axes become batch axes: one reference ``logp[V]`` with ``deltas[K]``
gives ``K`` results, ``logp[B, V]`` with ``delta[K, 1]`` gives ``(K, B)``. Shapes that do not
broadcast raise :class:`InputError` naming the argument, at trace time. :func:`batch_shape`
states the rule and :func:`broadcast` applies it; :func:`logp_reward` and :func:`prompts` are
built on them. A function that evaluates several quantities at separate points
(``klrl.memoryless.large_deviations`` at ``x`` and at ``t``) gives each quantity the batch shape of
the arguments it depends on. Functions that reduce over their rows (the training loops of
``klrl.train`` average over prompts) cannot turn a parameter's extra axes into batch axes: they
refuse them (:func:`batch_param`), and several runs are a ``jax.vmap``.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
import numbers
import threading

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax._src import core as _core   # the current trace: checks in nested transformations
from jax.scipy.special import logsumexp

from klrl._src import logspace as _logspace

__all__ = ["InputError", "public", "collect", "raise_codes", "named", "renamed", "batch_shape", "broadcast"]

_log = logging.getLogger("klrl")


class InputError(ValueError):
  """Bad input to a public klrl function; the message names the argument."""


InputError.__module__ = "klrl"


def _as_array(fn_name: str, name: str, x):
  if isinstance(x, (numbers.Number, np.ndarray, np.generic, list, tuple)) and not isinstance(x, bool):
    try:
      return jnp.asarray(x)
    except (TypeError, ValueError):
      raise InputError(f"{fn_name}: argument '{name}' must be a numeric array, got {type(x).__name__} "
                       f"of dtype {getattr(np.asarray(x), 'dtype', '?')}") from None
  return x


# ---------------------------------------------------------------------------------------------
# Error codes collected while a public function is traced.

def _current_trace():
  return _core.trace_ctx.trace


@dataclasses.dataclass
class Errors:
  """The run-time checks of one trace: a code per check and the messages the codes index.

  A check's code is 0 when it holds, else ``1 + i`` for the message ``messages[i]``. Checks
  met in a nested transformation (a ``vmap`` or loop body inside the function) cannot hand
  their codes out; they are tied to their values by a host callback instead (see :func:`_tie`).
  """
  codes: list = dataclasses.field(default_factory=list)
  messages: list = dataclasses.field(default_factory=list)
  trace: object = dataclasses.field(default_factory=_current_trace)

  def add(self, bad, msgs, index):
    first = len(self.messages)
    self.messages.extend(msgs)
    self.codes.append(jnp.where(bad, first + 1 + index, 0).astype(jnp.int32))

  def stacked(self):
    return jnp.stack(vary_alike(self.codes)) if self.codes else jnp.zeros((0,), jnp.int32)

  def tie(self, x):
    """``x`` tied to these checks through one host callback that raises when one fails."""
    if not self.codes:
      return x
    return _tie_to(x, _raise_at_run_time(self.stacked(), tuple(self.messages)))


_state = threading.local()
_raised: list = [None]   # the last message raised by a callback (which may run on another thread)


def _active() -> Errors | None:
  stack = getattr(_state, "stack", None)
  return stack[-1] if stack else None


def _tracing(fn, *args, **kwargs):
  """``fn(*args, **kwargs)`` and the :class:`Errors` its checks recorded."""
  errors = Errors()
  _state.stack = getattr(_state, "stack", []) + [errors]
  try:
    out = fn(*args, **kwargs)
  finally:
    _state.stack = _state.stack[:-1]
  return out, errors


def collect(fn):
  """``fn`` returning ``(outputs, codes, messages)``: its checks' codes as an ``int32`` array
  (last axis: one per check, batch axes where the caller vmaps) and their messages as a static
  tuple. Public functions called inside ``fn`` record their checks there too. For callers that
  compile ``fn`` themselves and want no host callback in it; read the codes with
  :func:`raise_codes`."""
  @functools.wraps(fn)
  def traced(*args, **kwargs):
    out, errors = _tracing(fn, *args, **kwargs)
    return out, errors.stacked(), tuple(errors.messages)
  return traced


def first_error(codes, messages) -> str | None:
  """The message of the first failing check in ``codes`` (any leading batch axes), or None."""
  codes = np.asarray(codes)
  if not codes.size:
    return None
  worst = codes.reshape(-1, codes.shape[-1]).max(axis=0)     # the gravest branch of each check
  failing = np.flatnonzero(worst)
  return messages[worst[failing[0]] - 1] if failing.size else None


def raise_codes(codes, messages) -> None:
  """Raises :class:`InputError` for the first failing check, if any."""
  msg = first_error(codes, messages)
  if msg is not None:
    raise InputError(msg)


def _raise_at_run_time(codes, messages):
  """A ``float32`` zero that raises :class:`InputError` when computed with a failing code.

  The host callback runs only where a check fails, except inside ``shard_map``, where it runs
  on every call (a conditional there fails under ``vmap`` in jax 0.10).
  """
  def check(codes):
    msg = first_error(codes, messages)
    if msg is not None:
      _log.error("klrl.InputError: %s", msg)
      _raised[0] = msg
      raise InputError(msg)
    return np.zeros(codes.shape[:-1], np.float32)     # batch axes where the caller vmaps

  def fail(codes):
    return jax.pure_callback(check, jax.ShapeDtypeStruct((), jnp.float32), codes, vmap_method="broadcast_all")

  @jax.custom_jvp
  def zero(codes):
    if _varying(codes):
      return fail(codes)
    return jax.lax.cond(jnp.any(codes != 0), fail, lambda c: jnp.zeros((), jnp.float32), codes)

  zero.defjvp(lambda primals, tangents: (zero(*primals), jnp.zeros((), jnp.float32)))
  return zero(codes)


def _tie_to(x, zero):
  """``x`` with every leaf tied to the scalar ``zero`` (``x - 0`` is ``x`` bit for bit, ``-0.0``
  included; a mask is tied by ``x != False``)."""
  def tie(leaf):
    if not isinstance(leaf, jax.Array):
      return leaf
    return leaf != (zero != 0) if leaf.dtype == jnp.bool_ else leaf - zero.astype(leaf.dtype)
  return jax.tree.map(tie, x)


def public(fn=None, *, static: tuple[str, ...] = (), convert: bool = True, module: str | None = None,
           name: str | None = None):
  """Compile a public function and turn its input errors into :class:`InputError`.

  ``module`` and ``name`` give the public name ``klrl.<module>.<name>`` that its messages use
  when that is not where it is defined (a package's submodule, a private core).

  Python numbers and NumPy arrays are converted to JAX arrays before the call (unless
  ``convert`` is false), so a new value of ``beta`` does not trigger a new compilation.
  Arguments named in ``static`` (sizes, flags) are left alone and are compile-time constants;
  so are non-array leaves of the arguments.
  """
  if fn is None:
    return functools.partial(public, static=static, convert=convert, module=module, name=name)
  if module is not None:
    fn.__module__ = module
  if name is not None:
    fn.__name__ = fn.__qualname__ = name
  jitted = eqx.filter_jit(collect(fn))
  names = fn.__code__.co_varnames[: fn.__code__.co_argcount]
  where = f"{fn.__module__}.{fn.__name__}"

  @eqx.filter_jit
  def raising(*args, **kwargs):
    out, errors = _tracing(fn, *args, **kwargs)
    return errors.tie(out)

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    if convert:
      args = tuple(a if n in static else _as_array(where, n, a) for n, a in zip(names, args))
      kwargs = {k: v if k in static else _as_array(where, k, v) for k, v in kwargs.items()}
    args, kwargs = vary_alike((args, kwargs))
    if _active() is not None:          # inside another public function or `collect`
      return fn(*args, **kwargs)       # its checks are recorded there, or tied (see `_tie`)
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs))):
      _raised[0] = None
      try:
        return raising(*args, **kwargs)
      except jax.errors.JaxRuntimeError:   # values known now (an eager vmap or grad): raise plainly
        if _raised[0] is None:
          raise
        raise InputError(_raised[0]) from None
    out, codes, messages = jitted(*args, **kwargs)
    raise_codes(codes, messages)
    return out

  wrapper.__wrapped__ = fn
  return wrapper


def compiled(fn):
  """A private core compiled as :func:`public` compiles (its checks' codes returned, no host
  callback), taking pytrees of arrays as they are; called inside a public function, it is
  traced inline."""
  return public(fn, convert=False)


def named(where: str):
  """Makes ``core(where, *args, **kwargs)`` the public function ``where`` (``klrl.<module>.<name>``).

  For functions checked in plain Python (loaders, generators) whose messages start with
  ``where``. The result takes the core's other arguments and docstring; :func:`renamed` gives
  the same function under a second public name, with messages naming that one.
  """
  return lambda core: _bind(core, where)


def renamed(fn, where: str):
  """The function ``fn`` (made by :func:`named`) under the public name ``where``."""
  return _bind(fn._core, where)


def _bind(core, where: str):
  @functools.wraps(core)
  def wrapper(*args, **kwargs):
    return core(where, *args, **kwargs)

  module, _, name = where.rpartition(".")
  wrapper.__module__, wrapper.__name__, wrapper.__qualname__ = module, name, name
  signature = inspect.signature(core)
  wrapper.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
  del wrapper.__wrapped__
  wrapper._core = core
  return wrapper


def _varying(x) -> frozenset:
  """The ``shard_map`` mesh axes over which the array ``x`` varies (empty outside one)."""
  aval = jax.typeof(x)
  mat = getattr(aval, "mat", None)                  # jax >= 0.9; earlier ``aval.vma``
  return frozenset(getattr(mat, "varying", None) or getattr(aval, "vma", None) or ())


def vary_alike(tree, like=()):
  """Inside ``jax.shard_map``, every array of ``tree`` made to vary over the mesh axes that any
  array of ``tree`` or ``like`` varies over (no data moved); elsewhere ``tree`` unchanged.

  A loop started from a constant or a replicated argument (a shared initial law, a target set)
  and stepped with a sharded one (the kernels) would otherwise change type across one
  iteration, which ``shard_map`` rejects at trace time: loops start from ``vary_alike(init,
  data)``.
  """
  arrays = [x for x in jax.tree.leaves((tree, like)) if isinstance(x, jax.Array)]
  axes = frozenset().union(*map(_varying, arrays))
  if not axes:
    return tree
  pcast = getattr(jax.lax, "pcast", None)
  vary = (lambda x, a: pcast(x, a, to="varying")) if pcast else jax.lax.pvary

  def cast(x):
    missing = axes - _varying(x) if isinstance(x, jax.Array) else None
    return vary(x, tuple(sorted(missing))) if missing else x

  return jax.tree.map(cast, tree)


# ---------------------------------------------------------------------------------------------
# Trace-time (static) checks.

def _fail(where: str, name: str, what: str):
  raise InputError(f"{where}: argument '{name}' {what}")


def floating(where: str, name: str, x, min_ndim: int = 0) -> jax.Array:
  """Returns ``x`` as a floating array; raises if it is not numeric or has too few axes."""
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.bool_) or not jnp.issubdtype(x.dtype, jnp.number):
    _fail(where, name, f"must be a real floating array, got dtype {x.dtype}")
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    _fail(where, name, f"must be real, got dtype {x.dtype}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  if x.ndim < min_ndim:
    _fail(where, name, f"must have at least {min_ndim} axis (the support is the last axis), got shape {x.shape}")
  if min_ndim and x.shape[-1] == 0:
    _fail(where, name, "has an empty support (last axis of length 0)")
  return x


def same_support(where: str, name_a: str, a, name_b: str, b):
  """Raises unless ``a`` and ``b`` share the last axis and their batch axes broadcast."""
  if a.shape[-1] != b.shape[-1]:
    _fail(where, name_b, f"has support size {b.shape[-1]} but '{name_a}' has {a.shape[-1]} (shapes {b.shape} vs {a.shape})")
  try:
    np.broadcast_shapes(a.shape, b.shape)
  except ValueError:
    _fail(where, name_b, f"has shape {b.shape}, whose batch axes do not broadcast with '{name_a}' of shape {a.shape}")


def batch_shape(where: str, rows: dict | None = None, params: dict | None = None) -> tuple[int, ...]:
  """The batch shape of a call (the broadcasting rule of the module docstring).

  Args:
    where: the public name of the function, for messages.
    rows: arguments with a last axis of their own (a support, a grid), by name: their batch
      axes are all axes but the last.
    params: per-row parameters, by name: all their axes are batch axes.

  Returns:
    The NumPy broadcast of all those batch axes.

  Raises:
    InputError: naming the first argument (``rows`` first, in order) whose batch axes do not
      broadcast with those of the arguments before it.
  """
  batch, seen = (), []
  for of_rows, items in ((True, rows or {}), (False, params or {})):
    for name, x in items.items():
      shape = tuple(np.shape(x))
      axes = shape[:-1] if of_rows else shape
      try:
        batch = tuple(np.broadcast_shapes(batch, axes))
      except ValueError:
        what = f"has shape {shape}, whose batch axes {axes} do not" if of_rows else f"has shape {shape}, which does not"
        _fail(where, name, f"{what} broadcast with the batch axes {batch} of {'/'.join(repr(n) for n in seen)}")
      seen.append(name)
  return batch


def broadcast(where: str, rows: dict | None = None, params: dict | None = None, dtype=None) -> list[jax.Array]:
  """The arguments broadcast to the batch shape of the call (:func:`batch_shape`).

  Returns ``rows``' arrays with shape ``batch + (their last axis,)`` followed by ``params``'
  arrays with shape ``batch``, in order, cast to ``dtype`` if given.
  """
  rows, params = rows or {}, params or {}
  batch = batch_shape(where, rows, params)
  cast = (lambda x: x) if dtype is None else (lambda x: x.astype(dtype))
  return ([cast(jnp.broadcast_to(x, batch + x.shape[-1:])) for x in rows.values()]
          + [cast(jnp.broadcast_to(x, batch)) for x in params.values()])


def batch_param(where: str, name: str, x, batch_shape: tuple[int, ...], dtype=None, why: str = "") -> jax.Array:
  """A per-row parameter that may not add batch axes: a scalar or an array that broadcasts to
  ``batch_shape``. For functions that reduce over their rows (the training loops), where extra
  axes could not become batch axes; ``why`` is appended to the message.

  Returns it broadcast to ``batch_shape`` (and cast to ``dtype`` if given).
  """
  x = floating(where, name, x)
  try:
    out = np.broadcast_shapes(x.shape, batch_shape)
  except ValueError:
    out = None
  if out != tuple(batch_shape):
    _fail(where, name, f"must be a scalar or broadcast to the batch shape {tuple(batch_shape)}, got shape {x.shape}{why}")
  return jnp.broadcast_to(x if dtype is None else x.astype(dtype), batch_shape)


def integer(where: str, name: str, x, low: int) -> int:
  """A static count: a Python ``int`` (not a traced array) that is at least ``low``."""
  if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < low:
    _fail(where, name, f"must be a Python int >= {low} (a compile-time constant), got {x!r}")
  return int(x)


def lattice_integers(where: str, reward, scale, rounding: bool, what: str = "argument 'reward'") -> np.ndarray:
  """``reward * scale`` as NumPy integers, or a clear error when they are not on the lattice.

  A host-side check (the lattice size depends on the values, so ``reward`` must be concrete).
  Integers within ``1e-6`` relative (or 32 ulps of the reward's dtype) are accepted; others are
  refused with the first one named, unless ``rounding`` asks for the nearest integers. ``what``
  names the rewards in messages.
  """
  if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)) \
      or not math.isfinite(scale) or scale <= 0:
    raise InputError(f"{where}: argument 'scale' must be a finite Python number > 0, got {scale!r}")
  if isinstance(reward, jax.core.Tracer):
    raise InputError(
        f"{where}: argument 'reward' must be concrete (the lattice size depends on its values): pass a NumPy "
        f"array, or build the lattice with klrl.memoryless.lattice outside jit/vmap and pass it to the "
        f"lattice-level functions")
  r = np.asarray(reward)
  r = r if np.issubdtype(r.dtype, np.floating) else r.astype(np.float64)
  if not np.all(np.isfinite(r)):
    raise InputError(f"{where}: {what} must be finite (got NaN or +-inf)")
  k = r.astype(np.float64) * float(scale)
  near = np.rint(k)
  tol = max(1e-6, 32 * float(np.finfo(r.dtype).eps)) * np.maximum(1.0, np.abs(k))
  bad = np.abs(k - near) > tol
  if bad.any() and not rounding:
    i = np.unravel_index(np.argmax(bad), bad.shape)
    raise InputError(
        f"{where}: {what} is not on a lattice: reward{[int(a) for a in i]} = {float(r[i])!r} gives "
        f"reward * scale = {float(k[i])!r}, which is not an integer (scale = {scale!r}). Pass the scale that makes every reward an "
        f"integer (e.g. scale=10 for multiples of 0.1), or rounding=True to round rewards to the nearest "
        f"multiple of 1/scale")
  if np.abs(near).max(initial=0.0) > 2.0 ** 52:
    raise InputError(f"{where}: {what} times scale exceeds 2^52; use a smaller scale")
  return near.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Run-time (value) checks: each returns its argument, tied to the check.

def _tie(x, bad, msgs, index=0):
  """Records the run-time check "``msgs[index]`` where ``bad``" (``bad`` a boolean scalar,
  ``index`` an integer scalar choosing among ``msgs``) and returns ``x``.

  Outside a public function (an unchecked internal call) the check is tied to ``x`` through a
  host callback that raises when it fails.
  """
  msgs = (msgs,) if isinstance(msgs, str) else tuple(msgs)
  errors = _active()
  if errors is not None and errors.trace is _current_trace():
    errors.add(bad, msgs, index)
    return x
  own = Errors()
  own.add(bad, msgs, index)
  return own.tie(x)


def _tol(dtype) -> float:
  return 1e-4 if jnp.finfo(dtype).bits <= 32 else 1e-6


def log_probs(where: str, name: str, logp: jax.Array, what: str | None = None, nan_hint: str = "") -> jax.Array:
  """Log-probabilities over the last axis: no NaN, no +inf, logsumexp within tolerance of 0.

  One ``logsumexp`` per row finds all three (NaN and +inf propagate into it). ``what``
  replaces the description in the message for the normalisation failure; it may use ``{tol}``.
  ``nan_hint`` is appended to the NaN message.
  """
  return normalised(where, name, logp, jnp.exp(logsumexp(logp, axis=-1)), what, nan_hint)


def normalised(where: str, name: str, x, total: jax.Array, what: str | None = None, nan_hint: str = ""):
  """Like :func:`log_probs`, from ``total = sum(exp(logp), -1)`` computed in an existing pass.

  ``x`` is any pytree to tie the check to (the log-probabilities and what was computed from
  them), so that no output escapes the check.
  """
  tol = _tol(total.dtype)
  bad = ~(jnp.abs(jnp.log(total)) <= tol)
  # Under vmap equinox reports the largest index of the batch: the gravest failure comes last.
  index = jnp.where(jnp.isnan(total).any(), 2, jnp.where((total == jnp.inf).any(), 1, 0))
  what = what or ("is not a log-probability vector over the last axis "
                  "(logsumexp must be 0 within {tol}; use jax.nn.log_softmax to normalise)")
  msgs = (f"{where}: argument '{name}' " + what.format(tol=f"{tol:g}"),
          f"{where}: argument '{name}' contains +inf or huge values (log-probabilities are <= 0)",
          f"{where}: argument '{name}' contains NaN{nan_hint}")
  return _tie(x, bad.any(), msgs, index)


def finite_probe(where: str, name: str, x, probe: jax.Array):
  """Raises unless ``probe`` is finite; ``probe = sum(0 * values)`` is NaN iff a value is not finite."""
  return _tie(x, ~jnp.isfinite(probe).all(), f"{where}: argument '{name}' must be finite (got NaN or +-inf)")


def finite(where: str, name: str, x: jax.Array) -> jax.Array:
  return _tie(x, ~jnp.isfinite(x).all(), f"{where}: argument '{name}' must be finite (got NaN or +-inf)")


def positive(where: str, name: str, x: jax.Array) -> jax.Array:
  return _tie(x, ~(x > 0).all(), f"{where}: argument '{name}' must be > 0 (got a value <= 0 or NaN)")


def nonnegative(where: str, name: str, x: jax.Array) -> jax.Array:
  return _tie(x, ~(x >= 0).all(), f"{where}: argument '{name}' must be >= 0 (got a negative value or NaN)")


def at_least(where: str, name: str, x: jax.Array, low: float) -> jax.Array:
  return _tie(x, ~(x >= low).all(), f"{where}: argument '{name}' must be >= {low:g} (got a smaller value or NaN)")


def in_unit_interval(where: str, name: str, x: jax.Array) -> jax.Array:
  return _tie(x, ~((x >= 0) & (x <= 1)).all(), f"{where}: argument '{name}' must lie in [0, 1]")


def increasing(where: str, name: str, x: jax.Array, mask: jax.Array) -> jax.Array:
  """Values strictly increasing along the last axis over the entries where ``mask`` holds."""
  prev = jax.lax.cummax(jnp.where(mask, x, -jnp.inf), axis=x.ndim - 1)
  prev = jnp.concatenate([jnp.full_like(prev[..., :1], -jnp.inf), prev[..., :-1]], axis=-1)
  return _tie(x, (mask & ~(x > prev)).any(),
              f"{where}: argument '{name}' must be strictly increasing along the last axis (over the entries of positive mass)")


def reward_range(where: str, x, r_min: jax.Array, r_max: jax.Array):
  """Ties ``x`` to "the rewards of each row lie in the range where the solvers are accurate".

  The solutions of a tilt are invariant under ``r -> c r`` (the multiplier scales by ``1/c``),
  but the solvers form squares of the reward spread: each ``|r|`` on the support must be at most
  ``sqrt(max) / 100`` of the dtype (1.3e152 in float64, 1.8e17 in float32) and each row's spread
  ``r_max - r_min`` 0 or at least ``100 sqrt(tiny)`` (1.5e-152, 1.1e-17). ``r_min``/``r_max``
  are the per-row extremes over the support. (XLA on the CPU flushes subnormal numbers to zero,
  so rewards that small are equal to it.)
  """
  info = jnp.finfo(r_max.dtype)
  hi, lo = float(np.sqrt(info.max)) * 1e-2, float(np.sqrt(info.tiny)) * 1e2
  spread = r_max - r_min
  ok = (jnp.maximum(jnp.abs(r_max), jnp.abs(r_min)) <= hi) & ((spread == 0) | (spread >= lo))
  return _tie(x, ~jnp.all(ok), (
      f"{where}: argument 'reward' is outside the range resolved in {info.dtype}: every reward on the "
      f"support must satisfy |r| <= {hi:.2g} and each row's spread r_max - r_min be 0 or >= {lo:.2g}. The "
      f"solution is invariant under r -> c r (lam and 1/beta scale by 1/c): rescale the rewards"))


# ---------------------------------------------------------------------------------------------
# Masks.

def mask(where: str, name: str, x, min_ndim: int = 1) -> jax.Array:
  """Returns ``x`` as a boolean array; raises unless its dtype is bool (0/1 floats are refused)."""
  x = jnp.asarray(x)
  if x.dtype != jnp.bool_:
    _fail(where, name, f"must be a boolean mask (dtype bool), got dtype {x.dtype}; convert with .astype(bool)")
  if x.ndim < min_ndim:
    _fail(where, name, f"must have at least {min_ndim} axis (the support is the last axis), got shape {x.shape}")
  return x


# ---------------------------------------------------------------------------------------------
# Markov kernels and index arrays.

def square(where: str, name: str, x) -> None:
  """Raises unless the last two axes of ``x`` have the same length (a kernel over M states)."""
  if x.ndim < 2 or x.shape[-1] != x.shape[-2]:
    _fail(where, name, f"must be a square kernel over the last two axes (..., M, M), got shape {x.shape}")


def log_kernel(where: str, name: str, logk: jax.Array) -> jax.Array:
  """Rows of a log transition kernel: no NaN, no +inf, each row's logsumexp within tolerance of 0."""
  return log_probs(where, name, logk, nan_hint=" (a negative or NaN probability?)", what=(
      "is not a log kernel: each row must be log-probabilities over the last axis "
      "(row logsumexp 0 within {tol}; pass jnp.log(P) for a probability kernel P)"))


def integers(where: str, name: str, x, size: int) -> jax.Array:
  """An integer index array (static dtype check) with entries in ``[0, size)`` (value check)."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.integer):
    _fail(where, name, f"must be an integer index array, got dtype {x.dtype}")
  return _tie(x, ~((x >= 0) & (x < size)).all(), f"{where}: argument '{name}' has indices outside [0, {size})")


def holds(where: str, name: str, x: jax.Array, ok: jax.Array, what: str) -> jax.Array:
  """Returns ``x`` (an array or a pytree) tied to the run-time condition ``ok`` (every entry true)."""
  return _tie(x, ~jnp.all(ok), f"{where}: argument '{name}' {what}")


# ---------------------------------------------------------------------------------------------
# A reference and a reward on one support (tilted policies, best-of-N, large deviations).

def logp_reward(where, logp, reward, values=True, **params):
  """Checks and broadcasts ``logp``, ``reward`` and per-row parameters to one batch shape.

  ``params`` maps a name to ``(value, check)``; each value is a scalar or an array whose axes
  are batch axes (:func:`batch_shape`), and ``check(where, name, x)`` (or ``None``) is applied to
  it after broadcasting. Value checks of ``logp``/``reward`` are skipped when ``values=False``
  (the caller folds them into their first pass over the data). Returns ``logp, reward,
  *params``, all in the floating dtype of ``logp`` and ``reward``.
  """
  logp = floating(where, "logp", logp, 1)
  reward = floating(where, "reward", reward, 1)
  same_support(where, "logp", logp, "reward", reward)
  xs = {name: floating(where, name, value) for name, (value, _) in params.items()}
  dtype = jnp.result_type(logp, reward)
  if values:
    logp, reward = log_probs(where, "logp", logp), finite(where, "reward", reward)
  logp, reward, *xs = broadcast(where, {"logp": logp, "reward": reward}, xs, dtype)
  checks = [(name, check) for name, (_, check) in params.items()]
  return [logp, reward] + [x if check is None else check(where, name, x) for (name, check), x in zip(checks, xs)]


# ---------------------------------------------------------------------------------------------
# Prompts with verifier verdicts (RLVR and its training loops).

def prompts(where, logp, correct, name="logp", others=None, extend=True, why="", **params):
  """Checks ``logp``/``correct`` and per-prompt parameters; broadcasts all to one batch shape.

  Returns ``(logp, correct, log a_ref, log(1 - a_ref), params)``, the row quantities and the
  parameters broadcast to the common batch shape and cast to the floating dtype. ``logp`` is
  the reference (named ``name`` in messages); every prompt needs a correct response of positive
  reference probability. ``others`` names further arguments over the same support (a policy
  ``logq``) whose batch axes join the batch shape. With ``extend=False`` the parameters may not
  add batch axes to those of the prompts (functions that reduce over prompts; ``why`` says so in
  the message, see :func:`batch_param`).
  """
  logp = floating(where, name, logp, 1)
  correct = mask(where, "correct", correct)
  same_support(where, name, logp, "correct", correct)
  rows = {name: logp, "correct": correct, **(others or {})}
  params = {k: floating(where, k, v) for k, v in params.items()}
  if not extend:
    prompts_batch = batch_shape(where, rows)
    for key, v in params.items():
      batch_param(where, key, v, prompts_batch, why=why)
  batch = batch_shape(where, rows, params)
  dtype = jnp.result_type(logp, *params.values())
  logp = log_probs(where, name, logp)
  la, lw = _logspace.log_masses(logp, correct)
  if name == "logp":   # tied to every row quantity, so that no output escapes the check
    logp, la, lw = holds(where, "correct", (logp, la, lw), la > -jnp.inf,
                                 "marks no response of positive reference probability as correct in some "
                                 "prompt (the reference accuracy must be > 0)")
  shape = batch + logp.shape[-1:]
  cast = lambda x, s: jnp.broadcast_to(x, s).astype(dtype)
  return (cast(logp, shape), jnp.broadcast_to(correct, shape), cast(la, batch), cast(lw, batch),
          {k: cast(v, batch) for k, v in params.items()})
