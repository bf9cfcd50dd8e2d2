"""Per-case checks: every image and label opened before training, every problem reported with its file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from maskgen.data.cases import IGNORE_LABEL, Case, brief
from maskgen.data.volumes import load_volume


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
    seen_in_train: set[int] = set()
    for case in tqdm(cases, desc="checking cases", unit="case", disable=not progress):
        problems += _check_case(case, declared, declared_text, seen_in_train if case.split == "train" else None)
    train = [c for c in cases if c.split == "train" and c.label is not None]
    absent = sorted((v, k) for k, v in labels.items()
                    if int(v) != 0 and k != IGNORE_LABEL and int(v) not in seen_in_train)
    if train and absent and not problems:
        warnings.warn(
            f"{len(absent)} declared class(es) appear in no training label and cannot be learned: "
            + ", ".join(f"{k}={v}" for v, k in absent), stacklevel=3)
    return problems


def _check_case(case: Case, declared: set[int], declared_text: str, seen: set[int] | None = None) -> list[str]:
    """Problems of one case; training labels add their values to ``seen``."""
    problems: list[str] = []
    image, image_affine, problem = load_image_checked(case.image)
    if problem:
        problems.append(f"{case.image}: {problem}")
    elif image.size and image.min() == image.max():
        warnings.warn(f"{case.image}: {case.split} image is constant (every voxel {image.flat[0]!r}); "
                      "it carries no signal", stacklevel=4)
    for extra in case.extra_channels:
        channel, channel_affine, problem = load_image_checked(extra)
        if problem:
            problems.append(f"{extra}: {problem}")
        elif image is not None and channel.shape != image.shape:
            problems.append(f"{extra}: shape {channel.shape} != first channel's {image.shape} ({case.image.name}); "
                            "every channel of a case must share one voxel grid")
        elif image_affine is not None and not np.allclose(channel_affine, image_affine, atol=1e-3):
            problems.append(f"{extra}: affine != first channel's ({case.image.name}): "
                            f"{_affine_diff(channel_affine, image_affine)}")
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
    if seen is not None:
        seen.update(int(v) for v in np.unique(label) if float(v) == int(v))
    return problems


def load_image_checked(path: Path) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(data, affine, problem) of an image: unreadable, not 3D, or NaN/inf voxels is a problem. Shared by the
    dataset check and ``predict``'s check of its inputs; ``data`` is kept when only the voxels are bad."""
    image, affine, problem = _load_3d(path)
    if problem is None and (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.complexfloating)):
        n_nan = int(np.count_nonzero(np.isnan(image)))
        n_inf = int(np.count_nonzero(np.isinf(image)))
        if n_nan or n_inf:
            return image, affine, f"{n_nan} NaN and {n_inf} infinite voxels (of {image.size})"
    return image, affine, problem


def _load_3d(path: Path) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """(data, affine, None) for a readable 3D volume, else (None, None, problem).

    Trailing singleton dimensions (x, y, z, 1) are dropped: many tools write 3D data that way.
    """

    try:
        img = load_volume(path)
        data = np.asanyarray(img.dataobj)
        affine = np.eye(4) if img.affine is None else np.asarray(img.affine, dtype=float)
    except Exception as e:  # corrupt files raise anything from gzip, zlib, nibabel or numpy
        return None, None, f"unreadable ({type(e).__name__}: {brief(e)})"
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
