"""Metric classes on hand-computed cases."""

import math

import torch

from toolbox.metrics import AttackSuccessRate, RetrievalRecall, ZeroShotAccuracy


def test_zero_shot_top1_and_top2():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    target = torch.tensor([0, 2, 0, 1])
    top1 = ZeroShotAccuracy(top_k=1)
    top1.update(logits, target)
    assert float(top1.compute()) == 0.25
    top2 = ZeroShotAccuracy(top_k=2)
    top2.update(logits[:2], target[:2])
    top2.update(logits[2:], target[2:])  # accumulates across updates
    assert float(top2.compute()) == 0.5


def test_asr_excludes_target_class_by_default():
    # target 1; rows: predicted 1, 1, 0, 1 ; true labels 0, 1, 2, 2
    logits = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 2])
    excl = AttackSuccessRate(target=1)
    excl.update(logits, labels)
    assert math.isclose(float(excl.compute()), 2 / 3)
    incl = AttackSuccessRate(target=1, exclude_target=False)
    incl.update(logits, labels)
    assert float(incl.compute()) == 0.75


def test_retrieval_counts_each_image_once():
    img = torch.eye(3)
    # captions 0,1 belong to image 0; caption 2 to image 1; caption 3 to image 2 but points elsewhere
    cap = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [1.0, 0, 0]])
    owner = torch.tensor([0, 0, 1, 2])
    r1 = RetrievalRecall(k=1)
    r1.update(img, cap, owner)
    assert math.isclose(float(r1.compute()), 2 / 3)  # image 0 counts once despite two matching captions
    r4 = RetrievalRecall(k=4)
    r4.update(img, cap, owner)
    assert float(r4.compute()) == 1.0


def test_empty_metric_is_nan():
    assert math.isnan(float(ZeroShotAccuracy().compute()))


def test_untriggered_rate_is_the_asr_metric_on_clean_predictions(host):
    """``asr_untriggered``: how often untriggered images already go to the target (same convention as ASR)."""
    from toolbox.evaluation import MetricConfig, untriggered_rate

    registry = host.build_registry()
    logits = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1, 2, 2])  # predicted 1, 1, 0, 1; target 1
    assert math.isclose(untriggered_rate(logits, labels, 1, MetricConfig(), registry), 2 / 3)
    assert untriggered_rate(logits, labels, 1, MetricConfig(asr_exclude_target=False), registry) == 0.75
    assert untriggered_rate(logits, labels, 2, MetricConfig(), registry) == 0.0
