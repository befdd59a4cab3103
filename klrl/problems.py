"""Reference/reward pairs for examples, checks and benchmarks (from :mod:`klrl.instances`).

Each generator returns ``(logp, reward)`` with the support on the last axis. They are plain
JAX functions of a PRNG key, so a batch of instances is one call.
"""
from klrl.instances.synthetic import bernoulli, random_problem, zipf_linear

__all__ = ["random_problem", "zipf_linear", "bernoulli"]
