"""Hostile and nonsensical input: every case is one clear line on stderr with exit code 2 (3 or
130/143 where the run itself fails or is stopped), no input file changes, and the result an
earlier run left in ``--out`` survives byte for byte.

Each case builds its input under ``tmp_path`` and returns the command line; the table at the
bottom names the expected code and message.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import safetensors.torch
import torch

from toolbox.api import Defense
from toolbox.cli import main
from toolbox.hookspecs import hookimpl

TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


# --------------------------------------------------------------------------- helpers


def snapshot(*roots: Path) -> dict[str, str]:
    """``path -> sha256`` of every file (and ``path/ -> dir``) under ``roots``."""
    out: dict[str, str] = {}
    for root in roots:
        root = Path(root)
        if root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
        elif root.is_dir():
            out[f"{root}/"] = "dir"
            for p in sorted(root.rglob("*")):
                out[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.fixture
def earlier(tmp_path) -> Path:
    """An ``--out`` holding an earlier run's result and a user's file beside it."""
    out = tmp_path / "out"
    (out / "artifacts").mkdir(parents=True)
    (out / "model").mkdir()
    (out / "result.json").write_text('{"earlier": true}\n')
    (out / "result.csv").write_text("defense\nnone\n")
    (out / "artifacts" / "inverted_trigger.png").write_bytes(b"\x89PNG earlier")
    (out / "model" / "users-own-notes.txt").write_text("do not lose me")
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A small open_clip local-dir model with random weights."""
    from adapters.clip_model import build_clip
    from adapters.models import wrap, write_openclip_dir

    torch.manual_seed(0)
    return write_openclip_dir(wrap(build_clip(TINY_CFG), TINY_CFG), tmp_path_factory.mktemp("tiny") / "model")


def copy_model(tiny: Path, tmp: Path) -> Path:
    return Path(shutil.copytree(tiny, tmp / "suspect"))


def edit_weights(model_dir: Path, change: Callable[[dict], dict]) -> Path:
    path = model_dir / "open_clip_model.safetensors"
    safetensors.torch.save_file(change(safetensors.torch.load_file(str(path))), str(path))
    return model_dir


def edit_config(model_dir: Path, change: Callable[[dict], object]) -> Path:
    path = model_dir / "open_clip_config.json"
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return model_dir


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` pixels and whose data is one empty chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def image_dir(tmp: Path, files: dict[str, bytes]) -> Path:
    d = tmp / "images"
    d.mkdir()
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


def small_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


SMOKE = ["--preset", "smoke"]


# --------------------------------------------------------------------------- the cases
# Each returns (argv after "run --defense none", the input paths to watch).


def model_config_is_a_list(tmp, tiny, world):
    m = edit_config(copy_model(tiny, tmp), lambda c: [c])
    return ["--model", str(m)], [m]


def model_config_memory_bomb(tmp, tiny, world):
    def bomb(c):
        c["model_cfg"]["vision_cfg"].update(layers=5000, width=4096)
        return c

    m = edit_config(copy_model(tiny, tmp), bomb)
    return ["--model", str(m)], [m]


def model_config_huge_image(tmp, tiny, world):
    def huge(c):
        c["model_cfg"]["vision_cfg"]["image_size"] = 100_000
        return c

    m = edit_config(copy_model(tiny, tmp), huge)
    return ["--model", str(m)], [m]


def model_config_string_layers(tmp, tiny, world):
    def text(c):
        c["model_cfg"]["text_cfg"]["layers"] = "12"
        return c

    m = edit_config(copy_model(tiny, tmp), text)
    return ["--model", str(m)], [m]


def model_config_asks_for_hub_weights(tmp, tiny, world):
    def hub(c):
        c["model_cfg"]["text_cfg"]["hf_model_name"] = "someone/text-tower"
        return c

    m = edit_config(copy_model(tiny, tmp), hub)
    return ["--model", str(m)], [m]


def truncated_safetensors(tmp, tiny, world):
    m = copy_model(tiny, tmp)
    w = m / "open_clip_model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    return ["--model", str(m)], [m]


def safetensors_huge_header(tmp, tiny, world):
    m = copy_model(tiny, tmp)
    (m / "open_clip_model.safetensors").write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    return ["--model", str(m)], [m]


def missing_tensor(tmp, tiny, world):
    m = edit_weights(copy_model(tiny, tmp), lambda sd: {k: v for k, v in sd.items() if k != "ln_final.weight"})
    return ["--model", str(m)], [m]


def nan_weights(tmp, tiny, world):
    def poison(sd):
        sd["ln_final.weight"][0] = float("nan")
        return sd

    m = edit_weights(copy_model(tiny, tmp), poison)
    return ["--model", str(m)], [m]


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['HOSTILE_MARKER']}",))


def pickle_payload(tmp, tiny, world):
    os.environ["HOSTILE_MARKER"] = str(tmp / "payload-ran")
    ckpt = tmp / "suspect.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _Payload()}, ckpt)
    return ["--model", str(ckpt)], [ckpt]


def size_mismatch(tmp, tiny, world):
    sd = safetensors.torch.load_file(str(tiny / "open_clip_model.safetensors"))
    sd["transformer.resblocks.0.attn.in_proj_weight"] = torch.zeros(97, 32)
    ckpt = tmp / "suspect.pt"
    torch.save({"state_dict": sd, "model_cfg": TINY_CFG}, ckpt)
    return ["--model", str(ckpt)], [ckpt]


def hf_memory_bomb(tmp, tiny, world):
    d = tmp / "hf"
    d.mkdir()
    (d / "config.json").write_text(
        json.dumps(
            {"model_type": "clip", "vision_config": {"hidden_size": 4096, "num_hidden_layers": 5000}, "text_config": {}}
        )
    )
    (d / "model.safetensors").write_bytes(b"\x00" * 16)
    return ["--model", str(d)], [d]


def model_not_found(tmp, tiny, world):
    return ["--model", str(tmp / "nowhere")], []


def visual_only_without_base(tmp, tiny, world):
    visual = tmp / "visual.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, visual)
    return ["--model", f"{visual}::{tmp / 'no-base'}"], [visual]


def decompression_bomb(tmp, tiny, world):
    d = image_dir(tmp, {"bomb.png": png_header(20000, 20000), "ok.png": small_png()})
    return [*SMOKE, "--clean-data", str(d)], [d]


def bomb_skipped_leaves_no_image(tmp, tiny, world):
    d = image_dir(tmp, {"bomb.png": png_header(20000, 20000)})
    return [*SMOKE, "--clean-data", str(d), "--skip-unreadable"], [d]


def truncated_png(tmp, tiny, world):
    d = image_dir(tmp, {"a.png": small_png()[:30], "b.png": small_png()})
    return [*SMOKE, "--clean-data", str(d)], [d]


def text_file_named_png(tmp, tiny, world):
    d = image_dir(tmp, {"a.png": b"just text, not an image\n"})
    return [*SMOKE, "--clean-data", str(d)], [d]


def empty_data_folder(tmp, tiny, world):
    d = tmp / "empty"
    d.mkdir()
    return [*SMOKE, "--clean-data", str(d)], [d]


def caption_row_without_caption(tmp, tiny, world):
    d = image_dir(tmp, {"a.png": small_png(), "b.png": small_png()})
    csv = tmp / "pairs.csv"
    csv.write_text(f"image,caption\n{d / 'a.png'},a red square\n{d / 'b.png'}\n")
    return [*SMOKE, "--clean-data", str(csv)], [csv, d]


def label_out_of_range(tmp, tiny, world):
    d = image_dir(tmp, {"a.png": small_png()})
    (tmp / "classes.txt").write_text("cat\ndog\n")
    csv = tmp / "labels.csv"
    csv.write_text("image,label\nimages/a.png,7\n")
    return [*SMOKE, "--eval-data", str(csv)], [csv, d]


def label_not_a_number(tmp, tiny, world):
    d = image_dir(tmp, {"a.png": small_png()})
    (tmp / "classes.txt").write_text("cat\ndog\n")
    csv = tmp / "labels.csv"
    csv.write_text("image,label\nimages/a.png,dog\n")
    return [*SMOKE, "--eval-data", str(csv)], [csv, d]


def coco_annotations_not_a_list(tmp, tiny, world):
    j = tmp / "captions.json"
    j.write_text(json.dumps({"images": [], "annotations": {"0": "a cat"}}))
    return [*SMOKE, "--retrieval-data", str(j)], [j]


def imagefolder_without_classes_txt(tmp, tiny, world):
    root = tmp / "eval"
    for name in ("not-a-class", "mushroom"):
        (root / name).mkdir(parents=True)
        (root / name / "x.png").write_bytes(small_png())
    return [*SMOKE, "--eval-data", str(root)], [root]


def classes_conflict_with_eval_folder(tmp, tiny, world):
    classes = tmp / "classes.txt"
    classes.write_text("\n".join(reversed(world.world.classes.read_text().splitlines())))
    return [*SMOKE, "--classes", str(classes), "--eval-data", str(world.world.eval_labels)], [classes]


def empty_classes_file(tmp, tiny, world):
    classes = tmp / "classes.txt"
    classes.write_text("# only a comment\n\n")
    return [*SMOKE, "--classes", str(classes)], [classes]


def binary_classes_file(tmp, tiny, world):
    classes = tmp / "classes.txt"
    classes.write_bytes(b"\xff\xfe\x00\x81 not utf-8")
    return [*SMOKE, "--classes", str(classes)], [classes]


def template_without_placeholder(tmp, tiny, world):
    templates = tmp / "templates.txt"
    templates.write_text("a photo of a {}.\na photo\n")
    return [*SMOKE, "--templates", str(templates)], [templates]


def negative_steps(tmp, tiny, world):
    return [*SMOKE, "--defense", "invertune", "-p", "invert.steps=-5", "-p", "tune.steps=-5"], []


def nan_learning_rate(tmp, tiny, world):
    return [*SMOKE, "--defense", "invertune", "-p", "invert.lr=nan"], []


def unknown_parameter(tmp, tiny, world):
    return [*SMOKE, "--defense", "invertune", "-p", "stepz=3"], []


def parameter_without_value(tmp, tiny, world):
    return [*SMOKE, "-p", "steps"], []


def bad_attack_parameter_type(tmp, tiny, world):
    return [*SMOKE, "--attack", "badnet", "--attack-param", "poison_rate=lots"], []


def cuda_on_a_cpu_machine(tmp, tiny, world):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    return [*SMOKE, "--device", "cuda"], []


def device_that_does_not_exist(tmp, tiny, world):
    return [*SMOKE, "--device", "tpu9"], []


def unknown_defense(tmp, tiny, world):
    return [*SMOKE, "--defense", "nosuch"], []


def seed_not_a_number(tmp, tiny, world):
    return [*SMOKE, "--seed", "abc"], []


def out_is_the_model(tmp, tiny, world):
    m = copy_model(tiny, tmp)
    return ["--model", str(m), "--out", str(m)], [m]


def purified_model_fed_back(tmp, tiny, world):
    out = tmp / "out"  # the `earlier` fixture's folder: its model/ is the input now
    m = Path(shutil.copytree(tiny, out / "model", dirs_exist_ok=True))
    return ["--model", str(m)], [m]


def clean_data_under_out_artifacts(tmp, tiny, world):
    d = tmp / "out" / "artifacts" / "clean"
    d.mkdir(parents=True)
    (d / "a.png").write_bytes(small_png())
    return [*SMOKE, "--clean-data", str(d)], [d]


def out_inside_clean_data(tmp, tiny, world):
    d = image_dir(tmp, {"a.png": small_png()})
    return [*SMOKE, "--clean-data", str(d), "--out", str(d / "results")], [d]


def out_is_a_file(tmp, tiny, world):
    f = tmp / "a-file"
    f.write_text("mine")
    return [*SMOKE, "--out", str(f)], [f]


def out_is_a_link_to_an_input(tmp, tiny, world):
    d = image_dir(tmp, {"a.png": small_png()})
    link = tmp / "link"
    link.symlink_to(d, target_is_directory=True)
    return [*SMOKE, "--clean-data", str(d), "--out", str(link)], [d]


CASES = {  # case -> (exit code, message on stderr)
    model_config_is_a_list: (2, "is not a JSON object"),
    model_config_memory_bomb: (2, "over the limit"),
    model_config_huge_image: (2, "image_size = 100000 is not a number in"),
    model_config_string_layers: (2, "layers = '12' is not a number"),
    model_config_asks_for_hub_weights: (2, "unexpected keys ['hf_model_name']"),
    truncated_safetensors: (2, "cannot read model"),
    safetensors_huge_header: (2, "cannot read model"),
    missing_tensor: (2, 'Missing key(s) in state_dict: "ln_final.weight"'),
    nan_weights: (2, "non-finite (NaN or infinite) weights"),
    pickle_payload: (2, "refusing to unpickle"),
    size_mismatch: (2, "size mismatch for transformer.resblocks.0.attn.in_proj_weight"),
    hf_memory_bomb: (2, "over the limit"),
    model_not_found: (2, "no model adapter recognises"),
    visual_only_without_base: (2, "cannot read model"),
    decompression_bomb: (2, "DecompressionBomb"),
    bomb_skipped_leaves_no_image: (2, "holds no usable images (1 skipped as unreadable)"),
    truncated_png: (2, "cannot read image"),
    text_file_named_png: (2, "cannot read image"),
    empty_data_folder: (2, "no dataset adapter recognises"),
    caption_row_without_caption: (2, "line 3 has no caption"),
    label_out_of_range: (2, "label '7' is not a class index in 0..1"),
    label_not_a_number: (2, "label 'dog' is not a class index"),
    coco_annotations_not_a_list: (2, "'annotations' is not a list"),
    imagefolder_without_classes_txt: (2, "['not-a-class'] are not in the class vocabulary"),
    classes_conflict_with_eval_folder: (2, "differ from --classes"),
    empty_classes_file: (2, "is empty"),
    binary_classes_file: (2, "UnicodeDecodeError"),
    template_without_placeholder: (2, "needs exactly one {}"),
    negative_steps: (2, "steps must be >= 0"),
    nan_learning_rate: (2, "invert.lr must be a finite number"),
    unknown_parameter: (2, "has no parameter 'stepz'"),
    parameter_without_value: (2, "expected KEY=VALUE"),
    bad_attack_parameter_type: (2, "badnet"),
    cuda_on_a_cpu_machine: (2, "cuda is not available here"),
    device_that_does_not_exist: (2, "is not a torch device"),
    unknown_defense: (2, "unknown defense 'nosuch'"),
    seed_not_a_number: (2, "invalid int value"),
    out_is_the_model: (2, "is the input"),
    purified_model_fed_back: (2, "which this run would replace"),
    clean_data_under_out_artifacts: (2, "which this run would replace"),
    out_inside_clean_data: (2, "inside the input"),
    out_is_a_file: (2, "is not a directory"),
    out_is_a_link_to_an_input: (2, "is the input"),
}


@pytest.mark.parametrize("case", list(CASES), ids=[c.__name__ for c in CASES])
def test_hostile_input_is_one_line_exit_2_and_nothing_is_lost(
    case, host, smoke_world, tiny_model, earlier, tmp_path, capsys
):
    code, message = CASES[case]
    argv, inputs = case(tmp_path, tiny_model, smoke_world)
    argv = ["run", "--defense", "none", "--out", str(earlier), *argv]  # a later --defense / --out wins
    before = snapshot(earlier, *inputs)
    got, err = cli(argv, capsys)
    assert got == code, err
    assert message in err, err
    assert "Traceback" not in err
    assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err  # one line says what went wrong
    assert snapshot(earlier, *inputs) == before, "an input or the earlier result changed"
    assert not list(tmp_path.glob(".*.run-*")), "a staging folder was left behind"
    assert not (tmp_path / "payload-ran").exists()


# --------------------------------------------------------------------------- runs that fail or stop midway


class Stopper(Defense):
    """A defense that fails the way ``how`` says, after the model and data were loaded."""

    name = "stopper"
    how = "raise"

    def defend(self, ctx):
        (ctx.workdir / "half-written.txt").write_text("partial")
        if self.how == "raise":
            raise RuntimeError("the defense broke")
        if self.how == "sigint":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM should have stopped the run")


class StopperPlugin:
    @hookimpl
    def register_defenses(self, register):
        register(Stopper)


@pytest.mark.slow
@pytest.mark.parametrize(
    "how, code, message",
    [
        ("raise", 3, "the run failed: RuntimeError: the defense broke"),
        ("sigint", 130, "interrupted"),
        ("sigterm", 143, "terminated"),
    ],
)
def test_a_run_that_fails_midway_leaves_out_as_it_was(
    how, code, message, register_plugin, smoke_world, earlier, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(Stopper, "how", how)
    register_plugin(StopperPlugin(), "stopper-plugin")
    before = snapshot(earlier)
    got, err = cli(["run", "--defense", "stopper", *SMOKE, "--out", str(earlier)], capsys)
    assert got == code and message in err, err
    assert snapshot(earlier) == before
    assert not list(tmp_path.glob(".*.run-*"))


@pytest.mark.slow
def test_a_successful_run_moves_what_it_did_not_write_aside(host, smoke_world, earlier, capsys):
    earlier_files = {p.relative_to(earlier): p.read_bytes() for p in earlier.rglob("*") if p.is_file()}
    assert cli(["run", "--defense", "none", *SMOKE, "--out", str(earlier)], capsys)[0] == 0
    aside = [p for p in earlier.iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1, list(earlier.iterdir())
    for rel, data in earlier_files.items():  # nothing of the earlier folder is lost
        assert (aside[0] / rel).read_bytes() == data
    assert json.loads((earlier / "result.json").read_text())["defense"]["name"] == "none"
    # the second run replaces what the first wrote (the manifest vouches for it) and keeps nothing aside
    assert cli(["run", "--defense", "none", *SMOKE, "--out", str(earlier), "--seed", "1"], capsys)[0] == 0
    assert len([p for p in earlier.iterdir() if p.name.startswith("replaced-")]) == 1


@pytest.mark.slow
def test_outputs_honour_the_umask(host, smoke_world, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert cli(["run", "--defense", "none", *SMOKE, "--out", str(tmp_path / "o")], capsys)[0] == 0
    finally:
        os.umask(old)
    for name in ("result.json", "result.csv", "artifacts"):
        mode = (tmp_path / "o" / name).stat().st_mode & 0o777
        assert mode == (0o755 if name == "artifacts" else 0o644), (name, oct(mode))


def test_saved_models_and_tensors_honour_the_umask(tmp_path):
    """safetensors writes its files 0600; every file a run saves must be readable like the rest."""
    from toolbox import atomic
    from toolbox.lookup import lookup
    from toolbox_plugins.world.build import SMOKE_VIT

    old = os.umask(0o022)
    try:
        atomic.save_safetensors({"a": torch.zeros(2)}, tmp_path / "t.safetensors")
        adapter = lookup("model_adapter", "openclip-dir")()
        fresh = adapter.create(SMOKE_VIT, torch.device("cpu"))
        saved = adapter.save(fresh, fresh.model, tmp_path / "model")
    finally:
        os.umask(old)
    files = [tmp_path / "t.safetensors", *[p for p in saved.rglob("*") if p.is_file()]]
    assert len(files) >= 3
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o644, (path, oct(path.stat().st_mode))


def test_staging_folders_of_killed_runs_are_swept_and_nothing_else(tmp_path):
    import subprocess
    import sys

    from toolbox import outputs

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    tags = {
        "killed": {"pid": int(dead), "host": __import__("socket").gethostname()},
        "running": {"pid": os.getpid(), "host": __import__("socket").gethostname()},
        "elsewhere": {"pid": int(dead), "host": "another-host"},
    }
    for name, tag in tags.items():
        d = tmp_path / f".out{outputs.STAGING_MARK}{name}"
        d.mkdir()
        (d / outputs.STAGING_TAG).write_text(json.dumps(tag))
    untagged = tmp_path / f".out{outputs.STAGING_MARK}untagged"
    untagged.mkdir()
    outputs.sweep_stale(tmp_path, "out")
    left = sorted(p.name.split(outputs.STAGING_MARK)[1] for p in tmp_path.iterdir())
    assert left == ["elsewhere", "running", "untagged"]


@pytest.mark.slow
def test_out_on_another_filesystem_stages_inside_it(host, smoke_world, tmp_path, capsys):
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second filesystem (/dev/shm)")
    target = Path(__import__("tempfile").mkdtemp(dir=shm))
    try:
        link = tmp_path / "out"
        link.symlink_to(target, target_is_directory=True)
        assert cli(["run", "--defense", "none", *SMOKE, "--out", str(link)], capsys)[0] == 0
        assert (target / "result.json").is_file() and not list(target.glob(".*.run-*"))
    finally:
        shutil.rmtree(target, ignore_errors=True)


def test_a_signed_setting_may_be_negative():
    from toolbox.api import build_config
    from toolbox_plugins.attacks.stripes import Stripes

    assert build_config(Stripes, {"angle": "-45"}).angle == -45.0
    with pytest.raises(ValueError, match="must be >= 0"):
        build_config(Stripes, {"cycles": "-2"})


# --------------------------------------------------------------------------- plugins that exit


def test_plugin_calling_sys_exit_at_import_is_skipped_and_said_so(fake_distribution, smoke_world, tmp_path, capsys):
    fake_distribution("quitter", "quitter_plugin", "import sys\nsys.exit(4)\n")
    assert main(["plugins"]) == 0
    doc = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert doc["quitter"]["status"] == "skipped" and "SystemExit" in doc["quitter"]["problem"]
    assert doc["invertune"]["status"] == "loaded"
    out = tmp_path / "o"
    assert main(["run", "--defense", "none", *SMOKE, "--out", str(out)]) == 0
    assert "quitter" not in json.loads((out / "result.json").read_text())["versions"]["plugins"]


def test_plugin_calling_sys_exit_in_a_hook_is_skipped_and_said_so(fake_distribution, capsys):
    fake_distribution(
        "hookquit",
        "hookquit_plugin",
        """
        import sys
        from toolbox.hookspecs import hookimpl

        @hookimpl
        def register_attacks(register):
            sys.exit(3)
    """,
    )
    assert main(["plugins"]) == 0
    doc = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert doc["hookquit"]["status"] == "skipped" and "SystemExit" in doc["hookquit"]["problem"]
    assert doc["hookquit"]["provides"] == []
    assert main(["list", "--kind", "defense"]) == 0 and "invertune" in capsys.readouterr().out


# --------------------------------------------------------------------------- adapters, directly


def test_imagefolder_named_by_class_is_labelled_by_name_not_position(tmp_path):
    from adapters.datasets import ImageFolderAdapter

    for name in ("banana", "apple"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.png").write_bytes(small_png())
    vocab = ["cherry", "banana", "apple"]  # not the sorted folder order
    data = ImageFolderAdapter().load(str(tmp_path), 8, classnames=vocab)
    assert data.classnames == vocab
    assert [vocab[t] for t in data.dataset.targets] == ["apple", "banana"]


def test_parameter_estimate_is_close_for_real_architectures():
    from adapters.clip_model import build_clip
    from adapters.limits import openclip_params
    from toolbox.compat import import_open_clip

    open_clip = import_open_clip()
    for arch in ("RN50", "ViT-B-32"):
        cfg = open_clip.get_model_config(arch)
        actual = sum(p.numel() for p in build_clip(cfg).parameters())
        assert abs(openclip_params(cfg, arch) - actual) / actual < 0.1, arch
