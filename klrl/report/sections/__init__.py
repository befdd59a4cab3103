"""Report sections, in the order they appear in ``klrl run``'s report.

Adding a section: write ``klrl/report/sections/<key>.py`` with ``TITLE``, ``OPTIONS`` (its
configuration, :mod:`klrl.report.config`) and ``run(cfg, ctx) -> Section``, register it here and
give it a table ``[<key>]`` in ``configs/default.toml`` stating every option. A section that needs optional packages lists their import names in
``REQUIRES``; ``klrl run`` skips it, saying which to install, when one is missing.
"""
from klrl.report.sections import autoregressive, bon, chains, markov, memoryless, rlvr, tilted

SECTIONS = {
    "tilted": tilted,           # docs: theory/tilted
    "bon": bon,                 # theory/best-of-n
    "memoryless": memoryless,   # theory/memoryless
    "chains": chains,           # theory/chains
    "rlvr": rlvr,               # theory/rlvr and theory/training
    "autoregressive": autoregressive,   # theory/autoregressive
    "markov": markov,           # theory/markov
}
