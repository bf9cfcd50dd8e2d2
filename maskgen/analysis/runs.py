"""What the analyses share: which runs they read (run folders, or a benchmark folder standing for its
validation-selected cells) and how they write their per-case rows and summary."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path


def point_tag(point: dict) -> str:
    """Folder name of a benchmark grid point, e.g. ``mask_rate=0.25``; ``default`` for a method without a grid
    (here, below the benchmark, so that both the runner and the analyses find a cell's folder by it)."""
    return "+".join(f"{k}={point[k]}" for k in sorted(point)) or "default"


def resolve_runs(paths: Sequence[str | Path], checkpoint: str | None = None) -> list[tuple[str, Path]]:
    """(label, run folder) for each path. A ``maskgen benchmark`` folder (its ``table.json``) gives every seed of
    each method's selected grid point, labelled ``method`` (``_seedK`` with several seeds, ``dataset/`` first with
    several datasets). Labels are unique: repeated folder names get their parent folders as a prefix. With ``checkpoint``
(best, latest), a path that is no folder or no run folder (no ``config.yaml``), and a run without that checkpoint,
are errors naming the path, before any work."""
    found: list[tuple[str, Path]] = []
    for p in map(Path, paths):
        table = p / "table.json"
        if table.is_file() and (p / "cells").is_dir():
            selections = json.loads(table.read_text()).get("selections", [])
            if not selections:
                raise ValueError(f"{table}: no finished, selected cells to analyse yet")
            several = len({s["dataset"] for s in selections}) > 1
            for s in selections:
                for seed in s["seeds"]:
                    run = p / "cells" / s["dataset"] / s["arm"] / point_tag(s["point"]) / f"seed{seed}"
                    label = (f"{s['dataset']}_" if several else "") + s["arm"]
                    found.append((label + (f"_seed{seed}" if len(s["seeds"]) > 1 else ""), run))
        elif checkpoint is not None and not p.is_dir():
            raise FileNotFoundError(f"{p}: no such run folder")
        elif checkpoint is not None and not (p / "config.yaml").is_file():
            raise ValueError(f"{p}: not a run folder written by maskgen train (no config.yaml) nor a maskgen "
                             "benchmark folder (no table.json)")
        else:
            found.append((p.name, p))
    if checkpoint is not None:  # every run is checked before an analysis spends minutes on the first
        missing = [run for _, run in found if not (run / f"checkpoint_{checkpoint}.pt").is_file()]
        if missing:
            carried = any((run / "carried_over.json").is_file() for run in missing)
            hint = " (a cell carried over by --resume-from keeps no checkpoint; rerun it)" if carried else ""
            raise FileNotFoundError(f"checkpoint_{checkpoint}.pt not found{hint}: "
                                    + ", ".join(str(run / f"checkpoint_{checkpoint}.pt") for run in missing))
    labels = [label for label, _ in found]
    if len(set(labels)) != len(labels):
        found = _distinct_labels(found)
    return found


def _distinct_labels(found: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """Run folders of the same name (``.../mask_rate=0.25/seed0`` and ``.../mask_rate=0.5/seed0``) are labelled
    by as many trailing path parts as tell them apart; the position is the last resort."""
    from collections import Counter

    repeated = {label for label, n in Counter(label for label, _ in found).items() if n > 1}
    paths = [run.resolve().parts for _, run in found]
    for k in range(2, max(len(p) for p in paths) + 1):
        labels = ["/".join(p[-k:]) if label in repeated else label for p, (label, _) in zip(paths, found)]
        if len(set(labels)) == len(labels):
            return [(label, run) for label, (_, run) in zip(labels, found)]
    return [(f"{i}_{label}", run) for i, (label, run) in enumerate(found)]


def write_rows_and_summary(out: Path, csv_name: str, rows: list[dict], summary: dict) -> None:
    """The analysis' per-case CSV and summary.json; the scratch folder of its scoring passes is removed."""
    import shutil

    from maskgen.io import atomic_write_csv, atomic_write_json

    shutil.rmtree(out / "scratch", ignore_errors=True)
    atomic_write_csv(out / csv_name, rows)
    atomic_write_json(out / "summary.json", summary)
