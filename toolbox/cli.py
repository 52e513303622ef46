"""``toolbox``: list what is registered, show plugins, run a cell, compare defenses, rank and submit results."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from .api import KINDS
from .errors import (EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_RUN_FAILED, EXIT_TERMINATED, InputError,
                     one_line)
from .grid import add_grid_args
from .plugins import UnknownNameError, get_host

log = logging.getLogger("toolbox")
# Loggers of this distribution; the CLI's -v / -q set their level (third-party libraries stay at WARNING).
OWN_LOGGERS = ("toolbox", "adapters", "invertune_plugin")
PRESET_HELP = "embedded world preset: default, default-resnet, smoke or smoke-resnet (smoke: a small, quick world)"


def parse_kv(pairs: Sequence[str] | None) -> dict[str, str]:
    """`KEY=VALUE` options as a dict (-p, --attack-param; the benchmarks read theirs the same way)."""
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
        return EXIT_OK
    rows = [(r.kind, r.name, r.plugin, r.summary) for r in registry
            if args.kind in (None, r.kind) and args.plugin in (None, r.plugin)]
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
    doc = [{"name": p.name, "version": p.version, "distribution": p.distribution, "status": p.status,
            **({"problem": p.problem} if p.problem else {}), "hooks": p.hooks,
            "provides": provided.get(p.name, [])} for p in host.plugins()]
    print(json.dumps(doc, indent=2))
    return EXIT_OK


def sources_from(args: argparse.Namespace) -> Any:
    """A :class:`~toolbox.runner.Sources` from ``add_source_args``' options: one option per field."""
    from .runner import Sources

    return Sources(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Sources)})


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import RunRequest, run

    req = RunRequest(defense=args.defense, attack=args.attack, sources=sources_from(args), out=args.out,
                     defense_params=parse_kv(args.param), attack_params=parse_kv(args.attack_param),
                     skip_unreadable=args.skip_unreadable, command=["toolbox", *args.argv],
                     metrics=tuple(args.metric))
    path = run(req)
    print(summary(json.loads(Path(path).read_text()), Path(path)))
    return EXIT_OK


def cmd_scan_data(args: argparse.Namespace) -> int:
    from .datascan import ScanRequest, scan
    from .datascan import summary as scan_summary
    from .runner import Sources

    src = Sources(model=args.model, model_format=args.model_format, train_data=args.train_data,
                  eval_data=args.eval_data, classes=args.classes, templates=args.templates, seed=args.seed,
                  preset=args.preset, device=args.device, eval_batch_size=args.eval_batch_size, workers=args.workers,
                  asr_include_target=args.asr_include_target)
    req = ScanRequest(defense=args.defense, sources=src, attack=args.attack, out=args.out,
                      defense_params=parse_kv(args.param), attack_params=parse_kv(args.attack_param), retrain=args.retrain,
                      skip_unreadable=args.skip_unreadable, command=["toolbox", *args.argv])
    path = scan(req)
    print(scan_summary(json.loads(Path(path).read_text()), Path(path)))
    return EXIT_OK


def summary(doc: dict[str, Any], path: Path) -> str:
    """The console's account of a run: verdict, CA / ASR before and after, time, where the files are."""
    from .evaluation import IMPLANT_MARGIN, trigger_effect

    before, after = doc["metrics"]["before"], doc["metrics"]["after"]

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f} %"

    lines = [f"result    {path}"]
    det = doc.get("detection") or {}
    attack = doc.get("attack") or {}
    if det:
        called = det.get("backdoored")
        verdict = det.get("verdict") or {True: "backdoored", False: "no backdoor found"}.get(called, "not assessed")
        target = f", target {det['target']!r}" if det.get("target") else ""
        if det.get("target") and attack.get("target") and det["target"] != attack["target"]:
            target += f" (the attack's: {attack['target']!r})"
        lines.append(f"verdict   {verdict}{target}")
    effect = trigger_effect(before) if attack else None
    if effect is not None and effect < IMPLANT_MARGIN:
        lines.append(f"warning   the attack did not implant: its trigger adds {100 * effect:.1f} points of ASR@1 "
                     f"(< {100 * IMPLANT_MARGIN:.0f}), so the suspect is effectively clean; on a small preset, "
                     f"raise --attack-param poison_rate / epochs")
    rows = [("CA (top-1)", "ca"), ("ASR@1", "asr"), ("ASR untriggered", "asr_untriggered")]
    rows += [(f"ASR@1 {k[4:]}", k) for k in after if k.startswith("asr_") and not k[4:].startswith(("top", "untr"))
             and "_top" not in k]
    rows += [(k, k) for k in after if k.startswith("retrieval_")]
    lines.append(f"{'':<22}{'before':>10}{'after':>10}")
    lines += [f"{label:<22}{pct(before.get(key)):>10}{pct(after.get(key)):>10}" for label, key in rows
              if before.get(key) is not None or after.get(key) is not None]

    def num(v: float | None) -> str:  # a --metric's unit is its own: printed as computed
        return "-" if v is None else f"{v:.4g}"

    extra = [k for name in (doc["metric_config"].get("extra") or {}) for k in (name, f"{name}_triggered") if k in after]
    lines += [f"{key:<22}{num(before.get(key)):>10}{num(after.get(key)):>10}" for key in extra]
    stages = {k: v for k, v in doc["timings_s"].items() if "." not in k}
    lines.append("time      " + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items())
                 + f" (total {sum(stages.values()):.1f} s)")
    for name, rel in doc["artifacts"].items():
        lines.append(f"{'files' if name == next(iter(doc['artifacts'])) else '':<10}{name}: {path.parent / rel}")
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import CompareRequest, compare, markdown_table, split_params
    from .grid import grid_config_from

    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    defenses = [d.strip() for d in args.defenses.split(",") if d.strip()]
    if not attacks or not defenses:
        raise InputError("--attacks and --defenses need at least one name each")
    req = CompareRequest(
        attacks=attacks, defenses=defenses, out=args.out, sources=sources_from(args),
        defense_params=split_params(parse_kv(args.param), defenses, "defense"),
        attack_params=split_params(parse_kv(args.attack_param), [a for a in attacks if a != "none"], "attack"),
        reuse=not args.no_reuse, grid=grid_config_from(args))
    cells = compare(req)
    print(markdown_table(cells), end="")
    reused = sum(c.from_cache for c in cells)
    print(f"\n{len(cells)} cells ({reused} reused from cache); tables: {args.out}/compare.md, compare.csv, "
          f"compare.json, compare_scatter.png")
    return EXIT_OK


def cmd_zoo_build(args: argparse.Namespace) -> int:
    from .grid import grid_config_from
    from .zoo.build import build_zoo
    from .zoo.spec import load_spec

    spec = load_spec(args.spec, members=args.members)
    records = build_zoo(spec, args.out, grid_config_from(args), limit=args.limit)
    print(f"{'member':<40}{'label':<15}{'CA':>8}{'ASR':>8}{'untrig.':>9}{'s':>7}")
    for r in records:
        m = r["measured"]
        cells = [f"{100 * m[k]:.1f}" if m.get(k) is not None else "-" for k in ("ca", "asr", "asr_untriggered")]
        print(f"{r['id']:<40}{r['label']:<15}{cells[0]:>8}{cells[1]:>8}{cells[2]:>9}{r['build_seconds']:>7.0f}")
    labels = [r["label"] for r in records]
    print(f"\n{len(records)} members in {args.out}: " + ", ".join(f"{labels.count(k)} {k}" for k in
                                                                  ("clean", "backdoored", "not_implanted")))
    return EXIT_OK


def cmd_zoo_eval(args: argparse.Namespace) -> int:
    from .grid import grid_config_from
    from .zoo.evaluate import eval_zoo, not_implanted_rows
    from .cache import config_hash
    from .zoo.score import markdown_summary, score_population, write_report

    only = None if args.only is None else [m.strip() for m in args.only.split(",") if m.strip()]
    if only == []:
        raise InputError("--only names no member")
    if args.rebound_steps < 0:
        raise InputError(f"--rebound-steps must be >= 0, got {args.rebound_steps}")
    rows, out = eval_zoo(args.directory, args.defense, parse_kv(args.param), args.seed, grid_config_from(args), args.out,
                         only, rebound_steps=args.rebound_steps)
    title = f"{args.defense} on {args.directory}" + (f" (only {', '.join(only)})" if only else "")
    rows += not_implanted_rows(args.directory, only)  # listed apart by the scorer, never evaluated
    summary = score_population(rows, threshold=args.threshold)
    report = out / f"only-{config_hash(*sorted(only))[:10]}" if only else out  # a subset never replaces the full report
    write_report(summary, rows, report, title)
    print(markdown_summary(summary, title))
    print(f"\nreport: {report}/zoo_summary.md, zoo_summary.json, zoo_members.csv, zoo_roc.png")
    return EXIT_OK


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from .leaderboard import LeaderboardError, leaderboard

    try:
        text, skipped = leaderboard(args.directory, strict=args.strict)
    except LeaderboardError as err:
        raise InputError(str(err)) from err
    for line in skipped:
        log.warning("skipped %s", line)
    print(text, end="")
    return EXIT_OK


def cmd_submit(args: argparse.Namespace) -> int:
    from .leaderboard import LeaderboardError, submit

    try:
        path = submit(args.result, args.out)
    except LeaderboardError as err:
        raise InputError(str(err)) from err
    print(f"submission: {path}")
    return EXIT_OK


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
    p.add_argument("--preset", default="default", help=PRESET_HELP)
    p.add_argument("--device", default="auto",
                   help="torch device: auto (cuda, then mps, then cpu; the default), cpu, cuda, cuda:1, mps")
    p.add_argument("--eval-batch-size", type=int, default=256, help="images per evaluation forward pass (default 256)")
    p.add_argument("--workers", type=int, default=None,
                   help="evaluation data-loading processes (default: 0 on the CPU, up to 8 beside a GPU)")
    p.add_argument("--rebound-steps", type=int, default=0,
                   help="rebound ASR: fine-tune the defended model this many steps on clean pairs, measure again "
                        "(default 0: off)")
    p.add_argument("--rebound-lr", type=float, default=5e-4, help="learning rate of those steps (default 5e-4)")
    p.add_argument("--asr-include-target", action="store_true",
                   help="count target-class images in ASR (BadCLIP/PAR convention; default excludes them)")


EPILOG = (f"exit codes: {EXIT_OK} ok; {EXIT_BAD_INPUT} bad input or usage (nothing written); {EXIT_RUN_FAILED} the "
          f"run failed for another reason (nothing written; -v for the traceback); {EXIT_INTERRUPTED} / "
          f"{EXIT_TERMINATED} interrupted (SIGINT / SIGTERM)")


def add_loudness(parser: argparse.ArgumentParser, default: Any) -> None:
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_true", default=default, help="debug messages and tracebacks")
    loud.add_argument("-q", "--quiet", action="store_true", default=default, help="warnings and errors only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toolbox", description="Backdoor toolbox for CLIP-style models (InverTune reference implementation).",
        epilog=EPILOG)
    add_loudness(parser, argparse.SUPPRESS)
    parser.set_defaults(verbose=False, quiet=False)
    common = argparse.ArgumentParser(add_help=False)
    add_loudness(common, argparse.SUPPRESS)  # -v / -q also after the subcommand
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser = sub.add_parser

    def sub_add_parser(*a: Any, **kw: Any) -> argparse.ArgumentParser:
        return add_parser(*a, parents=[common], **kw)

    sub.add_parser = sub_add_parser  # type: ignore[method-assign]

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
    p.add_argument("--metric", action="append", metavar="NAME", default=[],
                   help="a registered metric to measure beside CA/ASR, on clean and triggered images (repeatable)")
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
    add_grid_args(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("zoo", help="build a population of suspect models and judge a defense over it",
                       description="A zoo: suspect models drawn from a spec (clean, backdoored, with ground truth), "
                                   "and a defense judged over them by ROC-AUC, TPR at FPR <= 5 %, target accuracy "
                                   "and purification success.")
    zoo = p.add_subparsers(dest="zoo_command", required=True)
    zoo_add = zoo.add_parser
    zoo.add_parser = lambda *a, **kw: zoo_add(*a, parents=[common], **kw)  # type: ignore[method-assign]
    z = zoo.add_parser("build", help="build (or resume building) every member of a spec",
                       description="Draw the members of SPEC (a YAML file, e.g. zoo/dev.yaml) with its seed and "
                                   "build the missing ones under OUT; cached by config, resumable.")
    z.add_argument("spec", type=Path)
    z.add_argument("--out", type=Path, required=True, help="the zoo's folder")
    z.add_argument("--members", type=int, help="the spec's size, overridden (the same spec at another scale)")
    z.add_argument("--limit", type=int, help="build only the first N members drawn")
    add_grid_args(z)
    z.set_defaults(func=cmd_zoo_build)
    z = zoo.add_parser("eval", help="run a defense on every member, blind, and score the population",
                       description="Run DEFENSE on every member of the zoo in DIRECTORY with the model, the "
                                   "defender's clean images and the vocabulary only; score detection, target and "
                                   "purification against the ground truth; write JSON, CSV, ROC PNG and Markdown.")
    z.add_argument("directory", type=Path)
    z.add_argument("--defense", required=True)
    z.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="defense parameter override")
    z.add_argument("--seed", type=int, default=0)
    z.add_argument("--rebound-steps", type=int, default=0,
                   help="also score the real trigger after this many steps of clean fine-tuning (default 0: off)")
    z.add_argument("--threshold", type=float, help="detection threshold chosen elsewhere (e.g. on the dev split)")
    z.add_argument("--out", type=Path, help="report folder (default: DIRECTORY/evals/DEFENSE-HASH)")
    z.add_argument("--only", metavar="ID,ID", help="these members alone (a quick look: the report says so; their "
                                                  "outcomes are reused by a full evaluation)")
    add_grid_args(z)
    z.set_defaults(func=cmd_zoo_eval)

    p = sub.add_parser("scan-data", help="flag the poisoned samples of a training set (a dataset defense)",
                       description="Run a dataset defense (e.g. FLARE) over a training set with a model trained on "
                                   "it; write OUT/scan.json and OUT/scores.csv. With --attack, the set is that "
                                   "attack's poisoned set and its poisoning record scores TPR / FPR / AUROC; "
                                   "--retrain also trains on the purified set and measures CA / ASR.")
    p.add_argument("--defense", required=True, help="dataset defense name (see `toolbox list --kind dataset_defense`)")
    p.add_argument("--train-data", help="the training set to scan (default: the embedded world's)")
    p.add_argument("--model", help="the suspect, or a model trained on the set (default: embedded:PRESET)")
    p.add_argument("--model-format", help="model adapter name, when detection from the source is not enough")
    p.add_argument("--attack", help="poison the set with this attack (its record is the ground truth)")
    p.add_argument("--attack-param", action="append", metavar="KEY=VALUE", help="attack parameter override")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="dataset defense parameter override")
    p.add_argument("--retrain", action="store_true",
                   help="train the clean model on the purified set with the attack's recipe; CA / ASR beside the "
                        "model trained on the poisoned set (needs --attack)")
    p.add_argument("--eval-data", help="labelled evaluation split for --retrain (default: the model's own)")
    p.add_argument("--classes", help="class names file, one per line")
    p.add_argument("--templates", help="prompt templates file with {} for the class")
    p.add_argument("--seed", type=int, default=0, help="seed for every random choice (default 0)")
    p.add_argument("--preset", default="default", help=PRESET_HELP)
    p.add_argument("--device", default="auto", help="torch device: auto (the default), cpu, cuda, cuda:1, mps")
    p.add_argument("--eval-batch-size", type=int, default=256, help="images per evaluation forward pass")
    p.add_argument("--workers", type=int, default=None, help="evaluation data-loading processes")
    p.add_argument("--asr-include-target", action="store_true", help="count target-class images in ASR")
    p.add_argument("--out", type=Path, help="output directory (default: results/scan-ATTACK-DEFENSE-seedN)")
    p.add_argument("--skip-unreadable", action="store_true", help="skip unreadable images (counted in scan.json)")
    p.set_defaults(func=cmd_scan_data)

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


def setup_logging(verbose: bool, quiet: bool) -> list[tuple[logging.Logger, list, int, bool]]:
    """Our loggers to stderr at the chosen level; returns what they were, for :func:`main` to restore."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = _StderrHandler()
    handler.setFormatter(_Formatter())
    saved = []
    for name in OWN_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers, logger.level, logger.propagate))
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False  # a library's logging.info() gives the root a handler: no second copy there
    return saved


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now (a test's capture, a redirected stream)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"toolbox: {level}{record.getMessage()}" + (
            "\n" + self.formatException(record.exc_info) if record.exc_info else "")


class Terminated(BaseException):
    """SIGTERM, raised where the process is, so staged outputs are cleaned up on the way out."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 here, argparse's own convention
    args.argv = argv
    saved_logging = setup_logging(args.verbose, args.quiet)
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        return int(args.func(args))
    except (InputError, UnknownNameError, argparse.ArgumentTypeError) as err:
        log.debug("bad input", exc_info=True)
        log.error("%s", err)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        log.error("interrupted: --out is as it was (a grid keeps its finished cells)")
        return EXIT_INTERRUPTED
    except Terminated:
        log.error("terminated: --out is as it was (a grid keeps its finished cells)")
        return EXIT_TERMINATED
    except Exception as err:  # noqa: BLE001 - one line, not a traceback; -v shows it
        log.debug("the run failed", exc_info=True)
        log.error("the run failed: %s%s", one_line(err),
                  "" if args.verbose else " (rerun with -v for the traceback)")
        return EXIT_RUN_FAILED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for logger, handlers, level, propagate in saved_logging:  # main() leaves no global state behind
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
