"""``--resume-from EXPORT``: continue a benchmark whose folder is gone, from the small files ``--export`` wrote.

A machine that keeps no disk between sessions (a CI runner, a cloud VM, a lent GPU) loses the benchmark
folder; the exported cells (settings, log, test scores) are what was committed. A cell of ``EXPORT`` is
carried over when it finished (its log reaches the config's steps and it has test scores) and was trained
with the settings the config now gives it (data and output paths aside: the datasets are regenerated).
It then counts as done without a checkpoint. An unfinished cell exported with its checkpoints
(``--export-checkpoints``) and the same settings is copied with them, so it resumes where it stopped;
everything else is trained from scratch. A cell already present in the benchmark folder is never replaced.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

from maskgen.benchmark.cells import CARRIED_MARKER, Cell, settings_differences
from maskgen.io import atomic_write_text
from maskgen.runtime.config import TrainConfig
from maskgen.training.trainer import is_restartable

#: the exported files a finished cell needs (``report.CELL_FILES`` writes them)
NEEDED = ("config.yaml", "log.csv", "test/metrics_per_case.csv")
OPTIONAL = ("training_curves.png", "cases.json")
#: what an unfinished cell needs to resume (``report.PARTIAL_FILES``)
RESUMABLE = ("config.yaml", "log.csv", "checkpoint_latest.pt")
RESUMABLE_OPTIONAL = ("train.log", "checkpoint_best.pt", "training_curves.png", "cases.json")


def last_logged_step(log_csv: Path) -> int:
    with log_csv.open(newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("step")]
    return max(steps) if steps else 0


def resumable(cell: Cell, source: Path) -> bool:
    """An unfinished exported cell with its checkpoints, trained with the config's settings (paths aside)."""
    if not all((source / n).is_file() for n in RESUMABLE):
        return False
    return not settings_differences(cell, TrainConfig.load(source / "config.yaml"), compare_paths=False)


def carry_over_problem(cell: Cell, source: Path) -> str | None:
    """Why the exported cell at ``source`` cannot stand for ``cell`` (None when it can)."""
    missing = [n for n in NEEDED if not (source / n).is_file()]
    if missing:
        return f"unfinished (no {', '.join(missing)})"
    reached = last_logged_step(source / "log.csv")
    if reached < cell.config.steps:
        return f"trained {reached} of {cell.config.steps} steps"
    problems = settings_differences(cell, TrainConfig.load(source / "config.yaml"), compare_paths=False)
    return "other settings (" + "; ".join(problems) + ")" if problems else None


def carry_over(cells: list[Cell], export: str | Path) -> dict[str, list[str]]:
    """Copy every finished, matching exported cell into its empty cell folder; returns what was carried,
    what was kept (the benchmark folder already had it) and what was skipped, with the reason."""
    export = Path(export)
    if not (export / "cells").is_dir():
        raise FileNotFoundError(f"{export}: not a folder written by 'maskgen benchmark --export' (no cells/)")
    outcome: dict[str, list[str]] = {"carried": [], "resumed": [], "kept": [], "skipped": []}
    for cell in cells:
        source = export / "cells" / cell.cell_id
        if not source.is_dir():
            continue
        if not is_restartable(cell.run_dir) or (cell.run_dir / CARRIED_MARKER).is_file():
            outcome["kept"].append(cell.cell_id)
            continue
        problem = carry_over_problem(cell, source)
        resume = problem is not None and resumable(cell, source)
        if problem and not resume:
            outcome["skipped"].append(f"{cell.cell_id}: {problem}")
            continue
        staging = cell.run_dir.with_name(cell.run_dir.name + ".carrying")
        shutil.rmtree(staging, ignore_errors=True)
        for name in RESUMABLE + RESUMABLE_OPTIONAL if resume else NEEDED + OPTIONAL:
            if (source / name).is_file():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source / name, staging / name)
        if resume:  # the same settings with this folder's paths, so the run resumes here
            cell.config.save(staging / "config.yaml")
        else:
            atomic_write_text(staging / CARRIED_MARKER, json.dumps(
                {"from": str(source.resolve()), "at": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")
        if cell.run_dir.exists():  # a start that wrote no checkpoint (is_restartable): nothing of value in it
            shutil.rmtree(cell.run_dir)
        cell.run_dir.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(cell.run_dir)
        outcome["resumed" if resume else "carried"].append(cell.cell_id)
    return outcome
