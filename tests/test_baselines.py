"""Baseline defenses: augmentations, counterfactual captions, PAR's cut-off, and each
baseline fine-tuning a copy of the smoke model on a small clean budget."""

from __future__ import annotations

import json
import random

import pytest
import torch

from toolbox.runner import RunRequest, Sources, run
from toolbox_plugins.baselines.augment import (
    ImageAugConfig,
    attribute_swap,
    augment_images,
    eda,
    noise_and_erase,
    sub_caption,
)
from toolbox_plugins.baselines.defenses import thresholded


def test_image_augmentations_are_seeded_and_stay_in_range():
    x = torch.rand(8, 3, 32, 32)
    a = augment_images(x, ImageAugConfig(), torch.Generator().manual_seed(1))
    b = augment_images(x, ImageAugConfig(), torch.Generator().manual_seed(1))
    c = augment_images(x, ImageAugConfig(), torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    n = noise_and_erase(x, 0.05, 1.0, (0.1, 0.2), torch.Generator().manual_seed(0))
    assert n.min() >= 0 and n.max() <= 1 and not torch.equal(n, x)


def test_counterfactual_captions_swap_one_attribute_and_keep_the_noun():
    rng = random.Random(0)
    caption = "a photo of a small red mushroom."
    neg = attribute_swap(caption, rng)
    assert neg is not None and neg != caption
    changed = [(a, b) for a, b in zip(caption.split(), neg.split()) if a != b]
    assert len(changed) == 1 and "mushroom" in neg
    assert attribute_swap("a photo of a mushroom.", rng) is None  # nothing to swap: no negative
    assert "mushroom" in sub_caption(caption, rng)
    assert sorted(eda("one two three four", random.Random(3), p_delete=0.0).split()) == sorted(
        "one two three four".split()
    )


def test_par_push_is_cut_off_beyond_the_threshold():
    assert thresholded(torch.tensor(0.3), 0.5).item() == pytest.approx(0.3)
    assert thresholded(torch.tensor(0.7), 0.5).item() == 0.0


@pytest.mark.parametrize("name", ["ft", "cleanclip", "cleanerclip", "par"])
def test_baseline_fine_tunes_a_copy_on_the_requested_budget(host, smoke_world, tmp_path, name):
    params = {"reference_images": "64", "data_ratio": "2", "batch_size": "32"}
    path = run(RunRequest(defense=name, sources=Sources(preset="smoke"), out=tmp_path / "o", defense_params=params))
    doc = json.loads(path.read_text())
    info = doc["defense_info"]
    assert info["pairs_requested"] == 128 and info["pairs_used"] == 128 and info["data_ratio"] == 2.0
    assert len(info["history"]) == 1 and all(v == v for v in info["history"][0].values())  # no NaN
    assert doc["model"]["purified_sha256"] not in (None, doc["model"]["sha256"])  # weights moved
    assert "model" in doc["artifacts"]
    assert doc["metrics"]["after"]["ca"] > 0.3  # a small step, not a collapse
