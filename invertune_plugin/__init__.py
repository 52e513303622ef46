"""InverTune alone (entry point ``invertune``): stage 1 (``identify``, ``race``), the detector
cascade (``cascade``, ``detectors/``), stage 2 (``invert``, where the trigger is inverted) and
stage 3 (``tune``, ``neurons``). Plain torch; it imports the host's public API and the shared
primitives only; the attacks and baselines it is measured with are plugins of their own."""

import toolbox  # noqa: F401,E402  (applies the torchvision fix before torchmetrics/open_clip load)

__version__ = "0.1.0"
