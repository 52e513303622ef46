"""A commit that a ``kill -9`` cannot make lose data, one command per ``--out``, and ``--out`` refused
where it would overwrite what the command did not make (toolbox/outputs.py, toolbox/commit.py).

The kills are real: a forked child (or a ``toolbox run`` subprocess) commits with
``TOOLBOX_TEST_KILL_AT=STEP`` and SIGKILLs itself right after STEP; the next command on that
``--out`` must find the earlier or the new outputs complete, and a user's file where it was or in
a ``replaced-*`` folder it names.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from toolbox import commit, outputs
from toolbox.cli import main
from toolbox.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
USER_FILE = "users-own-notes.txt"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> list[str]:
    """``toolbox run --defense none`` on a random tiny CLIP and four 8x8 images: about a second, no training."""
    from PIL import Image

    from adapters.clip_model import build_clip
    from adapters.models import wrap, write_openclip_dir

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = write_openclip_dir(wrap(build_clip(TINY_CFG), TINY_CFG), root / "model")
    for name, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        (root / "eval" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), colour).save(root / "eval" / name / f"{i}.png")
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "templates.txt").write_text("a photo of a {}.\n")
    data = ["--eval-data", str(root / "eval"), "--clean-data", str(root / "eval")]
    files = ["--classes", str(root / "classes.txt"), "--templates", str(root / "templates.txt")]
    return ["run", "--defense", "none", "--model", str(model), *data, *files, "--device", "cpu"]


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = int(exc.code or 0)
    got = capsys.readouterr()
    return code, got.out, got.err


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if not p.relative_to(root).parts[0].startswith(skip or ("\0",))
    }


def write_set(where: Path, tag: str) -> None:
    """A command's four outputs, every file saying which set it belongs to."""
    (where / "model").mkdir()
    (where / "model" / "weights.bin").write_text(f"{tag} weights")
    (where / "artifacts").mkdir()
    (where / "artifacts" / "trigger.png").write_text(f"{tag} artifact")
    (where / "result.csv").write_text(f"{tag}\n")
    (where / "result.json").write_text(json.dumps({"set": tag}))


def set_in(out: Path) -> str:
    """``old`` or ``new`` when OUT holds exactly that set's outputs (a user's file aside), else ``mixed``."""
    tags = {
        (out / "model" / "weights.bin").read_text().split()[0] if (out / "model" / "weights.bin").exists() else None,
        (out / "artifacts" / "trigger.png").read_text().split()[0] if (out / "artifacts").exists() else None,
        (out / "result.csv").read_text().strip() if (out / "result.csv").exists() else None,
        json.loads((out / "result.json").read_text())["set"] if (out / "result.json").exists() else None,
    }
    return tags.pop() if len(tags) == 1 and None not in tags else f"mixed {sorted(map(str, tags))}"


def user_files(out: Path) -> list[Path]:
    return sorted(out.rglob(USER_FILE))


def debris(out: Path) -> list[str]:
    """What a finished command must not leave: a journal, a lock file, staging folders, empty replaced-*."""
    left = [p.name for p in out.iterdir() if p.name in (commit.JOURNAL, outputs.LOCK)]
    left += [p.name for p in out.parent.iterdir() if commit.STAGING_MARK in p.name]
    return left + [p.name for p in out.glob("replaced-*") if not any(p.iterdir())]


def earlier_with_users_file(out: Path) -> None:
    """OUT holding the old set as a toolbox commit left it (its manifest vouches), then a user's file in OUT/model."""
    with outputs.Staging(out) as stage:
        write_set(stage.dir, "old")
        stage.commit()
    (out / "model" / USER_FILE).write_text("do not lose me")


def killed_commit(out: Path, step: str) -> int:
    """Commit the new set in a forked child that SIGKILLs itself right after ``step``; its wait status."""
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            os.environ[commit.KILL_ENV] = step
            with outputs.Staging(out) as stage:
                write_set(stage.dir, "new")
                stage.commit()
            code = 0
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


# --------------------------------------------------------------------------- kill -9 at each step of a commit

NAMES = ("model", "artifacts", "result.csv", "result.json")
ROLLED_BACK = ["journal", *[f"held:{n}" for n in NAMES], *[f"placed:{n}" for n in NAMES[:-1]]]
COMPLETED = ["placed:result.json", "manifest", "decided", *[f"dropped:{n}" for n in NAMES[1:]], "done"]


@pytest.mark.parametrize("step", ROLLED_BACK + COMPLETED)
def test_a_kill_at_any_step_of_the_commit_loses_nothing(step, host, tiny, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    earlier_with_users_file(out)
    status = killed_commit(out, step)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"step {step} was never reached"
    with outputs.Staging(out):  # what the next command on OUT does first: recover, sweep
        pass
    expected = "old" if step in ROLLED_BACK else "new"
    assert set_in(out) == expected
    assert not debris(out), debris(out)
    (users,) = user_files(out)  # once, where it was or in the replaced-* folder the recovery named
    if expected == "old":
        assert users == out / "model" / USER_FILE
    else:
        assert users.parent.parent.name.startswith("replaced-") and users.parent.name == "model"
        assert step == "done" or str(users.parent.parent) in caplog.text
    # the rerun: a real toolbox run; the user's file ends in the replaced-* folder it prints (or already was)
    code, printed, err = cli([*tiny, "--out", str(out)], capsys)
    assert code == 0, err
    assert json.loads((out / "result.json").read_text())["defense"]["name"] == "none"
    (users,) = user_files(out)
    assert users.read_text() == "do not lose me" and users.parent.parent.name.startswith("replaced-")
    if expected == "old":
        assert f"kept      {users.parent.parent}" in printed
    assert not debris(out), debris(out)


@pytest.mark.slow
@pytest.mark.parametrize("step, expected", [("held:result.csv", "earlier"), ("decided", "new")])
def test_a_toolbox_run_killed_in_its_commit_is_repaired_by_the_next(step, expected, host, tiny, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli([*tiny, "--out", str(out)], capsys)[0] == 0
    (out / "model").mkdir()
    (out / "model" / USER_FILE).write_text("do not lose me")
    first = (out / "result.json").read_bytes()
    env = {
        **os.environ,
        commit.KILL_ENV: step,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    killed = subprocess.run(
        [sys.executable, "-m", "toolbox.cli", "-q", *tiny, "--out", str(out), "--seed", "7"], env=env, cwd=tmp_path
    )
    assert killed.returncode == -signal.SIGKILL
    with outputs.Staging(out):
        pass
    doc = json.loads((out / "result.json").read_text())
    assert ((out / "result.json").read_bytes() == first) == (expected == "earlier")
    assert doc["seed"] == (0 if expected == "earlier" else 7)
    assert (out / "result.csv").is_file() and (out / "artifacts").is_dir()
    assert len(user_files(out)) == 1 and not debris(out)
    assert cli([*tiny, "--out", str(out), "--seed", "8"], capsys)[0] == 0
    assert json.loads((out / "result.json").read_text())["seed"] == 8 and len(user_files(out)) == 1


# --------------------------------------------------------------------------- one command per --out


@pytest.mark.slow
def test_two_runs_racing_for_one_out_one_wins_the_other_exits_2(tiny, tmp_path):
    out, go = tmp_path / "out", tmp_path / "go"
    env = {
        **os.environ,
        commit.WAIT_ENV: f"locked:{go}",  # the winner holds the lock until the loser has answered
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    argv = [sys.executable, "-m", "toolbox.cli", "-q", *tiny, "--out", str(out)]
    procs = [subprocess.Popen(argv, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.monotonic() + 120
    while all(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    (loser,) = [p for p in procs if p.poll() is not None]
    (winner,) = [p for p in procs if p is not loser]
    go.touch()
    err = loser.stderr.read()
    assert loser.returncode == 2, err
    assert f"is in use by another toolbox run (pid {winner.pid} on {socket.gethostname()})" in err, err
    assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err
    assert winner.wait(timeout=120) == 0, winner.stderr.read()
    assert json.loads((out / "result.json").read_text())["defense"]["name"] == "none"
    assert not debris(out), debris(out)


def test_a_second_command_on_a_locked_out_is_refused_and_the_lock_is_released(tmp_path):
    out = tmp_path / "out"
    with outputs.Staging(out):
        with pytest.raises(InputError, match=rf"in use by another toolbox run \(pid {os.getpid()} "):
            outputs.Staging(out).__enter__()
    with outputs.Staging(out) as stage:  # released on exit: the same process runs again
        write_set(stage.dir, "new")
        stage.commit()
    assert set_in(out) == "new" and not debris(out)


def test_a_lock_file_that_is_not_a_file_is_refused_without_blocking(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / outputs.LOCK)
    with pytest.raises(InputError, match="is not a regular file"):
        outputs.Staging(out).__enter__()


# --------------------------------------------------------------------------- failures while moving


def test_read_only_out_artifacts_loses_nothing(host, tiny, tmp_path, capsys):
    out = tmp_path / "out"
    earlier_with_users_file(out)
    os.chmod(out / "artifacts", 0o555)
    before = snapshot(out)
    try:
        code, printed, err = cli([*tiny, "--out", str(out)], capsys)
    finally:
        os.chmod(out / "artifacts", 0o755)
    if os.geteuid() != 0:  # refused before any work
        assert code == 2 and "artifacts is read-only" in err, err
        assert snapshot(out) == before
    else:  # root moves a read-only folder all the same: the earlier artifacts are dropped as vouched for
        assert code == 0, err
        assert len(user_files(out)) == 1 and "kept      " in printed
    assert not debris(out)


def test_a_commit_that_fails_midway_puts_everything_back_and_keeps_the_new_outputs(
    host, tiny, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    earlier_with_users_file(out)
    before = snapshot(out)
    real = os.replace

    def replace(src, dst):
        if Path(src) == out.resolve() / "artifacts":
            raise PermissionError(13, "Permission denied", str(src))
        return real(src, dst)

    monkeypatch.setattr(commit.os, "replace", replace)
    code, _, err = cli([*tiny, "--out", str(out)], capsys)
    monkeypatch.setattr(commit.os, "replace", real)
    assert code == 3 and f"{out.resolve()} is as it was and this run's outputs are in {out.resolve()}/unplaced-" in err
    assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err
    assert snapshot(out, skip=("unplaced-",)) == before
    (kept,) = out.glob("unplaced-*")
    assert json.loads((kept / "result.json").read_text())["defense"]["name"] == "none"
    assert cli([*tiny, "--out", str(out)], capsys)[0] == 0  # the folder the message named survives the next run
    assert (kept / "result.json").is_file() and len(user_files(out)) == 1 and not debris(out)


# --------------------------------------------------------------------------- sweeping, journals, older versions


def _tagged(folder: Path, pid: int) -> Path:
    folder.mkdir()
    (folder / commit.STAGING_TAG).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    return folder


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


def test_out_with_glob_characters_sweeps_its_own_stale_staging_and_no_other(host, tiny, tmp_path, capsys):
    dead = _dead_pid()
    mine = _tagged(tmp_path / f".o[1]{commit.STAGING_MARK}killed", dead)
    other = _tagged(tmp_path / f".o1{commit.STAGING_MARK}killed", dead)  # `o[1]` as a glob would match o1's
    assert cli([*tiny, "--out", str(tmp_path / "o[1]")], capsys)[0] == 0
    assert not mine.exists() and other.exists()
    assert (tmp_path / "o[1]" / "result.json").is_file()


def test_a_journal_naming_foreign_paths_is_refused_and_nothing_moves(host, tiny, tmp_path, capsys):
    out = tmp_path / "out"
    earlier_with_users_file(out)
    journal = {"staging": "../../etc", "beside": True, "holding": None, "names": ["model"], "held": []}
    journal.update(incoming=["model"], owned={}, phase="moving", drop=[])
    (out / commit.JOURNAL).write_text(json.dumps(journal))
    before = snapshot(out)
    code, _, err = cli([*tiny, "--out", str(out)], capsys)
    assert code == 2 and f"{out / commit.JOURNAL} names folders or outputs this toolbox never writes" in err, err
    assert snapshot(out) == before


def _timed_out(signum, frame):
    raise TimeoutError("blocked on a FIFO")


def test_a_fifo_as_manifest_or_staging_tag_does_not_block(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / commit.MANIFEST)
    stale = tmp_path / f".out{commit.STAGING_MARK}fifo"
    stale.mkdir()
    os.mkfifo(stale / commit.STAGING_TAG)
    previous = signal.signal(signal.SIGALRM, _timed_out)
    signal.alarm(30)  # a regression blocks on open(): fail instead of hanging the suite
    try:
        with outputs.Staging(out) as stage:
            write_set(stage.dir, "new")
            stage.commit()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert set_in(out) == "new" and stale.exists()  # an unreadable tag is never swept


def test_hidden_folders_of_older_versions_become_visible(tmp_path):
    out = tmp_path / "out"
    (out / ".toolbox-previous-abc" / "model").mkdir(parents=True)
    (out / ".toolbox-previous-abc" / "model" / USER_FILE).write_text("do not lose me")
    with outputs.Staging(out):
        pass
    (users,) = user_files(out)
    assert users.parent.parent.name.startswith("replaced-")


def test_a_users_file_under_a_fixed_name_is_set_aside(tmp_path):
    from toolbox.zoo.build import _zoo_file

    (tmp_path / "manifest.json").write_text("my notes")
    (tmp_path / "spec.json").write_text(json.dumps({"members": []}))  # an earlier build's: rewritten in place
    aside = outputs.set_aside(tmp_path, ("spec.json", "manifest.json"), _zoo_file)
    assert aside is not None and (aside / "manifest.json").read_text() == "my notes"
    assert (tmp_path / "spec.json").is_file() and not (aside / "spec.json").exists()


# --------------------------------------------------------------------------- --out refused before any work


def _zoo(tmp: Path) -> Path:
    (tmp / "zoo" / "members").mkdir(parents=True)
    (tmp / "zoo" / "manifest.json").write_text(json.dumps({"name": "z", "members": []}))
    return tmp / "zoo"


OUT_CASES = {  # command -> argv before --out (tmp is substituted)
    "compare": ["compare", "--attacks", "none", "--defenses", "none", "--preset", "smoke"],
    "zoo build": ["zoo", "build", str(ROOT / "zoo" / "smoke.yaml")],
    "zoo eval": ["zoo", "eval", "{zoo}", "--defense", "none"],
    "scan-data": ["scan-data", "--defense", "flare", "--preset", "smoke"],
}


@pytest.mark.parametrize("command", ["run", *OUT_CASES])
@pytest.mark.parametrize(
    "where, message",
    [("", "empty, which would write into the current directory"), ("a-file", "exists and is not a directory")],
)
def test_an_out_that_is_empty_or_a_file_is_refused(command, where, message, host, tiny, tmp_path, capsys):
    zoo = str(_zoo(tmp_path))
    argv = tiny if command == "run" else [a.replace("{zoo}", zoo) for a in OUT_CASES[command]]
    (tmp_path / "a-file").write_text("mine")
    target = str(tmp_path / where) if where else ""
    code, _, err = cli([*argv, "--out", target], capsys)
    assert code == 2 and message in err, err
    assert (tmp_path / "a-file").read_text() == "mine"


def test_zoo_eval_refuses_an_out_holding_or_inside_the_zoo(host, tmp_path, capsys):
    zoo = _zoo(tmp_path)
    code, _, err = cli(["zoo", "eval", str(zoo), "--defense", "none", "--out", str(zoo)], capsys)
    assert code == 2 and "lies in --out" in err, err
    code, _, err = cli(["zoo", "eval", str(zoo), "--defense", "none", "--out", str(zoo / "members" / "x")], capsys)
    assert code == 2 and "inside the input" in err, err


def test_a_dangling_link_as_out_is_refused(host, tiny, tmp_path, capsys):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere" / "deeper")
    code, _, err = cli([*tiny, "--out", str(tmp_path / "link")], capsys)
    assert code == 2 and "which does not exist" in err, err
    assert not (tmp_path / "nowhere").exists()
