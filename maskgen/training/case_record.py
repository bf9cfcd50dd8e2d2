"""``cases.json``: the training and validation cases a run started with, so a resume never mixes datasets.

A resumed run may find its dataset at another path (the folder was moved); what makes it the same run is
that the dataset still gives the same training and validation cases. A run without the file (saved before
it existed) is resumed unchecked, as before.
"""

from __future__ import annotations

import json
from pathlib import Path

from maskgen.data.cases import Case
from maskgen.io import atomic_write_text

CASES_FILE = "cases.json"


def case_ids(train: list[Case], val: list[Case]) -> dict[str, list[str]]:
    return {"train": sorted(c.case_id for c in train), "val": sorted(c.case_id for c in val)}


def write_case_record(run_dir: Path, train: list[Case], val: list[Case]) -> None:
    atomic_write_text(run_dir / CASES_FILE, json.dumps(case_ids(train, val), indent=1) + "\n")


def check_case_record(run_dir: Path, dataset: str | Path, train: list[Case], val: list[Case]) -> None:
    """Refuse to resume when ``dataset`` now gives other training or validation cases than the run began with.

    The error names the run's record, the dataset and, per split, the cases that left and those that came.
    """
    path = run_dir / CASES_FILE
    if not path.is_file():
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        saved = {split: sorted(str(c) for c in saved[split]) for split in ("train", "val")}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable record of the run's cases ({e}); restore it or start a new run "
                         "with another --out") from e
    now = case_ids(train, val)
    problems = []
    for split in ("train", "val"):
        gone = sorted(set(saved[split]) - set(now[split]))
        new = sorted(set(now[split]) - set(saved[split]))
        if gone or new:
            problems.append(f"{split}: {_listed('no longer there', gone)}{'; ' if gone and new else ''}"
                            f"{_listed('new', new)}")
    if problems:
        raise ValueError(f"{path}: {dataset} gives other cases than the run was trained on ({'; '.join(problems)}); "
                         "--resume continues the same run on the same data (use another --out for a new one)")


def _listed(what: str, ids: list[str], shown: int = 5) -> str:
    if not ids:
        return ""
    more = f" and {len(ids) - shown} more" if len(ids) > shown else ""
    return f"{what} {', '.join(ids[:shown])}{more}"
