"""The torchvision fix: one place, only when needed, and open_clip imports after it."""

import importlib.util
import sys

from toolbox import compat


def test_open_clip_and_torchvision_import():
    open_clip = compat.import_open_clip()
    assert hasattr(open_clip, "create_model")
    tv = compat.import_torchvision()
    assert hasattr(tv, "__version__") and "torchvision.transforms" in sys.modules or tv.transforms


def test_fix_applied_only_when_the_extension_is_missing():
    from torchvision.extension import _has_ops

    # With a working C++ extension (a CUDA machine) nothing may be patched; on a CPU torch paired
    # with PyPI's CUDA torchvision, the schemas had to be defined.
    assert compat.torchvision_was_patched() == (not _has_ops())


def test_fix_lives_in_one_place():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    hits = [p for p in root.rglob("*.py") if "torchvision::nms" in p.read_text() and ".git" not in p.parts]
    assert [p.name for p in hits] == ["compat.py"] or sorted(p.name for p in hits) == ["compat.py", "test_compat.py"]
    assert importlib.util.find_spec("open_clip") is not None
