"""A real architecture at 224 px with the ImageNet-1K vocabulary runs the whole pipeline on the CPU
(random weights, a handful of images and steps: benchmarks/realscale.py's quick profile)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "realscale.py"


def test_vit_b_32_at_224_px_with_1000_classes_runs_every_stage(tmp_path):
    spec = importlib.util.spec_from_file_location("realscale", SCRIPT)
    realscale = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(realscale)
    args = realscale.main.__globals__["argparse"].Namespace(
        work=str(tmp_path),
        device="cpu",
        precision="fp32",
        profile="quick",
        images=12,
        n_images=12,
        eval_images=8,
        templates=1,
        seed=0,
        eval_batch_size=8,
        param=[],
    )
    record = realscale.run_one(args, "ViT-B-32-quickgelu")
    assert record["classes"] == 1000
    doc = json.loads((tmp_path / "run-ViT-B-32-quickgelu-quick" / "result.json").read_text())
    assert doc["metric_config"]["ca"]["n_classes"] == 1000
    assert doc["model"]["arch"].startswith("ViT(w768,l12,p32)@224")
    assert {"defense.identify", "defense.tune", "evaluate_before", "evaluate_after"} <= set(record["timings_s"])
    assert doc["detection"]["stage1"]["method"] == "targeted"  # 1,000 classes: screened, then raced
    assert record["peak_rss_mb"] > 0
