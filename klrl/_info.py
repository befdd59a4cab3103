"""What klrl runs on: versions, backend, devices, compilation cache (``klrl.info()``)."""
from __future__ import annotations

import platform
from importlib import metadata


def _version(pkg: str) -> str | None:
  try:
    return metadata.version(pkg)
  except metadata.PackageNotFoundError:
    return None


def info() -> dict:
  """A description of the installation and the machine, for reports and bug reports.

  Returns:
    A dict with the versions of Python, klrl and its numerical dependencies, JAX's default
    backend and devices, whether float64 is enabled, the computation path (always the XLA
    expressions: klrl ships no native kernels, so results depend on the backend and the XLA
    version only) and the persistent compilation cache folder in use (``None`` when off).
  """
  import jax

  from klrl import __version__

  out = {"klrl": __version__, "python": platform.python_version()}
  for pkg in ("jax", "jaxlib", "numpy", "optax", "equinox", "jaxtyping"):
    out[pkg] = _version(pkg)
  devices = jax.devices()
  out["backend"] = jax.default_backend()
  out["devices"] = [f"{d.platform}:{d.id} {d.device_kind}" for d in devices]
  out["process"] = f"{jax.process_index()} of {jax.process_count()}"
  out["x64"] = bool(jax.config.jax_enable_x64)
  out["path"] = "xla"
  out["compilation_cache"] = jax.config.jax_compilation_cache_dir or None
  return out


def describe() -> str:
  """:func:`info` as ``key: value`` lines (``klrl --version``)."""
  return "\n".join(f"{k}: {', '.join(v) if isinstance(v, list) else v}" for k, v in info().items())
