"""Report sections, in the order they appear in ``klrl run``'s report.

Adding a section: write ``klrl/report/sections/<key>.py`` with ``TITLE`` and
``run(cfg, ctx) -> Section``, register it here and give it a table ``[<key>]`` in
``configs/default.toml``. A section that needs optional packages lists their import names in
``REQUIRES``; ``klrl run`` skips it, saying which to install, when one is missing.
"""
from klrl.report.sections import bon, chains, memoryless, rlvr, tilted

SECTIONS = {
    "tilted": tilted,           # SPEC section 1
    "bon": bon,                 # 2
    "memoryless": memoryless,   # 3
    "chains": chains,           # 4
    "rlvr": rlvr,               # 5, 6
}
