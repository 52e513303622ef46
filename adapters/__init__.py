"""The model and dataset formats (entry point ``adapters``, always loaded).

Model formats -> :class:`adapters.clip_model.OpenClipModel`; dataset formats ->
:class:`toolbox.api.ImageData` of [0,1] image tensors. The embedded world is a plugin of its own.
"""

import toolbox  # noqa: F401,E402  (applies the torchvision fix before torchmetrics/open_clip load)
