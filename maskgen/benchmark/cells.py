"""Cells: one (dataset, arm, grid point, seed) each, trained into an ordinary ``maskgen train`` run folder.

A cell's folder is ``DIR/cells/<dataset>/<arm>/<grid point>/seed<k>``. Before anything runs, every
existing folder is compared with the settings the config now gives it: a difference is refused, each
setting named, so a rerun never mixes runs trained under two protocols.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskgen.analysis.runs import point_tag
from maskgen.benchmark.config import BenchmarkConfig, DatasetEntry
from maskgen.extractors.combined import weight_files
from maskgen.methods import method_hparams
from maskgen.runtime.config import TrainConfig

DONE, PARTIAL, NEW = "done", "partial", "new"
#: marks a cell carried over from an export (carry_over.py): finished, with no checkpoint
CARRIED_MARKER = "carried_over.json"


@dataclass
class Cell:
    dataset: str
    arm: str
    point: dict[str, Any]  # this cell's grid values
    seed: int
    config: TrainConfig

    @property
    def point_tag(self) -> str:
        return point_tag(self.point)

    @property
    def cell_id(self) -> str:
        return f"{self.dataset}/{self.arm}/{self.point_tag}/seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return Path(self.config.out)


class BenchmarkConflictError(ValueError):
    """Cells already on disk were trained with other settings than the config now gives them."""


def dataset_paths(entry: DatasetEntry, out: Path) -> tuple[str, str | None]:
    """(dataset folder, split file) of a dataset entry; the phantom lives in ``DIR/data/<name>``."""
    if entry.path is not None:
        return entry.path, entry.splits
    folder = out / "data" / entry.name
    return str(folder), str(folder / "splits.csv")


def prepare_datasets(cfg: BenchmarkConfig, out: Path, progress: bool = True) -> None:
    """Generate each phantom dataset once; a folder generated with other settings is refused."""
    from maskgen.data.phantom import generate_phantom
    from maskgen.io import atomic_write_json

    for entry in cfg.datasets:
        if entry.phantom is None:
            continue
        folder = out / "data" / entry.name
        marker = folder / "phantom.json"
        settings = {"seed": 1234, **entry.phantom}
        if marker.is_file():
            old = json.loads(marker.read_text())
            if old != json.loads(json.dumps(settings)):
                diff = "; ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now"
                                 for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k))
                raise BenchmarkConflictError(
                    f"{folder}: phantom generated with other settings ({diff}); use another --out or restore "
                    "the config"
                )
            continue
        generate_phantom(folder, overwrite=True, progress=progress, **settings)
        atomic_write_json(marker, settings)


def expand_cells(cfg: BenchmarkConfig, out: Path) -> list[Cell]:
    """Every cell of the config, datasets outermost, then arms in config order, grid points, seeds."""
    cells = []
    for entry in cfg.datasets:
        dataset, splits = dataset_paths(entry, out)
        for arm in cfg.arms:
            for point in arm.grid_points():
                for seed in arm.seeds:
                    train = {**cfg.train, **entry.train, **arm.train}
                    tag = point_tag(point)
                    run_dir = out / "cells" / entry.name / arm.name / tag / f"seed{seed}"
                    tc = TrainConfig(dataset=dataset, out=str(run_dir), method=arm.method,
                                     hparams=method_hparams(arm.method, {**arm.hparams, **point}), seed=seed,
                                     splits=splits, train_subjects=cfg.few_shot_subjects, **train)
                    cells.append(Cell(entry.name, arm.name, dict(point), seed, tc.with_absolute_paths()))
    return cells


def cell_status(cell: Cell) -> str:
    """``done`` (trained to its steps and tested), ``partial`` (a checkpoint to resume) or ``new``."""
    from maskgen.runtime.checkpoint import load_checkpoint

    latest = cell.run_dir / "checkpoint_latest.pt"
    if not latest.is_file():  # carried over from an export (carry_over.py): finished, without a checkpoint
        carried = (cell.run_dir / CARRIED_MARKER).is_file()
        return DONE if carried and (cell.run_dir / "test" / "metrics_per_case.csv").is_file() else NEW
    tested = (cell.run_dir / "test" / "summary.json").is_file()
    if tested and int(load_checkpoint(latest)["step"]) >= cell.config.steps:
        return DONE
    return PARTIAL


def settings_differences(cell: Cell, saved: TrainConfig, compare_paths: bool = True) -> list[str]:
    """Settings in which ``saved`` differs from the config's for ``cell``, as ``name: old -> new``."""
    given = None if compare_paths else {f for f in vars(cell.config) if f not in TrainConfig.PATH_FIELDS}
    if given is not None and saved.extractor_weights is not None and _files_here(saved.extractor_weights):
        given.add("extractor_weights")  # compared by content (TrainConfig.conflicts_with), wherever it lies
    problems = cell.config.conflicts_with(saved, given=given)
    if saved.steps != cell.config.steps:
        problems.append(f"steps: {saved.steps!r} -> {cell.config.steps!r}")
    hp_old = saved.hparams or {}
    problems += [f"{k}: {hp_old.get(k)!r} -> absent" for k in sorted(set(hp_old) - set(cell.config.hparams))]
    return problems


def _files_here(weights: str) -> bool:
    """Whether every file of a saved weights setting exists on this machine."""
    return all(Path(p).expanduser().is_file() for p in weight_files(weights).values())


def cell_conflicts(cell: Cell) -> list[str]:
    """Settings in which the cell's saved ``config.yaml`` differs from the config's, as ``name: old -> new``.

    A carried-over cell (no checkpoint) is compared without its data and output paths, as when it was carried."""
    saved_path = cell.run_dir / "config.yaml"
    carried = (cell.run_dir / CARRIED_MARKER).is_file()
    if not ((cell.run_dir / "checkpoint_latest.pt").is_file() or carried) or not saved_path.is_file():
        return []
    return settings_differences(cell, TrainConfig.load(saved_path), compare_paths=not carried)


def check_conflicts(cells: list[Cell]) -> None:
    """Refuse, before anything runs, every cell whose folder holds a run with other settings."""
    found = [(c, p) for c in cells if (p := cell_conflicts(c))]
    if found:
        lines = [f"  {c.cell_id} ({c.run_dir}): {'; '.join(p)}" for c, p in found]
        raise BenchmarkConflictError(
            f"{len(found)} cell(s) already hold runs trained with other settings than the config gives them:\n"
            + "\n".join(lines)
            + "\nRestore those settings to continue the benchmark, or use another --out for a new one."
        )
