"""Hostile input at the one door (:mod:`toolbox.intake`): special files where a file is expected,
numbers out of range or not finite, images whose header asks for too much, settings the parser
must refuse. Every CLI case exits 2 with one line naming the culprit, within seconds, and leaves
its inputs and an earlier ``--out`` as they were.

A FIFO that code opens blocks it forever (in Rust's and C's opens too, where no Python signal
handler runs), so a watchdog process unblocks any FIFO still open for reading after a few seconds
by opening it for writing; the case then fails as "hung" instead of hanging the suite.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import resource
import socket
import stat
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import test_hostile_inputs
import torch
from test_hostile_inputs import SMOKE, TINY_CFG, cli, copy_model, edit_config, image_dir, png_header, small_png

from toolbox.errors import InputError
from toolbox.intake import files, images, numbers

earlier, tiny_model = test_hostile_inputs.earlier, test_hostile_inputs.tiny_model  # their fixtures, shared

SECONDS = 30  # a refusal is a stat and a header read; loading the smoke world is most of this
HANG_AFTER = 8.0  # a FIFO still being opened after this long is a hang


# --------------------------------------------------------------------------- helpers


def safe_snapshot(*roots: Path) -> dict[str, str]:
    """``path -> sha256`` of regular files, ``path -> kind`` of anything else; never opens a FIFO."""
    out: dict[str, str] = {}
    for root in roots:
        paths = [root] + (sorted(root.rglob("*")) if root.is_dir() and not root.is_symlink() else [])
        for p in paths:
            mode = os.lstat(p).st_mode
            if stat.S_ISREG(mode):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p)] = files.kind_of(mode) + (f" -> {os.readlink(p)}" if stat.S_ISLNK(mode) else "")
    return out


# Run in a process of its own: a thread would wait for the GIL, which a Rust or C open keeps.
WATCHDOG = r"""
import os, stat, sys, time
from pathlib import Path
root, after = Path(sys.argv[1]), float(sys.argv[2])
time.sleep(after)
while True:
    for p in root.rglob("*"):
        try:
            if stat.S_ISFIFO(os.lstat(p).st_mode):
                os.close(os.open(p, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO unless someone is reading it
                print(p, flush=True)
        except OSError:
            pass
    time.sleep(0.2)
"""


@contextmanager
def fifo_watchdog(root: Path) -> Iterator[list[str]]:
    """Yield a list that names, after the block, every FIFO under ``root`` someone was still blocked
    on after HANG_AFTER seconds; that reader was released (a writer opened and closed the FIFO)."""
    hung: list[str] = []
    proc = subprocess.Popen(
        [sys.executable, "-c", WATCHDOG, str(root), str(HANG_AFTER)], stdout=subprocess.PIPE, text=True
    )
    try:
        yield hung
    finally:
        proc.kill()
        hung.extend(proc.communicate()[0].split())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def decodable_png(width: int, height: int) -> bytes:
    """A real grey PNG (its data decodes), tiny on disk: a 1 x 100,000 one is about 300 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (b"\x00" + b"\x80" * width) * height  # filter byte 0, then mid-grey pixels
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def rewrite_config(model: Path, old: str, new: str) -> Path:
    """Text surgery on the config (json.dumps cannot write NaN where a hostile file can)."""
    cfg = model / "open_clip_config.json"
    cfg.write_text(cfg.read_text().replace(old, new))
    return model


def set_preprocess(tmp: Path, tiny: Path, **values) -> Path:
    def change(c: dict) -> dict:
        c["preprocess_cfg"].update(values)
        return c

    return edit_config(copy_model(tiny, tmp), change)


def smoke_data(world) -> list[str]:
    return ["--clean-data", str(world.world.defender_dir), "--eval-data", str(world.world.eval_labels)]


# --------------------------------------------------------------------------- CLI cases
# Each returns (argv after "run --defense none --out EARLIER", input paths to watch); a case that
# is not a run returns its whole argv and sets "whole" in the table.


def weights_file_is_a_fifo(tmp, tiny, world):
    m = copy_model(tiny, tmp)
    (m / "open_clip_model.safetensors").unlink()
    fifo(m / "open_clip_model.safetensors")
    return ["--model", str(m)], [m]


def a_fifo_beside_the_weights(tmp, tiny, world):
    m = copy_model(tiny, tmp)
    fifo(m / "other.bin")  # open_clip globs *.bin when it looks for weights
    return ["--model", str(m)], [m]


def model_config_is_a_fifo(tmp, tiny, world):
    m = copy_model(tiny, tmp)
    (m / "open_clip_config.json").unlink()
    fifo(m / "open_clip_config.json")
    return ["--model", str(m)], [m]


def checkpoint_is_a_fifo(tmp, tiny, world):
    return ["--model", str(fifo(tmp / "suspect.pt"))], [tmp / "suspect.pt"]


def checkpoint_is_a_fifo_with_format(tmp, tiny, world):
    return ["--model", str(fifo(tmp / "suspect.pt")), "--model-format", "openai-ckpt"], [tmp / "suspect.pt"]


def arch_at_a_fifo(tmp, tiny, world):
    return ["--model", f"ViT-B-32@{fifo(tmp / 'w.safetensors')}"], [tmp / "w.safetensors"]


def visual_only_from_a_fifo(tmp, tiny, world):
    return ["--model", f"{fifo(tmp / 'visual.pt')}::{tiny}"], [tmp / "visual.pt"]


def model_is_a_character_device(tmp, tiny, world):
    return ["--model", "/dev/zero", "--model-format", "openai-ckpt"], []


def clean_data_is_a_fifo(tmp, tiny, world):
    return [*SMOKE, "--clean-data", str(fifo(tmp / "pairs.csv"))], [tmp / "pairs.csv"]


def labels_csv_is_a_fifo(tmp, tiny, world):
    return [*SMOKE, "--eval-data", str(fifo(tmp / "eval" / "labels.csv"))], [tmp / "eval"]


def classes_txt_beside_labels_is_a_fifo(tmp, tiny, world):
    d = image_dir(tmp, {"a.png": small_png()})
    (tmp / "labels.csv").write_text("image,label\nimages/a.png,0\n")
    fifo(tmp / "classes.txt")
    return [*SMOKE, "--eval-data", str(tmp / "labels.csv")], [tmp / "labels.csv", tmp / "classes.txt", d]


def imagefolder_classes_txt_is_a_fifo(tmp, tiny, world):
    root = tmp / "eval"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "x.png").write_bytes(small_png())
    fifo(root / "classes.txt")
    return [*SMOKE, "--eval-data", str(root)], [root]


def coco_json_is_a_fifo(tmp, tiny, world):
    return [*SMOKE, "--retrieval-data", str(fifo(tmp / "captions.json"))], [tmp / "captions.json"]


def csv_row_names_a_fifo(tmp, tiny, world):
    d = image_dir(tmp, {"a.png": small_png()})
    fifo(d / "pipe.png")
    csv = tmp / "pairs.csv"
    csv.write_text(f"image,caption\n{d / 'a.png'},a red square\n{d / 'pipe.png'},a pipe\n")
    return [*SMOKE, "--clean-data", str(csv)], [csv, d]


def csv_row_names_dev_zero(tmp, tiny, world):
    d = image_dir(tmp, {"a.png": small_png()})
    csv = tmp / "pairs.csv"
    csv.write_text(f"image,caption\n{d / 'a.png'},a red square\n/dev/zero,zeros\n")
    return [*SMOKE, "--clean-data", str(csv)], [csv, d]


def csv_row_names_a_folder(tmp, tiny, world):
    d = image_dir(tmp, {"a.png": small_png()})
    (d / "sub").mkdir()
    csv = tmp / "pairs.csv"
    csv.write_text(f"image,caption\n{d / 'a.png'},a red square\n{d / 'sub'},a folder\n")
    return [*SMOKE, "--clean-data", str(csv)], [csv, d]


def only_row_is_a_fifo_skipped(tmp, tiny, world):
    d = tmp / "images"
    fifo(d / "pipe.png")
    csv = tmp / "pairs.csv"
    csv.write_text(f"image,caption\n{d / 'pipe.png'},a pipe\n")
    return [*SMOKE, "--clean-data", str(csv), "--skip-unreadable"], [csv, d]


def classes_file_is_a_fifo(tmp, tiny, world):
    return [*SMOKE, "--classes", str(fifo(tmp / "classes.txt"))], [tmp / "classes.txt"]


def templates_file_is_a_fifo(tmp, tiny, world):
    return [*SMOKE, "--templates", str(fifo(tmp / "templates.txt"))], [tmp / "templates.txt"]


def classes_file_is_dev_zero(tmp, tiny, world):
    return [*SMOKE, "--classes", "/dev/zero"], []


def classes_file_is_a_socket(tmp, tiny, world):
    path = tmp / "s"  # an AF_UNIX path has at most 107 bytes: bind the shorter of two spellings
    path = min(path, Path(os.path.relpath(path)), key=lambda p: len(str(p)))
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # the socket file stays after the socket is closed
    return [*SMOKE, "--classes", str(path)], [path]


def classes_file_too_large(tmp, tiny, world):
    big = tmp / "classes.txt"
    with open(big, "wb") as fh:
        fh.truncate(files.MAX_TEXT_BYTES + 1)  # sparse: 16 MiB of nothing on disk
    return [*SMOKE, "--classes", str(big)], [big]


def thin_tall_png(tmp, tiny, world):
    d = image_dir(tmp, {"thin.png": decodable_png(1, 100_000), "ok.png": small_png()})
    return [*SMOKE, "--clean-data", str(d)], [d]


def thin_tall_png_header_only(tmp, tiny, world):
    d = image_dir(tmp, {"thin.png": png_header(1, 80_000_000), "ok.png": small_png()})
    return [*SMOKE, "--clean-data", str(d)], [d]


def thin_png_within_the_side_bound(tmp, tiny, world):
    d = image_dir(tmp, {"thin.png": decodable_png(1, 16_000), "ok.png": small_png()})
    return [*SMOKE, "--clean-data", str(d)], [d]


def strip_png_past_the_aspect_bound(tmp, tiny, world):
    d = image_dir(tmp, {"strip.png": png_header(16000, 2), "ok.png": small_png()})
    return [*SMOKE, "--clean-data", str(d)], [d]


def wide_png_past_the_side_bound(tmp, tiny, world):
    d = image_dir(tmp, {"wide.png": png_header(20000, 1000), "ok.png": small_png()})
    return [*SMOKE, "--clean-data", str(d)], [d]


def template_with_a_stray_brace(tmp, tiny, world):
    t = tmp / "templates.txt"
    t.write_text("# comment\na photo of a {}.\na {} of {\n")
    return [*SMOKE, "--templates", str(t)], [t]


def template_with_a_closing_brace(tmp, tiny, world):
    t = tmp / "templates.txt"
    t.write_text("a } photo of a {}.\n")
    return [*SMOKE, "--templates", str(t)], [t]


def template_with_a_format_spec(tmp, tiny, world):
    t = tmp / "templates.txt"
    t.write_text("a photo of a {}.\na {} {:d}\n")
    return [*SMOKE, "--templates", str(t)], [t]


def template_with_a_named_field(tmp, tiny, world):
    t = tmp / "templates.txt"
    t.write_text("a photo of a {name}\n")
    return [*SMOKE, "--templates", str(t)], [t]


def steps_of_a_trillion(tmp, tiny, world):
    return [*SMOKE, "--defense", "invertune", "-p", "invert.steps=1000000000000"], []


def steps_of_ninety_digits(tmp, tiny, world):
    return [*SMOKE, "--defense", "invertune", "-p", f"tune.steps={'9' * 90}"], []


def learning_rate_past_a_double(tmp, tiny, world):
    return [*SMOKE, "--defense", "invertune", "-p", "invert.lr=1e309"], []


def learning_rate_of_1e12(tmp, tiny, world):
    return [*SMOKE, "--defense", "invertune", "-p", "tune.lr=1e12"], []


def tuple_setting_with_nan(tmp, tiny, world):
    return [*SMOKE, "--defense", "cleanclip", "-p", "image_aug.crop_scale=nan,1"], []


def tuple_setting_negative(tmp, tiny, world):
    return [*SMOKE, "--defense", "invertune", "-p", "identify.global_eps=-0.5"], []


def unicode_digits(tmp, tiny, world):
    return [*SMOKE, "--defense", "invertune", "-p", "invert.steps=\u0663\u0660"], []


def attack_seed_past_2_32(tmp, tiny, world):
    return [*SMOKE, "--attack", "badnet", "--attack-param", f"trigger_seed={2**40}"], []


def seed_2_to_the_64(tmp, tiny, world):
    return [*SMOKE, "--seed", str(2**64)], []


def seed_negative(tmp, tiny, world):
    return [*SMOKE, "--seed=-1"], []


def seed_a_fraction(tmp, tiny, world):
    return [*SMOKE, "--seed", "1.5"], []


def max_params_not_a_number(tmp, tiny, world):
    os.environ["TOOLBOX_MAX_MODEL_PARAMS"] = "lots"  # the test restores it
    return ["--model", str(tiny), *smoke_data(world)], []


def max_params_infinite(tmp, tiny, world):
    os.environ["TOOLBOX_MAX_MODEL_PARAMS"] = "inf"
    return ["--model", str(tiny), *smoke_data(world)], []


def max_params_negative(tmp, tiny, world):
    os.environ["TOOLBOX_MAX_MODEL_PARAMS"] = "-5"
    return ["--model", str(tiny), *smoke_data(world)], []


def preprocess_std_zero(tmp, tiny, world):
    m = set_preprocess(tmp, tiny, std=[0, 0, 0])
    return ["--model", str(m), *smoke_data(world)], [m]


def preprocess_std_nan(tmp, tiny, world):
    m = rewrite_config(set_preprocess(tmp, tiny, std="@"), '"@"', "[NaN, 0.5, 0.5]")
    return ["--model", str(m), *smoke_data(world)], [m]


def preprocess_std_past_a_double(tmp, tiny, world):
    m = rewrite_config(set_preprocess(tmp, tiny, std="@"), '"@"', "[1e400, 0.5, 0.5]")
    return ["--model", str(m), *smoke_data(world)], [m]


def preprocess_mean_absurd(tmp, tiny, world):
    m = set_preprocess(tmp, tiny, mean=[1e30, 0.5, 0.5])
    return ["--model", str(m), *smoke_data(world)], [m]


def preprocess_std_negative(tmp, tiny, world):
    m = set_preprocess(tmp, tiny, std=[-0.3, 0.3, 0.3])
    return ["--model", str(m), *smoke_data(world)], [m]


def preprocess_mean_a_string(tmp, tiny, world):
    m = set_preprocess(tmp, tiny, mean="imagenet")
    return ["--model", str(m), *smoke_data(world)], [m]


def preprocess_mean_two_channels(tmp, tiny, world):
    m = set_preprocess(tmp, tiny, mean=[0.5, 0.5])
    return ["--model", str(m), *smoke_data(world)], [m]


def preprocess_size_absurd(tmp, tiny, world):
    m = set_preprocess(tmp, tiny, size=10**9)
    return ["--model", str(m), *smoke_data(world)], [m]


def model_config_with_infinity(tmp, tiny, world):
    m = rewrite_config(copy_model(tiny, tmp), '"embed_dim": 16', '"embed_dim": Infinity')
    return ["--model", str(m)], [m]


def zoo_spec_is_a_fifo(tmp, tiny, world):
    return ["zoo", "build", str(fifo(tmp / "spec.yaml")), "--out", str(tmp / "zoo")], [tmp / "spec.yaml"]


CASES = {  # case -> (exit code, what stderr says)
    weights_file_is_a_fifo: (2, "holds open_clip_model.safetensors, which is a FIFO (named pipe)"),
    a_fifo_beside_the_weights: (2, "holds other.bin, which is a FIFO (named pipe)"),
    model_config_is_a_fifo: (2, "open_clip_config.json is a FIFO (named pipe), not a regular file"),
    checkpoint_is_a_fifo: (2, "suspect.pt is a FIFO (named pipe), not a regular file or a folder"),
    checkpoint_is_a_fifo_with_format: (2, "suspect.pt is a FIFO (named pipe)"),
    arch_at_a_fifo: (2, "w.safetensors is a FIFO (named pipe)"),
    visual_only_from_a_fifo: (2, "visual.pt is a FIFO (named pipe)"),
    model_is_a_character_device: (2, "/dev/zero is a character device"),
    clean_data_is_a_fifo: (2, "pairs.csv is a FIFO (named pipe), not a regular file or a folder"),
    labels_csv_is_a_fifo: (2, "labels.csv is a FIFO (named pipe)"),
    classes_txt_beside_labels_is_a_fifo: (2, "classes.txt is a FIFO (named pipe), not a regular file"),
    imagefolder_classes_txt_is_a_fifo: (2, "classes.txt is a FIFO (named pipe), not a regular file"),
    coco_json_is_a_fifo: (2, "captions.json is a FIFO (named pipe)"),
    csv_row_names_a_fifo: (2, "pipe.png: is a FIFO (named pipe), not a regular file"),
    csv_row_names_dev_zero: (2, "cannot read image /dev/zero: is a character device, not a regular file"),
    csv_row_names_a_folder: (2, "sub: is a directory, not a regular file"),
    only_row_is_a_fifo_skipped: (2, "holds no usable images (1 skipped as unreadable)"),
    classes_file_is_a_fifo: (2, "class names file"),
    templates_file_is_a_fifo: (2, "templates file"),
    classes_file_is_dev_zero: (2, "class names file /dev/zero is a character device, not a regular file"),
    classes_file_is_a_socket: (2, "is a socket, not a regular file"),
    classes_file_too_large: (2, "over the limit of 16 MiB"),
    thin_tall_png: (2, "1 x 100000 pixels; a side may be at most 16384"),
    thin_tall_png_header_only: (2, "1 x 80000000 pixels; a side may be at most 16384"),
    thin_png_within_the_side_bound: (2, "1 x 16000 pixels, an aspect ratio over 100:1"),
    strip_png_past_the_aspect_bound: (2, "16000 x 2 pixels, an aspect ratio over 100:1"),
    wide_png_past_the_side_bound: (2, "20000 x 1000 pixels; a side may be at most 16384"),
    template_with_a_stray_brace: (2, "line 3: 'a {} of {' is not a format string"),
    template_with_a_closing_brace: (2, "line 1: 'a } photo of a {}.' is not a format string"),
    template_with_a_format_spec: (2, "line 2: each line needs exactly one {}"),
    template_with_a_named_field: (2, "line 1: each line needs exactly one {}"),
    steps_of_a_trillion: (2, "invert.steps must be <= 10000000"),
    steps_of_ninety_digits: (2, "tune.steps must be <= 10000000"),
    learning_rate_past_a_double: (2, "invert.lr must be a finite number"),
    learning_rate_of_1e12: (2, "tune.lr must be <= 1000000000.0"),
    tuple_setting_with_nan: (2, "image_aug.crop_scale[0] must be a finite number"),
    tuple_setting_negative: (2, "identify.global_eps[0] must be >= 0"),
    unicode_digits: (2, "invert.steps must be an integer"),
    attack_seed_past_2_32: (2, "trigger_seed must be <= 4294967295"),
    seed_2_to_the_64: (2, "argument --seed: the seed must be <= 4294967295"),
    seed_negative: (2, "argument --seed: the seed must be >= 0"),
    seed_a_fraction: (2, "argument --seed: invalid int value: '1.5'"),
    max_params_not_a_number: (2, "error: TOOLBOX_MAX_MODEL_PARAMS must be a number, got 'lots'"),
    max_params_infinite: (2, "error: TOOLBOX_MAX_MODEL_PARAMS must be a finite number"),
    max_params_negative: (2, "error: TOOLBOX_MAX_MODEL_PARAMS must be >= 1 (set in the environment), got -5"),
    preprocess_std_zero: (2, "open_clip_config.json preprocess_cfg: std = [0, 0, 0] must be three numbers"),
    preprocess_std_nan: (2, "open_clip_config.json: preprocess_cfg.std[0] is NaN, not a finite number"),
    preprocess_std_past_a_double: (2, "open_clip_config.json: preprocess_cfg.std[0] is 1e400"),
    preprocess_mean_absurd: (2, "preprocess_cfg: mean = [1e+30, 0.5, 0.5] must be three numbers"),
    preprocess_std_negative: (2, "preprocess_cfg: std = [-0.3, 0.3, 0.3] must be three numbers"),
    preprocess_mean_a_string: (2, "preprocess_cfg: mean = 'imagenet' must be three numbers"),
    preprocess_mean_two_channels: (2, "preprocess_cfg: mean = [0.5, 0.5] must be three numbers"),
    preprocess_size_absurd: (2, "preprocess_cfg size: image_size = 1000000000 is not a number in"),
    model_config_with_infinity: (2, "open_clip_config.json: model_cfg.embed_dim is Infinity"),
    zoo_spec_is_a_fifo: (2, "zoo spec"),
}
WHOLE = {zoo_spec_is_a_fifo}  # cases whose argv is a whole command line


@pytest.mark.parametrize("case", list(CASES), ids=[c.__name__ for c in CASES])
def test_hostile_intake_is_one_line_exit_2_and_nothing_is_lost(
    case,
    host,
    smoke_world,
    tiny_model,
    earlier,
    tmp_path,
    capsys,
    monkeypatch,
):
    code, message = CASES[case]
    monkeypatch.setenv("TOOLBOX_MAX_MODEL_PARAMS", "")  # a case may set it; monkeypatch restores it
    argv, inputs = case(tmp_path, tiny_model, smoke_world)
    if case not in WHOLE:
        argv = ["run", "--defense", "none", "--out", str(earlier), *argv]  # a later --defense wins
    before = safe_snapshot(earlier, *inputs)
    rss, start = peak_rss_mb(), time.monotonic()
    with fifo_watchdog(tmp_path) as hung:
        got, err = cli(argv, capsys)
    assert not hung, f"blocked on {hung}"
    assert time.monotonic() - start < SECONDS
    assert peak_rss_mb() - rss < 1024, "the refusal allocated a gigabyte"
    assert got == code, err
    assert message in err, err
    assert "Traceback" not in err
    assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err
    assert safe_snapshot(earlier, *inputs) == before, "an input or the earlier result changed"


# --------------------------------------------------------------------------- the intake, directly


@pytest.mark.parametrize(
    "make, kind",
    [
        (lambda d: fifo(d / "p"), "a FIFO (named pipe)"),
        (lambda d: Path("/dev/zero"), "a character device"),
        (lambda d: d, "a directory"),
    ],
    ids=["fifo", "device", "directory"],
)
def test_only_regular_files_are_opened(tmp_path, make, kind):
    path = make(tmp_path)
    for read in (files.read_bytes, files.read_text, files.read_json, files.regular_file):
        with pytest.raises(InputError, match=re.escape(f"{path} is {kind}, not a regular file")):
            read(path, "thing")
    assert not files.is_regular(path)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(InputError, match=re.escape(kind)):
        files.read_bytes(link, "thing")


def test_regular_files_and_links_to_them_are_read_and_bounded(tmp_path):
    (tmp_path / "a.json").write_text('{"x": [1, 2.5]}')
    (tmp_path / "link.json").symlink_to(tmp_path / "a.json")
    assert files.read_json(tmp_path / "link.json") == {"x": [1, 2.5]}
    with pytest.raises(InputError, match="not found"):
        files.read_text(tmp_path / "nowhere", "class names file")
    with pytest.raises(InputError, match="is 15 bytes, over the limit of 10 bytes"):
        files.read_bytes(tmp_path / "a.json", "config", limit=10)
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(InputError, match="not UTF-8 text"):
        files.read_text(tmp_path / "bad.txt", "classes")


@pytest.mark.parametrize(
    "text, where",
    [
        ('{"a": {"b": [1, NaN]}}', "a.b[1] is NaN"),
        ('{"std": [Infinity]}', "std[0] is Infinity"),
        ('{"x": -1e999}', "x is -1e999"),
        ("[" * 100_000, "nests too deeply"),
        ("9" * 5000, "is not valid JSON"),
        ('{"a": 1', "is not valid JSON"),
    ],
)
def test_json_is_strict(tmp_path, text, where):
    (tmp_path / "c.json").write_text(text)
    with pytest.raises(InputError, match=re.escape(where)):
        files.read_json(tmp_path / "c.json", "model config")


def test_a_folder_with_a_special_file_is_refused_and_an_ordinary_one_passes(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"x")
    files.refuse_special(tmp_path, "model folder")
    fifo(tmp_path / "z.bin")
    with pytest.raises(InputError, match="holds z.bin, which is a FIFO"):
        files.refuse_special(tmp_path, "model folder")


@pytest.mark.parametrize(
    "width, height, message",
    [
        (1, 80_000_000, "a side may be at most 16384"),
        (80_000_000, 1, "a side may be at most 16384"),
        (16384, 16384, "over the limit of 89478485"),
        (16000, 100, "aspect ratio over 100:1"),
        (1, 101, "aspect ratio over 100:1"),
        (0, 5, "declares 0 x 5 pixels"),
    ],
)
def test_image_dimensions_are_bounded(width, height, message):
    with pytest.raises(InputError, match=message):
        images.check_dimensions(width, height, "image x.png")


def test_ordinary_image_sizes_pass():
    for size in ((1, 1), (224, 224), (4000, 3000), (100, 1), (16384, 5000)):
        images.check_dimensions(*size, "image x.png")


@pytest.mark.parametrize("height", [100_000, 16_000, 80_000_000])
def test_a_thin_tall_png_is_refused_from_its_header_in_well_under_a_second(tmp_path, height):
    """Resized to 224 px on its shorter side, a 1 x 100,000 PNG of 300 bytes would be 224 x 22.4 M pixels."""
    from adapters.images import UnreadableImageError, load_image

    path = tmp_path / "thin.png"
    path.write_bytes(decodable_png(1, height) if height <= 100_000 else png_header(1, height))
    assert path.stat().st_size < 1000
    rss, start = peak_rss_mb(), time.monotonic()
    with pytest.raises(UnreadableImageError, match=f"1 x {height} pixels"):
        load_image(path, 224)
    assert time.monotonic() - start < 1.0
    assert peak_rss_mb() - rss < 64


def test_an_ordinary_image_loads_as_before(tmp_path):
    from adapters.images import load_image

    (tmp_path / "a.png").write_bytes(small_png())
    img = load_image(tmp_path / "a.png", 16)
    assert img.shape == (3, 16, 16) and abs(float(img[0].mean()) - 200 / 255) < 1e-6


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: numbers.bounded_int(True, "n", 0, 5), "must be an integer in"),
        (lambda: numbers.bounded_int(2.5, "n", 0, 5), "must be an integer in"),
        (lambda: numbers.bounded_int(float("nan"), "n", 0, 5), "must be an integer in"),
        (lambda: numbers.bounded_int(6, "n", 0, 5), "n must be <= 5, got 6"),
        (lambda: numbers.bounded_int(10**5000, "n", 0, 5), "an integer of about 5000 digits"),
        (lambda: numbers.finite_float(float("inf"), "x"), "x must be a finite number"),
        (lambda: numbers.finite_float(10**400, "x"), "x must be a finite number"),
        (lambda: numbers.finite_float("1", "x"), "x must be a number"),
        (lambda: numbers.finite_float(-1.0, "x", lo=0.0), "x must be >= 0.0"),
        (lambda: numbers.parse_float("1e309", "x"), "finite"),
        (lambda: numbers.parse_float("\u0661", "x"), "must be a number"),
        (lambda: numbers.parse_int("0x10", "n", 0, 99), "must be an integer in"),
        (lambda: numbers.parse_int("1" * 5000, "n", 0, 99), "an integer of 5000 digits is out of any range"),
        (lambda: numbers.seed(2**64), "must be <= 4294967295"),
        (lambda: numbers.seed(-1), "must be >= 0"),
        (lambda: numbers.env_number("V", 3, 1, 10, env={"V": "11"}), "V must be <= 10"),
        (lambda: numbers.env_number("V", 3, 1, 10, env={"V": "2.5"}), "V must be a whole number"),
        (lambda: numbers.env_number("V", 3, 1, 10, env={"V": "nan"}), "V must be a finite number"),
    ],
)
def test_numbers_are_finite_and_in_range(call, message):
    with pytest.raises(InputError, match=re.escape(message)):
        call()


def test_numbers_that_are_fine_pass():
    assert numbers.parse_int(" 1_000 ", "n", 0, 10**4) == 1000
    assert numbers.parse_float("-0", "x") == 0.0
    assert numbers.seed("4294967295") == 2**32 - 1
    assert numbers.env_number("V", 3, 1, 10**13, env={}) == 3
    assert numbers.env_number("V", 3, 1, 10**13, env={"V": "3e9"}) == 3_000_000_000


def test_seed_is_checked_before_anything_is_loaded():
    from toolbox.runner import Sources, check_measurement, seed_everything

    for bad in (2**64, -1):
        with pytest.raises(InputError, match="seed"):
            check_measurement(Sources(seed=bad))
        with pytest.raises(InputError, match="seed"):
            seed_everything(bad)


# --------------------------------------------------------------------------- the settings parser, fuzzed


@dataclass(frozen=True)
class Inner:
    steps: int = 100
    eps: tuple[float, ...] = (0.1,)


@dataclass(frozen=True)
class Fuzzed:
    steps: int = 10
    lr: float = 1e-3
    angle: float = field(default=0.0, metadata={"signed": True})
    width: int = field(default=8, metadata={"max": 64})
    trigger_seed: int = 0
    maybe: int | None = None
    crop: tuple[float, float] = (0.6, 1.0)
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    name: str = "x"
    inner: Inner = Inner()


class FuzzedComponent:
    name = "fuzzed"
    Config = Fuzzed


HOSTILE_VALUES = [
    "",
    " ",
    "nan",
    "NaN",
    "-nan",
    "inf",
    "-inf",
    "Infinity",
    "1e309",
    "-1e309",
    "1e308",
    "-0",
    "-0.0",
    "0",
    "-1",
    "1e9",
    "1e10",
    "9" * 30,
    "9" * 5000,
    "-" + "9" * 30,
    "10000001",
    "4294967296",
    "\u0663",
    "\uff11\uff12",
    "1_0",
    "0x1f",
    "1e3",
    "1,2",
    "1,,2",
    "nan,1",
    "1,inf",
    ",",
    "true",
    "None",
    "null",
    "[1, 2]",
    "{'a': 1}",
    "\x00",
    "1\n2",
]
KEYS = ["steps", "lr", "angle", "width", "trigger_seed", "maybe", "crop", "flag", "mode", "name", "inner.steps"]
KEYS += ["inner.eps", "inner", "nosuch", "inner.nosuch", "steps.x", "", "."]


def assert_sane(config: object, path: str = "") -> None:
    """Every number in ``config`` finite and within the bounds check_config states."""
    if isinstance(config, dict):  # named groups of settings
        for key, group in config.items():
            assert_sane(group, f"{path}{key}.")
        return
    default = type(config)() if hasattr(config, "__dataclass_fields__") else None
    for f in getattr(config, "__dataclass_fields__", {}).values():
        value = getattr(config, f.name)
        if hasattr(value, "__dataclass_fields__") or isinstance(value, dict):
            assert_sane(value, f"{path}{f.name}.")
            continue
        ref = getattr(default, f.name, None)
        refs = ref if isinstance(ref, tuple) else (ref,)
        items = value if isinstance(value, (tuple, list)) else (value,)
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            seed = f.name.endswith("seed") and isinstance(v, int)
            cap = f.metadata.get("max", 2**32 - 1 if seed else numbers.MAX_COUNT if isinstance(v, int) else 1e9)
            assert abs(v) <= cap and (isinstance(v, int) or math.isfinite(v)), (path, f.name, v)
            nonneg = all(isinstance(r, (int, float)) and r >= 0 for r in refs) and not f.metadata.get("signed")
            assert v >= 0 or not nonneg, (path, f.name, v)


@pytest.mark.parametrize("key", KEYS)
def test_the_settings_parser_refuses_or_accepts_only_sane_values(key):
    from toolbox.api import build_config

    for raw in HOSTILE_VALUES:
        try:
            config = build_config(FuzzedComponent, {key: raw})
        except ValueError as err:  # InputError is one
            assert str(err).strip() and "\n" not in str(err).strip("\n"), (key, raw, err)
            assert len(str(err)) < 400, (key, raw, err)
            continue
        assert_sane(config)


def test_the_settings_parser_on_real_components_random_overrides():
    import random

    from toolbox import plugins
    from toolbox.api import build_config, config_defaults

    registry = plugins.get_host().build_registry()
    rng = random.Random(40)
    for kind in ("defense", "attack"):
        for name in registry.names(kind):
            cls = registry.get(kind, name).obj
            keys = _flat_keys(config_defaults(cls))
            for _ in range(30):
                overrides = {rng.choice(keys): rng.choice(HOSTILE_VALUES) for _ in range(rng.randint(1, 3))}
                try:
                    config = build_config(cls, overrides)
                except (ValueError, TypeError) as err:
                    assert str(err).strip(), (name, overrides)
                    continue
                assert_sane(config, f"{name}.")


def _flat_keys(defaults: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in defaults.items():
        if isinstance(value, dict) and value:
            keys += _flat_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys or ["nosuch"]


def test_ordinary_settings_parse_as_before():
    from toolbox.api import build_config

    config = build_config(
        FuzzedComponent,
        {"steps": "300", "lr": "1e-4", "angle": "-45", "crop": "0.5, 1", "maybe": "none", "inner.eps": "0.1,0.2"},
    )
    assert (config.steps, config.lr, config.angle, config.crop, config.maybe) == (300, 1e-4, -45.0, (0.5, 1.0), None)
    assert config.inner.eps == (0.1, 0.2)


# --------------------------------------------------------------------------- preprocessing and embeddings


def test_hf_preprocessor_config_with_zero_std_names_the_file_and_key(tmp_path):
    from adapters.hf_clip import HFClipAdapter

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip", "vision_config": {}, "text_config": {}}))
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0, 1, 1]}))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match=r"preprocessor_config.json: image_std = \[0, 1, 1\] must be three numbers"):
        HFClipAdapter().load(str(tmp_path), torch.device("cpu"))


def test_non_finite_embeddings_raise_instead_of_giving_a_ca(host):
    from adapters.clip_model import build_clip
    from adapters.models import wrap
    from toolbox.api import ImageData, InMemoryImages
    from toolbox.evaluation import EvalInputs, MetricConfig, evaluate

    torch.manual_seed(0)
    model = wrap(build_clip(TINY_CFG), TINY_CFG)
    model.pixel_std.zero_()  # as a zero std in a config would, were it not refused at the door
    data = ImageData(InMemoryImages(torch.full((4, 3, 32, 32), 128, dtype=torch.uint8)), "labelled", "x", ["a", "b"])
    inputs = EvalInputs(eval_data=data, classnames=["a", "b"], templates=["a photo of a {}."])
    registry = host.build_registry()
    with pytest.raises(InputError, match="non-finite .* image embeddings of evaluation images for 4 of 4"):
        evaluate(model, inputs, MetricConfig(top_k=(1,)), registry, torch.device("cpu"))


# --------------------------------------------------------------------------- templates and class names


def test_class_names_with_braces_are_data_not_format_strings(tmp_path):
    from toolbox.runner import Sources
    from toolbox.runner.inputs import vocabulary

    (tmp_path / "classes.txt").write_text("{\n}\n{0}\n{name}\n{:>99999999}\n%s\n")
    (tmp_path / "templates.txt").write_text("a {{logo}} on a {}.\na {}\n")
    classnames, templates = vocabulary(
        Sources(classes=str(tmp_path / "classes.txt"), templates=str(tmp_path / "templates.txt")), {}
    )
    assert templates == ["a {{logo}} on a {}.", "a {}"]
    prompts = [t.format(c) for c in classnames for t in templates]  # what open_clip does with them
    assert prompts[:2] == ["a {logo} on a {.", "a {"] and "a {:>99999999}" in prompts


def test_a_template_that_hides_an_attribute_lookup_is_refused(tmp_path):
    from toolbox.runner.inputs import read_templates

    (tmp_path / "t.txt").write_text("a photo of a {}\na {0.__class__.__mro__}\n")
    with pytest.raises(InputError, match="line 2: each line needs exactly one"):
        read_templates(str(tmp_path / "t.txt"))
