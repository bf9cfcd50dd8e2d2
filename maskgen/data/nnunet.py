"""nnU-Net v2 raw dataset discovery and strict validation.

``maskgen train`` calls :func:`load_dataset` before anything expensive starts, so a malformed dataset
stops early with one :class:`DatasetError` that lists every problem as ``<path>: <problem>``, instead
of crashing hours into training on the first bad case (or, worse, silently training on it).

Layout (nnU-Net v2 "raw")::

    root/dataset.json                  channel_names, labels, file_ending
    root/imagesTr/<case>_0000.nii.gz   root/labelsTr/<case>.nii.gz      -> split "train"
    root/imagesVal/...                 root/labelsVal/...               -> split "val"  (optional)
    root/imagesTs/...                  root/labelsTs/...                -> split "test" (optional; labels optional)

An optional split file (CSV or JSON) overrides the split / domain / subject of the cases it lists.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train", "tr": "train", "training": "train",
    "val": "val", "validation": "val", "valid": "val",
    "test": "test", "ts": "test", "testing": "test",
}  # fmt: skip
# (images folder, labels folder, split implied by the folder)
_FOLDERS = (
    ("imagesTr", "labelsTr", "train"),
    ("imagesVal", "labelsVal", "val"),
    ("imagesTs", "labelsTs", "test"),
)
_REQUIRED_KEYS = ("channel_names", "labels", "file_ending")
# Volumes are read with nibabel; anything else would fail once per case with a less helpful message.
_NIBABEL_ENDINGS = (".nii.gz", ".nii", ".mgz", ".mgh")
_CHANNEL_RE = re.compile(r"(.+)_(\d{4})")


class DatasetError(ValueError):
    """A dataset that must not be trained on; ``.problems`` holds every ``"<path>: <problem>"`` found.

    All problems are collected before raising so that a user fixes the dataset in one pass rather
    than one error per run.
    """

    def __init__(self, problems: list[str] | str, root: str | Path | None = None):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.root = None if root is None else Path(root)
        # Both in args so the error survives pickling (e.g. raised in a DataLoader worker).
        super().__init__(self.problems, self.root)

    def __str__(self) -> str:
        n = len(self.problems)
        where = f" {self.root}" if self.root is not None else ""
        header = f"invalid nnU-Net dataset{where}: {n} problem{'' if n == 1 else 's'}"
        return "\n".join([header, *self.problems])


@dataclass(frozen=True)
class Case:
    """One image (single channel) with its optional label and where it belongs."""

    case_id: str
    image: Path  # path of the single channel file <case>_0000<file_ending>
    label: Path | None  # None only for test cases without labels
    split: str  # "train" | "val" | "test"
    domain: str  # from the split file; else "source" for train/val and "test" for test cases
    subject: str  # from the split file's optional subject column; else == case_id


@dataclass
class DatasetSpec:
    """A validated dataset: its description from dataset.json plus the resolved list of cases."""

    root: Path
    name: str
    channel_names: dict[str, str]
    labels: dict[str, int]
    file_ending: str
    cases: list[Case]

    def split(self, name: str) -> list[Case]:
        """Cases of one split ("train", "val", "test"; the split-file aliases are accepted)."""
        key = _SPLIT_ALIASES.get(str(name).strip().lower())
        if key is None:
            raise ValueError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}")
        return [c for c in self.cases if c.split == key]

    @property
    def n_classes(self) -> int:
        """Number of output channels a segmentation network needs: max label value + 1."""
        return max(self.labels.values()) + 1

    @property
    def modality(self) -> str:
        """CT (fixed Hounsfield intensity range) or MR (anything else: needs per-image normalisation)."""
        return "CT" if str(self.channel_names.get("0", "")).strip().lower() == "ct" else "MR"

    @property
    def domains(self) -> dict[str, list[str]]:
        """Split -> sorted unique domains; every split is present (possibly empty) so lookups never fail."""
        return {s: sorted({c.domain for c in self.cases if c.split == s}) for s in SPLITS}


# --------------------------------------------------------------------------- dataset.json


def read_dataset_json(root: str | Path) -> dict:
    """Read and check ``root/dataset.json``; raise :class:`DatasetError` listing all its problems.

    Label values are returned as plain ints. Region-based labels (nnU-Net region mode) and
    multi-channel datasets are rejected because the rest of maskgen assumes one channel and
    mutually exclusive integer classes.
    """
    root = Path(root)
    meta, problems = _read_dataset_json(root)
    if problems:
        raise DatasetError(problems, root)
    return meta


def _read_dataset_json(root: Path) -> tuple[dict, list[str]]:
    path = root / "dataset.json"
    if not path.is_file():
        return {}, [
            f"{path}: missing (an nnU-Net raw dataset needs dataset.json with channel_names, labels and file_ending)"
        ]
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return {}, [f"{path}: invalid JSON ({_brief(e)})"]
    if not isinstance(meta, dict):
        return {}, [f"{path}: invalid dataset.json: expected a JSON object, got {type(meta).__name__}"]

    problems: list[str] = []
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        hint = ""
        if "channel_names" in missing and "modality" in meta:
            hint = " (found the nnU-Net v1 key 'modality'; nnU-Net v2 calls it 'channel_names')"
        problems.append(f"{path}: missing key(s) {', '.join(repr(k) for k in missing)}{hint}")

    if "channel_names" in meta:
        problems += _check_channel_names(path, meta["channel_names"])
    if "labels" in meta:
        labels, label_problems = _check_labels(path, meta["labels"])
        problems += label_problems
        meta["labels"] = labels
    if "regions_class_order" in meta:
        problems.append(
            f"{path}: 'regions_class_order' given: region-based labels (nnU-Net region mode) are not supported"
        )
    if "file_ending" in meta:
        fe = meta["file_ending"]
        if not isinstance(fe, str) or not fe.startswith(".") or len(fe) < 2:
            problems.append(f"{path}: file_ending must be a string like '.nii.gz', got {fe!r}")
        elif fe.lower() not in _NIBABEL_ENDINGS:
            problems.append(
                f"{path}: file_ending {fe!r} is not supported (volumes are read with nibabel: {', '.join(_NIBABEL_ENDINGS)})"
            )
    return meta, problems


def _check_channel_names(path: Path, channels: Any) -> list[str]:
    if not isinstance(channels, dict) or not channels:
        return [f'{path}: channel_names must be a non-empty object like {{"0": "CT"}}, got {channels!r}']
    if len(channels) > 1:
        return [
            f"{path}: {len(channels)} channels in channel_names ({', '.join(f'{k}={v}' for k, v in channels.items())}); "
            "only single-channel datasets are supported for now"
        ]
    if "0" not in channels:
        return [f'{path}: the single channel must be keyed "0" in channel_names, got {list(channels)}']
    return []


def _check_labels(path: Path, labels: Any) -> tuple[dict[str, int], list[str]]:
    if not isinstance(labels, dict) or not labels:
        return {}, [
            f'{path}: labels must be a non-empty object like {{"background": 0, "organ": 1}}, got {labels!r}'
        ]
    problems: list[str] = []
    out: dict[str, int] = {}
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            problems.append(
                f"{path}: label {name!r} is region-based (value {value!r}); nnU-Net region mode is not supported, "
                "give every label a single integer value"
            )
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            problems.append(f"{path}: label {name!r} has value {value!r}; label values must be integers")
        elif value < 0:
            problems.append(f"{path}: label {name!r} has negative value {value!r}")
        else:
            out[name] = int(value)
    if out.get("background") != 0 and not any("region-based" in p for p in problems):
        problems.append(f'{path}: labels must contain "background": 0 (got {labels!r})')
    by_value: dict[int, str] = {}
    for name, value in out.items():
        if value in by_value:
            problems.append(f"{path}: labels {by_value[value]!r} and {name!r} share value {value}")
        by_value.setdefault(value, name)
    return out, problems


# --------------------------------------------------------------------------- folder scan


@dataclass(frozen=True)
class _Found:
    image: Path
    label: Path | None
    expected_label: Path  # where the label would be, for "no label" messages
    folder_split: str


def _scan_folders(root: Path, fe: str) -> tuple[dict[str, _Found], list[str]]:
    """Pair images and labels in all images*/labels* folders; report badly named and orphan files."""
    found: dict[str, _Found] = {}
    problems: list[str] = []
    for img_name, lab_name, split in _FOLDERS:
        img_dir, lab_dir = root / img_name, root / lab_name
        images: dict[str, Path] = {}
        labels: dict[str, Path] = {}
        for folder, out, parse in (
            (img_dir, images, _parse_image_name),
            (lab_dir, labels, _parse_label_name),
        ):
            if not folder.exists():
                continue
            if not folder.is_dir():
                problems.append(f"{folder}: not a folder")
                continue
            for p in sorted(folder.iterdir()):
                if p.name.startswith("."):
                    continue
                if not p.is_file():
                    problems.append(
                        f"{p}: unexpected {'folder' if p.is_dir() else 'entry'} (expected only files)"
                    )
                    continue
                case, problem = parse(p.name, fe)
                if problem:
                    problems.append(f"{p}: {problem}")
                else:
                    out[case] = p
        for case, p in labels.items():
            if case not in images:
                problems.append(f"{p}: label without image (expected {img_dir / f'{case}_0000{fe}'})")
        for case, p in images.items():
            if case in found:
                problems.append(
                    f"{p}: duplicate case id {case!r} (also {found[case].image}); case ids must be unique"
                )
                continue
            found[case] = _Found(p, labels.get(case), lab_dir / f"{case}{fe}", split)
    return found, problems


def _parse_image_name(name: str, fe: str) -> tuple[str, str | None]:
    expected = f"<case>_0000{fe}"
    if not name.endswith(fe):
        return "", f"file name does not end with file_ending {fe!r} from dataset.json (expected {expected})"
    m = _CHANNEL_RE.fullmatch(name[: -len(fe)])
    if m is None:
        return "", f"file name does not match {expected}"
    if m.group(2) != "0000":
        return "", (
            f"channel file _{m.group(2)}: only single-channel datasets are supported (expected only {expected})"
        )
    return m.group(1), None


def _parse_label_name(name: str, fe: str) -> tuple[str, str | None]:
    if not name.endswith(fe) or len(name) == len(fe):
        return "", f"file name does not match <case>{fe} (file_ending {fe!r} from dataset.json)"
    return name[: -len(fe)], None


def _case_id_from_path(path: Path, fe: str) -> str:
    """Case id of a reference-CSV image path: file name without ending and without ``_0000``."""
    name = path.name
    for ending in (fe, *_NIBABEL_ENDINGS):
        if name.endswith(ending):
            name = name[: -len(ending)]
            break
    else:
        name = path.stem
    return re.sub(r"_0000$", "", name)


# --------------------------------------------------------------------------- split file


@dataclass(frozen=True)
class _Entry:
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
        return [], None, [f"{path}: unreadable split file ({_brief(e)})"]

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
        return [], None, [f"{path}: invalid JSON ({_brief(e)})"]
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


def _parse_split_file(path: Path, fe: str) -> tuple[list[_Entry], bool, list[str]]:
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

    entries: list[_Entry] = []
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
            case = row.get("case") or _case_id_from_path(image, fe)
        else:
            case = row.get("case", "")
        if not case:
            problems.append(f"{path}: {where}: empty case id")
            continue
        split = _SPLIT_ALIASES.get(row["split"].lower())
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
            _Entry(case, split, row.get("domain") or None, row.get("subject") or None, where, image, label)
        )
    return entries, reference, problems


def _resolve(split_file: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else split_file.parent / p


def _default_domain(split: str) -> str:
    return "test" if split == "test" else "source"


def _cases_from_split_file(
    entries: list[_Entry], found: dict[str, _Found], split_file: Path, fe: str, warn_unlisted: bool = True
) -> tuple[list[Case], list[str]]:
    cases: list[Case] = []
    problems: list[str] = []
    for e in entries:
        f = found.get(e.case)
        if f is None:
            problems.append(
                f"{split_file}: case {e.case!r} ({e.where}, split {e.split}) has no image {e.case}_0000{fe} "
                f"in {', '.join(d for d, _, _ in _FOLDERS)}"
            )
            continue
        if f.label is None and e.split != "test":
            problems.append(
                f"{f.image}: no label (expected {f.expected_label}); {split_file} puts case {e.case!r} in split {e.split}"
            )
            continue
        cases.append(
            Case(e.case, f.image, f.label, e.split, e.domain or _default_domain(e.split), e.subject or e.case)
        )
    unlisted = sorted(set(found) - {e.case for e in entries})
    if unlisted and warn_unlisted:
        shown = ", ".join(unlisted[:10]) + (", ..." if len(unlisted) > 10 else "")
        warnings.warn(
            f"{len(unlisted)} case(s) on disk are not listed in {split_file} and are ignored: {shown}",
            stacklevel=3,
        )
    return cases, problems


def _cases_from_reference(entries: list[_Entry], split_file: Path) -> tuple[list[Case], list[str]]:
    cases: list[Case] = []
    problems: list[str] = []
    for e in entries:
        assert e.image is not None
        ok = True
        if not e.image.is_file():
            problems.append(f"{split_file}: {e.where}: image {e.image} (case {e.case!r}) does not exist")
            ok = False
        if e.label is None and e.split != "test":
            problems.append(f"{split_file}: {e.where}: case {e.case!r} in split {e.split} has no label path")
            ok = False
        elif e.label is not None and not e.label.is_file():
            problems.append(f"{split_file}: {e.where}: label {e.label} (case {e.case!r}) does not exist")
            ok = False
        if ok:
            cases.append(
                Case(
                    e.case,
                    e.image,
                    e.label,
                    e.split,
                    e.domain or _default_domain(e.split),
                    e.subject or e.case,
                )
            )
    return cases, problems


# --------------------------------------------------------------------------- dataset


def load_dataset(
    root: str | Path,
    splits_file: str | Path | None = None,
    train_subjects: int | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    check: bool = True,
    progress: bool = False,
) -> DatasetSpec:
    """Discover the cases of an nnU-Net v2 raw dataset, assign splits, and (``check``) validate every volume.

    Without a val split (no imagesVal, no val cases in the split file) ``val_fraction`` of the train
    *subjects* is held out as val (at least one when there are >= 2 subjects; ``val_fraction=0``
    disables it), so that scans of one patient never straddle train and val. ``train_subjects=N``
    then keeps the train cases of N seeded random subjects (few-shot); for a fixed seed the subsets
    are nested (N=2 is contained in N=4), which keeps few-shot curves comparable.

    Raises :class:`DatasetError` listing every problem found. A broken dataset.json is reported on
    its own, since the file ending and labels are needed to check anything else.
    """
    root = Path(root)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not root.is_dir():
        raise DatasetError([f"{root}: dataset folder not found"], root)
    meta = read_dataset_json(root)
    fe: str = meta["file_ending"]
    problems: list[str] = []

    if splits_file is None:
        found, problems = _scan_folders(root, fe)
        if not (root / "imagesTr").is_dir():
            problems.append(f"{root / 'imagesTr'}: missing folder (training images <case>_0000{fe})")
        cases = []
        for case_id, f in found.items():
            if f.label is None and f.folder_split != "test":
                problems.append(f"{f.image}: image without label (expected {f.expected_label})")
                continue
            split = f.folder_split
            cases.append(Case(case_id, f.image, f.label, split, _default_domain(split), case_id))
    else:
        splits_file = Path(splits_file)
        entries, reference, problems = _parse_split_file(splits_file, fe)
        if reference:
            cases, more = _cases_from_reference(entries, splits_file)
        else:
            found, scan_problems = _scan_folders(root, fe)
            problems += scan_problems
            # A split file that failed to parse would make every case look "unlisted": don't warn then.
            cases, more = _cases_from_split_file(entries, found, splits_file, fe, warn_unlisted=not problems)
        problems += more

    if not any(c.split == "train" for c in cases):
        where = f" (check {splits_file})" if splits_file is not None else ""
        problems.append(f"{root}: no training cases{where}")
    _warn_subject_leakage(cases)
    if not any(c.split == "val" for c in cases):
        cases = _hold_out_val(cases, val_fraction, seed)
    if train_subjects is not None:
        cases, more = _few_shot(cases, train_subjects, seed, root)
        problems += more
    cases.sort(key=lambda c: (SPLITS.index(c.split), c.case_id))

    if check:
        problems += validate_cases(cases, meta["labels"], progress=progress)
    if problems:
        raise DatasetError(problems, root)
    return DatasetSpec(
        root=root,
        name=str(meta.get("name") or root.name),
        channel_names={str(k): str(v) for k, v in meta["channel_names"].items()},
        labels=dict(meta["labels"]),
        file_ending=fe,
        cases=cases,
    )


def _warn_subject_leakage(cases: list[Case]) -> None:
    splits_of: dict[str, set[str]] = {}
    for c in cases:
        splits_of.setdefault(c.subject, set()).add(c.split)
    leaked = sorted(s for s, sp in splits_of.items() if len(sp) > 1)
    if leaked:
        warnings.warn(
            f"{len(leaked)} subject(s) have cases in more than one split (leakage): {', '.join(leaked[:10])}",
            stacklevel=3,
        )


def _hold_out_val(cases: list[Case], val_fraction: float, seed: int) -> list[Case]:
    subjects = sorted({c.subject for c in cases if c.split == "train"})
    if val_fraction <= 0 or len(subjects) < 2:
        return cases
    n = min(max(1, round(val_fraction * len(subjects))), len(subjects) - 1)
    order = np.random.default_rng(seed).permutation(len(subjects))
    held = {subjects[i] for i in order[:n]}
    return [replace(c, split="val") if c.split == "train" and c.subject in held else c for c in cases]


def _few_shot(cases: list[Case], n: int, seed: int, root: Path) -> tuple[list[Case], list[str]]:
    subjects = sorted({c.subject for c in cases if c.split == "train"})
    if not 1 <= n <= len(subjects):
        return cases, [
            f"{root}: train_subjects={n} but there are {len(subjects)} train subjects (need 1 <= N <= {len(subjects)})"
        ]
    # Separate stream from the val hold-out so that changing N never changes val.
    order = np.random.default_rng([seed, 1]).permutation(len(subjects))
    keep = {subjects[i] for i in order[:n]}
    return [c for c in cases if c.split != "train" or c.subject in keep], []


# --------------------------------------------------------------------------- per-case checks


def validate_cases(cases: list[Case], labels: dict[str, int], progress: bool = False) -> list[str]:
    """Open every image and label and return all problems found (empty list: all good).

    Catches what would otherwise break or silently corrupt training: unreadable files, non-3D
    volumes, NaN/inf intensities, label/image grid mismatches and label values the network has no
    output channel for.
    """
    from tqdm import tqdm

    declared = {int(v) for v in labels.values()}
    declared_text = ", ".join(f"{k}={v}" for k, v in sorted(labels.items(), key=lambda kv: kv[1]))
    problems: list[str] = []
    for case in tqdm(cases, desc="checking cases", unit="case", disable=not progress):
        problems += _check_case(case, declared, declared_text)
    return problems


def _check_case(case: Case, declared: set[int], declared_text: str) -> list[str]:
    problems: list[str] = []
    image, image_affine, problem = _load_3d(case.image)
    if problem:
        problems.append(f"{case.image}: {problem}")
    elif np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.complexfloating):
        n_nan = int(np.count_nonzero(np.isnan(image)))
        n_inf = int(np.count_nonzero(np.isinf(image)))
        if n_nan or n_inf:
            problems.append(f"{case.image}: {n_nan} NaN and {n_inf} infinite voxels (of {image.size})")
    if case.label is None:
        return problems

    label, label_affine, problem = _load_3d(case.label)
    if problem:
        problems.append(f"{case.label}: {problem}")
        return problems
    if image is not None:
        if label.shape != image.shape:
            problems.append(
                f"{case.label}: label shape {label.shape} != image shape {image.shape} ({case.image.name})"
            )
        if not np.allclose(label_affine, image_affine, atol=1e-3):
            problems.append(
                f"{case.label}: label affine != image affine ({case.image.name}): {_affine_diff(label_affine, image_affine)}"
            )
    problems += [f"{case.label}: {p}" for p in _check_label_values(label, declared, declared_text)]
    return problems


def _load_3d(path: Path) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(data, affine, None) for a readable 3D volume, else (None, None, problem).

    Trailing singleton dimensions (x, y, z, 1) are dropped: many tools write 3D data that way.
    """
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        affine = np.eye(4) if img.affine is None else np.asarray(img.affine, dtype=float)
    except Exception as e:  # corrupt files raise anything from gzip, zlib, nibabel or numpy
        return None, None, f"unreadable ({type(e).__name__}: {_brief(e)})"
    shape = tuple(data.shape)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 3:
        return data, affine, None
    if data.ndim < 3:
        return None, None, f"not 3D: shape {shape} is {len(shape)}D"
    return (
        None,
        None,
        f"not 3D: shape {shape} is {len(shape)}D (multi-channel / time-series files are not supported)",
    )


def _check_label_values(label: np.ndarray, declared: set[int], declared_text: str) -> list[str]:
    problems: list[str] = []
    values = np.unique(label)
    if not (np.issubdtype(values.dtype, np.integer) or values.dtype == bool):
        with np.errstate(invalid="ignore"):
            whole = np.isfinite(values) & (values == np.round(values))
        if not whole.all():
            bad = values[~whole]
            shown = ", ".join(f"{v:g}" for v in bad[:5]) + (", ..." if bad.size > 5 else "")
            problems.append(
                f"{bad.size} non-integer label values ({shown}); label values must be whole numbers"
            )
        values = values[whole]
    undeclared = sorted({int(v) for v in values.tolist()} - declared)
    if undeclared:
        shown = ", ".join(map(str, undeclared[:10])) + (", ..." if len(undeclared) > 10 else "")
        problems.append(f"undeclared label values [{shown}] (dataset.json declares {declared_text})")
    return problems


def _affine_diff(a: np.ndarray, b: np.ndarray) -> str:
    def spacing(m: np.ndarray) -> str:
        return "x".join(f"{s:.3f}" for s in np.sqrt((m[:3, :3] ** 2).sum(axis=0)))

    def origin(m: np.ndarray) -> str:
        return "(" + ", ".join(f"{o:.3f}" for o in m[:3, 3]) + ")"

    text = f"spacing {spacing(a)} vs {spacing(b)}, origin {origin(a)} vs {origin(b)}"
    if spacing(a) == spacing(b) and origin(a) == origin(b):
        text += ", direction differs"
    return text


def _brief(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
