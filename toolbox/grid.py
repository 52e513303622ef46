"""Run a grid of independent, idempotent cells here, in a process pool, or as one Slurm job array.

A cell (a zoo member's build or evaluation, a ``toolbox compare`` cell) is keyed by its config
hash and checks its own cache entry first, returning at once when the result exists. So a grid
is resumed by running it again: finished cells cost nothing, and nothing here tracks progress.

Executors: ``local`` runs cells in this process (``jobs=1``) or in a spawned process pool
(``jobs>1``); ``slurm`` submits one job array through submitit; ``submitit-local`` is submitit's
LocalExecutor (each cell a subprocess, the same pickling and logs as on Slurm), for tests and
one-machine runs. Cell functions must be module-level (importable by name in a fresh process).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import cache_root
from .errors import InputError

log = logging.getLogger(__name__)

EXECUTORS = ("local", "slurm", "submitit-local")
_SUBMITIT_CLUSTER = {"slurm": "slurm", "submitit-local": "local"}
JOB_NAME = "toolbox-grid"  # what squeue / sacct show for the array


@dataclass(frozen=True)
class Cell:
    """One unit of a grid: a picklable module-level function and its keyword arguments, named by its cache key."""

    key: str
    fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # for progress messages, e.g. "member 3/24 badnet-vit"

    @property
    def name(self) -> str:
        """What messages call the cell: its label, else its key."""
        return self.label or self.key


@dataclass
class GridConfig:
    """How a grid runs; the CLI's --executor/--jobs/--slurm-* options fill it."""

    executor: str = "local"  # "local" | "slurm" | "submitit-local" (submitit's LocalExecutor)
    jobs: int = 1  # local: 1 = sequential in this process; >1 = a process pool of that size
    folder: Path | None = None  # submitit's log/pickle folder (default: <cache>/submitit)
    timeout_min: int = 60
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: int = 16
    slurm_partition: str | None = None
    slurm_array_parallelism: int = 32

    def __post_init__(self) -> None:
        # Checked here so a bad value fails before anything is submitted, with the CLI's option name.
        if self.executor not in EXECUTORS:
            raise InputError(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        minimums = {
            "jobs": 1,
            "timeout_min": 1,
            "gpus_per_node": 0,
            "cpus_per_task": 1,
            "mem_gb": 1,
            "slurm_array_parallelism": 1,
        }
        for name, low in minimums.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InputError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")
        if self.slurm_partition is not None and not self.slurm_partition.strip():
            raise InputError("--slurm-partition must not be empty")
        if self.folder is not None:
            self.folder = Path(self.folder)


class GridError(RuntimeError):
    """A cell failed; says which one (key and label) and how, with the original error chained."""

    def __init__(self, cell: Cell, detail: str) -> None:
        where = f"{cell.label} [{cell.key}]" if cell.label else cell.key
        super().__init__(f"grid cell {where} failed: {detail}")
        self.cell = cell


def run_grid(cells: Sequence[Cell], config: GridConfig | None = None) -> list[Any]:
    """Run every cell, results in the cells' order.

    Cells are independent and idempotent, so a grid that was interrupted is resumed by calling
    this again with the same cells. A failed cell raises :class:`GridError` naming it; in a local
    pool the cells not yet started are cancelled first, on submitit every job is awaited first
    (the others' results are cached either way).
    """
    config = config or GridConfig()
    cells = list(cells)
    if not cells:
        return []
    if config.executor == "local":
        if config.jobs == 1:
            return _run_sequential(cells)
        return _run_pool(cells, config.jobs)
    return _run_submitit(cells, config)


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _run_sequential(cells: list[Cell]) -> list[Any]:
    results = []
    for cell in cells:
        log.info("%s: start", cell.name)
        start = time.monotonic()
        try:
            results.append(cell.fn(**cell.kwargs))
        except InputError as err:  # bad input stays bad input (exit 2), named by its cell
            raise InputError(f"{cell.name}: {err}") from err
        except Exception as err:
            raise GridError(cell, _describe(err)) from err
        log.info("%s: done in %.1f s", cell.name, time.monotonic() - start)
    return results


def _run_pool(cells: list[Cell], jobs: int) -> list[Any]:
    workers = min(jobs, len(cells))
    log.info("running %d cells in a pool of %d processes", len(cells), workers)
    start = time.monotonic()
    # spawn, not fork: a forked child of a process that has started torch's threads can deadlock.
    pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        # The function itself is submitted (not a wrapper from this module), so a child imports
        # only the cell's own module.
        futures = [pool.submit(cell.fn, **cell.kwargs) for cell in cells]
        index = {future: i for i, future in enumerate(futures)}
        finished = 0
        for future in concurrent.futures.as_completed(futures):
            cell = cells[index[future]]
            err = future.exception()
            if err is not None:
                for other in futures:
                    other.cancel()
                log.error("%s: failed; cancelled the cells not yet started", cell.name)
                if isinstance(err, InputError):
                    raise InputError(f"{cell.name}: {err}") from err
                raise GridError(cell, _describe(err)) from err
            finished += 1
            log.info(
                "%s: done (%d/%d, %.1f s into the grid)", cell.name, finished, len(cells), time.monotonic() - start
            )
        results = [future.result() for future in futures]
    except Exception:
        pool.shutdown(wait=True, cancel_futures=True)  # a cell failed: the running ones finish, queued ones don't start
        raise
    except BaseException as stop:
        # Ctrl-C or SIGTERM (the CLI raises a BaseException): stop the workers now instead of waiting
        # hours for their cells; their staging folders are swept by the next run (outputs.sweep_stale).
        log.error("stopping %d worker processes (%s)", workers, type(stop).__name__)
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results


def _call(cell: Cell) -> Any:
    """What one submitit job runs: the cell, with its name in the job's log."""
    if not logging.getLogger().handlers:  # a fresh job process: send our messages to its log file
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.info("%s [%s]: start", cell.name, cell.key)
    start = time.monotonic()
    result = cell.fn(**cell.kwargs)
    log.info("%s: done in %.1f s", cell.name, time.monotonic() - start)
    return result


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError as err:
        raise InputError("--executor slurm/submitit-local needs submitit: pip install submitit") from err
    return submitit


def _submitit_failure(err: BaseException, job: Any) -> str:
    """One line for a failed job: the cell's own error (the trace's last line) and where the logs are."""
    text = str(err)
    line = ""
    if type(err).__name__ == "FailedJobError":
        # submitit's message: "... with trace:\n-----\n<traceback>\n-----\nYou can check full logs ..."
        parts = text.split("\n----------------------\n")
        if len(parts) >= 2:
            line = next((x.strip() for x in reversed(parts[1].splitlines()) if x.strip()), "")
    if not line:  # not run to the end (timeout, killed, out of memory): submitit's first line says so
        line = f"{type(err).__name__}: {text.strip().splitlines()[0] if text.strip() else 'no detail'}"
    try:
        paths = f" (job {job.job_id}; logs: {job.paths.stderr}, {job.paths.stdout})"
    except Exception:  # noqa: BLE001 - the paths are a courtesy; never hide the error for them
        paths = ""
    return line + paths


def _run_submitit(cells: list[Cell], config: GridConfig) -> list[Any]:
    submitit = _import_submitit()
    folder = (config.folder or cache_root() / "submitit").expanduser().absolute()
    cluster = _SUBMITIT_CLUSTER[config.executor]
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as err:  # submitit's SlurmExecutor where there is no srun: a usage error here
        raise InputError(
            f"--executor {config.executor} cannot run here: {err} (use --executor local or submitit-local)"
        ) from err
    parameters: dict[str, Any] = dict(
        name=JOB_NAME,
        timeout_min=config.timeout_min,
        gpus_per_node=config.gpus_per_node,
        cpus_per_task=config.cpus_per_task,
        mem_gb=config.mem_gb,
    )
    if cluster == "slurm":
        # AutoExecutor would drop slurm_* for the local cluster anyway (and None means unset);
        # passed only here so the local path plainly doesn't depend on them.
        parameters.update(slurm_array_parallelism=config.slurm_array_parallelism)
        if config.slurm_partition:
            parameters.update(slurm_partition=config.slurm_partition)
    executor.update_parameters(**parameters)
    # Slurm: one array (the cluster queues it). submitit's local executor starts every job at once,
    # so there the cells go in batches of --jobs.
    batches = [cells] if cluster == "slurm" else [cells[i : i + config.jobs] for i in range(0, len(cells), config.jobs)]
    results: list[Any] = []
    failures: list[tuple[Cell, str, BaseException]] = []
    done = 0
    for batch in batches:
        jobs = executor.map_array(_call, batch)
        ids = [job.job_id for job in jobs]
        if cluster == "slurm":
            array = ids[0].split("_")[0]
            log.info(
                "submitted %d cells as Slurm array %s (jobs %s..%s); logs in %s; cancel with: scancel %s",
                len(batch),
                array,
                ids[0],
                ids[-1],
                folder,
                array,
            )
        else:
            log.info("started %d cells as local submitit jobs %s; logs in %s", len(batch), ", ".join(ids), folder)
        for cell, job in zip(batch, jobs):
            done += 1
            try:
                results.append(job.result())
            except Exception as err:
                detail = _submitit_failure(err, job)
                log.error("%s: failed: %s", cell.name, detail)
                failures.append((cell, detail, err))
                results.append(None)
                continue
            log.info("%s: done (%d/%d, job %s)", cell.name, done, len(cells), job.job_id)
    if failures:
        cell, detail, err = failures[0]
        more = f" (and {len(failures) - 1} more failed cells)" if len(failures) > 1 else ""
        raise GridError(cell, detail + more) from err
    return results


def add_grid_args(parser: argparse.ArgumentParser) -> None:
    """The options that say how a grid runs; :func:`grid_config_from` reads them back."""
    group = parser.add_argument_group("grid execution")
    group.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="where cells run: local (this machine), slurm (one job array via submitit) or "
        "submitit-local (submitit's local executor; default local)",
    )
    group.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="local / submitit-local: cells at once; 1 runs them in this process (default 1)",
    )
    group.add_argument("--slurm-partition", metavar="NAME", help="Slurm partition (default: the cluster's)")
    group.add_argument(
        "--timeout-min",
        type=int,
        default=60,
        metavar="MIN",
        help="slurm/submitit-local: time limit per cell in minutes (default 60)",
    )
    group.add_argument(
        "--gpus-per-node", type=int, default=0, metavar="N", help="slurm/submitit-local: GPUs per cell (default 0)"
    )
    group.add_argument("--cpus-per-task", type=int, default=2, metavar="N", help="slurm: CPUs per cell (default 2)")
    group.add_argument("--mem-gb", type=int, default=16, metavar="GB", help="slurm: memory per cell (default 16)")
    group.add_argument(
        "--slurm-array-parallelism",
        type=int,
        default=32,
        metavar="N",
        help="slurm: cells of the array running at once (default 32)",
    )


def grid_config_from(args: argparse.Namespace) -> GridConfig:
    """A validated :class:`GridConfig` from :func:`add_grid_args`' options (InputError when out of range)."""
    return GridConfig(
        executor=args.executor,
        jobs=args.jobs,
        timeout_min=args.timeout_min,
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb,
        slurm_partition=args.slurm_partition,
        slurm_array_parallelism=args.slurm_array_parallelism,
    )
