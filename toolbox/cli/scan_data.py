"""``toolbox scan-data``: a dataset defense flags the poisoned samples of a training set."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import EXIT_OK
from ..outputs import kept_folders, out_arg
from .options import PRESET_HELP, parse_kv, seed_type
from .run import print_kept


def cmd_scan_data(args: argparse.Namespace) -> int:
    from ..datascan import ScanRequest, default_out, scan
    from ..datascan import summary as scan_summary
    from ..runner import Sources

    src = Sources(
        model=args.model,
        model_format=args.model_format,
        train_data=args.train_data,
        eval_data=args.eval_data,
        clean_data=args.clean_data,
        classes=args.classes,
        templates=args.templates,
        seed=args.seed,
        preset=args.preset,
        device=args.device,
        eval_batch_size=args.eval_batch_size,
        workers=args.workers,
        asr_include_target=args.asr_include_target,
    )
    req = ScanRequest(
        defense=args.defense,
        sources=src,
        attack=args.attack,
        out=args.out,
        defense_params=parse_kv(args.param),
        attack_params=parse_kv(args.attack_param),
        retrain=args.retrain,
        skip_unreadable=args.skip_unreadable,
        command=["toolbox", *args.argv],
    )
    before = kept_folders(Path(req.out) if req.out else default_out(req))
    path = scan(req)
    print(scan_summary(json.loads(Path(path).read_text()), Path(path)))
    print_kept(Path(path).parent, before)
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scan-data",
        help="flag the poisoned samples of a training set (a dataset defense)",
        description="Run a dataset defense (e.g. FLARE) over a training set with a model trained on "
        "it; write OUT/scan.json and OUT/scores.csv. With --attack, the set is that "
        "attack's poisoned set and its poisoning record scores TPR / FPR / AUROC; "
        "--retrain also trains on the purified set and measures CA / ASR.",
    )
    p.add_argument("--defense", required=True, help="dataset defense name (see `toolbox list --kind dataset_defense`)")
    p.add_argument("--train-data", help="the training set to scan (default: the embedded world's)")
    p.add_argument("--model", help="the suspect, or a model trained on the set (default: embedded:PRESET)")
    p.add_argument("--model-format", help="model adapter name, when detection from the source is not enough")
    p.add_argument("--attack", help="poison the set with this attack (its record is the ground truth)")
    p.add_argument("--attack-param", action="append", metavar="KEY=VALUE", help="attack parameter override")
    p.add_argument("-p", "--param", action="append", metavar="KEY=VALUE", help="dataset defense parameter override")
    p.add_argument(
        "--retrain",
        action="store_true",
        help="train the clean model on the purified set with the attack's recipe; CA / ASR beside the "
        "model trained on the poisoned set (needs --attack)",
    )
    p.add_argument("--eval-data", help="labelled evaluation split for --retrain (default: the model's own)")
    p.add_argument(
        "--clean-data",
        help="the defender's own clean images, for dataset defenses that learn from them "
        "(DBOM; default: the model's own)",
    )
    p.add_argument("--classes", help="class names file, one per line")
    p.add_argument("--templates", help="prompt templates file with {} for the class")
    p.add_argument("--seed", type=seed_type, default=0, help="seed for every random choice (default 0)")
    p.add_argument("--preset", default="default", help=PRESET_HELP)
    p.add_argument("--device", default="auto", help="torch device: auto (the default), cpu, cuda, cuda:1, mps")
    p.add_argument("--eval-batch-size", type=int, default=256, help="images per evaluation forward pass")
    p.add_argument("--workers", type=int, default=None, help="evaluation data-loading processes")
    p.add_argument("--asr-include-target", action="store_true", help="count target-class images in ASR")
    p.add_argument("--out", type=out_arg, help="output directory (default: results/scan-ATTACK-DEFENSE-seedN)")
    p.add_argument("--skip-unreadable", action="store_true", help="skip unreadable images (counted in scan.json)")
    p.set_defaults(func=cmd_scan_data)
