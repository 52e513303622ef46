"""A run's inputs, read through the adapters and checked: the model, the datasets, the vocabulary."""

from __future__ import annotations

import logging
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ..api import ImageData, LoadedModel
from ..errors import InputError, one_line
from ..intake.files import is_special, read_text
from ..plugins import Registration, Registry
from .attack_cache import source_fingerprint
from .request import RunRequest, Sources

log = logging.getLogger(__package__)  # the runner's one logger, "toolbox.runner", as before it was a package


@contextmanager
def hostile(what: str) -> Iterator[None]:
    """Any failure while an adapter reads a source is bad input, reported in one line."""
    try:
        yield
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - a suspect file can make any library raise anything
        log.debug("while reading %s", what, exc_info=True)
        # a ValueError is a reader's own account of what is wrong with the input: its message is the news
        reason = " ".join(str(err).split()) if type(err) is ValueError and str(err) else one_line(err)
        raise InputError(f"cannot read {what}: {reason}") from err


def refuse_special_source(source: str, what: str) -> None:
    """A source (or a part of ``VISUAL::BASE`` / ``ARCH@WEIGHTS``) that is a FIFO, socket or device is
    refused by name before any adapter looks at it: opening one would block or never end."""
    parts = (
        [p for whole in source.split("::") for p in (whole, whole.split("@", 1)[-1])] if what == "model" else [source]
    )
    for part in dict.fromkeys(parts):
        kind = is_special(part)
        if kind:
            raise InputError(f"{what} {source!r}: {part} is {kind}, not a regular file or a folder")


def load_model(registry: Registry, source: str, fmt: str | None, device: torch.device) -> tuple[Any, LoadedModel]:
    refuse_special_source(source, "model")
    with hostile(f"model {source!r}"):
        if fmt:
            adapter = registry.get("model_adapter", fmt).obj()
        else:
            adapters = (r.obj() for r in registry.entries["model_adapter"].values())
            adapter = next((a for a in adapters if a.detect(source)), None)
            if adapter is None:
                known = ", ".join(registry.names("model_adapter"))
                raise InputError(f"no model adapter recognises {source!r}; pass --model-format (one of: {known})")
        loaded = adapter.load(source, device)
    check_finite(loaded)
    return adapter, loaded


def check_finite(loaded: LoadedModel) -> None:
    """NaN or infinite weights make every number of the run meaningless: refuse them."""
    bad = [
        name
        for name, t in loaded.model.state_dict().items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise InputError(
            f"model {loaded.source!r} has non-finite (NaN or infinite) weights in {len(bad)} "
            f"tensor(s), e.g. {', '.join(bad[:3])}"
        )


_DATA_MEMO: dict[tuple, ImageData] | None = None


@contextmanager
def memoised_data() -> Iterator[None]:
    """Within this block, a dataset read once is reused (``toolbox compare`` runs many cells on
    the same data; reading 20k images per cell would dominate). Keyed by source, its size and
    mtime, image size, vocabulary and the skip flag."""
    global _DATA_MEMO
    previous, _DATA_MEMO = _DATA_MEMO, {}
    try:
        yield
    finally:
        _DATA_MEMO = previous


def load_data(
    registry: Registry, source: str, image_size: int, classnames: list[str] | None, skip_unreadable: bool
) -> ImageData:
    if _DATA_MEMO is not None:
        key = (repr(source_fingerprint(source)), image_size, tuple(classnames or ()), skip_unreadable)
        if key not in _DATA_MEMO:
            _DATA_MEMO[key] = _load_data(registry, source, image_size, classnames, skip_unreadable)
        return _DATA_MEMO[key]
    return _load_data(registry, source, image_size, classnames, skip_unreadable)


def _load_data(
    registry: Registry, source: str, image_size: int, classnames: list[str] | None, skip_unreadable: bool
) -> ImageData:
    refuse_special_source(source, "data")
    with hostile(f"data {source!r}"):
        adapters = (r.obj() for r in registry.entries["dataset_adapter"].values())
        adapter = next((a for a in adapters if a.detect(source)), None)
        if adapter is None:
            known = ", ".join(registry.names("dataset_adapter"))
            raise InputError(f"no dataset adapter recognises {source!r} (registered: {known})")
        data = adapter.load(source, image_size, classnames=classnames, skip_unreadable=skip_unreadable)
    if len(data.dataset) == 0:
        skipped = f" ({len(data.skipped)} skipped as unreadable)" if data.skipped else ""
        raise InputError(f"data {source!r} holds no usable images{skipped}")
    return data


def numbered_lines(path: str, what: str) -> list[tuple[int, str]]:
    """(line number, text) of the non-empty, non-comment lines of a small text file; a regular file
    of at most 16 MiB only (:mod:`toolbox.intake.files`)."""
    text = read_text(Path(path), f"{what} file")
    lines = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), start=1)]
    lines = [(n, ln) for n, ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise InputError(f"{what} file {path!r} is empty")
    return lines


def read_lines(path: str, what: str) -> list[str]:
    """Non-empty, non-comment lines of a small text file (class names, templates)."""
    return [ln for _, ln in numbered_lines(path, what)]


def duplicate_names(names: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]


def check_classnames(names: list[str], source: str) -> list[str]:
    """Two classes with one name share one text embedding, so the later one is never predicted.
    ImageNet-1K's usual names have two such pairs (missile, sunglasses) and every zero-shot number
    in the literature lives with them: say so, and refuse only where a name must pick one class
    (:func:`class_index`)."""
    dupes = duplicate_names(names)
    if dupes:
        log.warning(
            "class names from %s repeat %s: each repeated name is one text embedding, and only its "
            "first class can be predicted",
            source,
            ", ".join(map(repr, dupes[:5])),
        )
    return names


def class_index(classnames: list[str], name: str, what: str) -> int:
    """The one class called ``name``; absent or repeated is an :class:`InputError`."""
    if name not in classnames:
        raise InputError(f"{what} {name!r} is not in the class vocabulary ({len(classnames)} classes)")
    if classnames.count(name) > 1:
        raise InputError(f"{what} {name!r} names {classnames.count(name)} classes of the vocabulary; rename one")
    return classnames.index(name)


def template_fields(template: str) -> list[tuple[str, str, str | None]]:
    """The replacement fields ``str.format`` sees in ``template``; a stray brace is a ValueError."""
    return [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]


def read_templates(path: str) -> list[str]:
    """Prompt templates, each with exactly one plain ``{}`` (a literal brace is ``{{`` or ``}}``)."""
    lines = numbered_lines(path, "templates")
    for n, template in lines:
        try:
            fields = template_fields(template)
        except ValueError as err:  # open_clip calls template.format(name): a stray brace fails there, mid-run
            raise InputError(
                f"templates file {path!r} line {n}: {template!r} is not a format string ({err}); "
                f"write a literal brace as {{{{ or }}}}"
            ) from None
        if fields != [("", "", None)]:
            raise InputError(
                f"templates file {path!r} line {n}: each line needs exactly one {{}} for the class name, "
                f"e.g. 'a photo of a {{}}.'; not {template!r}"
            )
    return [t for _, t in lines]


def default_templates() -> list[str]:
    from ..compat import import_open_clip

    return [t("{}") for t in import_open_clip().OPENAI_IMAGENET_TEMPLATES]


def default_classnames() -> list[str]:
    from ..compat import import_open_clip

    return list(import_open_clip().IMAGENET_CLASSNAMES)


def load_inputs(
    registry: Registry, req: RunRequest, loaded: LoadedModel, dreg: Registration
) -> tuple[list[str], list[str], dict[str, ImageData | None]]:
    """The vocabulary, templates and datasets of a run, checked against each other."""
    src, defaults = req.sources, loaded.data_defaults
    classnames, templates = vocabulary(src, defaults)
    data: dict[str, ImageData | None] = {}
    # The image-caption training split is large: read it now only when the defense or the rebound will
    # use it; an attack reads it only if its backdoor is not in the cache (load_train)
    wants_train = bool(getattr(dreg.obj, "uses_train_data", False)) or src.rebound().enabled
    for key in Sources.DATA_KEYS:
        where = getattr(src, key) or defaults.get(key)
        data[key] = (
            load_data(registry, where, loaded.model.image_size, classnames, req.skip_unreadable)
            if where and (key != "train_data" or wants_train)
            else None
        )
    if data["clean_data"] is None:
        raise InputError("no clean data: pass --clean-data (a folder of images, a labels.csv, a caption CSV, ...)")
    if src.rebound().enabled and data["train_data"] is None:
        raise InputError("--rebound-steps fine-tunes on clean image-caption pairs: pass --train-data")
    for key in KINDS:
        check_kind(key, data[key])
    measured = eval_classnames(data["eval_data"], classnames, src)
    shift = data["shift_data"]
    if shift is not None and shift.classnames and list(shift.classnames) != measured:
        raise InputError(
            f"--shift-data {shift.source} names other classes than the evaluation data "
            f"({len(shift.classnames)} against {len(measured)}): CA under shift needs the same classes"
        )
    return measured, templates, data


KINDS = {"eval_data": "labelled", "shift_data": "labelled", "retrieval_data": "captioned", "train_data": "captioned"}


def check_kind(key: str, data: ImageData | None) -> None:
    """``data`` (given as ``--KEY``) is the kind of data that option takes."""
    if data is not None and key in KINDS and data.kind != KINDS[key]:
        raise InputError(f"--{key.replace('_', '-')} must be {KINDS[key]} data; {data.source} is {data.kind}")


def train_source(req: RunRequest, loaded: LoadedModel) -> str | None:
    """Where the run's image-caption pairs are: --train-data, else the model's own world's."""
    return req.sources.train_data or loaded.data_defaults.get("train_data")


def load_train(
    registry: Registry, req: RunRequest, loaded: LoadedModel, where: str, classnames: list[str]
) -> ImageData:
    """The image-caption pairs at ``where``, read when first needed (an attack that is not in the cache)."""
    data = load_data(registry, where, loaded.model.image_size, classnames, req.skip_unreadable)
    check_kind("train_data", data)
    return data


def vocabulary(src: Sources, defaults: dict[str, str]) -> tuple[list[str], list[str]]:
    """Class names and prompt templates: the options', else the model's own, else ImageNet-1K / OpenAI's."""
    classes_src = src.classes or defaults.get("classes")
    classnames = (
        check_classnames(read_lines(classes_src, "class names"), classes_src) if classes_src else default_classnames()
    )
    templates_src = src.templates or defaults.get("templates")
    return classnames, read_templates(templates_src) if templates_src else default_templates()


def eval_classnames(eval_data: ImageData | None, classnames: list[str], src: Sources) -> list[str]:
    """The vocabulary to measure with: an evaluation set that names its own classes brings them (its labels
    index that list), unless --classes says otherwise."""
    own = eval_data.classnames if eval_data is not None else None
    if not own or own == classnames:
        return classnames
    if src.classes:
        i = next((i for i, (a, b) in enumerate(zip(own, classnames)) if a != b), min(len(own), len(classnames)))
        raise InputError(
            f"the evaluation data {eval_data.source} names its own classes, which differ "
            f"from --classes {src.classes} ({len(own)} against {len(classnames)} names; class {i} "
            f"is {own[i] if i < len(own) else None!r} against "
            f"{classnames[i] if i < len(classnames) else None!r}); drop one of them or make them agree"
        )
    return check_classnames(list(own), eval_data.source)
