"""The science: InverTune, and the attacks and baselines it is measured with.

Plain torch functions and small classes; no CLI and no file formats (those live in
``toolbox`` and ``adapters``). Three plugins, registered with the host through the entry points
:mod:`invertune_plugin.hooks`, :mod:`toolbox_plugins.attacks.hooks` and
:mod:`toolbox_plugins.baselines.hooks`.
"""

import toolbox  # noqa: F401,E402  (applies the torchvision fix before torchmetrics/open_clip load)

__version__ = "0.1.0"
