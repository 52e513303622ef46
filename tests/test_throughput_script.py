"""benchmarks/throughput.py runs every stage loop and its bare pass, and reports finite figures."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_throughput", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def test_every_loop_reports_a_rate_and_a_ratio(tmp_path, capsys):
    script = load_script()
    out = tmp_path / "throughput.json"
    # two classes and eight images keep the race's batch (classes x images) small: seconds, not minutes;
    # one thread, so a busy machine slows it down instead of stalling it
    argv = [
        "--models",
        "tiny-vit",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--images",
        "8",
        "--classes",
        "2",
        "--threads",
        "1",
        "--json",
        str(out),
    ]
    threads = torch.get_num_threads()
    try:
        assert script.main(argv) == 0
    finally:
        torch.set_num_threads(threads)  # the rest of the session keeps its own
    assert "| tiny-vit | fp32 | tune |" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["machine"]["torch"] and doc["machine"]["threads"] >= 1
    rows = doc["rows"]
    assert {r["loop"].split("/")[0] for r in rows} == {"race", "refine", "invert", "tune", "eval"}
    for r in rows:
        assert r["loop_img_s"] > 0 and r["bare_img_s"] > 0, r
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0, r
