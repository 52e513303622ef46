"""The plugin system: discovery, allow/block lists, isolation of broken plugins, clashes."""

from __future__ import annotations

import pytest

from toolbox import plugins
from toolbox.api import Defense, DefenseOutcome
from toolbox.cli import main
from toolbox.hookspecs import hookimpl

DUMMY_PLUGIN = """
from toolbox.api import Defense, DefenseOutcome
from toolbox.hookspecs import hookimpl

class AcmeDefense(Defense):
    name = "acme"
    summary = "third-party test defense"

    def defend(self, ctx):
        return DefenseOutcome(model=ctx.model, info={"acme": True})

@hookimpl
def register_defenses(register):
    register(AcmeDefense)
"""


class RaisingPlugin:
    @hookimpl
    def register_defenses(self, register):
        register(GoodDefense)  # registered first, then the hook fails: nothing of it may remain

    @hookimpl
    def register_attacks(self, register):
        raise RuntimeError("boom")


class GoodDefense(Defense):
    name = "good"

    def defend(self, ctx):
        return DefenseOutcome(model=ctx.model)


def test_builtin_and_distribution_plugins_are_loaded(host):
    names = {p.name for p in host.plugins()}
    assert {"toolbox", "adapters", "invertune", "attacks", "baselines"} <= names
    reg = host.build_registry()
    assert "none" in reg.names("defense")
    assert reg.get("metric", "zeroshot_accuracy").plugin == "toolbox"  # the evaluation's metrics are the host's
    assert reg.get("model_adapter", "openclip-dir").plugin == "adapters"
    assert reg.get("defense", "invertune").plugin == "invertune"
    assert reg.get("defense", "ft").plugin == "baselines" and reg.get("attack", "badnet").plugin == "attacks"


@pytest.mark.parametrize(
    "blocked, gone, kept",
    [
        ("invertune", ("defense", "invertune"), [("attack", "badnet"), ("defense", "ft")]),
        ("attacks", ("attack", "badnet"), [("defense", "invertune"), ("defense", "ft")]),
        ("baselines", ("defense", "ft"), [("defense", "invertune"), ("attack", "badnet")]),
    ],
)
def test_each_plugin_of_the_distribution_can_be_blocked_alone(blocked, gone, kept, monkeypatch, smoke_world, tmp_path):
    monkeypatch.setenv(plugins.BLOCK_ENV, blocked)
    plugins.reset_host()
    try:
        reg = plugins.get_host().build_registry()
        assert gone[1] not in reg.names(gone[0])
        assert all(name in reg.names(kind) for kind, name in kept)
        assert "openclip-dir" in reg.names("model_adapter") and "zeroshot_accuracy" in reg.names("metric")
        assert main(["run", "--defense", "none", "--preset", "smoke", "--out", str(tmp_path / "o")]) == 0
    finally:
        plugins.reset_host()


def test_throwaway_plugin_registers_a_defense(register_plugin):
    class P:
        @hookimpl
        def register_defenses(self, register):
            register(GoodDefense)

    register_plugin(P(), "throwaway")
    reg = plugins.get_host().build_registry()
    assert reg.get("defense", "good").plugin == "throwaway"


def test_raising_hook_skips_the_whole_plugin(register_plugin, caplog):
    register_plugin(RaisingPlugin(), "raiser")
    reg = plugins.get_host().build_registry()
    assert "good" not in reg.names("defense")
    assert "none" in reg.names("defense")  # the host keeps working
    assert "raiser" in caplog.text and "boom" in caplog.text


def test_name_clash_is_reported_and_first_wins(register_plugin, caplog):
    class Clash:
        @hookimpl
        def register_defenses(self, register):
            register(GoodDefense, name="none")

    register_plugin(Clash(), "clash")
    reg = plugins.get_host().build_registry()
    assert reg.get("defense", "none").plugin == "toolbox"
    assert "name clash" in caplog.text


def test_registration_without_name_is_reported(register_plugin, caplog):
    class Nameless:
        @hookimpl
        def register_defenses(self, register):
            register(object)

    register_plugin(Nameless(), "nameless")
    plugins.get_host().build_registry()
    assert "has no name" in caplog.text


def test_entry_point_plugin_is_discovered_with_its_version(fake_distribution, monkeypatch, capsys):
    fake_distribution("acme", "acme_plugin", DUMMY_PLUGIN)
    monkeypatch.delenv(plugins.ALLOW_ENV, raising=False)
    monkeypatch.delenv(plugins.BLOCK_ENV, raising=False)
    host = plugins.get_host()
    info = {p.name: p for p in host.plugins()}
    assert info["acme"].version == "1.2.3"
    assert info["acme"].hooks == ["register_defenses"]
    assert main(["list", "--kind", "defense"]) == 0
    assert "acme" in capsys.readouterr().out


def test_block_list_hides_a_plugin(fake_distribution, monkeypatch, capsys):
    fake_distribution("acme", "acme_plugin", DUMMY_PLUGIN)
    monkeypatch.setenv(plugins.BLOCK_ENV, "acme")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "acme" not in out and "none" in out


def test_allow_list_loads_only_named_plugins(fake_distribution, monkeypatch):
    fake_distribution("acme", "acme_plugin", DUMMY_PLUGIN)
    monkeypatch.setenv(plugins.ALLOW_ENV, "acme")
    names = {p.name for p in plugins.get_host().plugins()}
    assert "acme" in names and "invertune" not in names
    assert "toolbox" in names  # the host's built-ins are always there
    plugins.reset_host()
    monkeypatch.setenv(plugins.ALLOW_ENV, "")
    names = {p.name for p in plugins.get_host().plugins()}
    assert names == set(plugins.DEFAULT_PLUGINS) | {"adapters"}  # adapters: the toolbox.default_plugins group


def test_plugin_that_fails_to_import_is_skipped(fake_distribution, monkeypatch, caplog):
    fake_distribution("broken", "broken_plugin", "raise ImportError('missing dependency xyz')\n")
    monkeypatch.delenv(plugins.BLOCK_ENV, raising=False)
    host = plugins.get_host()
    broken = next(p for p in host.plugins() if p.name == "broken")
    assert broken.status == "skipped" and "missing dependency xyz" in broken.problem
    assert "missing dependency xyz" in caplog.text
    assert "none" in host.build_registry().names("defense")


def test_plugin_with_unknown_hook_is_skipped(fake_distribution, caplog):
    fake_distribution(
        "typo",
        "typo_plugin",
        """
        from toolbox.hookspecs import hookimpl

        @hookimpl
        def register_defences(register):
            pass
    """,
    )
    host = plugins.get_host()
    typo = next(p for p in host.plugins() if p.name == "typo")
    assert typo.status == "skipped" and typo.hooks == []
    assert "unknown hooks" in caplog.text


@pytest.mark.parametrize("argv", [["run", "--defense", "nosuch"], ["run", "--defense", "none", "--attack", "nosuch"]])
def test_unknown_name_exits_2_and_lists_registered(host, capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "registered:" in err
    if "--attack" not in argv:
        assert "none" in err


@pytest.mark.parametrize("command", [[], ["list"], ["plugins"], ["run"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_plugins_command_prints_json(host, capsys):
    import json

    assert main(["plugins"]) == 0
    doc = json.loads(capsys.readouterr().out)
    inv = next(p for p in doc if p["name"] == "invertune")
    assert inv["version"] and inv["hooks"] == ["register_defenses", "register_detectors"] and inv["status"] == "loaded"
    assert inv["provides"] == [
        "defense:invertune",
        "detector:collapse",
        "detector:inversion",
        "detector:linf",
        "detector:patch",
        "detector:stripes",
    ]
