"""This distribution's plugins other than InverTune: each subpackage is one plugin with its own
entry point (``pyproject.toml``), blockable alone. They import the host's public API and
:mod:`toolbox.primitives`, never each other or :mod:`invertune_plugin`."""

import toolbox  # noqa: F401  (applies the torchvision fix before torchmetrics/open_clip load)
