"""``toolbox compare``: the attacks x defenses table, its cells cached and resumable."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import EXIT_OK, InputError
from ..grid import add_grid_args
from ..outputs import kept_folders, out_arg
from .options import add_source_args, parse_kv, sources_from
from .run import print_kept


def cmd_compare(args: argparse.Namespace) -> int:
    from ..compare import CompareRequest, compare, markdown_table, split_params
    from ..grid import grid_config_from

    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    defenses = [d.strip() for d in args.defenses.split(",") if d.strip()]
    if not attacks or not defenses:
        raise InputError("--attacks and --defenses need at least one name each")
    req = CompareRequest(
        attacks=attacks,
        defenses=defenses,
        out=args.out,
        sources=sources_from(args),
        defense_params=split_params(parse_kv(args.param), defenses, "defense"),
        attack_params=split_params(parse_kv(args.attack_param), [a for a in attacks if a != "none"], "attack"),
        reuse=not args.no_reuse,
        grid=grid_config_from(args),
        keep_cells=args.keep_cells,
    )
    before = kept_folders(args.out)
    cells = compare(req)
    print(markdown_table(cells), end="")
    reused = sum(c.from_cache for c in cells)
    print(
        f"\n{len(cells)} cells ({reused} reused from cache); tables: {args.out}/compare.md, compare.csv, "
        f"compare.json, compare_scatter.png"
    )
    print_kept(Path(args.out), before)
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="attacks x defenses table (the paper's Table 1), cells cached and resumable",
        description="Run (or reuse from the cache) every (attack, defense) cell and print CA / ASR "
        "per attack and defense as Markdown, best in bold, with mean DER; writes "
        "OUT/compare.md, .csv, .json and compare_scatter.png.",
    )
    p.add_argument("--attacks", required=True, help="comma-separated attack names; 'none' is the clean model")
    p.add_argument(
        "--defenses",
        default="none,ft,cleanclip,cleanerclip,par,invertune",
        help="comma-separated defense names (default: none,ft,cleanclip,cleanerclip,par,invertune)",
    )
    add_source_args(p)
    p.add_argument("--out", type=out_arg, default=Path("results/compare"), help="where the tables go")
    p.add_argument(
        "-p",
        "--param",
        action="append",
        metavar="DEFENSE.KEY=VALUE",
        help="defense parameter override, e.g. -p ft.lr=1e-4 -p invertune.profile=paper",
    )
    p.add_argument(
        "--attack-param",
        action="append",
        metavar="ATTACK.KEY=VALUE",
        help="attack parameter override, e.g. --attack-param badnet.location=top-left",
    )
    p.add_argument("--no-reuse", action="store_true", help="run every cell again instead of reusing cached ones")
    p.add_argument(
        "--keep-cells",
        type=out_arg,
        metavar="DIR",
        help="also keep each finished cell's result.json in DIR (e.g. tracked in git) and take cells from "
        "there when the cache lacks them, so another machine resumes the grid",
    )
    add_grid_args(p)
    p.set_defaults(func=cmd_compare)
