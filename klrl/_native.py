"""Native CPU kernels, as XLA custom calls (``jax.ffi``), for the passes that dominate the CPU.

XLA:CPU (jaxlib 0.10) hands each row sum to its reduction library, which reads its operand
from memory: several sums of one elementwise intermediate (the tilted weights feeding four
moments, say) write that intermediate and every product out and read them back. The root solve
of :func:`klrl.tilted.kl_constrained` makes most of its passes over such sums, so they are
done here in one vectorised loop per row, on XLA's own intra-op threads: at ``64 x 2^17`` in
blocks of two rows a float64 pass takes about a third of XLA's time, a float32 pass about a
half (``benchmarks/bench_tilted.py``; see the README).

The kernels (``klrl/native/*.cc``) are compiled on first use with the system's C++ compiler
(``$CXX``, else ``c++``, ``g++`` or ``clang++``) against the XLA FFI headers of the installed
jaxlib, so they always match the runtime, and cached under ``$KLRL_CACHE_DIR`` (default
``~/.cache/klrl``). Without a compiler, on a platform other than the CPU, or with
``KLRL_NATIVE=0`` in the environment, the same sums come from XLA: results agree to rounding.
Derivatives always come from the XLA expression.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax

from klrl import _checks

_SOURCE = Path(__file__).parent / "native" / "tilt_sums.cc"
_TARGETS = {"klrl_tilt_sums": "KlrlTiltSums"}
_FLAGS = ["-std=c++17", "-O3", "-fopenmp-simd", "-fno-math-errno", "-fPIC", "-shared"]
_lock = threading.Lock()
_state: dict = {}


def _compiler() -> str | None:
  for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _cache_dir() -> Path:
  root = os.environ.get("KLRL_CACHE_DIR") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "klrl")
  path = Path(root)
  try:
    path.mkdir(parents=True, exist_ok=True)
    if os.access(path, os.W_OK):
      return path
  except OSError:
    pass
  path = Path(tempfile.gettempdir()) / f"klrl-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
  path.mkdir(parents=True, exist_ok=True)
  return path


def _build() -> Path:
  """The compiled library, from the cache where the same source, flags and jaxlib built it."""
  import jaxlib
  cxx = _compiler()
  if cxx is None:
    raise RuntimeError("no C++ compiler found (set CXX)")
  include = jax.ffi.include_dir()
  key = hashlib.sha256("\0".join([_SOURCE.read_text(), cxx, *_FLAGS, jaxlib.__version__, include,
                                  sys.platform]).encode()).hexdigest()[:16]
  lib = _cache_dir() / f"tilt_sums-{key}.so"
  if not lib.exists():
    # Processes (and hosts sharing the cache) building at once each write their own file.
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=lib.parent)
    os.close(fd)
    cmd = [cxx, *_FLAGS, "-I", include, str(_SOURCE), "-o", tmp]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
      os.unlink(tmp)
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    os.replace(tmp, lib)
  return lib


def available() -> bool:
  """Whether the native kernels are built and registered for the CPU (built on the first call)."""
  with _lock:
    if "ok" not in _state:
      if os.environ.get("KLRL_NATIVE", "1") == "0":
        _state.update(ok=False, why="disabled by KLRL_NATIVE=0")
      else:
        try:
          lib = ctypes.cdll.LoadLibrary(str(_build()))
          for target, symbol in _TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
          _state.update(ok=True, why=f"built ({lib._name})")
        except Exception as e:  # noqa: BLE001 -- any failure leaves the XLA expression in place
          _state.update(ok=False, why=f"not built: {e}")
    return _state["ok"]


@contextlib.contextmanager
def disabled():
  """Within the block, functions traced anew use XLA's expressions in place of the native kernels
  (to compare the two). Traces already cached keep what they were traced with: call
  ``jax.clear_caches()`` first."""
  _state["off"] = _state.get("off", 0) + 1
  try:
    yield
  finally:
    _state["off"] -= 1


def status() -> str:
  """One line saying whether the native kernels are in use, and why not."""
  available()
  return _state["why"]


def tilt_sums(reference, logp, reward, shift, center, lam, single: bool):
  """``reference(logp, reward, shift, center, lam)``: the six power sums of ``tilt_sums.cc``
  (a tuple of arrays over the batch axes), by the native kernel on the CPU where available.

  ``reference`` is the XLA expression of the same sums: it gives them on other platforms and
  for float32 data, and it gives their derivatives.
  """
  args = (logp, reward, shift, center, lam)
  if logp.dtype != jnp.float64 or _state.get("off") or not available():
    return reference(*args)

  def native(*args):
    out = jax.ffi.ffi_call("klrl_tilt_sums", jax.ShapeDtypeStruct(args[0].shape[:-1] + (6,), jnp.float64),
                           vmap_method="broadcast_all")(*args, single=single)
    # Under shard_map, vary over the mesh as the arguments do (a custom call's result does not).
    return _checks.vary_alike(tuple(out[..., k] for k in range(6)), like=args)

  @jax.custom_jvp
  def sums(*args):
    return lax.platform_dependent(*args, cpu=native, default=reference)

  sums.defjvp(lambda primals, tangents: (sums(*primals), jax.jvp(reference, primals, tangents)[1]))
  return sums(*args)
