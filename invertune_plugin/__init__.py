"""The science: InverTune and the attacks, baselines and metrics it is measured with.

Plain torch functions and small classes; no CLI and no file formats (those live in
``toolbox`` and ``adapters``). Registered with the host in :mod:`invertune_plugin.hooks`.
"""

import toolbox  # noqa: F401,E402  (applies the torchvision fix before torchmetrics/open_clip load)

__version__ = "0.1.0"
