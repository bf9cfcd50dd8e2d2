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

import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from maskgen.data.cases import SPLIT_FOLDERS, SPLITS, Case, DatasetError, DatasetSpec, default_domain
from maskgen.data.checks import validate_cases
from maskgen.data.dataset_json import read_dataset_json
from maskgen.data.splits import SplitEntry, parse_split_file

__all__ = ["Case", "DatasetError", "DatasetSpec", "load_dataset", "read_dataset_json", "validate_cases"]

# (images folder, labels folder, split implied by the folder)
_FOLDERS = tuple((img, lab, split) for split, (img, lab) in SPLIT_FOLDERS.items())
_CHANNEL_RE = re.compile(r"(.+)_(\d{4})")


@dataclass(frozen=True)
class _Found:
    image: Path
    label: Path | None
    expected_label: Path  # where the label would be, for "no label" messages
    folder_split: str
    extra_channels: tuple[Path, ...] = ()


def _scan_folders(root: Path, fe: str, n_channels: int = 1) -> tuple[dict[str, _Found], list[str]]:
    """Pair images (all ``n_channels`` files of a case) and labels in all images*/labels* folders; report
    badly named, orphan and incomplete files."""
    found: dict[str, _Found] = {}
    problems: list[str] = []
    for img_name, lab_name, split in _FOLDERS:
        img_dir, lab_dir = root / img_name, root / lab_name
        channel_files: dict[str, dict[int, Path]] = {}
        labels: dict[str, Path] = {}
        for folder, out, parse in (
            (img_dir, channel_files, _parse_image_name),
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
                elif out is labels:
                    out[case] = p
                else:
                    channel = int(p.name[: -len(fe)][-4:])
                    if channel >= n_channels:
                        problems.append(f"{p}: channel _{channel:04d}, but dataset.json declares {n_channels} "
                                        f"channel(s) (_0000 to _{n_channels - 1:04d})")
                    else:
                        out.setdefault(case, {})[channel] = p
        images: dict[str, Path] = {}
        extra: dict[str, tuple[Path, ...]] = {}
        for case, files in channel_files.items():
            absent = [i for i in range(n_channels) if i not in files]
            if absent:
                shown = next(iter(files.values()))
                problems.append(f"{shown}: case {case!r} lacks channel file(s) "
                                + ", ".join(str(img_dir / f"{case}_{i:04d}{fe}") for i in absent))
                continue
            images[case], extra[case] = files[0], tuple(files[i] for i in range(1, n_channels))
        for case, p in labels.items():
            if case not in channel_files:
                problems.append(f"{p}: label without image (expected {img_dir / f'{case}_0000{fe}'})")
        for case, p in images.items():
            if case in found:
                problems.append(
                    f"{p}: duplicate case id {case!r} (also {found[case].image}); case ids must be unique"
                )
                continue
            found[case] = _Found(p, labels.get(case), lab_dir / f"{case}{fe}", split, extra[case])
    return found, problems


def _parse_image_name(name: str, fe: str) -> tuple[str, str | None]:
    expected = f"<case>_0000{fe}"
    if not name.endswith(fe):
        return "", f"file name does not end with file_ending {fe!r} from dataset.json (expected {expected})"
    m = _CHANNEL_RE.fullmatch(name[: -len(fe)])
    if m is None:
        return "", f"file name does not match {expected}"
    return m.group(1), None


def _parse_label_name(name: str, fe: str) -> tuple[str, str | None]:
    if not name.endswith(fe) or len(name) == len(fe):
        return "", f"file name does not match <case>{fe} (file_ending {fe!r} from dataset.json)"
    return name[: -len(fe)], None


def _cases_from_split_file(
    entries: list[SplitEntry], found: dict[str, _Found], split_file: Path, fe: str, warn_unlisted: bool = True
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
        cases.append(Case(e.case, f.image, f.label, e.split, e.domain or default_domain(e.split), e.subject or e.case,
                          f.extra_channels))
    unlisted = sorted(set(found) - {e.case for e in entries})
    if unlisted and warn_unlisted:
        shown = ", ".join(unlisted[:10]) + (", ..." if len(unlisted) > 10 else "")
        warnings.warn(
            f"{len(unlisted)} case(s) on disk are not listed in {split_file} and are ignored: {shown}",
            stacklevel=3,
        )
    return cases, problems


def _cases_from_reference(entries: list[SplitEntry], split_file: Path, fe: str = ".nii.gz",
                          n_channels: int = 1) -> tuple[list[Case], list[str]]:
    """Cases whose image paths the split file gives; the other channels of a multi-channel dataset lie
    beside the first (``_0000`` replaced by ``_0001`` ...)."""
    cases: list[Case] = []
    problems: list[str] = []
    for e in entries:
        assert e.image is not None
        ok = True
        extra: tuple[Path, ...] = ()
        if not e.image.is_file():
            problems.append(f"{split_file}: {e.where}: image {e.image} (case {e.case!r}) does not exist")
            ok = False
        elif n_channels > 1:
            stem = e.image.name[: -len(fe)] if e.image.name.endswith(fe) else ""
            if not stem.endswith("_0000"):
                problems.append(f"{split_file}: {e.where}: image {e.image} must be named <case>_0000{fe} in a "
                                f"{n_channels}-channel dataset (its other channels are found beside it)")
                ok = False
            else:
                extra = tuple(e.image.with_name(f"{stem[:-4]}{i:04d}{fe}") for i in range(1, n_channels))
                for q in extra:
                    if not q.is_file():
                        problems.append(f"{split_file}: {e.where}: channel file {q} (case {e.case!r}) does not exist")
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
                    e.domain or default_domain(e.split),
                    e.subject or e.case,
                    extra,
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

    n_channels = len(meta["channel_names"])
    if splits_file is None:
        found, problems = _scan_folders(root, fe, n_channels)
        if not (root / "imagesTr").is_dir():
            problems.append(f"{root / 'imagesTr'}: missing folder (training images <case>_0000{fe})")
        cases = []
        for case_id, f in found.items():
            if f.label is None and f.folder_split != "test":
                problems.append(f"{f.image}: image without label (expected {f.expected_label})")
                continue
            split = f.folder_split
            cases.append(Case(case_id, f.image, f.label, split, default_domain(split), case_id, f.extra_channels))
    else:
        splits_file = Path(splits_file)
        entries, reference, problems = parse_split_file(splits_file, fe)
        if reference:
            cases, more = _cases_from_reference(entries, splits_file, fe, n_channels)
        else:
            found, scan_problems = _scan_folders(root, fe, n_channels)
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
