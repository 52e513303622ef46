"""The grid executor: results in order, resumable cells, failures named, submitit's local executor."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import pytest
from grid_cells import fail, refuse, square

from toolbox.errors import InputError
from toolbox.grid import Cell, GridConfig, GridError, add_grid_args, grid_config_from, run_grid

TESTS_DIR = Path(__file__).resolve().parent


def _cells(xs, out_dir: Path) -> list[Cell]:
    return [Cell(key=f"sq-{x}", fn=square, kwargs={"x": x, "out_dir": str(out_dir)}, label=f"square {x}") for x in xs]


def test_sequential_results_in_order_and_resumable(tmp_path, caplog):
    cells = _cells([3, 1, 2], tmp_path)
    with caplog.at_level("INFO", logger="toolbox.grid"):
        first = run_grid(cells)
    assert [r["value"] for r in first] == [9, 1, 4]
    assert not any(r["cached"] for r in first)
    assert {r["pid"] for r in first} == {os.getpid()}  # jobs=1 runs in this process
    assert "square 3: start" in caplog.text and "square 3: done in" in caplog.text

    (tmp_path / "1.done").unlink()  # as if interrupted before cell 1 finished
    second = run_grid(cells, GridConfig())
    assert [r["value"] for r in second] == [9, 1, 4]
    assert [r["cached"] for r in second] == [True, False, True]


def test_empty_grid_creates_nothing(tmp_path):
    folder = tmp_path / "never"
    assert run_grid([], GridConfig(executor="submitit-local", folder=folder)) == []
    assert run_grid([], GridConfig(jobs=4)) == []
    assert not folder.exists()


def test_process_pool_results_in_order(tmp_path):
    cells = _cells([4, 2, 3, 1], tmp_path)
    results = run_grid(cells, GridConfig(jobs=2))
    assert [r["value"] for r in results] == [16, 4, 9, 1]
    assert os.getpid() not in {r["pid"] for r in results}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.done", "2.done", "3.done", "4.done"]


@pytest.mark.parametrize("jobs", [1, 2])
def test_failing_cell_is_named(tmp_path, jobs):
    cells = _cells([1], tmp_path) + [Cell(key="bad-key", fn=fail, kwargs={"x": 7}, label="broken 7")]
    with pytest.raises(GridError) as info:
        run_grid(cells, GridConfig(jobs=jobs))
    message = str(info.value)
    assert "broken 7" in message and "bad-key" in message
    assert "ValueError: cell 7 is broken" in message
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.cell.key == "bad-key"


@pytest.mark.parametrize("jobs", [1, 2])
def test_bad_input_in_a_cell_stays_bad_input(tmp_path, jobs):
    cells = _cells([1], tmp_path) + [Cell(key="k", fn=refuse, kwargs={"x": 5}, label="refusing 5")]
    with pytest.raises(InputError, match="refusing 5: input 5 is bad"):
        run_grid(cells, GridConfig(jobs=jobs))


def test_submitit_local_executor(tmp_path, monkeypatch, caplog):
    pytest.importorskip("submitit")
    # The jobs are fresh interpreters: they find grid_cells through PYTHONPATH (toolbox is installed).
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")])))
    out, folder = tmp_path / "out", tmp_path / "submitit"
    out.mkdir()
    config = GridConfig(executor="submitit-local", folder=folder, timeout_min=1)

    # Two cells, each a job in its own process; results in the cells' order.
    with caplog.at_level("INFO", logger="toolbox.grid"):
        results = run_grid(_cells([5, 6], out), config)
    assert [r["value"] for r in results] == [25, 36]
    assert not any(r["cached"] for r in results)
    assert len({r["pid"] for r in results} | {os.getpid()}) == 3
    assert sorted(p.name for p in out.iterdir()) == ["5.done", "6.done"]
    assert str(folder) in caplog.text and "square 6: done" in caplog.text
    assert len(list(folder.glob("*_log.out"))) == 2

    # A failing job: the error names the cell, its own error (from the job's traceback) and the logs.
    with pytest.raises(GridError) as info:
        run_grid([Cell(key="bad-key", fn=fail, kwargs={"x": 8}, label="broken 8")], config)
    message = str(info.value)
    assert "broken 8 [bad-key]" in message and "ValueError: cell 8 is broken" in message and str(folder) in message


class _FakeJob:
    def __init__(self, job_id: str, value):
        self.job_id, self._value = job_id, value

    def result(self):
        return self._value


def test_slurm_gets_one_array_with_its_parameters(tmp_path, monkeypatch, caplog):
    """The Slurm path without a cluster: a stand-in AutoExecutor records what run_grid asks of it."""
    submitit = pytest.importorskip("submitit")
    seen = {}

    class FakeAutoExecutor:
        def __init__(self, folder, cluster):
            seen.update(folder=folder, cluster=cluster)

        def update_parameters(self, **kwargs):
            seen["parameters"] = kwargs

        def map_array(self, fn, cells):
            seen["arrays"] = seen.get("arrays", 0) + 1
            return [_FakeJob(f"4242_{i}", fn(cell)) for i, cell in enumerate(cells)]

    monkeypatch.setattr(submitit, "AutoExecutor", FakeAutoExecutor)
    config = GridConfig(
        executor="slurm",
        folder=tmp_path / "logs",
        slurm_partition="gpu",
        gpus_per_node=1,
        timeout_min=30,
        slurm_array_parallelism=8,
    )
    with caplog.at_level("INFO", logger="toolbox.grid"):
        results = run_grid(_cells([2, 3], tmp_path), config)
    assert [r["value"] for r in results] == [4, 9]
    assert seen["cluster"] == "slurm" and seen["folder"] == (tmp_path / "logs").absolute() and seen["arrays"] == 1
    assert seen["parameters"] == dict(
        name="toolbox-grid",
        timeout_min=30,
        gpus_per_node=1,
        cpus_per_task=2,
        mem_gb=16,
        slurm_partition="gpu",
        slurm_array_parallelism=8,
    )
    assert "Slurm array 4242" in caplog.text and "scancel 4242" in caplog.text


@pytest.mark.skipif(shutil.which("srun") is not None, reason="a Slurm machine")
def test_slurm_without_slurm_is_input_error(tmp_path):
    pytest.importorskip("submitit")
    with pytest.raises(InputError, match="--executor slurm cannot run here"):
        run_grid(_cells([1], tmp_path), GridConfig(executor="slurm", folder=tmp_path / "logs"))
    assert not (tmp_path / "1.done").exists()


@pytest.mark.parametrize(
    "bad",
    [
        dict(jobs=0),
        dict(timeout_min=0),
        dict(gpus_per_node=-1),
        dict(cpus_per_task=0),
        dict(mem_gb=0),
        dict(slurm_array_parallelism=0),
        dict(executor="kubernetes"),
        dict(slurm_partition=" "),
        dict(jobs=1.5),
    ],
)
def test_config_validation_is_input_error(bad):
    with pytest.raises(InputError) as info:
        GridConfig(**bad)
    assert "\n" not in str(info.value)


def test_cli_options_fill_the_config():
    parser = argparse.ArgumentParser()
    add_grid_args(parser)
    config = grid_config_from(
        parser.parse_args(
            [
                "--executor",
                "slurm",
                "--jobs",
                "3",
                "--slurm-partition",
                "gpu",
                "--timeout-min",
                "30",
                "--gpus-per-node",
                "1",
                "--slurm-array-parallelism",
                "8",
            ]
        )
    )
    assert config == GridConfig(
        executor="slurm", jobs=3, slurm_partition="gpu", timeout_min=30, gpus_per_node=1, slurm_array_parallelism=8
    )
    assert grid_config_from(parser.parse_args([])) == GridConfig()
    with pytest.raises(InputError, match="--jobs"):
        grid_config_from(parser.parse_args(["--jobs", "0"]))
    with pytest.raises(SystemExit):  # argparse refuses an unknown executor itself (exit 2)
        parser.parse_args(["--executor", "ssh"])
