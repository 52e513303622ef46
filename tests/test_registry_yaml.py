"""registry.yaml is exactly what this distribution's plugins register, built-ins included."""

from pathlib import Path

import yaml

from toolbox.catalogue import catalogue

ROOT = Path(__file__).resolve().parents[1]


def test_registry_yaml_matches_the_hooks(host):
    committed = yaml.safe_load((ROOT / "registry.yaml").read_text())
    ours = ["adapters", "attacks", "baselines", "dbom", "flare", "invertune", "segoracle", "toolbox", "world"]
    assert committed["plugins"] == ours
    assert {e["kind"] for e in committed["entries"]} >= {"defense", "attack", "dataset_defense"}
    live = [e for e in catalogue(host.build_registry())["entries"] if e["plugin"] in committed["plugins"]]
    key = lambda e: (e["kind"], e["name"], e["plugin"])  # noqa: E731
    assert sorted(map(key, committed["entries"])) == sorted(map(key, live)), (
        "names differ: regenerate with `toolbox list --format yaml > registry.yaml`"
    )
    live_by_key = {key(e): e for e in live}
    for entry in committed["entries"]:
        current = live_by_key[key(entry)]
        for field in ("class", "params", "reference"):
            assert entry[field] == current[field], f"{key(entry)} {field} drifted"
