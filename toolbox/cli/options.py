"""What the subcommands share: ``KEY=VALUE`` parsing, the -v / -q options, the model and data source options."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

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


def seed_type(text: str) -> int:
    """``--seed``: an integer every generator accepts, [0, 2^32 - 1] (argparse names the option)."""
    from ..intake.numbers import seed

    try:
        int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    try:
        return seed(text, "the seed")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_loudness(parser: argparse.ArgumentParser, default: Any) -> None:
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", action="store_true", default=default, help="debug messages and tracebacks")
    loud.add_argument("-q", "--quiet", action="store_true", default=default, help="warnings and errors only")


def share_loudness(subparsers: argparse._SubParsersAction) -> None:
    """Every parser ``subparsers.add_parser`` makes from now on takes -v / -q too (after the subcommand)."""
    common = argparse.ArgumentParser(add_help=False)
    add_loudness(common, argparse.SUPPRESS)  # SUPPRESS: an option not given leaves the top level's value alone
    add_parser = subparsers.add_parser

    def with_loudness(*a: Any, **kw: Any) -> argparse.ArgumentParser:
        return add_parser(*a, parents=[common], **kw)

    subparsers.add_parser = with_loudness  # type: ignore[method-assign]


def add_source_args(p: argparse.ArgumentParser) -> None:
    """Model and data sources, shared by ``run`` and ``compare``."""
    p.add_argument("--model", help="model source: checkpoint file or directory (default: embedded:PRESET)")
    p.add_argument("--model-format", help="model adapter name, when detection from the source is not enough")
    p.add_argument("--clean-data", help="the defender's clean images (folder, labels.csv, caption CSV, COCO JSON)")
    p.add_argument("--eval-data", help="labelled evaluation split for CA/ASR (ImageFolder or labels.csv)")
    p.add_argument(
        "--shift-data",
        help="a second labelled split, the same classes in another style: CA under shift (ca_shift)",
    )
    p.add_argument("--retrieval-data", help="COCO-captions JSON for retrieval recall")
    p.add_argument("--train-data", help="image-caption CSV used by attacks and fine-tuning baselines")
    p.add_argument("--classes", help="class names file, one per line (default: the model's own or ImageNet-1K)")
    p.add_argument("--templates", help="prompt templates file with {} for the class (default: OpenAI ImageNet)")
    p.add_argument("--seed", type=seed_type, default=0, help="seed for every random choice (default 0)")
    p.add_argument("--preset", default="default", help=PRESET_HELP)
    p.add_argument(
        "--device",
        default="auto",
        help="torch device: auto (cuda, then mps, then cpu; the default), cpu, cuda, cuda:1, mps",
    )
    p.add_argument("--eval-batch-size", type=int, default=256, help="images per evaluation forward pass (default 256)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="evaluation data-loading processes (default: 0 on the CPU, up to 8 beside a GPU)",
    )
    p.add_argument(
        "--rebound-steps",
        type=int,
        default=0,
        help="rebound ASR: fine-tune the defended model this many steps on clean pairs, measure again (default 0: off)",
    )
    p.add_argument("--rebound-lr", type=float, default=5e-4, help="learning rate of those steps (default 5e-4)")
    p.add_argument(
        "--asr-include-target",
        action="store_true",
        help="count target-class images in ASR (BadCLIP/PAR convention; default excludes them)",
    )


def sources_from(args: argparse.Namespace) -> Any:
    """A :class:`~toolbox.runner.Sources` from ``add_source_args``' options: one option per field."""
    from ..runner import Sources

    return Sources(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Sources)})
