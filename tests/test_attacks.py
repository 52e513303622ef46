"""Attacks: triggers are deterministic pixel-space functions; poisoning does what it says;
and on the smoke world a poisoning attack really implants a backdoor."""

from __future__ import annotations

import json

import pytest
import torch

from toolbox.api import ImageData
from toolbox.cli import main
from toolbox.primitives import triggers as T
from toolbox_plugins.attacks.badclip import BadCLIP
from toolbox_plugins.attacks.badencoder import BadEncoder
from toolbox_plugins.attacks.badnet import BadNet
from toolbox_plugins.attacks.blend import Blend
from toolbox_plugins.attacks.blended import Blended
from toolbox_plugins.attacks.border import Border
from toolbox_plugins.attacks.colour_filter import ColourFilter
from toolbox_plugins.attacks.evasive import Decoys, Evasive
from toolbox_plugins.attacks.patch import Patch
from toolbox_plugins.attacks.poisoning import PoisonSettings, choose_poison, poison_dataset
from toolbox_plugins.attacks.sig import SIG
from toolbox_plugins.attacks.stripes import Stripes
from toolbox_plugins.attacks.wanet import WaNet

ATTACKS = (BadNet, Blended, SIG, WaNet, BadEncoder, BadCLIP)  # the paper's six
FAMILIES = (Patch, Blend, Stripes, ColourFilter, Border)  # the zoo's trigger families


def batch(n: int = 4, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("cls", [BadNet, Blended, SIG, WaNet, Evasive])
def test_triggers_are_deterministic_and_in_range(cls):
    x = batch()
    a, b = cls().apply_trigger(x), cls().apply_trigger(x)
    assert torch.equal(a, b)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.equal(a, x)


def test_patch_sits_where_asked_and_scales_with_the_image():
    x = torch.zeros(1, 3, 32, 32)
    for location, (r, c) in {"bottom-right": (28, 28), "top-left": (0, 0), "center": (14, 14)}.items():
        out = BadNet(BadNet.Config(location=location)).apply_trigger(x)
        changed = (out != x).any(1)[0].nonzero()
        assert changed.min(0).values.tolist() >= [r, c] and changed.max(0).values.tolist() <= [r + 3, c + 3]
    assert T.patch_pixels(224, T.PAPER_PATCH_FRACTION) == 16
    big = BadNet().apply_trigger(torch.zeros(1, 3, 64, 64))
    assert int((big != 0).any(1).sum()) <= 64 and int((big != 0).any(1).sum()) > 16


def test_bad_parameters_are_errors(host, capsys):
    with pytest.raises(ValueError, match="location"):
        BadNet.Config(location="middle-ish")
    with pytest.raises(ValueError, match="poison_rate"):
        BadNet.Config(poison_rate=1.5)
    # on the command line: exit 2 before anything is loaded or built
    assert main(["run", "--defense", "none", "--attack", "badnet", "--attack-param", "location=nowhere"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_sig_is_a_horizontal_sinusoid():
    x = torch.full((1, 3, 32, 32), 0.5)
    out = SIG().apply_trigger(x)
    assert torch.allclose(out[0, 0, 0], out[0, 2, 17])  # same on every row and channel
    assert abs(float((out - x).abs().max()) - 60 / 255) < 0.01


def test_blended_mixes_at_alpha():
    x = torch.zeros(1, 3, 32, 32)
    out = Blended().apply_trigger(x)
    assert float(out.max()) <= 0.2 + 1e-6


def captioned(n: int, target_every: int = 10) -> ImageData:
    images = (batch(n) * 255).to(torch.uint8)
    caps = [["a photo of a mushroom."] if i % target_every == 0 else [f"a banana number {i}."] for i in range(n)]

    class DS(torch.utils.data.Dataset):
        cache = images

        def __len__(self):
            return n

        def __getitem__(self, i):
            return images[i].float() / 255, i

    return ImageData(DS(), "captioned", "mem", captions=caps)


def test_poisoning_rate_targets_and_captions():
    data = captioned(200)
    settings = PoisonSettings(poison_rate=0.05)
    out = poison_dataset(data, BadNet().apply_trigger, settings, seed=3)
    assert len(out.poisoned) == 10
    assert all(i % 10 != 0 for i in out.poisoned.tolist())  # never an image that is already the target
    assert all(out.captions[i] == "a photo of a mushroom." for i in out.poisoned.tolist())
    untouched = [i for i in range(200) if i not in set(out.poisoned.tolist())]
    assert torch.equal(out.images[untouched], data.dataset.cache[untouched])
    assert torch.equal(choose_poison([c[0] for c in data.captions], "mushroom", 0.05, 3), out.poisoned)


def test_badclip_trigger_state_round_trip():
    a = BadCLIP()
    a.patch = torch.rand(3, 4, 4)
    b = BadCLIP()
    b.load_trigger_state(a.trigger_state())
    assert torch.equal(a.apply_trigger(batch()), b.apply_trigger(batch()))
    with pytest.raises(RuntimeError, match="optimised"):
        BadCLIP().apply_trigger(batch())


def test_all_six_attacks_are_registered(host):
    names = set(host.build_registry().names("attack"))
    assert {cls.name for cls in ATTACKS} == {"badnet", "blended", "sig", "wanet", "badencoder", "badclip"}
    # besides them, the zoo's trigger families and the adaptive attack
    assert names == {cls.name for cls in (*ATTACKS, *FAMILIES, Evasive)}


@pytest.mark.slow
def test_badnet_implants_a_backdoor_on_the_smoke_world(host, smoke_world, tmp_path, monkeypatch):
    out = tmp_path / "badnet"
    args = [
        "run",
        "--attack",
        "badnet",
        "--defense",
        "none",
        "--preset",
        "smoke",
        "--out",
        str(out),
        "--attack-param",
        "poison_rate=0.1",
        "--attack-param",
        "epochs=3",
    ]
    assert main(args) == 0
    doc = json.loads((out / "result.json").read_text())
    m = doc["metrics"]["before"]
    assert doc["attack"]["target"] == "mushroom" and doc["attack"]["info"]["n_poisoned"] > 0
    assert m["asr"] > 0.5, f"smoke BadNet should implant a backdoor, got ASR {m['asr']}"
    assert "retrieval_asr@10" in m and "ra" in m
    # the trigger itself sends images to the target, not a model that says "mushroom" anyway
    assert m["asr"] - m["asr_untriggered"] > 0.4, m
    # a second run reuses the cached attacked model, and never reads the training pairs
    import toolbox.runner.orchestrate as orchestrate

    def unread(*a, **k):
        raise AssertionError("a cached attack read its training pairs")

    monkeypatch.setattr(orchestrate, "load_train", unread)
    again_args = list(args)
    again_args[again_args.index("--out") + 1] = str(tmp_path / "again")
    assert main(again_args) == 0
    again = json.loads((tmp_path / "again" / "result.json").read_text())
    assert again["attack"]["from_cache"] is True and again["metrics"]["before"] == m


def test_evasive_trigger_is_larger_than_what_invertune_searches():
    """The adaptive attack's patch is past stage 2's 5 % mask gate and away from the race's patches."""
    x = torch.zeros(1, 3, 32, 32)
    changed = (Evasive().apply_trigger(x) != x).any(1)[0]
    assert changed.float().mean() > 0.05
    for location in ("bottom-right", "top-left", "center"):
        r, c = T.patch_box(32, 4, location)
        assert not changed[r : r + 4, c : c + 4].any()


def test_evasive_decoys_follow_the_model_toward_the_target_and_keep_captions():
    """A refresh moves each decoy UAP toward the target on the model being trained (here the planted
    corner trigger: the bottom-right decoy turns bright); a batch gets decoys on its clean rows only."""
    from planted import CLASSES, TARGET, PlantedClip, colour_images

    model = PlantedClip()
    cfg = Evasive.Config(target=TARGET, decoy_steps=20, decoy_fraction=0.5)
    decoys = Decoys(model, CLASSES, TARGET, cfg, seed=0)
    x = colour_images(16).float() / 255
    texts = model.encode_text(model.tokenize([f"a photo of a {c}." for c in CLASSES]))

    def target_logit(family: int) -> float:
        return float((model.encode_image(decoys.apply(x, family)) @ texts.T)[:, CLASSES.index(TARGET)].mean())

    before = target_logit(0)
    decoys.refresh(x)
    assert target_logit(0) > before
    assert float(decoys.delta.abs().max()) <= cfg.decoy_eps + 1e-6
    assert all(0 <= float(p.min()) and float(p.max()) <= 1 for p in decoys.patches)
    t = torch.arange(16)[:, None]
    poisoned = torch.tensor([0, 1, 2, 3])
    out, tokens = decoys(x, t, torch.arange(16), poisoned)
    changed = (out != x).flatten(1).any(1)
    assert torch.equal(tokens, t) and not changed[:4].any() and int(changed.sum()) == 8
