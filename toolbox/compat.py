"""The one place that makes torchvision (and so open_clip) importable on a CPU torch.

PyPI ships only CUDA builds of torchvision. Paired with the CPU build of torch, its
C++ extension fails to load, and ``torchvision/_meta_registrations.py`` then dies
registering fake kernels for operators that were never defined
(``RuntimeError: operator torchvision::nms does not exist``). That breaks
``import open_clip`` too. We only use torchvision's Python parts, so defining the
two missing operator *schemas* (no kernels) is enough for the import to succeed.

Where torchvision imports normally (a CUDA machine, or a matching CPU build) this
module does nothing: the fix runs only after a real import attempt failed with
exactly that error.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

# Operators whose fake kernels torchvision registers with register_fake(), which
# (unlike its register_meta() helper) requires the operator to exist already.
_MISSING_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)

_patched = False
_library = None  # keep the torch.library.Library alive, or the definitions vanish


def torchvision_was_patched() -> bool:
    """True when this process needed the schema fix (reported in result versions)."""
    return _patched


def _purge(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


def _define_missing_ops() -> None:
    global _library, _patched
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in _MISSING_OP_SCHEMAS:
        _library.define(schema)
    _patched = True


def import_torchvision() -> ModuleType:
    """Import torchvision, applying the CPU-torch fix only if the plain import fails."""
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "__version__"):
        return sys.modules["torchvision"]
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as err:
        if "torchvision::" not in str(err) or "does not exist" not in str(err):
            raise
        _purge("torchvision")
        _define_missing_ops()
        return importlib.import_module("torchvision")


def import_open_clip() -> ModuleType:
    """Import open_clip after making sure torchvision imports (the only supported way here)."""
    import_torchvision()
    return importlib.import_module("open_clip")
