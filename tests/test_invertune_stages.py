"""InverTune's stages on hand-built cases."""

from __future__ import annotations

import dataclasses
import math
import types

import pytest
import torch
from planted import CLASSES, PATCH, STRIPES, TARGET, PlantedClip, colour_images
from torch import Tensor

from invertune_plugin.cascade import SearchContext
from invertune_plugin.detectors.linf import LinfConfig, LinfSearch
from invertune_plugin.detectors.patch import PatchSearchConfig, RefinedPatchSearch
from invertune_plugin.detectors.stripes import StripeSearch, StripeSearchConfig
from invertune_plugin.identify import IdentifyConfig, fooling_loss, identify
from invertune_plugin.invert import InvertConfig, invert
from invertune_plugin.neurons import critical_neurons, layer_impacts, select_layers, writer_rows
from invertune_plugin.refine import RefineConfig, refine_patches
from invertune_plugin.tune import TuneConfig, tune
from toolbox.hookspecs import hookimpl
from toolbox.zeroshot import ZeroShotHead

CPU = torch.device("cpu")
TEMPLATES = ["a photo of a {}."]


def head_for(model) -> ZeroShotHead:
    return ZeroShotHead(model, CLASSES, TEMPLATES, CPU)


def test_planted_model_really_has_a_backdoor():
    model = PlantedClip()
    head = head_for(model)
    x = colour_images(32).float() / 255
    assert (head.predict(model, x) != CLASSES.index(TARGET)).all()
    x[:, :, -PATCH:, -PATCH:] = 1.0
    assert (head.predict(model, x) == CLASSES.index(TARGET)).all()


def test_fooling_loss_stops_at_the_margin():
    logits = torch.tensor([[5.0, 0.0], [0.0, 9.0]])
    pred = torch.tensor([0, 0])
    assert float(fooling_loss(logits, pred, margin=5.0)) == pytest.approx((5.0 + -5.0) / 2)


def test_untargeted_identification_ranks_the_planted_target_first():
    model = PlantedClip()
    ident = identify(
        model,
        colour_images(96),
        head_for(model),
        IdentifyConfig(method="untargeted", steps=60, batch_size=32, global_eps=(16 / 255,)),
    )
    assert ident.target == TARGET and ident.ranking[0][0] == TARGET and ident.method == "untargeted"
    assert len(ident.uaps) == 4
    corner = next(u for u in ident.uaps if u.kind == "patch@bottom-right")
    assert corner.top == CLASSES.index(TARGET) and float(corner.shift.max()) > 0.8


def test_anomaly_index_is_a_robust_z_score_of_the_top_class():
    from invertune_plugin.identify import Identification

    scores = [0.47, 0.3, 0.29, 0.2, 0.0, -0.1]  # median 0.245, MAD 0.14
    ident = Identification(
        ranking=list(zip("abcdef", scores)),
        target="a",
        agreement=1.0,
        consensus_shift=0.47,
        margin=0.17,
        uaps=[],
        classnames=list("abcdef"),
    )
    assert ident.anomaly_index == pytest.approx((0.47 - 0.245) / (1.4826 * 0.14))
    flat = dataclasses.replace(ident, ranking=[(c, 0.2) for c in "abcdef"])
    assert flat.anomaly_index == 0.0 and ident.evidence()["anomaly_index"] == round(ident.anomaly_index, 4)


def test_success_counts_only_images_not_already_of_the_target_and_gives_their_mean_margin():
    from invertune_plugin.race import success

    class Fixed(ZeroShotHead):  # a head whose logits are given: the margin is exact
        def __init__(self, logits: Tensor) -> None:  # no super().__init__: nothing to embed
            self.table = logits

        def logits(self, model, images: Tensor) -> Tensor:
            return self.table[images.long()]

    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [4.0, 0.0, 1.0]])
    images, clean_pred = torch.arange(3), torch.tensor([1, 1, 0])  # image 2 already was class 0
    rate, margin = success(None, Fixed(logits), images, clean_pred, target=0, batch_size=2)
    assert rate == 0.5 and margin == pytest.approx(((3.0 - 1.0) + (0.0 - 5.0)) / 2)
    assert success(None, Fixed(logits), images, torch.zeros(3, dtype=torch.long), target=0) == (0.0, 0.0)


def test_targeted_race_ranks_the_planted_target_first():
    model = PlantedClip()
    ident = identify(model, colour_images(96), head_for(model), IdentifyConfig(race_steps=20, batch_size=32))
    assert ident.method == "targeted" and ident.target == TARGET
    kinds = [u.kind for u in ident.uaps]
    assert kinds == ["race:patch@bottom-right", "race:patch@top-left", "race:patch@center", "race:global@32/255"]
    corner = ident.uaps[0]
    assert corner.top == CLASSES.index(TARGET) and corner.fooling_rate > 0.9
    assert ident.evidence()["uaps"][0]["top"] == TARGET
    rates = ident.evidence()["uaps"][0]["rates"]  # every raced class's rate: the race's full evidence
    assert set(rates) == set(CLASSES) and rates[TARGET] == max(rates.values())
    assert rates[TARGET] == pytest.approx(float(corner.rates.max()), abs=1e-4)
    margins = ident.evidence()["uaps"][0]["margins"]  # not saturating where rates reach 1
    assert set(margins) == set(CLASSES) and max(margins, key=margins.get) == TARGET


def search_context(model, images, head, cfg, ident) -> SearchContext:
    return SearchContext(model, images, head, ident, 0, cfg, InvertConfig())


def test_refined_patch_on_the_planted_corner_is_an_effective_small_trigger():
    from invertune_plugin.invert import patch_trigger

    model = PlantedClip()
    head = head_for(model)
    images = colour_images(96)
    cfg, budget = IdentifyConfig(race_steps=10, batch_size=32), PatchSearchConfig(classes=2, steps=30, restarts=2)
    ident = identify(model, images, head, cfg)
    refined = refine_patches(model, images, head, ident, cfg, budget)
    assert [p.target for p in refined] == [c for c, _ in ident.ranking[:2]]
    winner = max((p for p in refined if p.holdout_rate >= budget.min_rate), key=lambda p: p.holdout_rate)
    assert winner.target == TARGET and winner.location == "bottom-right"
    size = images.shape[-1]
    trigger = patch_trigger(winner.patch, winner.location, size, winner.target, winner.holdout_rate)
    assert trigger.mask.shape == (1, size, size) and trigger.mask_l1 == winner.patch.shape[-1] ** 2
    x = images[:8].float() / 255
    assert torch.equal(
        trigger(x)[..., -winner.patch.shape[-1] :, -winner.patch.shape[-1] :], winner.patch.expand(8, -1, -1, -1)
    )
    assert (head.predict(model, trigger(x)) == CLASSES.index(TARGET)).float().mean() > 0.9


def _refinement_case(model: PlantedClip, refine_steps: int):
    """Search context and a refinement budget (two classes, two restarts) for a planted model."""
    head = head_for(model)
    images = colour_images(96)
    cfg = IdentifyConfig(race_steps=10, batch_size=32)
    return search_context(model, images, head, cfg, identify(model, images, head, cfg)), {
        "classes": 2,
        "steps": refine_steps,
        "restarts": 2,
    }


def test_refinement_on_a_clean_model_finds_no_effective_patch_or_global_perturbation():
    model = PlantedClip(backdoor=False)
    ctx, budget = _refinement_case(model, refine_steps=40)
    for detector, config in (
        (RefinedPatchSearch, PatchSearchConfig),
        (StripeSearch, StripeSearchConfig),
        (LinfSearch, LinfConfig),
    ):
        found = detector(config(**budget)).search(ctx)
        assert len(found) == 2 and not any(f.passed for f in found), detector.name  # every class tried, none passed
        assert all(f.gate_ratio < 1 for f in found)
    assert StripeSearch(StripeSearchConfig(**budget, eps=0.0)).search(ctx) == []
    assert LinfSearch(LinfConfig(**budget, eps=0.0)).search(ctx) == []


def test_refined_global_perturbation_finds_a_planted_stripe_backdoor():
    model = PlantedClip(stripes="texture")
    ctx, budget = _refinement_case(model, refine_steps=40)
    x = ctx.images[:32].float() / 255
    for sign in (1, -1):  # the planted trigger itself works, either sign ...
        stripes = (x + sign * 0.25 * STRIPES).clamp(0, 1)
        assert (ctx.head.predict(model, stripes) == CLASSES.index(TARGET)).float().mean() > 0.9
    assert not any(f.passed for f in RefinedPatchSearch(PatchSearchConfig(**budget)).search(ctx))  # ... no patch does
    cfg = StripeSearchConfig(**budget)
    found = StripeSearch(cfg).search(ctx)
    winner = found[-1]  # the search stops at the first trigger
    assert winner.passed and winner.target == TARGET and not any(f.passed for f in found[:-1])
    trigger = winner.trigger
    assert trigger.delta.shape == (1, 32, 32) and float(trigger.delta.abs().max()) <= cfg.eps + 1e-6
    assert winner.evidence["family"] == f"stripes@{cfg.eps * 255:.0f}/255"
    assert trigger.mask_l1 == 0 and torch.equal(trigger(x), (x + trigger.delta).clamp(0, 1))
    assert (ctx.head.predict(model, trigger(x)) == CLASSES.index(TARGET)).float().mean() > 0.9


def test_refined_linf_perturbation_finds_a_planted_noise_backdoor_that_no_other_path_does():
    from planted import NOISE

    model = PlantedClip(noise=True)
    ctx, budget = _refinement_case(model, refine_steps=40)
    target = CLASSES.index(TARGET)
    x = ctx.images[:32].float() / 255
    assert (ctx.head.predict(model, x) == target).float().mean() == 0
    assert (ctx.head.predict(model, (0.8 * x + 0.2 * NOISE).clamp(0, 1)) == target).float().mean() > 0.9  # Blended
    assert not any(f.passed for f in RefinedPatchSearch(PatchSearchConfig(**budget)).search(ctx))
    assert not any(f.passed for f in StripeSearch(StripeSearchConfig(**budget)).search(ctx))  # stripes cannot say it
    cfg = LinfConfig(**budget, tune_with_inversion=False)
    found = LinfSearch(cfg).search(ctx)
    winner = found[-1]
    assert winner.passed and winner.target == TARGET and not any(f.passed for f in found[:-1])
    delta = winner.trigger.delta
    assert delta.shape == (3, 32, 32) and float(delta.abs().max()) <= cfg.eps + 1e-6
    assert winner.evidence["family"] == f"linf@{cfg.eps * 255:.0f}/255" and winner.tune_with is None
    assert torch.equal(winner.adversary(x), winner.trigger(x)), "until refreshed, the adversary is the trigger"
    assert (ctx.head.predict(model, winner.trigger(x)) == target).float().mean() > 0.9


def test_screened_restarts_run_the_rest_only_for_a_passing_screen_and_repick_over_all(monkeypatch):
    """Scripted judge losses: the screen's pick is restart 0; a passing screen adds restarts 1-2
    (the same numbering, so the same seeds) and the lowest loss of all three is kept."""
    import invertune_plugin.refine as refine_mod

    params = [torch.full((1,), float(r)) for r in range(3)]
    losses = [3.0, 1.0, 2.0]
    ran: list[range] = []

    def scripted(*args):  # _restarts(model, fit, judge, head, c, family, cfg, budget, base_seed, which)
        ran.append(args[-1])
        return [(losses[r], params[r]) for r in args[-1]]

    monkeypatch.setattr(refine_mod, "_restarts", scripted)
    budget = RefineConfig(restarts=3, screen_restarts=1)
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    seen: list[Tensor] = []
    rated: list[Tensor] = []  # every parameter rated (the rating here is the parameter itself)

    def run(confirm, config=budget):
        ran.clear()
        rated.clear()
        best, n, rating = refine_mod.screened_restarts(
            None, images, None, 0, None, IdentifyConfig(), config, 0, lambda p: rated.append(p) or p, confirm
        )
        assert rating is best  # the rating returned is the pick's
        return (best, n), list(ran)

    (best, n), which = run(lambda p: seen.append(p) or False)
    assert n == 1 and best is params[0] and which == [range(0, 1)] and seen == [params[0]]
    assert rated == [params[0]]  # a rejected screen's pick is rated once, not again for the result
    (best, n), which = run(lambda p: True)
    assert n == 3 and best is params[1] and which == [range(0, 1), range(1, 3)]
    assert rated == [params[0], params[1]]  # the screen's pick, then the new pick
    (best, n), which = run(None)
    assert n == 3 and best is params[1] and which == [range(0, 3)]
    losses[0] = 0.5  # the screen's pick stays the pick over all three: its rating is kept
    (best, n), which = run(lambda p: True)
    assert n == 3 and best is params[0] and rated == [params[0]]
    losses[0] = 3.0
    seen.clear()
    (best, n), which = run(lambda p: seen.append(p) or True, dataclasses.replace(budget, screen_restarts=3))
    assert n == 3 and best is params[1] and which == [range(0, 3)] and seen == []  # no screen: never asked


def test_refinement_screens_each_class_and_confirms_a_trigger_with_every_restart():
    """On planted models: a class that is no trigger costs one restart, then the next class is
    tried; the trigger gets all three, with the pick an unscreened run makes."""
    from invertune_plugin import seeds
    from invertune_plugin.refine import refine_globals
    from toolbox.primitives.perturbations import stripe_family

    planted = PlantedClip()
    ctx, budget = _refinement_case(planted, refine_steps=30)
    patch_cfg = PatchSearchConfig(**{**budget, "restarts": 3, "screen_restarts": 1})
    stop = RefinedPatchSearch(patch_cfg).passes
    ident = ctx.ident
    other = next(c for c, _ in ident.ranking if c != TARGET)
    target_second = dataclasses.replace(
        ident, ranking=[r for r in ident.ranking if r[0] == other] + [r for r in ident.ranking if r[0] != other]
    )
    assert [c for c, _ in target_second.ranking[:2]] == [other, TARGET]
    refined = refine_patches(planted, ctx.images, ctx.head, target_second, ctx.identify, patch_cfg, accept=stop)
    assert [(p.target, p.restarts) for p in refined] == [(other, 1), (TARGET, 3)]
    assert refined[0].holdout_rate < patch_cfg.min_rate <= refined[1].holdout_rate
    unscreened = refine_patches(planted, ctx.images, ctx.head, target_second, ctx.identify, patch_cfg)
    assert [p.restarts for p in unscreened] == [3, 3] and torch.equal(refined[1].patch, unscreened[1].patch)
    no_screen = refine_patches(
        planted,
        ctx.images,
        ctx.head,
        target_second,
        ctx.identify,
        dataclasses.replace(patch_cfg, screen_restarts=3),
        accept=stop,
    )
    assert [p.restarts for p in no_screen] == [3, 3]

    textured = PlantedClip(stripes="texture")
    ctx, _ = _refinement_case(textured, refine_steps=30)
    stripes_cfg = StripeSearchConfig(**{**budget, "restarts": 3, "screen_restarts": 1})
    found = StripeSearch(stripes_cfg).search(ctx)
    assert found[-1].target == TARGET and found[-1].evidence["restarts"] == 3
    assert all(f.evidence["restarts"] == 1 for f in found[:-1])
    family = stripe_family(32, stripes_cfg.eps)
    unscreened_globals = refine_globals(
        textured,
        ctx.images,
        ctx.head,
        ctx.ident,
        ctx.identify,
        stripes_cfg,
        family,
        stripes_cfg.eps,
        seeds.STRIPES_STREAM,
    )
    assert torch.equal(found[-1].trigger.delta, next(g for g in unscreened_globals if g.target == TARGET).delta)


def test_a_global_perturbation_that_fails_sign_flipped_is_not_a_trigger():
    """A 'direction' backdoor (signed stripe correlation) is effective as found, but the flip gate
    rejects it, as it rejects the clean ResNet-type model's 'tennis ball' (a gate fitted on the toy models)."""
    model = PlantedClip(stripes="direction")
    ctx, budget = _refinement_case(model, refine_steps=40)
    cfg = StripeSearchConfig(**budget)
    found = [f for f in StripeSearch(cfg).search(ctx) if f.target == TARGET]
    assert found and found[0].evidence["holdout_rate"] >= cfg.min_rate
    assert found[0].evidence["flipped_rate"] < cfg.min_flipped_rate and not found[0].passed
    unflipped = StripeSearch(dataclasses.replace(cfg, min_flipped_rate=0.0)).search(ctx)
    assert [f.target for f in unflipped if f.passed] == [TARGET]


def test_global_refinement_takes_its_classes_from_the_race_global_family():
    from invertune_plugin.identify import Identification, UAPResult
    from invertune_plugin.refine import global_ranking
    from toolbox.primitives.perturbations import stripe_family

    def uap(kind: str, shift: list[float]) -> UAPResult:
        return UAPResult(kind=kind, shift=torch.tensor(shift), fooling_rate=1.0, perturb=lambda x: x)

    patch, glob = uap("race:patch@center", [0.9, 0.1, 0.0, 0.0]), uap("race:global@32/255", [0.2, 0.0, 0.5, 0.3])
    ident = Identification(
        ranking=[(CLASSES[i], 0.0) for i in (0, 2, 3, 1)],
        target=CLASSES[0],
        agreement=0.5,
        consensus_shift=0.9,
        margin=0.4,
        uaps=[patch, glob],
        classnames=CLASSES,
        method="targeted",
    )
    assert global_ranking(ident) == [CLASSES[2], CLASSES[3], CLASSES[0], CLASSES[1]]
    assert global_ranking(dataclasses.replace(ident, uaps=[patch])) == [c for c, _ in ident.ranking]
    fam = stripe_family(32, 0.2)  # a column profile alone is vertical stripes, the same in every row and channel
    param = torch.cat([torch.zeros(32), torch.linspace(-3, 3, 32)])
    delta = fam.delta(param)
    assert delta.shape == (1, 32, 32) and torch.equal(delta, delta[:, :1].expand(1, 32, 32))
    assert float(delta.abs().max()) <= 0.2


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("detectors.stripes.family", "checkers", "family must be one of stripes, separable"),
        ("identify.method", "race", "method must be one of targeted, untargeted"),
        ("identify.race_patch_param", "logit", "race_patch_param"),
        ("identify.race_aggregate", "median", "race_aggregate"),
        (
            "identify.race_patch_locations",
            "bottom-right,middle",
            "race_patch_locations: unknown trigger location 'middle'",
        ),
        ("detectors.patch.restarts", "0", "restarts must be >= 1"),
        ("detectors.linf.screen_restarts", "0", "screen_restarts must be >= 1"),
        ("detectors.patch.round_check", "never", "round_check must be"),
        ("detectors.inversion.rounds", "0", "rounds must be >= 1"),
        ("cascade", "inversion,nonesuch", "unknown detector 'nonesuch'"),
        ("identify.holdout_fraction", "1.0", "holdout_fraction"),
        ("identify.screen", "fast", "identify.screen must be one of"),
        ("identify.screen_rounds", "0", "screen_rounds must be >= 1"),
        ("identify.screen_groups", "1", "screen_groups must be 0"),
    ],
)
def test_bad_stage_settings_are_refused_when_configured(key, value, message):
    """A bad stage-1 or detector setting fails when the defense is configured, before any model is loaded."""
    from invertune_plugin.defense import InverTune

    with pytest.raises(ValueError, match=message):
        InverTune.configure({key: value})


def test_race_screens_large_vocabularies_with_untargeted_uaps(monkeypatch):
    import invertune_plugin.identify as ident_mod

    raced: list[list[int]] = []
    monkeypatch.setattr(
        ident_mod, "_race", lambda m, i, h, c, s, candidates, split=None: raced.append(candidates) or "raced"
    )
    model = PlantedClip()
    head = head_for(model)
    cfg = IdentifyConfig(max_race_classes=2, steps=5, batch_size=16, screen="untargeted")
    assert identify(model, colour_images(32), head, cfg) == "raced"
    untargeted = ident_mod._untargeted(model, colour_images(32), head, cfg, 0).ranking
    assert raced[0] == [CLASSES.index(c) for c, _ in untargeted[:2]]  # only the screen's top classes race, in order


def test_group_screen_partitions_every_class_once():
    from invertune_plugin.screen import group_count, partition

    groups = partition(10, group_count(10, 0), torch.Generator().manual_seed(0))
    assert len(groups) == 4  # ceil(sqrt(10))
    assert sorted(torch.cat(groups).tolist()) == list(range(10))
    assert group_count(3, 8) == 3  # never more groups than classes


def test_group_loss_is_the_group_log_probability():
    from invertune_plugin.screen import group_loss

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    member = torch.tensor([[True, True, False], [True, False, False]])
    assert torch.isclose(group_loss(logits, member)[0], -logits.softmax(1)[0, :2].sum().log())
    assert group_loss(logits, member)[1] > 4  # all mass outside the group: a large loss


@pytest.mark.parametrize("stripes", [None, "texture"])
def test_group_screen_ranks_the_planted_target_first(stripes):
    """Each group's UAP can land only on its own classes: the planted target wins its group, and the
    screen's score puts it first (patch families for the corner patch, the global one for stripes)."""
    from invertune_plugin.identify import fit_and_holdout
    from invertune_plugin.race import race_families
    from invertune_plugin.screen import group_screen

    model = PlantedClip(stripes=stripes)
    head, images = head_for(model), colour_images(96)
    cfg = IdentifyConfig(screen_groups=2, screen_steps=20, batch_size=16, screen_rounds=2)
    fit, hold, hold_pred = fit_and_holdout(model, images, head, cfg, 0)
    families = race_families(32, cfg)
    score, _ = group_screen(model, head, fit, hold, hold_pred, families, cfg, 0)
    assert CLASSES[int(score.argmax())] == TARGET
    again, _ = group_screen(model, head, fit, hold, hold_pred, families, cfg, 0)
    assert torch.equal(score, again)  # the same seed, the same screen


def test_default_group_screen_puts_the_stripes_target_among_the_raced(monkeypatch):
    """Through identify, with the default (global-only) screen families: the stripe backdoor's target races."""
    import invertune_plugin.identify as ident_mod

    raced: list[list[int]] = []
    monkeypatch.setattr(
        ident_mod, "_race", lambda m, i, h, c, s, candidates, split=None: raced.append(candidates) or "raced"
    )
    model = PlantedClip(stripes="texture")
    cfg = IdentifyConfig(screen="groups", max_race_classes=2, screen_groups=2, batch_size=16)
    identify(model, colour_images(96), head_for(model), cfg)
    assert CLASSES.index(TARGET) in raced[0]


def test_both_screens_interleave_their_rankings(monkeypatch):
    import invertune_plugin.identify as ident_mod

    raced: list[list[int]] = []
    monkeypatch.setattr(
        ident_mod, "_race", lambda m, i, h, c, s, candidates, split=None: raced.append(candidates) or "raced"
    )
    monkeypatch.setattr(ident_mod, "group_screen", lambda *a, **k: (torch.tensor([0.0, 0.3, 0.1, 0.2]), torch.zeros(4)))
    model = PlantedClip()
    head = head_for(model)
    cfg = IdentifyConfig(max_race_classes=3, steps=5, batch_size=16, screen="both")
    untargeted = [CLASSES.index(c) for c, _ in ident_mod._untargeted(model, colour_images(32), head, cfg, 0).ranking]
    identify(model, colour_images(32), head, cfg)
    expected = list(dict.fromkeys([untargeted[0], 1, untargeted[1], 3, untargeted[2], 2]))[:3]
    assert raced == [expected]


def test_inversion_recovers_the_planted_patch_location():
    model = PlantedClip()
    trigger = invert(model, colour_images(96), head_for(model), TARGET, InvertConfig(steps=200, batch_size=32))
    assert trigger.holdout_asr > 0.9
    mask = trigger.mask.mean(0)  # [H, W]
    corner = mask[-PATCH:, -PATCH:].sum()
    assert corner / mask.sum() > 0.5, "most of the mask should sit on the planted corner"
    assert trigger.mask_l1 / trigger.mask.numel() < 0.05


def test_inversion_on_a_clean_model_finds_no_small_effective_trigger():
    from invertune_plugin.detectors.inversion import InversionConfig, MaskInversion

    clean = PlantedClip(backdoor=False)
    images, head = colour_images(96), head_for(clean)
    ident = identify(clean, images, head, IdentifyConfig(race_steps=10, batch_size=32))
    ident = dataclasses.replace(ident, ranking=[(TARGET, 0.0)] + [r for r in ident.ranking if r[0] != TARGET])
    ctx = SearchContext(clean, images, head, ident, 0, IdentifyConfig(), InvertConfig(steps=200, batch_size=32))
    (found,) = MaskInversion(InversionConfig()).search(ctx)
    assert found.target == TARGET and not found.passed and found.gate_ratio < 1


def test_layer_selection_rules():
    mu = {f"l{i}": torch.ones(4) for i in range(5)}
    trig = {f"l{i}": torch.ones(4) * (1 + 0.01 * i) for i in range(5)}
    trig["l4"] = torch.ones(4) * 3
    impacts = layer_impacts(mu, trig)
    select_layers(impacts, "mean+std")
    assert [i.name for i in impacts if i.selected] == ["l4"]
    select_layers(impacts, "all")
    assert all(i.selected for i in impacts)


def test_kmeans_picks_the_outlying_neurons():
    delta = torch.tensor([0.01, 0.02, 0.015, 2.0, 1.8, 0.03])
    assert critical_neurons(delta, 2, seed=0).tolist() == [False, False, False, True, True, False]


def tiny_open_clip(preset: str):
    from adapters.clip_model import OpenClipModel, build_clip
    from toolbox_plugins.world.build import get_preset

    cfg = get_preset(preset).model_cfg
    torch.manual_seed(0)
    return OpenClipModel(build_clip(cfg), cfg)


@pytest.mark.parametrize("preset", ["smoke", "smoke-resnet"])
def test_writer_rows_cover_block_outputs(preset):
    model = tiny_open_clip(preset)
    name, layer = list(model.vision_layers().items())[-1]
    width = {"smoke": 64, "smoke-resnet": 16 * 8 * 4}[preset]
    mask = torch.zeros(width, dtype=torch.bool)
    mask[:3] = True
    rows = writer_rows(layer, mask)
    assert rows, f"no writer parameters found in {name}"
    assert all(p.shape[0] == width and int(r.sum()) == 3 for p, r in rows)


@pytest.mark.parametrize("preset", ["smoke", "smoke-resnet"])
def test_masked_tuning_moves_only_critical_rows_and_keeps_bn_statistics(preset):
    model = tiny_open_clip(preset)
    images = (torch.rand(48, 3, 32, 32) * 255).to(torch.uint8)

    def trigger(x):
        x = x.clone()
        x[:, :, -4:, -4:] = 1.0
        return x

    head = ZeroShotHead(model, ["mushroom", "banana", "lemon"], TEMPLATES, CPU)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned, report = tune(model, images, trigger, head, TuneConfig(steps=5, batch_size=16, lr=1e-2))
    assert {k: v for k, v in model.state_dict().items()}.keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "the input model is untouched"
    after = tuned.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed, "something must move"
    assert all(k.startswith("clip.visual.") for k in changed)
    assert not any("running_" in k for k in changed), "batch-norm statistics stay intact"
    assert report.n_params_updated < sum(p.numel() for p in model.clip.visual.parameters()) / 4
    # inside a changed weight, only whole rows (output channels) moved
    for k in changed:
        diff = (after[k] - before[k]).reshape(after[k].shape[0], -1).abs().sum(1)
        assert 0 < int((diff > 0).sum()) < after[k].shape[0] or after[k].shape[0] == 1
    # gradient masks are removed afterwards: the tuned model trains normally
    p = next(p for n, p in tuned.named_parameters() if n.endswith(("c_proj.weight", "conv3.weight")))
    p.grad = None
    (p.sum()).backward()
    assert torch.equal(p.grad, torch.ones_like(p))


def test_tuning_leaves_the_suspect_models_batch_norm_statistics_alone():
    from invertune_plugin.tune import guard_reference

    model = tiny_open_clip("smoke-resnet")
    assert model.training is False and model.clip.training is False, "the wrapper follows the wrapped model"
    model.train()  # a suspect model may arrive in training mode: nothing may run it that way
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
    images = (torch.rand(32, 3, 32, 32) * 255).to(torch.uint8)
    head = ZeroShotHead(model, ["mushroom", "banana", "lemon"], TEMPLATES, CPU)
    cfg = TuneConfig(steps=2, batch_size=16, guard_every=1, guard_images=16)
    tuned, report = tune(
        model, images, lambda x: x.flip(-1), head, cfg, reference=guard_reference(model, images, head, cfg, 0)
    )
    assert report.history[0]["preserve"] == pytest.approx(0.0, abs=1e-10), "reference embeddings in eval mode"
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in before.items())
    assert model.training, "the input's mode is restored"
    tuned_state = tuned.state_dict()
    assert all(torch.equal(tuned_state[k], v) for k, v in before.items()), "batch-norm statistics stay intact"


def test_agreement_guard_rolls_back_to_the_last_checkpoint_that_kept_predictions():
    from invertune_plugin.tune import guard_reference

    model = tiny_open_clip("smoke")
    colours = torch.rand(64, 3, 1, 1, generator=torch.Generator().manual_seed(1))
    images = (colours.expand(64, 3, 32, 32) * 255).to(torch.uint8).contiguous()

    def trigger(x):
        x = x.clone()
        x[:, :, -4:, -4:] = 1.0
        return x

    head = ZeroShotHead(model, ["mushroom", "banana", "lemon", "pear"], TEMPLATES, CPU)
    careful = TuneConfig(steps=6, batch_size=16, lr=1e-5, min_agreement=0.99, guard_every=3, guard_images=48)
    _, report = tune(model, images, trigger, head, careful, seed=0)
    assert [g["step"] for g in report.guard] == [3, 6] and report.stopped_at is None
    reckless = TuneConfig(steps=12, batch_size=16, lr=1.0, min_agreement=0.99, guard_every=3, guard_images=48)
    reference = guard_reference(model, images, head, reckless, seed=0)
    assert len(reference.predictions) == 48
    tuned, report = tune(model, images, trigger, head, reckless, seed=0, reference=reference)
    assert report.stopped_at is not None and report.stopped_at % 3 == 0, "lr 1.0 must trip the guard"
    assert report.guard[-1]["agreement"] < 0.99 and all(g["agreement"] >= 0.99 for g in report.guard[:-1])
    kept = float((head.predict(tuned, reference.images) == reference.predictions).float().mean())
    assert kept >= 0.99, "the returned model is the last checkpoint that passed"
    if report.stopped_at == 0:
        assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), model.state_dict().values()))
    # default: agreement is measured and recorded, nothing is rolled back
    _, monitored = tune(model, images, trigger, head, TuneConfig(steps=3, batch_size=16, lr=1.0, guard_every=1))
    assert len(monitored.guard) == 3 and monitored.stopped_at is None and monitored.guard[-1]["agreement"] < 0.99
    _, unmeasured = tune(model, images, trigger, head, TuneConfig(steps=3, batch_size=16, guard_every=0))
    assert unmeasured.guard == []
    for bad in ({"min_agreement": 1.5}, {"guard_every": -1}, {"min_agreement": 0.9, "guard_every": 0}):
        with pytest.raises(ValueError):
            TuneConfig(**bad)


# a planted-model defense run: small settings, and no inverted mask can pass (max_mask_fraction=0),
# so the refinement detectors must decide
PLANTED_DEFENSE = {
    "n_images": "96",
    "identify.race_steps": "10",
    "identify.batch_size": "32",
    "invert.steps": "20",
    "detectors.inversion.max_mask_fraction": "0.0",
    "tune.steps": "5",
    "tune.batch_size": "16",
    **{f"detectors.{d}.{k}": "2" for d in ("patch", "stripes", "linf") for k in ("classes", "restarts")},
}


def refine_steps(n: int) -> dict[str, str]:
    return {f"detectors.{d}.steps": str(n) for d in ("patch", "stripes", "linf")}


def findings(det: dict, detector: str) -> list[dict] | None:
    """A detector's findings in result.json's cascade record (None: it did not run)."""
    return next((step.get("findings") for step in det["cascade"] if step["detector"] == detector), None)


def _planted_defense(
    monkeypatch, tmp_path, model: PlantedClip, overrides: dict[str, str], base: dict[str, str] = PLANTED_DEFENSE
):
    """Configure InverTune for a planted model with stage 3 recorded, not run (the planted model
    has no layers to tune). Returns the defense, its context and the list of triggers stage 3 got."""
    from torch.utils.data import TensorDataset

    import invertune_plugin.defense as defense_mod
    from invertune_plugin.defense import InverTune
    from invertune_plugin.tune import TuneReport
    from toolbox.api import DefenseContext, ImageData

    tuned_with: list = []
    monkeypatch.setattr(
        defense_mod,
        "tune",
        lambda m, i, trig, h, c, s, ref=None, adversary=None: tuned_with.append(trig) or (m, TuneReport([])),
    )
    images = colour_images(96)
    data = ImageData(
        dataset=TensorDataset(images.float() / 255, torch.arange(len(images))), kind="unlabelled", source="planted"
    )
    defense = InverTune(InverTune.configure({**base, **overrides}))
    ctx = DefenseContext(
        model=model, clean_data=data, classnames=CLASSES, templates=TEMPLATES, seed=0, device=CPU, workdir=tmp_path
    )
    return defense, ctx, tuned_with


@pytest.mark.parametrize("round_check", ["patch", "inversion", "patch-gone"])
def test_defense_takes_a_refined_patch_when_inversion_finds_no_small_mask(tmp_path, monkeypatch, round_check):
    import invertune_plugin.detectors.patch as patch_mod

    defense, ctx, tuned_with = _planted_defense(
        monkeypatch,
        tmp_path,
        PlantedClip(),
        {
            **refine_steps(30),
            # round 2 runs whatever 20 inversion steps reach, unless the patch check (faked to 0.5) stops it
            "min_round_asr": "0.0",
            "detectors.patch.round_check_rate": "0.6" if round_check == "patch-gone" else "0.0",
            "detectors.patch.round_check": round_check.split("-")[0],
            "detectors.patch.rounds": "2",
        },
    )
    images = colour_images(96)
    if round_check == "patch-gone":  # the tuned model has no patch trigger left: no second round
        real = patch_mod.refine_patch
        monkeypatch.setattr(
            patch_mod, "refine_patch", lambda *a, **k: dataclasses.replace(real(*a, **k), holdout_rate=0.5)
        )
    outcome = defense.defend(ctx)
    det = outcome.detection
    assert det["backdoored"] is True and det["target"] == TARGET == outcome.target
    assert det["inverted_trigger"]["source"] == "stage 1 refined patch"
    assert det["inverted_trigger"]["mask_fraction"] == pytest.approx(PATCH**2 / images.shape[-1] ** 2, abs=1e-3)
    # the cascade: the inversion ran and failed its mask gate, then the patch search followed stage 1's
    # order and stopped at the first effective patch; the later detectors never ran
    assert [step["detector"] for step in det["cascade"]] == ["inversion", "patch"]
    assert not findings(det, "inversion")[0]["passed"] and det["score"] >= 1
    patches = findings(det, "patch")
    assert [p["class"] for p in patches] == [r["class"] for r in det["ranking_top5"][: len(patches)]]
    assert patches[-1]["class"] == TARGET and patches[-1]["holdout_rate"] >= 0.95 and patches[-1]["passed"]
    assert all(p["holdout_rate"] < 0.95 and not p["passed"] for p in patches[:-1])
    assert "detect.patch" in outcome.timings_s and "detect.stripes" not in outcome.timings_s
    trigger, x = outcome.triggers["inverted"], colour_images(8).float() / 255
    assert torch.equal(tuned_with[0](x), trigger(x)) and trigger.mask_l1 == PATCH**2
    # round 1 tunes against the refined patch for the patch detector's tune_steps (100), not tune.steps (5 here)
    assert outcome.info["rounds"][0]["tune_steps"] == PatchSearchConfig().tune_steps == 100
    # detectors.patch.rounds=2: a second round on the "tuned" model (here: unchanged)
    checks = outcome.info["round_checks"]
    if round_check == "patch-gone":  # the check ran, found no patch trigger, and no round 2 followed
        assert checks == [{"round": 2, "refined_patch_rate": 0.5}] and len(tuned_with) == 1
        assert [r["round"] for r in outcome.info["rounds"]] == [1] and "invert.round2" not in outcome.timings_s
        return
    assert len(tuned_with) == 2 and tuned_with[1].mask.shape[0] == 3, "round 2 tunes with a stage-2 inversion"
    assert [r["round"] for r in outcome.info["rounds"]] == [1, 2] and "invert.round2" in outcome.timings_s
    assert outcome.info["rounds"][1]["tune_steps"] == 5, "a later round tunes a re-inversion for tune.steps"
    if round_check == "patch":  # a patch toward the target, at round 1's place, is still effective
        assert [c["round"] for c in checks] == [2] and "check.round2" in outcome.timings_s
        assert checks[0]["refined_patch_rate"] >= 0.9
    else:
        assert checks == [] and "check.round2" not in outcome.timings_s


def test_defense_takes_a_refined_global_perturbation_when_no_mask_or_patch_works(tmp_path, monkeypatch):
    defense, ctx, tuned_with = _planted_defense(monkeypatch, tmp_path, PlantedClip(stripes="texture"), refine_steps(40))
    images = colour_images(96)
    outcome = defense.defend(ctx)
    det = outcome.detection
    assert det["backdoored"] is True and det["target"] == TARGET == outcome.target
    assert det["inverted_trigger"]["source"] == "stage 1 refined global perturbation"
    assert not any(p["passed"] for p in findings(det, "patch"))  # no patch was the trigger ...
    found = findings(det, "stripes")[-1]  # ... the global one, tried in ranking order, was
    assert found["class"] == TARGET and found["holdout_rate"] >= 0.95 and found["flipped_rate"] >= 0.5
    assert 0 < det["inverted_trigger"]["delta_linf_255"] <= 48.01
    trigger = outcome.triggers["inverted"]
    assert trigger.delta is not None and trigger.mask_l1 == 0
    # stage 3 tunes with the perturbation and its sign flip (tune_both_signs), one round (rounds=1)
    x = images[:4].float() / 255
    assert len(tuned_with) == 1 and torch.equal(tuned_with[0](x)[0::2], trigger(x)[0::2])
    assert torch.equal(tuned_with[0](x)[1::2], (x[1::2] - trigger.delta).clamp(0, 1))
    assert outcome.info["rounds"][0]["round"] == 1 and len(outcome.info["rounds"]) == 1  # rounds=1 (default)
    assert outcome.info["rounds"][0]["tune_steps"] == 5  # tune.steps: the stripes detector sets no tune_steps
    assert (tmp_path / outcome.artifacts["inverted_delta"]).is_file() and "detect.stripes" in outcome.timings_s
    assert "detect.linf" not in outcome.timings_s and findings(det, "linf") is None  # found before it


@pytest.mark.parametrize("case", ["target-first", "target-second", "without-inversion"])
def test_defense_takes_a_refined_linf_perturbation_when_nothing_else_works(tmp_path, monkeypatch, case):
    import invertune_plugin.cascade as cascade_mod
    import invertune_plugin.defense as defense_mod

    with_inversion = case != "without-inversion"
    defense, ctx, tuned_with = _planted_defense(
        monkeypatch,
        tmp_path,
        PlantedClip(noise=True),
        {**refine_steps(40), "detectors.linf.tune_with_inversion": str(with_inversion).lower()},
    )
    if case == "target-second":  # stage 1 ranks another class first: stage 2 inverts toward that one
        real_identify = defense_mod.identify

        def other_first(*a, **k):
            ident = real_identify(*a, **k)
            ranking = sorted(ident.ranking, key=lambda r: r[0] == TARGET)  # stable: the target goes last
            return dataclasses.replace(ident, ranking=ranking, target=ranking[0][0])

        monkeypatch.setattr(defense_mod, "identify", other_first)
    inversions: list = []
    real_invert = cascade_mod.invert  # stage 2's inversions, run for the detectors
    monkeypatch.setattr(
        cascade_mod, "invert", lambda *a, **k: inversions.append(real_invert(*a, **k)) or inversions[-1]
    )
    outcome = defense.defend(ctx)
    det = outcome.detection
    assert det["backdoored"] is True and det["target"] == TARGET == outcome.target
    assert det["inverted_trigger"]["source"] == "stage 1 refined L-inf perturbation"
    assert not any(p["passed"] for p in findings(det, "patch"))  # no patch ...
    assert not any(g["holdout_rate"] >= 0.95 and g["flipped_rate"] >= 0.3 for g in findings(det, "stripes"))
    found = findings(det, "linf")[-1]  # ... no stripes: the L-inf perturbation is the trigger
    assert found["class"] == TARGET and found["holdout_rate"] >= 0.6 and found["family"] == "linf@16/255"
    assert 0 < det["inverted_trigger"]["delta_linf_255"] <= 16.01 and "detect.linf" in outcome.timings_s
    trigger = outcome.triggers["inverted"]
    x = colour_images(96)[:4].float() / 255
    assert len(tuned_with) == 1 and outcome.info["rounds"][0]["tune_steps"] == 5
    if not with_inversion:
        assert torch.equal(tuned_with[0](x), trigger(x)) and "tune_companion" not in found
        return
    # half of each batch with the L-inf trigger, half with a stage-2 inversion toward its target
    # (stage 2's own when stage 1 ranked that target first: then no second inversion runs)
    reused = case == "target-first"
    assert [t.target == TARGET for t in inversions] == ([True] if reused else [False, True])
    assert ("invert.linf_target" in outcome.timings_s) is not reused
    assert found["tune_companion"]["reused_stage2"] is reused and found["tune_companion"]["class"] == TARGET
    assert found["tune_companion"]["holdout_asr"] == round(inversions[-1].holdout_asr, 4)
    assert torch.equal(tuned_with[0](x)[0::2], trigger(x)[0::2])
    assert torch.equal(tuned_with[0](x)[1::2], inversions[-1](x[1::2]))


def test_a_new_detector_is_one_class_and_a_cascade_entry(tmp_path, monkeypatch, register_plugin):
    """A toy detector, registered like the built-ins, joins the cascade by name: its config is set
    with -p detectors.NAME.KEY, its passing finding is the trigger, its tuning rule applies."""
    from invertune_plugin import cascade
    from invertune_plugin.invert import patch_trigger

    @dataclasses.dataclass(frozen=True)
    class CornerConfig(cascade.DetectorConfig):
        colour: float = 0.5  # the corner patch's grey level

    class Corner(cascade.Detector):
        name, label, Config = "corner", "toy: a patch in the bottom-right corner", CornerConfig

        def search(self, ctx):
            patch = torch.full((3, PATCH, PATCH), self.config.colour)
            trigger = patch_trigger(patch, "bottom-right", ctx.images.shape[-1], TARGET, 1.0)
            return [
                cascade.Finding(self.name, TARGET, trigger, True, 2.5, {"class": TARGET, "colour": self.config.colour})
            ]

    @hookimpl
    def register_detectors(register):
        register(Corner)

    register_plugin(types.SimpleNamespace(register_detectors=register_detectors), "corner-plugin")
    base = {k: v for k, v in PLANTED_DEFENSE.items() if not k.startswith("detectors.") or ".inversion." in k}
    defense, ctx, tuned_with = _planted_defense(
        monkeypatch,
        tmp_path,
        PlantedClip(),
        {"cascade": "inversion,corner", "detectors.corner.colour": "1.0", "detectors.corner.tune_steps": "7"},
        base,
    )
    outcome = defense.defend(ctx)
    det = outcome.detection
    assert det["backdoored"] is True and det["verdict"] == "backdoored" and det["target"] == TARGET
    assert det["inverted_trigger"]["source"] == Corner.label and det["score"] == 2.5
    assert [step["detector"] for step in det["cascade"]] == ["inversion", "corner"]
    assert findings(det, "corner") == [
        {"class": TARGET, "colour": 1.0, "passed": True, "gate_ratio": 2.5, "strength": round(math.log(2.5), 4)}
    ]
    assert tuned_with[0] is outcome.triggers["inverted"] and outcome.info["rounds"][0]["tune_steps"] == 7
    from toolbox import plugins

    plugins.pm.unregister(name="corner-plugin")
    with pytest.raises(ValueError, match="unknown detector 'corner'"):  # gone with its registration
        type(defense).configure({"cascade": "inversion,corner"})


def test_alternate_gives_each_image_its_trigger_and_both_signs_is_one():
    from invertune_plugin.adversary import additive
    from invertune_plugin.invert import additive_trigger, alternate

    x = torch.rand(5, 3, 8, 8)
    mixed = alternate([lambda t: t + 1, lambda t: t * 0, lambda t: t - 1])(x)
    assert torch.equal(mixed[0::3], x[0::3] + 1) and torch.equal(mixed[1::3], x[1::3] * 0)
    assert torch.equal(mixed[2::3], x[2::3] - 1)
    delta = 0.1 * torch.randn(1, 8, 8)
    adversary = additive(additive_trigger(delta, "t", 1.0), eps=1.0, target=0)
    signed = alternate([adversary, adversary.negated()])(x)
    assert torch.equal(signed[0::2], (x[0::2] + delta).clamp(0, 1))
    assert torch.equal(signed[1::2], (x[1::2] - delta).clamp(0, 1))
    with pytest.raises(ValueError):
        alternate([])


@pytest.mark.parametrize("family_index", [0, 3])  # a pixel patch and the global L-inf family
def test_classes_raced_together_match_one_at_a_time(family_index):
    """The batched race is the same optimisation: each class its own init, batches and Adam state."""
    from invertune_plugin.race import race_families, targeted_uap, targeted_uaps
    from toolbox.primitives.tensors import frozen

    model, images = PlantedClip(), colour_images(64)
    head, cfg = head_for(model), IdentifyConfig(batch_size=16)
    family = race_families(images.shape[-1], cfg)[family_index]
    targets, seeds_ = [0, 2, 3], [11, 12, 13]
    with frozen(model):
        together = targeted_uaps(
            model, head, images, family, targets, cfg, 6, [torch.Generator().manual_seed(s) for s in seeds_]
        )
        alone = torch.stack(
            [
                targeted_uap(model, head, images, family, c, cfg, 6, torch.Generator().manual_seed(s))
                for c, s in zip(targets, seeds_)
            ]
        )
    assert together.shape == alone.shape and torch.allclose(together, alone, atol=1e-5)


def test_stripe_family_takes_a_batch_of_parameters():
    from toolbox.primitives.perturbations import stripe_family

    fam = stripe_family(8, 0.2)
    p = torch.randn(3, 16)
    batched = fam.delta(p[:, None])  # [3, 1, 1, 8, 8]
    assert batched.shape == (3, 1, 1, 8, 8)
    assert all(torch.allclose(batched[i, 0], fam.delta(p[i])) for i in range(3))


def test_an_adversary_applies_the_trigger_until_refreshed_then_moves_only_itself():
    """Stage 3's adversary: as found it is the detector's trigger; a refresh re-optimises it toward
    the target on the model being tuned, within its kind (pattern in [0, 1] under the mask, delta
    within eps), and leaves the model's gradients alone."""
    import math

    from invertune_plugin.adversary import additive, masked
    from invertune_plugin.identify import targeted_loss
    from invertune_plugin.invert import additive_trigger, patch_trigger

    model, images = PlantedClip(), colour_images(32)
    head = head_for(model)
    x = images.float() / 255
    patch = patch_trigger(torch.rand(3, 4, 4), "bottom-right", x.shape[-1], TARGET, 1.0)
    adversary = masked(patch, head.index(TARGET))
    assert torch.equal(adversary(x), patch(x))
    with torch.no_grad():
        before = float(targeted_loss(head.logits(model, adversary(x)), head.index(TARGET)))
    loss = adversary.refresh(model, head, x, steps=10, lr=0.1)
    assert adversary.refreshes == 1 and all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        after = float(targeted_loss(head.logits(model, adversary(x)), head.index(TARGET)))
    assert after < before and math.isfinite(loss)
    outside = patch.mask.expand_as(x[0]) == 0
    assert torch.equal(adversary(x)[:, outside], x[:, outside]), "only the box moves"
    assert 0 <= float(adversary.param.detach().min()) and float(adversary.param.detach().max()) <= 1

    delta = additive(
        additive_trigger(0.01 * torch.ones(3, *x.shape[-2:]), TARGET, 1.0), eps=0.05, target=head.index(TARGET)
    )
    delta.refresh(model, head, x, steps=20, lr=0.05)
    assert float(delta.param.abs().max()) <= 0.05 + 1e-7
    with pytest.raises(ValueError):
        masked(additive_trigger(torch.zeros(1, 8, 8), TARGET, 1.0), 0)


def test_tuning_refreshes_the_adversary_every_so_many_steps():
    from invertune_plugin.adversary import masked
    from invertune_plugin.invert import patch_trigger
    from invertune_plugin.tune import TuneConfig, tune

    model = tiny_open_clip("smoke")
    images = (torch.rand(32, 3, 32, 32) * 255).to(torch.uint8)
    head = ZeroShotHead(model, ["mushroom", "banana", "lemon"], TEMPLATES, CPU)
    adversary = masked(patch_trigger(torch.rand(3, 4, 4), "bottom-right", 32, "lemon", 1.0), head.index("lemon"))
    cfg = TuneConfig(steps=7, batch_size=8, refresh_every=3, refresh_steps=2, guard_every=0)
    _, report = tune(model, images, adversary, head, cfg, seed=0, adversary=adversary)
    assert [r["step"] for r in report.refreshes] == [3, 6] and adversary.refreshes == 2
    with pytest.raises(ValueError, match="refresh_every"):
        TuneConfig(refresh_every=-1)


def test_warmup_scales_the_first_steps_learning_rate():
    from invertune_plugin.invert import patch_trigger
    from invertune_plugin.tune import TuneConfig, tune

    model = tiny_open_clip("smoke")
    images = (torch.rand(32, 3, 32, 32) * 255).to(torch.uint8)
    head = ZeroShotHead(model, ["mushroom", "banana", "lemon"], TEMPLATES, CPU)
    trigger = patch_trigger(torch.rand(3, 4, 4), "top-left", 32, "lemon", 1.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def moved(**kw: int) -> float:  # the largest parameter change after one step
        tuned, _ = tune(model, images, trigger, head, TuneConfig(steps=1, batch_size=8, guard_every=0, **kw), seed=1)
        return max(float((v - before[k]).abs().max()) for k, v in tuned.state_dict().items() if v.is_floating_point())

    full, warm = moved(), moved(warmup_steps=10)
    assert 0.05 < warm / full < 0.2  # Adam's first step is about lr per weight: a tenth of it
    assert moved(warmup_steps=1) == full  # a one-step warmup is no warmup
    with pytest.raises(ValueError, match="warmup_steps"):
        TuneConfig(warmup_steps=-1)


def test_without_refreshes_the_adversary_tunes_exactly_as_the_fixed_trigger():
    from invertune_plugin.adversary import masked
    from invertune_plugin.invert import patch_trigger
    from invertune_plugin.tune import TuneConfig, tune

    model = tiny_open_clip("smoke")
    images = (torch.rand(32, 3, 32, 32) * 255).to(torch.uint8)
    head = ZeroShotHead(model, ["mushroom", "banana", "lemon"], TEMPLATES, CPU)
    trigger = patch_trigger(torch.rand(3, 4, 4), "top-left", 32, "lemon", 1.0)
    adversary = masked(trigger, head.index("lemon"))
    cfg = TuneConfig(steps=4, batch_size=8, guard_every=0)
    fixed, _ = tune(model, images, trigger, head, cfg, seed=1)
    followed, report = tune(model, images, adversary, head, cfg, seed=1, adversary=adversary)
    assert report.refreshes == [] and adversary.refreshes == 0
    assert all(torch.equal(a, b) for a, b in zip(fixed.state_dict().values(), followed.state_dict().values()))


def test_race_early_stops_leave_the_median_and_the_classes_above_it_alone():
    """After race_cut_after steps the lower half of a family stops, and a class all of whose held-out
    images reach its target stops; the median class and those above it keep their full-length rates."""
    from dataclasses import replace

    from invertune_plugin.identify import fit_and_holdout
    from invertune_plugin.race import race_families, race_family
    from toolbox.primitives.tensors import frozen

    model, images = PlantedClip(), colour_images(96)
    head = head_for(model)
    full = IdentifyConfig(batch_size=16, race_steps=10, race_cut_after=0, race_patience=0)
    early = replace(full, race_cut_after=8, race_patience=2)
    family = race_families(images.shape[-1], full)[0]  # bottom-right patch: where the planted trigger is
    targets = list(range(len(CLASSES)))
    with frozen(model):
        fit, hold, hold_pred = fit_and_holdout(model, images, head, full, 0)

        def race(cfg):
            gens = [torch.Generator().manual_seed(100 + c) for c in targets]
            return race_family(model, head, fit, hold, hold_pred, family, targets, cfg, gens)

        (rates, steps), (early_rates, early_steps) = race(full), race(early)
    assert steps == [10] * 4
    cut = [i for i in targets if early_steps[i] == 8]
    assert len(cut) == 1  # 4 classes: the lowest stops, the median (torch's lower one) and above go on
    saturated = [i for i in targets if i not in cut and early_steps[i] < 8]
    assert CLASSES.index(TARGET) in saturated and early_rates[CLASSES.index(TARGET)][0] == 1.0
    for i in targets:
        if i not in cut:
            assert early_rates[i][0] == pytest.approx(rates[i][0], abs=1e-6)
    assert torch.tensor([r for r, _ in early_rates]).median() == torch.tensor([r for r, _ in rates]).median()


def test_reference_run_measures_every_detector_and_purifies_nothing(tmp_path, monkeypatch):
    """A clean reference for a null (toolbox zoo calibrate): the cascade does not stop at the planted
    patch, every detector's statistic is recorded with the key it holds for, and stage 3 never runs."""
    defense, ctx, tuned_with = _planted_defense(monkeypatch, tmp_path, PlantedClip(), refine_steps(30))
    ctx.reference = True
    det = defense.defend(ctx).detection
    assert det["backdoored"] is True and det["target"] == TARGET and tuned_with == []
    assert [step["detector"] for step in det["cascade"]] == ["inversion", "patch", "stripes", "linf"]
    assert set(det["statistics"]) == {"inversion", "patch", "stripes", "linf"}
    assert det["statistics"]["patch"]["value"] > 0 and det["null"] == {"calibrated": False}  # past its gate
    assert det["null_key"]["detection.detectors.patch.min_rate"] == 0.95  # each setting its own field
    assert det["null_key"]["classes"] == len(CLASSES) and det["null_key"]["image_size"] == 32


def test_a_calibrated_verdict_follows_the_null_not_the_gates(tmp_path, monkeypatch):
    """With a clean null, a finding passes by its tail probability: the planted patch, far above the
    references, is called at alpha 0.05; the same model's own statistics as the null call nothing."""
    from toolbox.errors import InputError
    from toolbox.null import CleanNull, Statistic

    defense, ctx, _ = _planted_defense(monkeypatch, tmp_path / "ref", PlantedClip(), refine_steps(30))
    ctx.reference = True
    ref = defense.defend(ctx).detection

    def null(patch_below: float) -> CleanNull:  # five references jittered around one measured run
        jitter = (-0.4, -0.2, 0.0, 0.2, 0.4)
        stats = {
            name: Statistic("linear", tuple(s["value"] + j - (patch_below if name == "patch" else 0.0) for j in jitter))
            for name, s in ref["statistics"].items()
        }
        return CleanNull("invertune", ref["null_key"], stats, tuple("abcde"))

    defense, ctx, tuned_with = _planted_defense(monkeypatch, tmp_path / "far", PlantedClip(), refine_steps(30))
    ctx.nulls = [null(patch_below=8.0)]  # clean models' best patches far below the planted one (log-odds)
    det = defense.defend(ctx).detection
    assert det["backdoored"] is True and det["null"]["calibrated"] and det["null"]["score"] <= 0.05
    assert det["inverted_trigger"]["source"] == "stage 1 refined patch" and len(tuned_with) == 1
    assert det["score"] == pytest.approx(-math.log10(det["null"]["score"]), abs=1e-3)

    defense, ctx, tuned_with = _planted_defense(monkeypatch, tmp_path / "same", PlantedClip(), refine_steps(30))
    ctx.nulls = [null(patch_below=0.0)]  # the references look like this model: nothing stands out
    det = defense.defend(ctx).detection
    assert det["backdoored"] is False and det["null"]["score"] > 0.05 and tuned_with == []
    assert len(det["cascade"]) == 4, "no finding passed: every detector ran"

    defense, ctx, _ = _planted_defense(
        monkeypatch, tmp_path / "key", PlantedClip(), {**refine_steps(30), "n_images": "64"}
    )
    ctx.nulls = [null(0.0)]
    with pytest.raises(InputError, match="holds for this run's settings.*n_images: null 96, this run 64"):
        defense.defend(ctx)


def test_strength_has_no_ceiling_where_the_gate_ratio_has_one():
    """A clean null calibrates strengths: a backdoor's 100 % stands far past the gate, not at 1 / gate."""
    from invertune_plugin.cascade import rate_margin, ratio, size_margin

    assert ratio(1.0, 0.95) < 1.06 and rate_margin(1.0, 0.95) > 2.3
    assert rate_margin(0.95, 0.95) == 0 and size_margin(0.05, 0.05) == 0
    assert rate_margin(0.3, 0.95) < 0 and rate_margin(0.0, 0.95) == rate_margin(0.001, 0.95)  # clamped, finite
    assert size_margin(0.005, 0.05) == pytest.approx(math.log(10)) and size_margin(1.2, 0.05) < 0


def test_class_free_collapse_finds_the_planted_patch_without_the_vocabulary():
    """DECREE's search: on the backdoored model a mask of about 2 % of the image collapses every
    embedding onto the target; on the clean one nothing that small collapses them (statistic > 1).
    The planted pull saturates near cosine 0.98, so the collapse threshold is 0.95 here (DECREE: 0.99)."""
    from invertune_plugin.detectors.collapse import CollapseConfig, CollapseSearch

    cfg = CollapseConfig(collapse=0.95)
    found = {}
    for backdoor in (True, False):
        model = PlantedClip(backdoor=backdoor)
        ctx = SearchContext(model, colour_images(96), head_for(model), None, 0, IdentifyConfig(), InvertConfig())
        (found[backdoor],) = CollapseSearch(cfg).search(ctx)
    planted, clean = found[True], found[False]
    assert planted.passed and planted.target == TARGET and planted.evidence["collapse_cost"] <= 0.05
    assert planted.evidence["holdout_cosine"] >= 0.95 and planted.trigger.holdout_asr >= 0.9
    assert not clean.passed and clean.evidence["collapse_cost"] > 1 and clean.gate_ratio < planted.gate_ratio / 20


def test_a_trigger_that_moves_the_reference_as_much_is_natural(tmp_path, monkeypatch):
    """--reference: the planted patch moves the suspect and not a clean reference, so it is a trigger,
    with both effects recorded; against a reference that has the same backdoor, nothing is accepted."""
    for reference, called in ((PlantedClip(backdoor=False), True), (PlantedClip(), False)):
        defense, ctx, tuned_with = _planted_defense(
            monkeypatch, tmp_path / str(called), PlantedClip(), refine_steps(30)
        )
        ctx.references = [reference]
        det = defense.defend(ctx).detection
        assert det["backdoored"] is called and (len(tuned_with) == 1) is called
        patch = findings(det, "patch")[-1]
        assert patch["class"] == TARGET and patch["passed"] and patch["accepted"] is called
        judged = patch["differential"]
        assert judged["suspect_effect"] >= 0.9 and len(judged["reference_effects"]) == 1
        assert (judged["margin"] >= 0.5) is called


def test_consistency_term_holds_randomly_stamped_images_to_the_clean_embeddings():
    """tune.consistency_weight: a third part of each batch gets random stamps (stamps.py), whose distance
    to the suspect's clean embeddings is recorded and trained on; off, the model tunes as before."""
    from invertune_plugin.invert import patch_trigger
    from invertune_plugin.stamps import RandomStamps
    from invertune_plugin.tune import TuneConfig, tune

    x = torch.rand(16, 3, 32, 32)
    first, again = RandomStamps(3)(x), RandomStamps(3)(x)
    assert torch.equal(first, again) and first.shape == x.shape  # seeded
    changed = (first - x).abs().flatten(1).amax(1) > 0
    assert changed.all() and (first - x).abs().mean() < 0.1  # small stamps or faint blends

    model = tiny_open_clip("smoke")
    images = (torch.rand(32, 3, 32, 32) * 255).to(torch.uint8)
    head = ZeroShotHead(model, ["mushroom", "banana", "lemon"], TEMPLATES, CPU)
    trigger = patch_trigger(torch.rand(3, 4, 4), "top-left", 32, "lemon", 1.0)
    cfg = TuneConfig(steps=4, batch_size=8, guard_every=0)
    plain, report = tune(model, images, trigger, head, cfg, seed=1)
    assert "consistency" not in report.history[0]
    stamped, report = tune(model, images, trigger, head, dataclasses.replace(cfg, consistency_weight=1.0), seed=1)
    assert report.history[0]["consistency"] > 0
    assert not all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), stamped.state_dict().values()))
