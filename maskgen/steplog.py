"""The per-step ``log.csv`` of a resumable training loop, shared by ``maskgen train`` and ``pretrain-extractor``.

A resumed run first drops the rows after its checkpoint (and any row a kill cut short), then appends, so
the finished log holds every step exactly once. The loop writes a step's row before the checkpoint that
claims that step, so a kill between the two never loses a row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from maskgen.io import atomic_write_text


def truncate_step_log(path: Path, step: int, fields: Sequence[str]) -> None:
    """Keep the complete rows of steps 1..``step`` in increasing order; the header is kept if it starts
    with ``fields`` (extra columns: a method's diagnostics), else ``fields`` replaces it."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0] if rows and rows[0][: len(fields)] == list(fields) else list(fields)
    kept, last = [], 0
    for row in rows[1:]:
        if len(row) != len(header) or not row[0].isdigit():
            continue
        s = int(row[0])
        if last < s <= step:
            kept.append(row)
            last = s
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *kept])
    atomic_write_text(path, buf.getvalue())


class StepLog:
    """Rows of ``columns`` appended to ``path`` and flushed after each step."""

    def __init__(self, path: Path, columns: Sequence[str], resume: bool):
        self.path = Path(path)
        header = None
        if resume and self.path.exists():
            with self.path.open(newline="") as f:
                header = next(csv.reader(f), None) or None
        self.columns = list(header or columns)  # a resumed log keeps the columns it was started with
        self._file: IO[str] = self.path.open("a" if header else "w", newline="")
        self._writer = csv.writer(self._file, lineterminator="\n")
        if not header:
            self._writer.writerow(self.columns)
            self._file.flush()

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow(["" if row.get(k) is None else row.get(k) for k in self.columns])
        self._file.flush()

    def close(self) -> None:
        self._file.close()
