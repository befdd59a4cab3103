"""The configurations shipped with klrl: ``default.toml`` (``klrl run``) and ``sweeps/*.toml``
(``klrl sweep NAME``). Installed as package data, so that they work from a wheel too."""
