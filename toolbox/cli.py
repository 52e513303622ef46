"""``toolbox``: list what is registered, show plugins, run a cell, compare defenses, rank and submit results."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from .api import KINDS
from .plugins import UnknownNameError, get_host

EXIT_UNKNOWN_NAME = 2
EXIT_RUN_ERROR = 1


def _kv(pairs: Sequence[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def cmd_list(args: argparse.Namespace) -> int:
    registry = get_host().build_registry()
    if args.format != "table":
        from .catalogue import catalogue, to_yaml

        doc = catalogue(registry, args.plugin)
        doc["entries"] = [e for e in doc["entries"] if args.kind in (None, e["kind"])]
        print(to_yaml(doc) if args.format == "yaml" else json.dumps(doc, indent=2), end="")
        return 0
    rows = [(r.kind, r.name, r.plugin, r.summary) for r in registry
            if args.kind in (None, r.kind) and args.plugin in (None, r.plugin)]
    headers = ("KIND", "NAME", "PLUGIN", "SUMMARY")
    widths = [max([len(h)] + [len(str(row[i])) for row in rows]) for i, h in enumerate(headers[:-1])]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths) + "  {}"
    print(fmt.format(*headers))
    for row in rows:
        print(fmt.format(*row))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    host = get_host()
    registry = host.build_registry(quiet=True)
    provided: dict[str, list[str]] = {}
    for reg in registry:
        provided.setdefault(reg.plugin, []).append(f"{reg.kind}:{reg.name}")
    doc = [{"name": p.name, "version": p.version, "distribution": p.distribution, "hooks": p.hooks,
            "provides": provided.get(p.name, [])} for p in host.plugins()]
    print(json.dumps(doc, indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import RunError, RunRequest, run

    req = RunRequest(
        defense=args.defense, attack=args.attack, model=args.model, model_format=args.model_format,
        clean_data=args.clean_data, eval_data=args.eval_data, retrieval_data=args.retrieval_data,
        train_data=args.train_data, classes=args.classes, templates=args.templates, out=args.out,
        seed=args.seed, preset=args.preset, device=args.device, defense_params=_kv(args.param),
        attack_params=_kv(args.attack_param), skip_unreadable=args.skip_unreadable,
        asr_include_target=args.asr_include_target, command=["toolbox", *args.argv])
    try:
        path = run(req)
    except RunError as err:
        print(f"toolbox: error: {err}", file=sys.stderr)
        return EXIT_RUN_ERROR
    except ValueError as err:  # bad --param values
        print(f"toolbox: error: {err}", file=sys.stderr)
        return EXIT_UNKNOWN_NAME
    doc = json.loads(Path(path).read_text())
    before, after = doc["metrics"]["before"], doc["metrics"]["after"]

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.2f}%"

    print(f"result: {path}")
    print(f"CA  before {pct(before['ca'])}  after {pct(after['ca'])}")
    print(f"ASR before {pct(before['asr'])}  after {pct(after['asr'])}")
    if doc.get("detection"):
        print(f"detection: {json.dumps(doc['detection'])[:300]}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import CompareRequest, compare, markdown_table, split_params
    from .runner import RunError

    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    defenses = [d.strip() for d in args.defenses.split(",") if d.strip()]
    if not attacks or not defenses:
        print("toolbox: error: --attacks and --defenses need at least one name each", file=sys.stderr)
        return EXIT_UNKNOWN_NAME
    try:
        req = CompareRequest(
            attacks=attacks, defenses=defenses, out=args.out, preset=args.preset, model=args.model,
            model_format=args.model_format, clean_data=args.clean_data, eval_data=args.eval_data,
            retrieval_data=args.retrieval_data, train_data=args.train_data, classes=args.classes,
            templates=args.templates, seed=args.seed, device=args.device,
            defense_params=split_params(_kv(args.param), defenses, "defense"),
            attack_params=split_params(_kv(args.attack_param), [a for a in attacks if a != "none"], "attack"),
            asr_include_target=args.asr_include_target, reuse=not args.no_reuse)
        cells = compare(req)
    except RunError as err:
        print(f"toolbox: error: {err}", file=sys.stderr)
        return EXIT_RUN_ERROR
    except ValueError as err:
        print(f"toolbox: error: {err}", file=sys.stderr)
        return EXIT_UNKNOWN_NAME
    print(markdown_table(cells), end="")
    reused = sum(c.from_cache for c in cells)
    print(f"\n{len(cells)} cells ({reused} reused from cache); tables: {args.out}/compare.md, compare.csv, "
          f"compare.json, compare_scatter.png")
    return 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from .leaderboard import LeaderboardError, leaderboard

    try:
        text, skipped = leaderboard(args.directory, strict=args.strict)
    except LeaderboardError as err:
        print(f"toolbox: error: {err}", file=sys.stderr)
        return EXIT_UNKNOWN_NAME
    for line in skipped:
        print(f"toolbox: skipped {line}", file=sys.stderr)
    print(text, end="")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from .leaderboard import LeaderboardError, submit

    try:
        path = submit(args.result, args.out)
    except LeaderboardError as err:
        print(f"toolbox: error: {err}", file=sys.stderr)
        return EXIT_UNKNOWN_NAME
    print(f"submission: {path}")
    return 0


def add_source_args(p: argparse.ArgumentParser) -> None:
    """Model and data sources, shared by ``run`` and ``compare``."""
    p.add_argument("--model", help="model source: checkpoint file or directory (default: embedded:PRESET)")
    p.add_argument("--model-format", help="model adapter name, when detection from the source is not enough")
    p.add_argument("--clean-data", help="the defender's clean images (folder, labels.csv, caption CSV, COCO JSON)")
    p.add_argument("--eval-data", help="labelled evaluation split for CA/ASR (ImageFolder or labels.csv)")
    p.add_argument("--retrieval-data", help="COCO-captions JSON for retrieval recall")
    p.add_argument("--train-data", help="image-caption CSV used by attacks and fine-tuning baselines")
    p.add_argument("--classes", help="class names file, one per line (default: the model's own or ImageNet-1K)")
    p.add_argument("--templates", help="prompt templates file with {} for the class (default: OpenAI ImageNet)")
    p.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")
    p.add_argument("--preset", default="default", help="embedded world preset: default or smoke")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--asr-include-target", action="store_true",
                   help="count target-class images in ASR (BadCLIP/PAR convention; default excludes them)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toolbox", description="Backdoor toolbox for CLIP-style models (InverTune reference implementation).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="table of registered defenses, attacks, metrics and adapters",
                       description="Table of everything the loaded plugins register, and which plugin did.")
    p.add_argument("--kind", choices=KINDS, help="only this kind")
    p.add_argument("--plugin", help="only what this plugin registers")
    p.add_argument("--format", choices=("table", "yaml", "json"), default="table",
                   help="table (default), or the registry.yaml catalogue as YAML/JSON")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("plugins", help="loaded plugins as JSON (name, version, hooks)",
                       description="Loaded plugins as JSON: name, version, distribution, hooks implemented.")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser("run", help="run one defense (optionally after one attack) and write a result",
                       description="Load a model (default: the embedded toy-world CLIP), optionally backdoor it, "
                                   "run a defense, measure CA/ASR before and after, and write OUT/result.json.")
    p.add_argument("--defense", required=True, help="registered defense name (see `toolbox list --kind defense`)")
    p.add_argument("--attack", help="registered attack name to apply first (embedded world only needs nothing else)")
    add_source_args(p)
    p.add_argument("--out", type=Path, help="output directory (default: results/ATTACK-DEFENSE-seedN)")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="defense parameter override")
    p.add_argument("--attack-param", action="append", metavar="KEY=VALUE", help="attack parameter override")
    p.add_argument("--skip-unreadable", action="store_true", help="skip unreadable images (counted in the result)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="attacks x defenses table (the paper's Table 1), cells cached and resumable",
                       description="Run (or reuse from the cache) every (attack, defense) cell and print CA / ASR "
                                   "per attack and defense as Markdown, best in bold, with mean DER; writes "
                                   "OUT/compare.md, .csv, .json and compare_scatter.png.")
    p.add_argument("--attacks", required=True, help="comma-separated attack names; 'none' is the clean model")
    p.add_argument("--defenses", default="none,ft,cleanclip,cleanerclip,par,invertune",
                   help="comma-separated defense names (default: none,ft,cleanclip,cleanerclip,par,invertune)")
    add_source_args(p)
    p.add_argument("--out", type=Path, default=Path("results/compare"), help="where the tables go")
    p.add_argument("-p", "--param", action="append", metavar="DEFENSE.KEY=VALUE",
                   help="defense parameter override, e.g. -p ft.lr=1e-4 -p invertune.profile=paper")
    p.add_argument("--attack-param", action="append", metavar="ATTACK.KEY=VALUE",
                   help="attack parameter override, e.g. --attack-param badnet.location=top-left")
    p.add_argument("--no-reuse", action="store_true", help="run every cell again instead of reusing cached ones")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("leaderboard", help="ranked table of the result files under a directory",
                       description="Collect result.json and submission files under DIR and rank them by DER, "
                                   "one table per metric config (results measured differently are never mixed).")
    p.add_argument("directory", type=Path)
    p.add_argument("--strict", action="store_true", help="refuse (exit 2) when the metric configs differ")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("submit", help="validate a result and write its leaderboard submission file",
                       description="Validate RESULT against the result schema and write a submission JSON with the "
                                   "metric config, model hashes, versions and seed (default: beside RESULT).")
    p.add_argument("result", type=Path)
    p.add_argument("--out", type=Path, help="submission file to write (default: RESULT's folder/submission.json)")
    p.set_defaults(func=cmd_submit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return int(args.func(args))
    except UnknownNameError as err:
        print(f"toolbox: error: {err}", file=sys.stderr)
        return EXIT_UNKNOWN_NAME


if __name__ == "__main__":
    sys.exit(main())
