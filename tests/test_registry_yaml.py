"""registry.yaml is exactly what the InverTune plugin's hooks register."""

from pathlib import Path

import yaml

from toolbox.catalogue import catalogue

ROOT = Path(__file__).resolve().parents[1]


def test_registry_yaml_matches_the_hooks(host):
    committed = yaml.safe_load((ROOT / "registry.yaml").read_text())
    live = catalogue(host.build_registry(), "invertune")
    assert committed["plugin"] == "invertune"
    key = lambda e: (e["kind"], e["name"])  # noqa: E731
    assert sorted(map(key, committed["entries"])) == sorted(map(key, live["entries"])), \
        "names differ: regenerate with `toolbox list --plugin invertune --format yaml > registry.yaml`"
    live_by_key = {key(e): e for e in live["entries"]}
    for entry in committed["entries"]:
        current = live_by_key[key(entry)]
        for field in ("class", "params", "reference"):
            assert entry[field] == current[field], f"{key(entry)} {field} drifted"
