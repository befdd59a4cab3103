"""klrl's private numerical layer, shared by every theory module and by nothing outside klrl.

- :mod:`klrl._src.checks`: input checks at the public boundary (the ``public`` wrapper).
- :mod:`klrl._src.rows`: row reductions in cache-sized blocks on the CPU, and the one
  "reduce rows and check their inputs in the same pass" helper.
- :mod:`klrl._src.logspace`: log-space kernels (normalisation, expectations, KL, Bernoulli KL).
- :mod:`klrl._src.cumulants`: one-pass cumulants of a reward under a reference, at any tilt.
- :mod:`klrl._src.roots`: the safeguarded scalar root solver with implicit derivatives.

Theory modules import from here, never each other's private names.
"""
