"""One fresh process of the startup suite (:mod:`benchmarks.bench_startup`); prints ``RESULT {json}``.

``python benchmarks/startup_child.py first-call INPUTS.npz``: times ``import klrl``, the backend's
start, then the first and second calls of ``klrl.tilted.kl_constrained`` on the arrays ``logp``,
``reward`` and ``delta`` of ``INPUTS.npz`` (float64), and counts the files of the persistent
compilation cache folder (``JAX_COMPILATION_CACHE_DIR``, if set) before and after the first call.

``python benchmarks/startup_child.py compile NAME [NAME ...]``: after one trivial ``jit``, for
each public function named (e.g. ``tilted.stats``, see :data:`CASES`), builds small inputs,
then times its first call and its second call; the difference is its compile time (tracing,
lowering and XLA's compilation).

Only the standard library is imported before the timed ``import klrl``; the repository root
must be on ``PYTHONPATH``.
"""
from __future__ import annotations

import json
import os
import sys
import time


def _cache_files() -> int | None:
  folder = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if not folder:
    return None
  return sum(1 for p in os.scandir(folder) if p.is_file()) if os.path.isdir(folder) else 0


def _start() -> dict:
  """Imports JAX and klrl (timed), enables float64 and starts the backend (timed)."""
  t0 = time.perf_counter()
  import jax
  t1 = time.perf_counter()
  import klrl  # noqa: F401
  t2 = time.perf_counter()
  jax.config.update("jax_enable_x64", True)
  jax.devices()
  t3 = time.perf_counter()
  return {"import_s": t2 - t0, "import_jax_s": t1 - t0, "backend_s": t3 - t2, "platform": jax.default_backend()}


def _two_calls(fn, args) -> tuple[float, float]:
  """Seconds of the first and of the second call of ``fn(*args)``, results blocked on."""
  import jax

  times = []
  for _ in range(2):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return times[0], times[1]


def first_call(path: str) -> dict:
  out = _start()
  import jax
  import numpy as np

  from klrl import tilted

  with np.load(path) as f:
    args = tuple(jax.device_put(f[k]) for k in ("logp", "reward", "delta"))
  jax.block_until_ready(args)
  out["cache_files_before"] = _cache_files()
  out["first_s"], out["second_s"] = _two_calls(tilted.kl_constrained, args)
  out["cache_files_after"] = _cache_files()
  out["shape"] = list(args[0].shape)
  out["dtype"] = str(args[0].dtype)
  return out


# ---------------------------------------------------------------------------------------------
# Small inputs for each public function timed by ``compile``: name -> (size, inputs builder).

def _problem(rng, rows, vocab):
  import numpy as np

  logits = 2.0 * rng.standard_normal((rows, vocab))
  logits -= logits.max(-1, keepdims=True)
  return logits - np.log(np.exp(logits).sum(-1, keepdims=True)), rng.standard_normal((rows, vocab))


def _log_kernel(rng, states):
  """A reversible chain: a symmetric positive weight matrix, rows normalised (log)."""
  import numpy as np

  w = np.exp(rng.standard_normal((states, states)))
  w = w + w.T
  return np.log(w / w.sum(-1, keepdims=True))


def _rlvr(rng, prompts, responses):
  import numpy as np

  logp, _ = _problem(rng, prompts, responses)
  correct = np.zeros((prompts, responses), bool)
  correct[:, : responses // 4] = True
  return logp, rng.permuted(correct, axis=-1)


def _cases():
  import numpy as np
  import optax

  from klrl import bon, chains, divergences, memoryless, rlvr, tilted, train

  rng = np.random.default_rng(0)
  rows, vocab, states, prompts, responses = 8, 1024, 16, 8, 32
  logp, reward = _problem(rng, rows, vocab)
  logq, _ = _problem(rng, rows, vocab)
  beta, n = np.full(rows, 0.7), np.full(rows, 4.0)
  p = np.exp(logp)
  x = 0.5 * ((p * reward).sum(-1) + reward.max(-1))   # between the mean and the largest reward
  logk = _log_kernel(rng, states)
  lp_y, correct = _rlvr(rng, prompts, responses)
  sgd = optax.sgd(0.5)   # one optimiser object: a new one each call would be a new static argument
  vs, ms, ys = f"{rows}x2^{vocab.bit_length() - 1}", f"{states}x{states}", f"{prompts}x{responses}"
  return {
      "tilted.kl_constrained": (tilted.kl_constrained, (logp, reward, np.full(rows, 0.5)), vs),
      "tilted.stats": (tilted.stats, (logp, reward, beta), vs),
      "tilted.tilt": (tilted.tilt, (logp, reward, beta), vs),
      "bon.stats": (bon.stats, (logp, reward, n), vs),
      "divergences.kl": (divergences.kl, (logp, logq), vs),
      "memoryless.rate_function": (memoryless.rate_function, (logp, reward, x), vs),
      "chains.spectral_gap": (chains.spectral_gap, (logk,), ms),
      "chains.stationary": (chains.stationary, (logk,), ms),
      "rlvr.flow": (rlvr.flow, (lp_y, correct, 0.5, 1.0), ys),
      "rlvr.natural_gradient_flow": (rlvr.natural_gradient_flow, (lp_y, correct, 0.5, 1.0), ys),
      "train.policy_gradient": (lambda *a: train.policy_gradient(*a, sgd, 20), (lp_y, correct, 0.5),
                                f"{ys}, 20 steps"),
  }


CASES = ("tilted.kl_constrained", "tilted.stats", "tilted.tilt", "bon.stats", "divergences.kl",
         "memoryless.rate_function", "chains.spectral_gap", "chains.stationary", "rlvr.flow",
         "rlvr.natural_gradient_flow", "train.policy_gradient")


def compile_times(names: list[str]) -> dict:
  out = _start()
  import jax

  jax.block_until_ready(jax.jit(lambda x: x + 1)(1.0))   # the process's first compilation, untimed
  cases = _cases()
  unknown = [n for n in names if n not in cases]
  if unknown:
    raise SystemExit(f"unknown function(s) {unknown}; known: {list(cases)}")
  out["functions"] = {}
  for name in names:
    fn, args, size = cases[name]
    args = jax.block_until_ready(tuple(jax.device_put(a) for a in args))
    first, second = _two_calls(fn, args)
    out["functions"][name] = {"size": size, "first_s": first, "second_s": second}
  return out


def main(argv: list[str]) -> None:
  mode, *rest = argv
  if mode == "first-call":
    result = first_call(*rest)
  elif mode == "compile":
    result = compile_times(rest)
  else:
    raise SystemExit(f"unknown mode {mode!r}: first-call or compile")
  print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
