"""Real scale without a GPU: device selection (--device auto), mixed precision of the stage loops,
streamed evaluation, decoding only the images used, class embeddings once per text tower."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from toolbox import precision
from toolbox.api import ImageData
from toolbox.errors import InputError
from toolbox.runner import Sources, check_measurement, parse_device
from toolbox.zeroshot import image_features, loader_workers


@pytest.mark.parametrize(
    "have,expected",
    [
        ({"cuda": True, "mps": True}, "cuda"),
        ({"cuda": False, "mps": True}, "mps"),
        ({"cuda": False, "mps": False}, "cpu"),
    ],
)
def test_auto_takes_cuda_then_mps_then_cpu(monkeypatch, have, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: have["cuda"])
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: have["mps"])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert parse_device("auto").type == expected


def test_an_absent_device_is_a_clear_error_naming_what_there_is(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"cuda is not available here .*this machine has: cpu"):
        parse_device("cuda")
    with pytest.raises(InputError, match="not a torch device"):
        parse_device("gpu please")


def test_auto_is_the_default_everywhere():
    import inspect

    from toolbox import notebook
    from toolbox.cli import build_parser

    assert Sources().device == "auto"
    assert inspect.signature(notebook.run).parameters["device"].default == "auto"
    args = build_parser().parse_args(["run", "--defense", "none"])
    assert args.device == "auto"


@pytest.mark.parametrize(
    "field,value,message", [("eval_batch_size", 0, "--eval-batch-size"), ("workers", -1, "--workers")]
)
def test_bad_evaluation_settings_are_refused(field, value, message):
    with pytest.raises(InputError, match=message):
        check_measurement(Sources(**{field: value}))


def test_workers_default_to_none_on_the_cpu_and_some_beside_an_accelerator():
    assert loader_workers(None, torch.device("cpu")) == 0
    assert loader_workers(None, torch.device("cuda")) >= 1
    assert loader_workers(3, torch.device("cpu")) == 3


def test_features_are_the_same_with_loader_workers():
    """Workers only decode in other processes: the same embeddings, in the same order."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    model.encode_image = lambda x: model(x)  # type: ignore[attr-defined]
    images = torch.rand(20, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    data = ImageData(dataset=TensorDataset(images, torch.arange(20)), kind="unlabelled", source="t")
    cpu = torch.device("cpu")
    a, ia = image_features(model, data, 6, cpu)
    b, ib = image_features(model, data, 6, cpu, workers=2)
    assert torch.equal(a, b) and torch.equal(ia, ib)


def _train(prec: str, steps: int = 20, clip: float = 0.0) -> tuple[torch.Tensor, torch.dtype]:
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 4)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)  # SGD: Adam turns rounding of near-zero gradients into sign flips
    x, y = torch.randn(64, 16), torch.randint(4, (64,))
    seen = None
    with precision.autocast(prec, "cpu"):
        for _ in range(steps):
            out = layer(x)
            seen = out.dtype
            precision.step(opt, torch.nn.functional.cross_entropy(out, y), (layer.parameters(), clip))
    return layer.weight.detach(), seen


def test_fp32_is_exactly_the_plain_loop():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 4)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)  # SGD: Adam turns rounding of near-zero gradients into sign flips
    x, y = torch.randn(64, 16), torch.randint(4, (64,))
    for _ in range(20):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(layer(x), y).backward()
        opt.step()
    weight, dtype = _train("fp32")
    assert dtype == torch.float32 and torch.equal(weight, layer.weight.detach())


@pytest.mark.parametrize("prec,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_lower_precision_runs_forwards_low_and_keeps_fp32_master_weights(prec, dtype, clip):
    """Also with gradient clipping (the fine-tuning baselines), which fp16 must do on unscaled gradients."""
    weight, seen = _train(prec, clip=clip)
    reference, _ = _train("fp32", clip=clip)
    assert seen == dtype and weight.dtype == torch.float32
    assert (weight - reference).abs().max() < 0.05  # the same optimisation, rounded differently
    assert precision.active() == "fp32"  # the setting does not leak out of its block


def test_an_unknown_precision_is_refused_before_anything_runs(host, capsys):
    from toolbox.cli import main

    assert main(["run", "--defense", "invertune", "-p", "precision=fp8"]) == 2
    assert "precision" in capsys.readouterr().err


def test_class_embeddings_are_encoded_once_per_text_tower(monkeypatch):
    from adapters.clip_model import OpenClipModel, build_clip
    from toolbox import zeroshot
    from toolbox.compat import import_open_clip

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(0)
    model = OpenClipModel(build_clip(cfg), cfg)
    open_clip = import_open_clip()
    calls = []
    real = open_clip.build_zero_shot_classifier
    monkeypatch.setattr(open_clip, "build_zero_shot_classifier", lambda *a, **k: calls.append(1) or real(*a, **k))
    zeroshot._CLASS_MEMO.clear()
    cpu = torch.device("cpu")
    first = zeroshot.class_embeddings(model, ["cat", "dog"], ["a {}."], cpu)
    tuned = model.clone()
    with torch.no_grad():
        tuned.clip.visual.conv1.weight.add_(1.0)  # a defense that changes only the vision tower
    assert torch.equal(zeroshot.class_embeddings(tuned, ["cat", "dog"], ["a {}."], cpu), first) and len(calls) == 1
    with torch.no_grad():
        tuned.clip.token_embedding.weight.add_(0.1)  # the text tower changed: encoded again
    again = zeroshot.class_embeddings(tuned, ["cat", "dog"], ["a {}."], cpu)
    assert len(calls) == 2 and not torch.equal(again, first)
    zeroshot.class_embeddings(model, ["cat", "dog", "eel"], ["a {}."], cpu)  # another vocabulary
    assert len(calls) == 3


def test_only_the_images_used_are_decoded():
    class Counting(torch.utils.data.Dataset):
        def __init__(self):
            self.read = []

        def __len__(self):
            return 100

        def __getitem__(self, i):
            self.read.append(i)
            return torch.full((3, 4, 4), i / 100), i

    ds = Counting()
    picked = torch.tensor([3, 50, 97])
    out = ImageData(dataset=ds, kind="unlabelled", source="t").uint8(picked)
    assert sorted(ds.read) == [3, 50, 97] and out.dtype == torch.uint8 and out.shape == (3, 3, 4, 4)


def test_imagenet_names_that_repeat_are_kept_with_a_warning_and_refused_as_a_target(caplog):
    from toolbox.runner import check_classnames, class_index, default_classnames

    names = default_classnames()  # open_clip's ImageNet-1K names: 'missile' and 'sunglasses' twice
    with caplog.at_level("WARNING"):
        assert check_classnames(names, "imagenet") == names
    assert "'missile', 'sunglasses'" in caplog.text and "only its first class can be predicted" in caplog.text
    assert class_index(names, "goldfish", "attack target") == 1
    with pytest.raises(InputError, match="'missile' names 2 classes"):
        class_index(names, "missile", "attack target")
    with pytest.raises(InputError, match="is not in the class vocabulary"):
        class_index(names, "unicorn", "attack target")


def test_loader_workers_do_not_split_leaderboard_groups():
    from toolbox.leaderboard import metric_config_hash

    doc = {"ca": {"top_k": [1]}, "asr": {"top_k": [1]}, "settings": {"batch_size": 256, "workers": 0}}
    assert metric_config_hash(doc) == metric_config_hash({**doc, "settings": {"batch_size": 256, "workers": 8}})
    assert metric_config_hash(doc) != metric_config_hash({**doc, "settings": {"batch_size": 64, "workers": 0}})
