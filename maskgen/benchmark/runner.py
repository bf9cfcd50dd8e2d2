"""``maskgen benchmark CONFIG --out DIR``: prepare data, check every cell, run what is missing, report.

Rerunning the same command skips finished cells, resumes interrupted ones and refuses cells whose saved
settings differ from the config's. A lock file keeps two runners out of one folder.
"""

from __future__ import annotations

import fcntl
import fnmatch
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from maskgen.benchmark.carry_over import carry_over
from maskgen.benchmark.cells import (
    DONE,
    NEW,
    Cell,
    cell_status,
    check_conflicts,
    expand_cells,
    prepare_datasets,
)
from maskgen.benchmark.config import load_benchmark_config
from maskgen.benchmark.execute import (
    EXECUTORS,
    cell_log_path,
    config_payload,
    device_slots,
    run_local,
    run_submitit,
)
from maskgen.benchmark.report import build_report, export_results
from maskgen.io import atomic_write_text
from maskgen.training.trainer import is_restartable

log = logging.getLogger("maskgen")


class BenchmarkLockedError(RuntimeError):
    pass


def run_order(cells: list[Cell], cfg) -> list[Cell]:
    """Seed-major: every arm's first seed before any second seed, so a benchmark stopped early (or still
    running) already holds one complete seed of every method rather than all seeds of the first ones."""
    arm_index = {a.name: i for i, a in enumerate(cfg.arms)}
    seed_index = {a.name: {s: i for i, s in enumerate(a.seeds)} for a in cfg.arms}
    return sorted(cells, key=lambda c: (seed_index[c.arm][c.seed], arm_index[c.arm]))


def select_cells(cells: list[Cell], only: Sequence[str]) -> list[Cell]:
    """The cells whose id matches one of the ``only`` patterns (all when none); a pattern matching no cell is
    refused with the ids it could have named, so a typo never trains nothing silently."""
    if not only:
        return cells
    unmatched = [p for p in only if not any(fnmatch.fnmatchcase(c.cell_id, p) for c in cells)]
    if unmatched:
        examples = ", ".join(c.cell_id for c in cells[:4])
        raise ValueError(f"--only {' '.join(unmatched)}: no cell matches (cell ids look like {examples}, ...)")
    return [c for c in cells if any(fnmatch.fnmatchcase(c.cell_id, p) for p in only)]


def run_benchmark(config: str | Path, out: str | Path, jobs: int = 1, devices: Sequence[str] = ("cpu",),
                  threads: int | None = None, executor: str = "local", report_only: bool = False,
                  progress: bool = True, export: str | Path | None = None,
                  resume_from: str | Path | None = None, only: Sequence[str] = (),
                  export_checkpoints: bool = False) -> dict[str, Any]:
    """Run (or continue) the benchmark of ``config`` in ``out`` and write its report; returns the report.

    ``resume_from``: a folder written by ``export``; its finished cells with the config's settings count as
    done (carry_over.py), for a machine that lost the benchmark folder. ``only``: shell patterns over cell
    ids (``phantom/maskgen/mask_rate=0.25/seed0``, ``*/erm/*``); only matching cells train this time, the
    report still covers every finished cell. ``export_checkpoints``: the export also holds the checkpoints of
    unfinished cells, so ``resume_from`` continues them."""
    if executor not in EXECUTORS:
        raise ValueError(f"--executor must be one of {EXECUTORS}, not {executor!r}")
    cfg = load_benchmark_config(config)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args = (cfg, out, jobs, devices, threads, executor, report_only, progress, export, resume_from, tuple(only),
            export_checkpoints)
    if report_only and resume_from is None:  # trains nothing: it may report while a runner trains in the folder
        return _run(*args)
    with open(out / ".benchmark.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BenchmarkLockedError(f"{out}: another maskgen benchmark is running in this folder") from None
        return _run(*args)


def _run(cfg, out: Path, jobs: int, devices: Sequence[str], threads: int | None, executor: str,
         report_only: bool, progress: bool, export: str | Path | None = None,
         resume_from: str | Path | None = None, only: tuple[str, ...] = (),
         export_checkpoints: bool = False) -> dict[str, Any]:
    t0 = time.time()
    cells = expand_cells(cfg, out)
    selected = select_cells(cells, only)
    prepare_datasets(cfg, out, progress=progress)
    if resume_from is not None:
        outcome = carry_over(cells, resume_from)
        lines = [f"carried over from {resume_from}: {len(outcome['carried'])} finished cell(s), "
                 f"{len(outcome['resumed'])} unfinished with checkpoints (resumed); "
                 f"{len(outcome['kept'])} already here kept"] + [f"  not carried: {s}" for s in outcome["skipped"]]
        for line in lines:
            log.info(line)
            if progress:
                print(line)
    check_conflicts(cells)
    status = {c.cell_id: cell_status(c) for c in cells}
    todo = run_order([c for c in selected if status[c.cell_id] != DONE], cfg)
    config_copy = out / "benchmark.yaml"
    if not report_only and config_copy.exists() and config_copy.read_bytes() != cfg.path.read_bytes():
        history = out / "configs"
        history.mkdir(exist_ok=True)
        shutil.copyfile(config_copy, history / f"benchmark.{time.strftime('%Y%m%d-%H%M%S')}.yaml")
    if not report_only:
        atomic_write_text(config_copy, cfg.path.read_text(encoding="utf-8"))
    n_partial = sum(status[c.cell_id] not in (DONE, NEW) for c in cells)
    n_done = sum(v == DONE for v in status.values())
    msg = (f"{len(cells)} cells: {n_done} done, {n_partial} to resume, {len(cells) - n_done - n_partial} to start"
           + (f"; --only selects {len(selected)}, {len(todo)} of them to train" if only else ""))
    log.info(msg)
    if progress:
        print(msg)
    failures: dict[str, str] = {}
    if todo and not report_only:
        for c in todo:  # a start that wrote no checkpoint is rerun from scratch
            if status[c.cell_id] == NEW and c.run_dir.exists() and is_restartable(c.run_dir):
                shutil.rmtree(c.run_dir)
        bar = tqdm(total=len(todo), desc="cells", unit="cell", disable=not progress)

        def on_done(cell_id: str, result: dict | None, error: str | None) -> None:
            if error is not None:
                failures[cell_id] = error
                log.error("cell %s failed: %s (log: %s)", cell_id, error, cell_log_path(out, cell_id))
            else:
                status[cell_id] = DONE
            bar.set_postfix_str(f"{'failed' if error else 'done'} {cell_id}", refresh=False)
            bar.update(1)

        payload = [(c.cell_id, config_payload(c.config), str(cell_log_path(out, c.cell_id))) for c in todo]
        try:
            if executor == "local":
                run_local(payload, device_slots(jobs, devices, threads), on_done)
            else:
                run_submitit(payload, out / "submitit", executor, cfg.cluster, on_done)
        finally:
            bar.close()
        status = {c.cell_id: cell_status(c) for c in cells}
    report = build_report(cfg, cells, {k: v == DONE for k, v in status.items()}, out,
                          wall_seconds=time.time() - t0)
    report["failures"] = failures
    if export is not None:
        export_results(out, cells, Path(export), checkpoints=export_checkpoints)
    if failures:
        lines = "\n".join(f"  {k}: {v} (log: {cell_log_path(out, k)})" for k, v in failures.items())
        raise RuntimeError(f"{len(failures)} cell(s) failed; the report covers the others:\n{lines}")
    return report
