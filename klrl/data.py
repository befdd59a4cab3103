"""Loading users' arrays: reference log-probabilities, rewards and correctness masks.

The array readers of :mod:`klrl.instances.files`, under the name their messages use. Files
hold one row per prompt (leading axes are prompts, the last axis is the support: responses or
tokens). Formats, chosen by the file suffix:

- ``.npy``: one array (the ``key`` arguments are then ignored);
- ``.npz``: named arrays (``numpy.savez``);
- ``.safetensors``: named arrays, read with the ``safetensors`` package's NumPy API (the
  optional extra ``klrl[data]``).

Validation is done on the host, in NumPy, before anything reaches JAX, so every error is a
:class:`klrl.InputError` that names the file, the array and the offending row: a missing key
(the message lists the keys there are), a wrong shape, a wrong dtype (a mask must be boolean),
NaN or infinite values, log-probabilities that do not normalise. Accepted arrays come back as
JAX arrays in their stored floating dtype (float64 needs ``jax_enable_x64``).
"""
from klrl.instances.files import log_probs, mask, read, reward, save

__all__ = ["read", "save", "log_probs", "mask", "reward"]
