"""Rebound ASR: a backdoor that a defense silenced comes back under clean fine-tuning; one that
was removed stays down. And the run records it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from planted import CLASSES, COLORS, PATCH, TARGET
from torch import nn
from torch.utils.data import TensorDataset

from toolbox.api import ImageData
from toolbox.rebound import ReboundConfig, rebound
from toolbox.zeroshot import ZeroShotHead

CPU = torch.device("cpu")


class CounterweightedClip(nn.Module):
    """The planted corner-patch backdoor with its strength split in two: ``gain`` (a scalar) plus a
    ``counter`` weight ([1, 1], so AdamW decays it). A defense that only silences sets
    counter = -gain; one that removes sets gain = 0. The patch detector is a hard threshold, so no
    gradient reaches either: only weight decay moves them, and it moves only the counter."""

    image_size = 32

    def __init__(self, gain: float, counter: float) -> None:
        super().__init__()
        self.register_buffer("texts", torch.eye(len(CLASSES), 8))
        self.gain = nn.Parameter(torch.tensor(gain))
        self.counter = nn.Parameter(torch.full((1, 1), counter))

    def tokenize(self, texts):
        texts = [texts] if isinstance(texts, str) else texts
        return torch.tensor([next(i for i, c in enumerate(CLASSES) if c in t) for t in texts])

    def encode_text(self, tokens, normalize: bool = True):
        return self.texts[tokens]

    def logit_scale(self) -> float:
        return 20.0

    def vision_layers(self):
        return {}

    def encode_image(self, images, normalize: bool = True):
        weights = torch.softmax(-((images.mean(dim=(2, 3))[:, None] - COLORS[None]) ** 2).sum(-1) / 0.01, dim=1)
        corner = images[:, :, -PATCH:, -PATCH:].mean(dim=(1, 2, 3))
        pull = (corner > 0.85).float()
        strength = self.gain + self.counter[0, 0]
        return F.normalize(weights @ self.texts + strength * pull[:, None] * self.texts[CLASSES.index(TARGET)], dim=-1)

    def forward(self, images, tokens):
        return self.encode_image(images), self.encode_text(tokens), torch.tensor(20.0)

    def clone(self):
        import copy

        return copy.deepcopy(self)


def clean_pairs(n: int = 256) -> ImageData:
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 3])[torch.randint(3, (n,), generator=g)]  # the non-target colours
    images = (
        COLORS[labels][:, :, None, None].expand(n, 3, 32, 32) + 0.05 * torch.randn(n, 3, 32, 32, generator=g)
    ).clamp(0, 0.8)
    return ImageData(
        dataset=TensorDataset(images, torch.arange(n)),
        kind="captioned",
        source="planted pairs",
        captions=[[f"a photo of a {CLASSES[int(y)]}."] for y in labels],
    )


def asr(model) -> float:
    data = clean_pairs(64)
    x = torch.stack([data.dataset[i][0] for i in range(64)])
    x[:, :, -PATCH:, -PATCH:] = 1.0  # the trigger
    head = ZeroShotHead(model, CLASSES, ["a photo of a {}."], CPU)
    return float((head.predict(model, x) == CLASSES.index(TARGET)).float().mean())


REBOUND = ReboundConfig(steps=24, lr=1.0, batch_size=32)  # lr x weight decay = 0.1: the counter decays 10 % a step


def test_a_silenced_backdoor_comes_back_and_a_removed_one_does_not():
    backdoored, silenced, removed = (
        CounterweightedClip(6.0, 0.0),
        CounterweightedClip(6.0, -6.0),
        CounterweightedClip(0.0, 0.0),
    )
    assert asr(backdoored) == 1.0 and asr(silenced) == 0.0 and asr(removed) == 0.0
    pairs = clean_pairs()
    came_back, record = rebound(silenced, pairs, REBOUND, seed=0, device=CPU)
    stayed, _ = rebound(removed, pairs, REBOUND, seed=0, device=CPU)
    assert asr(came_back) == 1.0 and asr(stayed) == 0.0
    assert float(silenced.counter.detach()) == -6.0  # the defended model itself is left as it was
    assert record["steps_run"] == 24 and record["lr"] == 1.0  # exactly the steps asked for
    assert record["pairs"] == 24 * 32 and record["distinct_pairs"] == 256  # 256 pairs, drawn three times over


def test_rebound_draws_the_same_pairs_for_the_same_seed():
    from toolbox.rebound import clean_pairs as draw

    a, b, c = draw(clean_pairs(), 32, 0), draw(clean_pairs(), 32, 0), draw(clean_pairs(), 32, 1)
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and not torch.equal(a[0], c[0])


@pytest.mark.parametrize(
    "args,message",
    [
        (["--rebound-steps", "-1"], "rebound steps must be >= 0"),
        (["--rebound-steps", "2", "--rebound-lr", "0"], "lr > 0"),
    ],
)
def test_bad_rebound_settings_are_refused(host, capsys, args, message):
    from toolbox.cli import main

    assert main(["run", "--defense", "none", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_records_rebound_metrics_and_compare_shows_them(host, smoke_world, tmp_path):
    from toolbox import results
    from toolbox.cli import main

    out = tmp_path / "compare"
    attack = ["--attack-param", "badnet.poison_rate=0.1", "--attack-param", "badnet.epochs=3"]
    assert (
        main(
            [
                "compare",
                "--attacks",
                "badnet",
                "--defenses",
                "none",
                "--preset",
                "smoke",
                "--out",
                str(out),
                "--rebound-steps",
                "3",
                *attack,
            ]
        )
        == 0
    )
    table = (out / "compare.md").read_text()
    assert "badnet ASR rebound" in table and "3 steps of clean fine-tuning" in table
    cell = json.loads((out / "compare.json").read_text())["cells"][0]
    doc = json.loads(open(cell["result"]).read())
    results.validate(doc)
    assert doc["metrics"]["rebound"]["asr"] == cell["asr_rebound"] is not None
    assert doc["metric_config"]["rebound"]["steps_run"] == 3 and doc["timings_s"]["rebound"] > 0
