"""``toolbox list`` and ``toolbox plugins``: what the loaded plugins register, and the plugins themselves."""

from __future__ import annotations

import argparse
import json

from ..api import KINDS
from ..errors import EXIT_OK
from ..plugins import get_host


def cmd_list(args: argparse.Namespace) -> int:
    registry = get_host().build_registry()
    if args.format != "table":
        from ..catalogue import catalogue, to_yaml

        doc = catalogue(registry, args.plugin)
        doc["entries"] = [e for e in doc["entries"] if args.kind in (None, e["kind"])]
        print(to_yaml(doc) if args.format == "yaml" else json.dumps(doc, indent=2), end="")
        return EXIT_OK
    rows = [
        (r.kind, r.name, r.plugin, r.summary)
        for r in registry
        if args.kind in (None, r.kind) and args.plugin in (None, r.plugin)
    ]
    headers = ("KIND", "NAME", "PLUGIN", "SUMMARY")
    widths = [max([len(h)] + [len(str(row[i])) for row in rows]) for i, h in enumerate(headers[:-1])]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    print(fmt.format(*headers))
    for row in rows:
        print(fmt.format(*row))
    return EXIT_OK


def cmd_plugins(args: argparse.Namespace) -> int:
    host = get_host()
    registry = host.build_registry(quiet=True)
    provided: dict[str, list[str]] = {}
    for reg in registry:
        provided.setdefault(reg.plugin, []).append(f"{reg.kind}:{reg.name}")
    doc = [
        {
            "name": p.name,
            "version": p.version,
            "distribution": p.distribution,
            "status": p.status,
            **({"problem": p.problem} if p.problem else {}),
            "hooks": p.hooks,
            "provides": provided.get(p.name, []),
        }
        for p in host.plugins()
    ]
    print(json.dumps(doc, indent=2))
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "list",
        help="table of registered defenses, attacks, metrics and adapters",
        description="Table of everything the loaded plugins register, and which plugin did.",
    )
    p.add_argument("--kind", choices=KINDS, help="only this kind")
    p.add_argument("--plugin", help="only what this plugin registers")
    p.add_argument(
        "--format",
        choices=("table", "yaml", "json"),
        default="table",
        help="table (default), or the registry.yaml catalogue as YAML/JSON",
    )
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "plugins",
        help="loaded plugins as JSON (name, version, hooks)",
        description="Loaded plugins as JSON: name, version, distribution, hooks implemented.",
    )
    p.set_defaults(func=cmd_plugins)
