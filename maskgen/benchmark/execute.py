"""Run cells: in local worker processes, each pinned to one device (or its share of CPU threads), or
through submitit on SLURM (``submitit-local`` runs the same path on this machine, for tests).

A worker trains with ``train_and_test`` (what ``maskgen train`` runs), resuming a cell that has a
checkpoint, and writes everything it says to ``DIR/logs/<cell>.log``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any

EXECUTORS = ("local", "slurm", "submitit-local")

_SLOT: dict[str, Any] = {}


def cell_log_path(out: Path, cell_id: str) -> Path:
    return out / "logs" / (cell_id.replace("/", "__") + ".log")


def run_cell(config: dict[str, Any], device: str, threads: int | None, log_path: str,
             test: bool = True) -> dict[str, Any]:
    """Train and (unless ``test`` is false) test one cell, resuming it if it has a checkpoint; returns its
    wall time."""
    import torch

    from maskgen.evaluation.testing import train_and_test
    from maskgen.runtime.config import TrainConfig

    if threads:
        torch.set_num_threads(threads)
    cfg = TrainConfig(**{**config, "device": device})
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("maskgen")
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False  # the cell's messages go to its log, not to the runner's terminal
    t0 = time.time()
    try:
        with open(log_path, "a", encoding="utf-8") as stream, contextlib.redirect_stdout(stream), \
                contextlib.redirect_stderr(stream):
            resume = (Path(cfg.out) / "checkpoint_latest.pt").is_file()
            logger.info("cell %s: %s on %s (%s threads)", cfg.out, "resume" if resume else "start", device,
                        threads or torch.get_num_threads())
            try:
                train_and_test(cfg, resume=resume, overwrite=False, test=test, progress=False)
            except BaseException:
                logger.error("cell failed:\n%s", traceback.format_exc())
                raise
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
        handler.close()
    return {"seconds": time.time() - t0}


def device_slots(jobs: int, devices: Sequence[str], threads: int | None) -> list[tuple[str, int | None]]:
    """(device, threads) of each parallel worker: devices in turn; CPU threads split evenly unless given."""
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    devices = list(devices) or ["cpu"]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = threads or max(1, cpus // jobs)
    return [(devices[i % len(devices)], share) for i in range(jobs)]


def _take_slot(queue, parent_pid: int | None = None) -> None:
    _SLOT["device"], _SLOT["threads"] = queue.get()
    if parent_pid is not None:
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()


def _exit_when_orphaned(parent_pid: int, interval: float = 1.0) -> None:
    """A worker whose runner died (killed, OOM) stops too: else it would go on training a cell outside the
    runner's lock, and a new runner would train the same cell at once. Checkpoints are written atomically,
    so exiting mid-step loses at most the steps since the last one."""
    while True:
        time.sleep(interval)
        if os.getppid() != parent_pid:
            os._exit(1)


def _run_in_slot(config: dict[str, Any], log_path: str, test: bool = True) -> dict[str, Any]:
    return run_cell(config, _SLOT["device"], _SLOT["threads"], log_path, test)


def run_local(jobs: list[tuple[str, dict[str, Any], str]], slots: list[tuple[str, int | None]],
              on_done: Callable[[str, dict[str, Any] | None, str | None], None], test: bool = True) -> None:
    """Run ``(cell_id, config, log_path)`` jobs in ``len(slots)`` spawned processes, each holding one slot
    (``test=False``: train only).

    One job in one slot runs in this process (no spawn), so a serial benchmark is easy to debug.
    """
    if len(slots) == 1:
        device, threads = slots[0]
        for cell_id, config, log_path in jobs:
            try:
                on_done(cell_id, run_cell(config, device, threads, log_path, test), None)
            except Exception as e:  # noqa: BLE001 - a failed cell is reported, the others still run
                on_done(cell_id, None, f"{type(e).__name__}: {e}")
        return
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    for slot in slots:
        queue.put(slot)
    with ProcessPoolExecutor(max_workers=len(slots), mp_context=ctx, initializer=_take_slot,
                             initargs=(queue, os.getpid())) as pool:
        futures = {pool.submit(_run_in_slot, config, log_path, test): cell_id for cell_id, config, log_path in jobs}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                err = f.exception()
                on_done(futures[f], None if err else f.result(), None if err is None else f"{type(err).__name__}: {err}")


def run_submitit(jobs: list[tuple[str, dict[str, Any], str]], folder: Path, executor: str,
                 parameters: dict[str, Any], on_done: Callable[[str, dict[str, Any] | None, str | None], None],
                 poll_seconds: float = 5.0) -> None:
    """Submit one job per cell through submitit (SLURM, or its local executor) and wait for them all."""
    try:
        import submitit
    except ImportError as e:
        raise RuntimeError("--executor slurm needs submitit: pip install 'maskgen[cluster]'") from e
    if executor == "slurm":
        ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    else:
        ex = submitit.LocalExecutor(folder=str(folder))
    params = dict(parameters)
    if executor != "slurm":
        params = {k: v for k, v in params.items() if k in ("timeout_min",)}
    if params:
        ex.update_parameters(**params)
    device = "auto"
    threads = parameters.get("cpus_per_task")
    submitted = {cell_id: ex.submit(run_cell, config, device, threads, log_path) for cell_id, config, log_path in jobs}
    pending = dict(submitted)
    while pending:
        for cell_id, job in list(pending.items()):
            if job.done():
                del pending[cell_id]
                try:
                    on_done(cell_id, job.result(), None)
                except Exception as e:  # noqa: BLE001 - reported per cell
                    on_done(cell_id, None, f"{type(e).__name__}: {' '.join(str(e).split())[:500]}")
        if pending:
            time.sleep(poll_seconds)


def config_payload(config) -> dict[str, Any]:
    """A TrainConfig as plain data, for another process."""
    return asdict(config)
