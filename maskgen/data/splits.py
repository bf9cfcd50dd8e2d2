"""Split files (CSV or JSON, or the reference code's ``image,label,split`` CSV): one parser for every reader.

``maskgen train --splits`` and ``maskgen evaluate --splits`` read the same file the same way.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from maskgen.data.cases import SPLIT_ALIASES, DatasetError, brief
from maskgen.data.volumes import VOLUME_ENDINGS, volume_ending


@dataclass(frozen=True)
class SplitEntry:
    case: str
    split: str
    domain: str | None
    subject: str | None
    where: str  # "line 3" / "entry 2" / "case 'x'", for messages
    image: Path | None = None  # reference format only
    label: Path | None = None


def _read_split_rows(path: Path) -> tuple[list[tuple[str, dict[str, str]]], set[str] | None, list[str]]:
    """Raw rows (where, lower-cased key -> stripped string) and, for CSV, the header columns."""
    if not path.is_file():
        return [], None, [f"{path}: split file not found"]
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        return [], None, [f"{path}: unreadable split file ({brief(e)})"]

    def norm(d: dict) -> dict[str, str]:
        return {
            str(k).strip().lower(): ("" if v is None else str(v).strip())
            for k, v in d.items()
            if k is not None
        }

    is_json = path.suffix.lower() == ".json" or (path.suffix.lower() != ".csv" and text.lstrip()[:1] in "[{")
    if not is_json:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames:
            return [], None, [f"{path}: empty split file (expected a header like case,split,domain,subject)"]
        columns = {str(c).strip().lower() for c in reader.fieldnames}
        rows = [(f"line {reader.line_num}", norm(r)) for r in reader]
        return [(w, r) for w, r in rows if any(r.values())], columns, []

    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return [], None, [f"{path}: invalid JSON ({brief(e)})"]
    rows: list[tuple[str, dict[str, str]]] = []
    problems: list[str] = []
    if isinstance(data, list):
        if data and all(isinstance(d, dict) and isinstance(d.get("train"), list) for d in data):
            return (
                [],
                None,
                [
                    f"{path}: looks like nnU-Net's splits_final.json (folds of case lists), which is not supported; "
                    'give a list of {"case", "split", "domain", "subject"} objects instead'
                ],
            )
        for i, d in enumerate(data):
            if isinstance(d, dict):
                rows.append((f"entry {i}", norm(d)))
            else:
                problems.append(f"{path}: entry {i}: expected an object with case and split, got {d!r}")
    elif isinstance(data, dict):
        for case, d in data.items():
            if isinstance(d, str):
                d = {"split": d}
            if isinstance(d, dict):
                rows.append((f"case {case!r}", {**norm(d), "case": str(case).strip()}))
            else:
                problems.append(
                    f'{path}: case {case!r}: expected an object like {{"split": "train"}}, got {d!r}'
                )
    else:
        problems.append(f"{path}: expected a JSON list of objects or an object mapping case id -> object")
    return rows, None, problems


def parse_split_file(path: Path, fe: str) -> tuple[list[SplitEntry], bool, list[str]]:
    """Entries of a split file and whether it is the reference image,label,split format."""
    rows, columns, problems = _read_split_rows(path)
    if columns is not None:
        reference = "image" in columns
        missing = [c for c in ("split",) if c not in columns]
        if "case" not in columns and "image" not in columns:
            missing.insert(0, "case")
        if missing:
            return (
                [],
                reference,
                problems
                + [
                    f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(sorted(columns))}); expected a header "
                    "case,split[,domain,subject] or image,label,split"
                ],
            )
    else:
        reference = any("image" in r for _, r in rows)

    entries: list[SplitEntry] = []
    seen: dict[str, str] = {}
    for where, row in rows:
        missing = [k for k in ("split",) if k not in row]
        if "case" not in row and "image" not in row:
            missing.insert(0, "case" if not reference else "image")
        if missing:
            problems.append(f"{path}: {where}: missing key(s) {', '.join(missing)}")
            continue
        image = label = None
        if reference:
            if not row.get("image"):
                problems.append(f"{path}: {where}: empty image path")
                continue
            image = _resolve(path, row["image"])
            label = _resolve(path, row["label"]) if row.get("label") else None
            case = row.get("case") or case_id_from_path(image, fe)
        else:
            case = row.get("case", "")
            if volume_ending(case):  # "case.nii.gz" names the case "case"
                case = case_id_from_path(Path(case), fe)
        if not case:
            problems.append(f"{path}: {where}: empty case id")
            continue
        split = SPLIT_ALIASES.get(row["split"].lower())
        if split is None:
            problems.append(
                f"{path}: {where}: unknown split {row['split']!r} for case {case!r} (use train, val or test)"
            )
            continue
        if case in seen:
            problems.append(f"{path}: {where}: duplicate case {case!r} (first at {seen[case]})")
            continue
        seen[case] = where
        entries.append(
            SplitEntry(case, split, row.get("domain") or None, row.get("subject") or None, where, image, label)
        )
    return entries, reference, problems


def _resolve(split_file: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else split_file.parent / p



def case_id_from_path(path: Path, fe: str) -> str:
    """Case id of a reference-CSV image path: file name without ending and without ``_0000``."""
    name = path.name
    for ending in (fe, *VOLUME_ENDINGS):
        if name.endswith(ending):
            name = name[: -len(ending)]
            break
    else:
        name = path.stem
    return re.sub(r"_0000$", "", name)


def read_split_file(path: str | Path, file_ending: str = ".nii.gz") -> list[SplitEntry]:
    """Every entry of a split file; raises :class:`DatasetError` listing all its problems."""
    path = Path(path)
    entries, _, problems = parse_split_file(path, file_ending)
    if problems:
        raise DatasetError(problems)
    return entries


def write_split_csv(path: str | Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """Write ``(case, split, domain, subject)`` rows as the split CSV that ``read_split_file`` reads back."""
    import io

    from maskgen.io import atomic_write_text

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("case", "split", "domain", "subject"))
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())
