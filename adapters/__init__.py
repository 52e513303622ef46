"""Translation from the outside world to the plugin's tensors.

Model formats -> :class:`adapters.clip_model.OpenClipModel`; dataset formats ->
:class:`toolbox.api.ImageData` of [0,1] image tensors; and the procedural toy world
(:mod:`toolbox_plugins.world`) that makes the embedded default.
"""

import toolbox  # noqa: F401,E402  (applies the torchvision fix before torchmetrics/open_clip load)
