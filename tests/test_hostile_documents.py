"""Hostile result documents and the commands that read them (``toolbox submit``, ``toolbox leaderboard``):
every refusal is one line with exit 2 naming the culprit, within seconds, and no input changes; a bad
file among many is named and skipped; what a table quotes is escaped. Then a table-driven fuzz of
the reader (:func:`toolbox.intake.documents.read_result`): it raises nothing but InputError and never
returns a document with a non-finite metric.

Each case builds its input under ``tmp_path`` and returns the command line and the paths to watch;
the table below it names the expected code and message.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import signal
import stat
from pathlib import Path

import pytest

from toolbox import results
from toolbox.cli import main
from toolbox.errors import InputError
from toolbox.intake import documents
from toolbox.leaderboard import SUBMISSION_SCHEMA, make_submission

SHA = "9862e0e99210b31b596bc3ddcf6a80b8522380c7c950383798f22da9878836c2"


def valid_result(defense: str = "none", asr_after: float = 0.9961538461538462) -> dict:
    """A result document as a run writes it (trimmed), valid against toolbox.result/1."""
    metric_set = {"ca": 0.8178571428571428, "asr": 0.9961538461538462, "ca_top5": 0.99, "ra": 0.0}
    return {
        "schema": results.SCHEMA_ID,
        "created": "2026-01-01T00:00:00+00:00",
        "command": ["toolbox", "run", "--defense", defense],
        "versions": {"tool": "0.1.0", "plugins": {"toolbox": "0.1.0"}, "torch": "2.3", "open_clip": "2.24"},
        "model": {"id": "embedded:smoke", "arch": "ViT", "format": "embedded", "sha256": SHA},
        "attack": {"name": "badnet", "params": {"poison_rate": 0.1}, "target": "mushroom"},
        "defense": {"name": defense, "params": {}, "plugin": "toolbox"},
        "metric_config": {
            "ca": {"top_k": [1], "reported_as_ca": "top-1", "n_templates": 4, "n_classes": 14},
            "asr": {"top_k": [1], "exclude_target_class": True},
            "retrieval": None,
            "settings": {"top_k": [1], "workers": 0},
        },
        "metrics": {"before": dict(metric_set), "after": {**metric_set, "asr": asr_after}},
        "detection": None,
        "timings_s": {"load_model": 0.3},
        "seed": 0,
        "device": "cpu",
        "artifacts": {},
        "data": {},
    }


# --------------------------------------------------------------------------- helpers


def snapshot(*roots: Path) -> dict[str, str]:
    """``path -> sha256`` of every regular file under ``roots``, the kind of anything else (a FIFO is
    never opened), so a test sees any file changed, added or removed."""

    def one(p: Path) -> str:
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            return hashlib.sha256(p.read_bytes()).hexdigest()
        return "link" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else oct(st.st_mode)

    out: dict[str, str] = {}
    for root in map(Path, roots):
        if os.path.lexists(root):
            out[str(root)] = one(root)
            if root.is_dir() and not root.is_symlink():
                out.update({str(p): one(p) for p in sorted(root.rglob("*"))})
    return out


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    def hung(signum, frame):
        raise TimeoutError(f"toolbox {' '.join(argv)} blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)  # a FIFO opened for reading would block forever: fail the test instead
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    got = capsys.readouterr()
    return code, got.out, got.err


def write(path: Path, doc: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))
    return path


def result_file(tmp: Path, name: str = "run/result.json", **kw) -> Path:
    return write(tmp / name, valid_result(**kw))


def edited(tmp: Path, old: str, new: str, name: str = "run/result.json", **kw) -> Path:
    """A result file whose text has its first ``old`` replaced by ``new`` (tokens json.dumps never writes)."""
    path = result_file(tmp, name, **kw)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


def with_doc(tmp: Path, change, name: str = "run/result.json") -> Path:
    doc = valid_result()
    change(doc)
    return write(tmp / name, doc)


# --------------------------------------------------------------------------- submit: the cases


def out_is_the_input(tmp):
    r = result_file(tmp)
    return ["submit", str(r), "--out", str(r)], [r]


def out_is_a_hard_link_to_the_input(tmp):
    r = result_file(tmp)
    os.link(r, tmp / "twin.json")
    return ["submit", str(r), "--out", str(tmp / "twin.json")], [r]


def out_is_a_weights_file(tmp):
    r, w = result_file(tmp), tmp / "model" / "open_clip_model.safetensors"
    w.parent.mkdir()
    w.write_bytes(os.urandom(64 * 1024))
    return ["submit", str(r), "--out", str(w)], [r, w.parent]


def out_is_a_users_json(tmp):
    r, notes = result_file(tmp), write(tmp / "notes.json", {"mine": True})
    return ["submit", str(r), "--out", str(notes)], [r, notes]


def out_is_empty(tmp):
    r = result_file(tmp)
    return ["submit", str(r), "--out", ""], [r, tmp]


def out_is_a_directory(tmp):
    r = result_file(tmp)
    (tmp / "subs").mkdir()
    return ["submit", str(r), "--out", str(tmp / "subs")], [r, tmp / "subs"]


def out_is_a_symlink(tmp):
    r, target = result_file(tmp), write(tmp / "elsewhere.json", {"schema": SUBMISSION_SCHEMA})
    (tmp / "link.json").symlink_to(target)
    return ["submit", str(r), "--out", str(tmp / "link.json")], [r, target, tmp / "link.json"]


def out_is_a_fifo(tmp):
    r = result_file(tmp)
    os.mkfifo(tmp / "pipe.json")
    return ["submit", str(r), "--out", str(tmp / "pipe.json")], [r, tmp / "pipe.json"]


def out_is_inside_the_input(tmp):
    r = result_file(tmp)
    return ["submit", str(r), "--out", str(r / "submission.json")], [r]


def default_out_is_a_users_file(tmp):
    r = result_file(tmp)
    (r.parent / "submission.json").write_text("my own notes, not a submission\n")
    return ["submit", str(r)], [r.parent]


def result_named_submission_json(tmp):
    r = result_file(tmp, "run/submission.json")
    return ["submit", str(r)], [r.parent]


def result_is_a_fifo(tmp):
    os.mkfifo(tmp / "result.json")
    return ["submit", str(tmp / "result.json"), "--out", str(tmp / "s.json")], [tmp]


def result_is_dev_zero(tmp):
    (tmp / "result.json").symlink_to("/dev/zero")
    return ["submit", str(tmp / "result.json"), "--out", str(tmp / "s.json")], [tmp]


def result_is_a_dangling_link(tmp):
    (tmp / "result.json").symlink_to(tmp / "gone.json")
    return ["submit", str(tmp / "result.json"), "--out", str(tmp / "s.json")], [tmp]


def result_is_a_directory(tmp):
    (tmp / "result.json").mkdir()
    return ["submit", str(tmp / "result.json"), "--out", str(tmp / "s.json")], [tmp]


def result_is_huge(tmp):
    r = tmp / "result.json"
    with open(r, "wb") as fh:
        fh.truncate(documents.MAX_DOCUMENT_BYTES + 1)  # sparse: costs no disk
    return ["submit", str(r), "--out", str(tmp / "s.json")], [r]


def result_is_empty_name(tmp):
    return ["submit", ""], [tmp]


def _metric_token(token: str):
    def case(tmp):
        doc = valid_result()
        doc["metrics"]["after"]["ca"] = "@@"
        r = write(tmp / "run" / "result.json", doc)
        r.write_text(r.read_text().replace('"@@"', token))
        return ["submit", str(r), "--out", str(tmp / "s.json")], [r.parent]

    case.__name__ = f"metric_is_{token.replace('-', 'minus_').lower()}"
    return case


def metric_out_of_range(tmp):
    r = with_doc(tmp, lambda d: d["metrics"]["after"].update(ca=1.5))
    return ["submit", str(r)], [r.parent]


def metric_is_a_string(tmp):
    r = with_doc(tmp, lambda d: d["metrics"]["after"].update(asr="0.1"))
    return ["submit", str(r)], [r.parent]


def metrics_missing(tmp):
    r = with_doc(tmp, lambda d: d.pop("metrics"))
    return ["submit", str(r)], [r.parent]


def duplicate_metric_key(tmp):
    r = edited(tmp, '"asr": 0.9961538461538462,', '"asr": 0.0, "asr": 0.9961538461538462,')
    return ["submit", str(r)], [r.parent]


def not_utf8(tmp):
    r = result_file(tmp)
    r.write_bytes(r.read_bytes().replace(b"embedded:smoke", b"embedded:sm\xf6ke"))
    return ["submit", str(r)], [r.parent]


def nested_too_deep(tmp):
    r = edited(tmp, '"data": {}', '"data": ' + "[" * 200 + "]" * 200)
    return ["submit", str(r)], [r.parent]


def nested_past_the_parser(tmp):
    r = edited(tmp, '"data": {}', '"data": ' + "[" * 100_000 + "]" * 100_000)
    return ["submit", str(r)], [r.parent]


def lone_surrogate(tmp):
    r = edited(tmp, '"name": "none"', '"name": "n\\ud800ne"')
    return ["submit", str(r)], [r.parent]


def huge_integer_seed(tmp):
    r = edited(tmp, '"seed": 0', '"seed": ' + "9" * 5000)
    return ["submit", str(r)], [r.parent]


def top_level_list(tmp):
    r = write(tmp / "run" / "result.json", [valid_result()])
    return ["submit", str(r)], [r.parent]


SUBMIT_CASES = {  # case -> (exit code, message on stderr)
    out_is_the_input: (2, "is the input result"),
    out_is_a_hard_link_to_the_input: (2, "is the input result"),
    out_is_a_weights_file: (2, "exists and is not a submission this toolbox wrote"),
    out_is_a_users_json: (2, "exists and is not a submission this toolbox wrote"),
    out_is_empty: (2, "--out is empty"),
    out_is_a_directory: (2, "is a directory; name the submission file"),
    out_is_a_symlink: (2, "is a symbolic link"),
    out_is_a_fifo: (2, "pipe.json is not a regular file"),
    out_is_inside_the_input: (2, "result.json is not a directory"),
    default_out_is_a_users_file: (2, "the default submission file"),
    result_named_submission_json: (2, "is the input result"),
    result_is_a_fifo: (2, "is a FIFO (named pipe), not a regular file"),
    result_is_dev_zero: (2, "is a character device, not a regular file"),
    result_is_a_dangling_link: (2, "is a dangling symbolic link"),
    result_is_a_directory: (2, "is a directory, not a regular file"),
    result_is_huge: (2, f"over the {documents.MAX_DOCUMENT_BYTES} bytes"),
    result_is_empty_name: (2, "RESULT is empty"),
    _metric_token("NaN"): (2, "metrics.after.ca is NaN"),
    _metric_token("Infinity"): (2, "metrics.after.ca is Infinity"),
    _metric_token("-Infinity"): (2, "metrics.after.ca is -Infinity"),
    _metric_token("1e999"): (2, "metrics.after.ca is 1e999, which overflows to infinity"),
    metric_out_of_range: (2, "metrics.after.ca: 1.5 is greater than the maximum of 1"),
    metric_is_a_string: (2, "metrics.after.asr: '0.1' is not valid"),
    metrics_missing: (2, "is not a valid toolbox.result/1 result: the document: 'metrics' is a required property"),
    duplicate_metric_key: (2, 'metrics.before holds the key "asr" twice'),
    not_utf8: (2, "is not UTF-8 text"),
    nested_too_deep: (2, "nests deeper than 100 levels"),
    nested_past_the_parser: (2, "nests too deep to parse"),
    lone_surrogate: (2, "defense.name holds a lone UTF-16 surrogate"),
    huge_integer_seed: (2, "seed is an integer of 5000 digits"),
    top_level_list: (2, "it is a JSON list, not an object"),
}


def _one_line_error(err: str) -> None:
    assert "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err  # one line says what went wrong


@pytest.mark.parametrize("case", list(SUBMIT_CASES), ids=[c.__name__ for c in SUBMIT_CASES])
def test_hostile_submit_is_one_line_exit_2_and_nothing_changes(case, tmp_path, capsys):
    code, message = SUBMIT_CASES[case]
    argv, inputs = case(tmp_path)
    before = snapshot(*inputs)
    got, out, err = cli(argv, capsys)
    assert got == code, err
    assert message in err, err
    _one_line_error(err)
    assert snapshot(*inputs) == before, "an input changed"
    assert not list(tmp_path.rglob("s.json")), "a submission was written"
    assert "NaN" not in out


def test_submit_writes_strict_json_and_replaces_only_its_own_submission(tmp_path, capsys):
    r = result_file(tmp_path)
    code, out, err = cli(["submit", str(r)], capsys)
    assert code == 0, err
    first = r.parent / "submission.json"
    sub = json.loads(first.read_text(), parse_constant=lambda t: pytest.fail(f"{t} written"))
    assert sub["schema"] == SUBMISSION_SCHEMA and sub["result_sha256"] == hashlib.sha256(r.read_bytes()).hexdigest()
    assert first.read_text() == json.dumps(make_submission(valid_result(), r.read_bytes()) | sub, indent=2) + "\n"
    # a submission this toolbox wrote may be replaced; a new --out in a new folder is made
    assert cli(["submit", str(r)], capsys)[0] == 0
    assert cli(["submit", str(r), "--out", str(tmp_path / "new" / "dir" / "s.json")], capsys)[0] == 0
    assert json.loads((tmp_path / "new" / "dir" / "s.json").read_text())["schema"] == SUBMISSION_SCHEMA


def test_a_finite_huge_extra_metric_is_kept_and_written_as_json(tmp_path, capsys):
    r = with_doc(tmp_path, lambda d: d["metrics"]["after"].update(worst_case_loss=1e308))
    assert cli(["submit", str(r)], capsys)[0] == 0
    assert json.loads((r.parent / "submission.json").read_text())["metrics"]["after"]["worst_case_loss"] == 1e308


# --------------------------------------------------------------------------- leaderboard


@pytest.fixture
def board(tmp_path) -> Path:
    """Two good results (ranked 1 and 2) in a folder the hostile files are added to."""
    write(tmp_path / "board" / "ft" / "result.json", valid_result("ft", asr_after=0.1))
    write(tmp_path / "board" / "none" / "result.json", valid_result("none"))
    return tmp_path / "board"


def _table_rows(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| rank")]


def bad_nan(board):
    edited(board, '"asr": 0.0', '"asr": NaN', "nan/result.json", defense="nan", asr_after=0.0)  # NaN ranked first
    return "metrics.after.asr is NaN"


def bad_fifo(board):
    os.mkfifo(board / "pipe.json")
    return "pipe.json is a FIFO (named pipe), not a regular file"


def bad_socket_like_device(board):
    (board / "zero.json").symlink_to("/dev/zero")
    return "zero.json is a character device"


def bad_dangling_link(board):
    (board / "gone.json").symlink_to(board / "nowhere.json")
    return "gone.json is a dangling symbolic link"


def bad_truncated(board):
    (board / "half.json").write_text(json.dumps(valid_result())[:500])
    return "half.json is not JSON"


def bad_submission_missing_keys(board):
    write(board / "x" / "my-submission.json", {"schema": SUBMISSION_SCHEMA, "metrics": {}})
    return "is not a valid toolbox.submission/1 submission"


def bad_submission_forged_config_hash(board):
    sub = make_submission(valid_result("forged"), b"x")
    sub["metric_config_sha"] = "zz\n## injected"
    write(board / "forged-submission.json", sub)
    return "metric_config_sha"


def bad_submission_nan(board):
    sub = make_submission(valid_result("nan"), b"y")
    sub["metrics"]["after"]["ca"] = float("nan")
    (board / "nan-submission.json").write_text(json.dumps(sub))
    return "metrics.after.ca is NaN"


def bad_huge(board):
    with open(board / "big.json", "wb") as fh:
        fh.truncate(documents.MAX_DOCUMENT_BYTES + 1)
    return "big.json is"


def bad_name_with_newline(board):
    (board / "odd\nname.json").write_text("{")
    return "odd\\nname.json is not JSON"


def bad_symlink_loop(board):
    (board / "loop").symlink_to(board)
    (board / "self.json").symlink_to(board / "self.json")
    return "self.json cannot be read"


LEADERBOARD_CASES = [
    bad_nan,
    bad_fifo,
    bad_socket_like_device,
    bad_dangling_link,
    bad_truncated,
    bad_submission_missing_keys,
    bad_submission_forged_config_hash,
    bad_submission_nan,
    bad_huge,
    bad_name_with_newline,
    bad_symlink_loop,
]


@pytest.mark.parametrize("case", LEADERBOARD_CASES, ids=[c.__name__ for c in LEADERBOARD_CASES])
def test_a_bad_file_among_many_is_named_and_skipped(case, board, capsys):
    message = case(board)
    before = snapshot(board)
    code, out, err = cli(["leaderboard", str(board)], capsys)
    assert code == 0, err
    assert message in err and "skipped" in err, err
    assert "Traceback" not in err and "NaN" not in out
    assert [r.split(" | ")[1] for r in _table_rows(out)][:2] == ["ft", "none"], out
    assert snapshot(board) == before
    code, out, err = cli(["leaderboard", str(board), "--strict"], capsys)  # --strict keeps failing
    assert code == 2 and "--strict" in err and out == "", err
    _one_line_error(err)


def test_nothing_usable_names_the_first_skipped_file(tmp_path, capsys):
    (tmp_path / "b").mkdir()
    os.mkfifo(tmp_path / "b" / "result.json")
    code, out, err = cli(["leaderboard", str(tmp_path / "b")], capsys)
    assert code == 2 and "no result.json or submission files" in err and "is a FIFO" in err, err
    _one_line_error(err)
    assert cli(["leaderboard", ""], capsys)[0] == 2


def test_text_from_result_files_cannot_add_rows_or_markup(board, capsys):
    evil = valid_result("evil | 100 |\n| 1 | injected | <script>x</script> \\", asr_after=0.0)
    evil["model"]["id"] = "m\r\n## heading\u2028"
    evil["metric_config"]["ca"]["n_classes"] = "14\n| 1 | injected |"
    write(board / "evil" / "result.json", evil)
    code, out, err = cli(["leaderboard", str(board)], capsys)
    assert code == 0, err
    assert len(_table_rows(out)) == 3, out  # the evil result is in a group of its own: its n_classes differs
    assert not any(ln.startswith(("| 1 | injected", "## heading")) for ln in out.splitlines()), out
    assert "evil \\| 100 \\| \\| 1 \\| injected \\| &lt;script>x&lt;/script> \\\\" in out, out
    assert "<script>" not in out


def test_a_result_with_odd_but_valid_fields_is_ranked_not_a_crash(board, capsys):
    odd = valid_result("odd")
    odd["metric_config"]["settings"] = [1, 2]  # the schema leaves settings open; it was `.items()`-ed
    odd["metric_config"]["retrieval"] = {"k": "ten"}
    write(board / "odd" / "result.json", odd)
    code, out, err = cli(["leaderboard", str(board)], capsys)
    assert code == 0 and "| odd |" in out and out.count("## metric config") == 2, err


def test_a_damaged_cache_entry_is_run_again_not_trusted(tmp_path, caplog):
    path = tmp_path / "cells" / "key" / "result.json"
    assert documents.reusable_result(path) is None  # absent: run it
    write(path, valid_result())
    assert documents.reusable_result(path) == valid_result()
    path.write_text(path.read_text().replace("0.8178571428571428", "NaN", 1))
    assert documents.reusable_result(path) is None
    assert "not reusing" in caplog.text and "metrics.before.ca is NaN" in caplog.text


def test_outcome_tables_and_csv_escape_the_same_way():
    from toolbox.escape import csv_cell, csv_row, markdown_cell
    from toolbox.zoo.outcome import markdown_table

    assert markdown_table(["a|b"], [["x\ny", "<i>"]]) == ["| a\\|b |", "|---|", "| x y | &lt;i> |"]
    assert markdown_cell("plain-name_1.0 ✓") == "plain-name_1.0 ✓"
    assert [csv_cell(v) for v in ("=1+1", "+1", "-x", "@SUM(A1)", "\tx", "none", -1, 0.5, None)] == [
        "'=1+1",
        "'+1",
        "'-x",
        "'@SUM(A1)",
        "'\tx",
        "none",
        -1,
        0.5,
        None,
    ]
    assert csv_row({"defense": "=cmd|' /C calc'!A0", "ca": 0.9}) == {"defense": "'=cmd|' /C calc'!A0", "ca": 0.9}


def test_result_csv_neutralises_formula_names(tmp_path):
    doc = valid_result('=HYPERLINK("http://x")')
    results.write_result(tmp_path, doc)
    row = (tmp_path / "result.csv").read_text().splitlines()[1]
    assert row.startswith("\"'=HYPERLINK") and json.loads((tmp_path / "result.json").read_text()) == doc


# --------------------------------------------------------------------------- fuzz of the reader


def _set(path: tuple, value: object):
    def change(doc: dict) -> None:
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def _drop(path: tuple):
    def change(doc: dict) -> None:
        node = doc
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1])

    return change


CA = ("metrics", "after", "ca")
VALUES = [None, 0, 1, -0.0, 5e-324, 0.5, 1.5, -0.1, 1e308, 2, True, "0.5", [], {}, 10**70, float("nan"), float("inf")]
DOC_MUTATIONS = (
    [_set(CA, v) for v in VALUES]
    + [_set(("metrics", "after", "worst"), v) for v in VALUES]
    + [_set(("metrics", "rebound"), v) for v in (None, {}, {"ca": 0.5, "asr": 0.5}, [1], "x")]
    + [_drop((key,)) for key in valid_result()]
    + [_drop(("metrics", s)) for s in ("before", "after")]
    + [_drop(("metrics", "after", k)) for k in ("ca", "asr")]
    + [_set((key,), v) for key in ("schema", "metrics", "model", "seed", "defense") for v in (5, "x", [], None, 1.5)]
    + [_set(("metric_config", "settings"), v) for v in ([1], "x", None, {"a": [[[[]]]]})]
)
RAW_MUTATIONS = [
    lambda raw: raw.replace(b"0.8178571428571428", b"NaN", 1),
    lambda raw: raw.replace(b"0.8178571428571428", b"-Infinity", 1),
    lambda raw: raw.replace(b"0.8178571428571428", b"1e400", 1),
    lambda raw: raw.replace(b"0.8178571428571428", b"0." + b"0" * 100_000 + b"1", 1),
    lambda raw: raw.replace(b"0.8178571428571428", b"1" * 10_000, 1),
    lambda raw: raw.replace(b'"seed": 0', b'"seed": 0, "seed": 1', 1),
    lambda raw: raw.replace(b'"ca": 0.8', b'"ca": 0.1, "ca": 0.8', 1),
    lambda raw: b"\xef\xbb\xbf" + raw,
    lambda raw: raw.decode().encode("utf-16"),
    lambda raw: raw.replace(b"mushroom", b"mush\xc3room", 1),
    lambda raw: raw.replace(b"mushroom", b"mush\\udc00room", 1),
    lambda raw: raw.replace(b"mushroom", b"mush\\u0000room\\n| x |", 1),
    lambda raw: raw.replace(b'"data": {}', b'"data": ' + b"[" * 150 + b"]" * 150, 1),
    lambda raw: raw.replace(b'"data": {}', b'"data": ' + b'{"a":' * 99 + b"1" + b"}" * 99, 1),
    lambda raw: raw + b" " * documents.MAX_DOCUMENT_BYTES,
    lambda raw: raw + b"garbage",
    lambda raw: b"",
    lambda raw: b"null",
    lambda raw: b'"result"',
    lambda raw: b"[]",
    lambda raw: raw.replace(b"{", b"[", 1),
]


def _check_read(path: Path) -> None:
    """The reader's contract: a valid document with finite metrics, or one InputError line naming the file."""
    try:
        doc = documents.read_result(path)
    except InputError as err:
        text = str(err)
        assert "\n" not in text and str(path) in text and len(text) < 600, text
        return
    results.validate(doc)
    for values in doc["metrics"].values():
        for key, v in (values or {}).items():
            if isinstance(v, float):
                assert math.isfinite(v), (key, v)
                assert not documents.BUILTIN_METRIC.search(key) or 0 <= v <= 1, (key, v)


@pytest.mark.parametrize("i", range(len(DOC_MUTATIONS)))
def test_fuzz_read_result_document_mutations(i, tmp_path):
    doc = copy.deepcopy(valid_result())
    DOC_MUTATIONS[i](doc)
    path = tmp_path / "result.json"
    path.write_text(json.dumps(doc))  # json.dumps writes NaN / Infinity for float('nan') / float('inf')
    _check_read(path)
    try:  # the same checks on a document that never was JSON text (NaN passes the schema's minimum)
        documents.check_result(doc, "in-memory")
    except InputError as err:
        assert "\n" not in str(err)


@pytest.mark.parametrize("i", range(len(RAW_MUTATIONS)))
def test_fuzz_read_result_raw_mutations(i, tmp_path):
    path = tmp_path / "result.json"
    path.write_bytes(RAW_MUTATIONS[i](json.dumps(valid_result(), indent=1).encode()))
    _check_read(path)


def test_fuzz_read_result_truncations_and_byte_flips(tmp_path):
    raw = json.dumps(valid_result(), indent=1).encode()
    rng = random.Random(40)
    path = tmp_path / "result.json"
    variants = [raw[:n] for n in range(0, len(raw), 7)]
    for _ in range(300):
        flipped = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            flipped[rng.randrange(len(flipped))] = rng.choice(b'0123456789.eE+-"{}[],:NaIfinty\\u\x00\xff ')
        variants.append(bytes(flipped))
    for data in variants:
        path.write_bytes(data)
        _check_read(path)


def test_read_result_returns_the_document_a_plain_reader_sees(tmp_path):
    r = write(tmp_path / "result.json", valid_result())
    assert documents.read_result(r) == json.loads(r.read_text())
    assert list(documents.read_result(r)) == list(valid_result())  # key order kept
