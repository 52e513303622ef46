"""The zoo: the spec generator (seeded, ranges respected, every family drawn), spec errors, and
a three-member smoke zoo built and evaluated end to end."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from invertune_plugin.replay import replay
from toolbox.cli import main
from toolbox.errors import InputError
from toolbox.null import read_null
from toolbox.zoo.spec import CLEAN_FINETUNE, CLEAN_SCRATCH, draw_members, load_spec

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ["mushroom", "banana", "lemon", "tennis ball", "pinwheel"]
SEEDED = {"badnet", "blended", "wanet", "badclip", "badencoder", "patch", "blend", "color-filter", "border"}


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def members(path: Path, n: int | None = None):
    return draw_members(load_spec(path, n), VOCAB, lambda attack: attack in SEEDED)


@pytest.mark.parametrize("split", ["dev", "test"])
def test_same_spec_same_members_and_ranges_respected(split):
    path = ROOT / "zoo" / f"{split}.yaml"
    spec = load_spec(path)
    drawn = members(path)
    assert [m.to_dict() for m in drawn] == [m.to_dict() for m in members(path)]
    assert len(drawn) == spec.members >= 32  # issue 41: at least 32 members, at least 40 % clean
    kinds = [m.kind for m in drawn]
    assert kinds.count(CLEAN_FINETUNE) + kinds.count(CLEAN_SCRATCH) == spec.n_clean >= 0.4 * spec.members
    assert kinds.count(CLEAN_SCRATCH) == spec.clean_scratch
    assert {m.family for m in drawn if m.kind == "backdoored"} == {f.name for f in spec.families}
    assert {m.preset for m in drawn} == set(spec.presets)
    assert len({m.key for m in drawn}) == len(drawn)
    families = {f.name: f for f in spec.families}
    for m in drawn:
        if m.kind == CLEAN_SCRATCH:
            assert m.attack is None and m.params == {} and m.train_pairs is None  # a base build sees all pairs
            continue
        assert m.train_pairs == spec.train_pairs
        assert m.params["target"] in VOCAB
        if m.kind == CLEAN_FINETUNE:
            assert m.params["poison_rate"] == 0.0 and m.attack == spec.clean_attack
            continue
        fam = families[m.family]
        assert ("poison_rate" in m.params) == fam.poison
        if fam.poison:
            low, high = spec.poison_rate["log_uniform"]
            assert low <= m.params["poison_rate"] <= high
        assert ("trigger_seed" in m.params) == (fam.attack in SEEDED)
        for key, dist in fam.params.items():
            value = m.params[key]
            if isinstance(dist, dict) and "uniform" in dist:
                assert dist["uniform"][0] <= value <= dist["uniform"][1], (m.id, key, value)
            elif isinstance(dist, dict) and "choice" in dist:
                assert value in dist["choice"]
            else:
                assert value == dist


def test_the_test_split_has_families_dev_lacks_and_another_seed():
    dev, test = load_spec(ROOT / "zoo" / "dev.yaml"), load_spec(ROOT / "zoo" / "test.yaml")
    assert dev.seed != test.seed
    variants = {(f.attack, json.dumps(f.params, sort_keys=True)) for f in dev.families}
    new = [f.name for f in test.families if (f.attack, json.dumps(f.params, sort_keys=True)) not in variants]
    assert len(new) >= 2 and {"color-filter", "border"} <= set(new)


def test_a_larger_zoo_is_the_same_spec_at_another_scale():
    big = members(ROOT / "zoo" / "dev.yaml", 600)
    assert (
        len(big) == 600
        and sum(m.kind != "backdoored" for m in big) == load_spec(ROOT / "zoo" / "dev.yaml", 600).n_clean
    )


def test_a_members_training_subset_is_seeded_and_keeps_its_captions():
    import torch

    from toolbox.api import ImageData
    from toolbox.zoo.build import HeldPairs, train_subset

    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    data = ImageData(
        dataset=HeldPairs(images), kind="captioned", source="pairs.csv", captions=[[f"caption {i}"] for i in range(10)]
    )
    a, b, c = train_subset(data, 4, seed=1), train_subset(data, 4, seed=1), train_subset(data, 4, seed=2)
    assert torch.equal(a.dataset.cache, b.dataset.cache) and not torch.equal(a.dataset.cache, c.dataset.cache)
    for i in range(4):  # item i's caption is the one its image had
        image, index = a.dataset[i]
        assert a.captions[index] == [f"caption {int(round(image[0, 0, 0].item() * 255))}"]
    assert len(a.dataset) == 4 and "4 pairs, seed 1" in a.source


def test_localisation_is_the_inverted_masks_share_inside_a_small_real_trigger(host, tmp_path):
    import safetensors.torch
    import torch

    from toolbox.zoo.build import member_trigger
    from toolbox.zoo.evaluate import localisation

    patch = {
        "id": "z-000",
        "label": "backdoored",
        "attack": "patch",
        "params": {
            "target": "banana",
            "poison_rate": 0.05,
            "content": "solid",
            "patch_fraction": 0.19,
            "row": 1.0,
            "col": 1.0,
            "trigger_seed": 3,
        },
    }
    blend = {
        **patch,
        "attack": "blend",
        "params": {"target": "banana", "poison_rate": 0.05, "pattern": "noise", "alpha": 0.1, "trigger_seed": 3},
    }
    x = torch.rand(2, 3, 32, 32)
    area = (member_trigger(tmp_path, patch)(x) - x).abs().amax(dim=(0, 1)) > 0
    assert 0 < area.float().mean() < 0.25
    mask = torch.zeros(3, 32, 32)
    mask[:, area] = 1.0
    mask[:, ~area] = area.sum() / (~area).sum()  # as much mass outside the patch as inside
    (tmp_path / "run" / "artifacts").mkdir(parents=True)
    safetensors.torch.save_file({"inverted": mask}, str(tmp_path / "run" / "artifacts" / "trigger_masks.safetensors"))
    doc = {"artifacts": {"trigger_masks": "artifacts/trigger_masks.safetensors"}}  # as the runner records them
    assert localisation(tmp_path, patch, tmp_path / "run", doc) == pytest.approx(0.5, abs=1e-4)
    assert localisation(tmp_path, blend, tmp_path / "run", doc) is None  # a blend changes every pixel
    assert localisation(tmp_path, {**patch, "label": "clean"}, tmp_path / "run", doc) is None
    assert localisation(tmp_path, patch, tmp_path / "elsewhere", doc) is None  # no masks written
    assert localisation(tmp_path, patch, tmp_path / "run", {"artifacts": {}}) is None  # the defense gave none


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nseed: 1\nmembers: 3\npresets: [smoke]\nfamilies: {badnet: {}}\nsurprise: 1\n", "unknown keys"),
        (
            "name: x\nseed: 1\nmembers: 3\npresets: [smoke]\nfamilies: {badnet: {alpha: {gauss: [0, 1]}}}\n",
            "unknown distribution",
        ),
        ("name: x\nseed: 1\nmembers: 3\npresets: [smoke]\nfamilies: {badnet: {a: {uniform: [2, 1]}}}\n", "low <= high"),
        ("name: x\nseed: 1\nmembers: 0\npresets: [smoke]\nfamilies: {badnet: {}}\n", "members >= 1"),
        ("- just\n- a list\n", "not a mapping"),
        ("name: null\nseed: 1\nmembers: 3\npresets: [smoke]\nfamilies: {badnet: {}}\n", "name must be"),
        ("name: x\nseed: 1\nmembers: 3\npresets: [smoke]\nfamilies: {badnet: {}}\ntrain_pairs: 0\n", "train_pairs"),
    ],
)
def test_bad_specs_are_input_errors(tmp_path, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_spec(path)


@pytest.mark.slow
def test_smoke_zoo_builds_and_is_scored_end_to_end(host, smoke_world, tmp_path, capsys, monkeypatch):
    zoo = tmp_path / "zoo"
    assert main(["zoo", "build", str(ROOT / "zoo" / "smoke.yaml"), "--out", str(zoo)]) == 0
    manifest = json.loads((zoo / "manifest.json").read_text())["members"]
    assert [m["kind"] for m in manifest].count(CLEAN_FINETUNE) == 1 and len(manifest) == 3
    for m in manifest:
        assert (zoo / "members" / m["id"] / "model" / "open_clip_config.json").is_file()
        assert m["label"] in ("clean", "backdoored", "not_implanted") and m["measured"]["ca"] > 0.5
        assert m["label"] != "backdoored" or m["implant_lift"] >= 0.5
        assert m["attack_code"]  # every smoke member is a fine-tune by an attack (clean ones by poison rate 0)
    stamps = {p: p.stat().st_mtime_ns for p in zoo.glob("members/*/member.json")}
    assert main(["zoo", "build", str(ROOT / "zoo" / "smoke.yaml"), "--out", str(zoo)]) == 0  # resumes: nothing rebuilt
    assert {p: p.stat().st_mtime_ns for p in zoo.glob("members/*/member.json")} == stamps

    report = tmp_path / "report"
    assert main(["zoo", "eval", str(zoo), "--defense", "none", "--out", str(report)]) == 0
    doc = json.loads((report / "zoo_summary.json").read_text())
    rows = {r["member_id"]: r for r in doc["rows"]}
    assert set(rows) == {m["id"] for m in manifest}  # not implanted ones listed too, with nothing measured
    assert doc["summary"]["not_implanted"] == [m["id"] for m in manifest if m["label"] == "not_implanted"]
    for m in manifest:  # `none` changes nothing: the scorer's ASR after is the build's ASR
        if m["label"] == "backdoored":
            assert rows[m["id"]]["asr_after"] == pytest.approx(m["measured"]["asr"])
    assert doc["summary"]["detection"] is None  # `none` gives no score
    assert (report / "zoo_summary.md").is_file() and (report / "zoo_members.csv").is_file()
    saved = [json.loads(p.read_text()) for p in report.glob("*/outcome.json")]
    assert saved and len({s["code"] for s in saved}) == 1  # each outcome names the defense code that made it

    first = manifest[0]["id"]  # --only: a subset, said in the title, reported apart; bad ids are bad input
    capsys.readouterr()
    assert main(["zoo", "eval", str(zoo), "--defense", "none", "--out", str(report), "--only", f" {first},"]) == 0
    [subset] = report.glob("only-*/zoo_summary.json")
    doc = json.loads(subset.read_text())
    assert [r["member_id"] for r in doc["rows"]] == [first] and f"(only {first})" in capsys.readouterr().out
    assert len(json.loads((report / "zoo_summary.json").read_text())["rows"]) == 3, "the full report stays"
    for only, message in (("nobody", "no member nobody"), (",", "names no member")):
        assert main(["zoo", "eval", str(zoo), "--defense", "none", "--out", str(report), "--only", only]) == 2
        assert message in capsys.readouterr().err

    kept = tmp_path / "kept"  # --keep-outcomes: the next machine takes them instead of running the defense
    keep = ["zoo", "eval", str(zoo), "--defense", "none", "--keep-outcomes", str(kept)]
    assert main([*keep, "--out", str(tmp_path / "here")]) == 0
    [config] = (kept / zoo.name).iterdir()  # the zoo's configuration; in it an outcome and a result.json per member
    evaluated = sorted(m["id"] for m in manifest if m["label"] != "not_implanted")
    assert sorted(p.name for p in config.iterdir()) == evaluated
    assert all(sorted(f.name for f in p.rglob("*.json")) == ["outcome.json", "result.json"] for p in config.iterdir())
    with monkeypatch.context() as patched:
        patched.setattr("toolbox.zoo.evaluate.run", lambda *a, **k: pytest.fail("the defense ran again"))
        assert main([*keep, "--out", str(tmp_path / "there")]) == 0
    rows = [json.loads((tmp_path / d / "zoo_summary.json").read_text())["rows"] for d in ("here", "there")]
    assert rows[0] == rows[1] and (tmp_path / "there" / evaluated[0] / "run" / "result.json").is_file()
    damaged = config / evaluated[0] / "outcome.json"
    damaged.write_text("{")  # a merge conflict, say: evaluated again, and kept anew
    assert main([*keep, "--out", str(tmp_path / "third")]) == 0
    assert json.loads(damaged.read_text())["outcome"]["member_id"] == evaluated[0]

    backdoored = [m["id"] for m in manifest if m["label"] == "backdoored"]  # rebound ASR, scored by the scorer
    rebound = tmp_path / "rebound"
    assert (
        main(
            [
                "zoo",
                "eval",
                str(zoo),
                "--defense",
                "none",
                "--out",
                str(rebound),
                "--rebound-steps",
                "2",
                "--only",
                ",".join(backdoored),
            ]
        )
        == 0
    )
    [subset] = rebound.glob("only-*/zoo_summary.json")
    rows = json.loads(subset.read_text())["rows"]
    assert rows and all(r["asr_rebound"] is not None and 0 <= r["asr_rebound"] <= 1 for r in rows)
    assert "Median ASR after rebound fine-tuning" in (subset.parent / "zoo_summary.md").read_text()

    # benchmarks/purify.py: one detection, stage 3 per variant, scored with the member's own trigger
    purify = load_benchmark("purify")
    quick = ["-p", "profile=quick", "-p", "n_images=32"]
    argv = ["--zoo", str(zoo), "--ids", backdoored[0], *quick, "-v", "slow:tune.lr=1e-5", "--rebound-steps", "2"]
    assert purify.main([*argv, "--out", str(tmp_path / "purify.json")]) == 0
    rows = json.loads((tmp_path / "purify.json").read_text())
    assert [r["variant"] for r in rows] == ["base", "slow"] and all(0 <= r["ca_after"] <= 1 for r in rows)
    assert all(r["rebound"] is not None and r["ca_before"] == rows[0]["ca_before"] for r in rows)
    assert "| base |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="identify.steps"):  # a variant may not change the detection
        purify.main(["--zoo", str(zoo), "--ids", backdoored[0], "-v", "bad:identify.steps=3"])
    assert purify.parse_variant("long:detectors.linf.tune_steps=400,tune.lr=1e-4")[1]["tune.lr"] == "1e-4"
    for bad, message in (("wider:detectors.linf.eps=0.2", "detectors.linf.eps"), ("base:tune.lr=1", "not base")):
        with pytest.raises(SystemExit, match=message):
            purify.parse_variant(bad)
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        purify.parse_variants(["x:tune.lr"], {})
    with pytest.raises(SystemExit, match="given twice"):
        purify.parse_variants(["x:tune.lr=1e-4", "x:tune.beta=1"], {})
    with pytest.raises(SystemExit, match="variant 'x'"):  # a bad value fails before any detection runs
        purify.parse_variants(["x:tune.nosuch=1"], {})


def test_a_member_built_by_other_attack_code_is_built_again(tmp_path, caplog):
    from toolbox.cache import recorded_code
    from toolbox.zoo.build import MEMBER_JSON

    out = tmp_path / "m"
    out.mkdir()

    def built_by_code(out, record, code):  # as build_member asks
        return recorded_code(out / MEMBER_JSON, record, "attack_code", code, "member")

    assert built_by_code(out, {"attack_code": "c1"}, "c1") and built_by_code(out, {"attack_code": "c1"}, "c2") is None
    assert built_by_code(out, {}, None) == {}  # from scratch: no attack, nothing to stamp
    with caplog.at_level("WARNING"):
        adopted = built_by_code(out, {"id": "m"}, "c2")  # built before codes were recorded: taken as this code's
    assert "records no attack code" in caplog.text and adopted["attack_code"] == "c2"
    assert json.loads((out / MEMBER_JSON).read_text())["attack_code_adopted"] is True


def test_saved_outcome_reused_only_for_the_same_configuration_and_code(caplog):
    from toolbox.zoo.keys import reusable

    saved = {"key": "k1", "code": "c1", "outcome": {}}
    assert reusable(saved, "k1", "c1", "m")
    assert not reusable(saved, "k2", "c1", "m")  # another configuration or member build
    assert not reusable(saved, "k1", "c2", "m")  # the defense's code changed since
    with caplog.at_level("WARNING"):
        assert reusable({"key": "k1", "outcome": {}}, "k1", "c2", "m")  # saved before the code was recorded
    assert "does not record the defense code" in caplog.text


def test_source_hash_covers_every_module_of_the_package(tmp_path, monkeypatch):
    import importlib

    from toolbox.cache import code_fingerprint, source_hash

    pkg = tmp_path / "fp_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "defense.py").write_text("class D:\n    pass\n")
    (pkg / "helper.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("fp_pkg", "fp_pkg.defense"):
        monkeypatch.delitem(__import__("sys").modules, name, raising=False)
    package = importlib.import_module("fp_pkg")
    first = source_hash(package)
    assert source_hash(package) == first
    (pkg / "helper.py").write_text("X = 2\n")  # any module of the package, imported or not
    assert source_hash(package) != first
    stamp = code_fingerprint(importlib.import_module("fp_pkg.defense").D)
    assert stamp.startswith(toolbox_version()) and stamp.endswith(source_hash(package))
    (pkg / "helper.py").write_text("X = 3\n")
    assert code_fingerprint(importlib.import_module("fp_pkg.defense").D) == stamp  # once per process


def test_an_attacks_fingerprint_holds_what_it_imports_of_its_package_not_its_siblings(tmp_path, monkeypatch):
    import importlib
    import sys
    import types

    from toolbox.cache import _module_fingerprint, module_fingerprint

    pkg = tmp_path / "mf_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "shared.py").write_text("X = 1\n")
    (pkg / "one.py").write_text("from .shared import X\n\n\nclass One:\n    pass\n")
    (pkg / "two.py").write_text("class Two:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("mf_pkg", "mf_pkg.one", "mf_pkg.shared", "mf_pkg.two"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    one = importlib.import_module("mf_pkg.one").One

    def stamp() -> str:
        _module_fingerprint.cache_clear()  # in a run it is taken once per process
        return module_fingerprint(one)

    first = stamp()
    (pkg / "two.py").write_text("class Two:\n    x = 2\n")  # a sibling it does not import
    (pkg / "three.py").write_text("")  # nor a new one
    assert stamp() == first
    (tmp_path / "mf_ext.py").write_text("from mf_pkg.one import One\n\n\nclass Ext(One):\n    pass\n")
    monkeypatch.delitem(sys.modules, "mf_ext", raising=False)
    ext = importlib.import_module("mf_ext").Ext  # another package's subclass: what it inherits is its code
    _module_fingerprint.cache_clear()
    ext_first = module_fingerprint(ext)
    (pkg / "shared.py").write_text("X = 2\n")  # what it imports is its code
    assert stamp() != first and module_fingerprint(ext) != ext_first
    made = types.ModuleType("made_at_run_time")  # no source file: named, not hashed
    monkeypatch.setitem(sys.modules, "made_at_run_time", made)
    assert module_fingerprint(type("Made", (), {"__module__": "made_at_run_time"})).endswith("-Made")


def test_one_plugins_fingerprint_holds_its_own_package_not_its_neighbours(tmp_path, monkeypatch):
    """Plugins that share a namespace (toolbox_plugins.*) are fingerprinted one package each."""
    import importlib
    import sys

    from toolbox.cache import code_fingerprint, source_hash

    for sub in ("a", "b"):
        (tmp_path / "ns_plugins" / sub).mkdir(parents=True)
        (tmp_path / "ns_plugins" / sub / "__init__.py").write_text("")
        (tmp_path / "ns_plugins" / sub / "defense.py").write_text("class D:\n    pass\n")
    (tmp_path / "ns_plugins" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("ns_plugins")]:
        monkeypatch.delitem(sys.modules, name)
    stamp = code_fingerprint(importlib.import_module("ns_plugins.a.defense").D)
    assert stamp.endswith(source_hash(importlib.import_module("ns_plugins.a")))
    assert not stamp.endswith(source_hash(importlib.import_module("ns_plugins")))


def toolbox_version() -> str:
    from toolbox import __version__

    return __version__


REFERENCES_SPEC = """name: refs
seed: 9
members: 5
presets: [smoke]
clean: {fraction: 1.0, scratch: 0, attack: badnet}
poison_rate: 0.0
families: {badnet: {}}
"""


@pytest.mark.slow
def test_calibrate_writes_a_null_that_zoo_eval_and_run_take(host, smoke_world, tmp_path, capsys, monkeypatch):
    """Five clean smoke members are the references: `zoo calibrate` reuses a plain evaluation where
    every detector ran and measures the others in reference mode (every detector, nothing purified),
    and writes the null; `zoo eval --calibration` then calibrates each verdict with it, and a run
    whose detection settings differ refuses it."""
    spec, zoo, null = tmp_path / "refs.yaml", tmp_path / "zoo", tmp_path / "null.json"
    spec.write_text(REFERENCES_SPEC)
    assert main(["zoo", "build", str(spec), "--out", str(zoo)]) == 0
    quick = ["--defense", "invertune", "-p", "profile=quick"]
    assert main(["zoo", "eval", str(zoo), *quick, "--only", "refs-000,refs-001"]) == 0
    plain = [json.loads(p.read_text())["detection"] for p in zoo.glob("evals/invertune-*/refs-00*/run/result.json")]
    complete = sum(d["statistics_complete"] for d in plain)
    capsys.readouterr()
    assert main(["zoo", "calibrate", str(zoo), *quick, "--preset", "smoke", "--out", str(null)]) == 0
    out = capsys.readouterr().out
    assert "leave one out at alpha 0.05" in out
    assert f"(5 references: {complete} from earlier evaluations, {5 - complete} measured now)" in out
    doc = json.loads(null.read_text())
    assert doc["schema"] == "toolbox.null/1" and len(doc["references"]) == 5
    assert set(doc["statistics"]) == {"inversion", "patch", "stripes", "linf"}
    [ref_dir] = zoo.glob("evals/invertune-*-reference")
    for member in ref_dir.glob("*/run/result.json"):  # reference runs purify nothing
        assert json.loads(member.read_text())["model"]["purified_sha256"] is None
    again = ["zoo", "calibrate", str(zoo), *quick, "--preset", "smoke", "--out", str(tmp_path / "again.json")]
    assert main([*again, "--keep-outcomes", str(tmp_path / "kept")]) == 0
    shutil.rmtree(ref_dir)  # another machine: the plain evaluations' two references, the kept folder's three
    monkeypatch.setattr("toolbox.zoo.evaluate.run", lambda *a, **k: pytest.fail("a kept reference measured again"))
    assert main([*again, "--keep-outcomes", str(tmp_path / "kept")]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["statistics"] == doc["statistics"]
    monkeypatch.undo()

    report = tmp_path / "report"
    assert main(["zoo", "eval", str(zoo), *quick, "--calibration", str(null), "--out", str(report)]) == 0
    results = [json.loads(p.read_text()) for p in report.glob("*/run/result.json")]
    assert len(results) == 5 and all(r["detection"]["null"]["calibrated"] for r in results)
    assert all(0 <= r["detection"]["null"]["score"] <= 1 for r in results)
    for plain_result in zoo.glob("evals/invertune-*/refs-00*/run/result.json"):  # replayed offline: the same call
        said = json.loads((report / plain_result.parent.parent.name / "run" / "result.json").read_text())["detection"]
        got = replay(json.loads(plain_result.read_text())["detection"], read_null(null), 0.05)
        assert (got.backdoored, got.score) == (said["backdoored"], said["score"])

    capsys.readouterr()
    argv = ["run", *quick, "--preset", "smoke", "-p", "n_images=32", "--calibration", str(null)]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    assert "holds for this run's settings" in capsys.readouterr().err
    capsys.readouterr()
    few = tmp_path / "few.json"  # no clean member of that preset in this zoo
    assert main(["zoo", "calibrate", str(zoo), *quick, "--preset", "default", "--out", str(few)]) == 2
    assert "no clean member built on preset 'default'" in capsys.readouterr().err and not few.exists()
    mine = tmp_path / "notes.json"  # a user's file at --out is refused before any work, and kept
    mine.write_text("{}")
    assert main(["zoo", "calibrate", str(zoo), *quick, "--preset", "smoke", "--out", str(mine)]) == 2
    assert "is not a calibration file" in capsys.readouterr().err and mine.read_text() == "{}"
